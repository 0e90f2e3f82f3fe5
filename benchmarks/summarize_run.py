"""Ratios and targets of one `run_all.sh` run, from its JSON lines: the "Run summary" table.

    python benchmarks/summarize_run.py --jsonl=/tmp/tfdiffusion-bench-....jsonl

The ratios that only mean something within one run (tfdiffusion against the Keras and PyTorch
ports, bf16 against fp32 for training and sampling, DPM-Solver++ 20 against DDPM 400, served and
eager against in-process) with issues 7 and 16's targets, after the CPU's bf16 units and what
`mixed_precision="auto"` picks here; also issue 7's peer table as measured in this run.
"""

import json
import os
import sys

from absl import app, flags

import common

flags.DEFINE_string("jsonl", None, "The JSON lines of one run.", required=True)
flags.DEFINE_string("command", "bash benchmarks/run_all.sh", "The command of the run.")
common.define_markdown_flag()
flags.adopt_module_key_flags(common)  # --help lists the shared flags too
FLAGS = flags.FLAGS


def load(path):
    """The "summary" records of a JSON-lines file (log lines and a line cut by a killed process are skipped)."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return [r for r in records if isinstance(r, dict) and r.get("event") == "summary"]


def _last(records, **match):
    found = [r for r in records if all(r.get(k) == v for k, v in match.items())]
    return found[-1] if found else None


def _training_records(records):
    """The training summaries comparable with issue 7's figures: batch 64, one step per execution."""
    return [r for r in records if r["benchmark"] == "train_throughput" and r["batch_size"] == 64
            and r["steps_per_execution"] == 1]


def _sampling_records(records, precision=None):
    """The sampling summaries of 16 images (of one precision, if given; rows before bf16 sampling are float32)."""
    return [r for r in records if r["benchmark"] == "sampling" and r["batch_size"] == 16
            and precision in (None, r.get("precision", "float32"))]


def machine_metrics(records, add):
    """The CPU's bf16 units and tfdiffusion's "auto" precision here (from the first record's machine info)."""
    info = next((r["machine"] for r in records if "auto_precision" in r.get("machine", {})), None)
    if info:
        add("CPU bf16 units (amx_bf16, avx512_bf16)",
            f"amx_bf16 {'yes' if info['amx_bf16'] else 'no'}, avx512_bf16 {'yes' if info['avx512_bf16'] else 'no'}")
        add('tfdiffusion mixed_precision="auto" here', f"{info['auto_precision']} ({info['auto_precision_reason']})")


def training_metrics(train, add):
    """tfdiffusion against the Keras port per precision and XLA setting, bf16 / fp32, and the targets."""
    for precision in ("float32", "mixed_bfloat16"):
        for jit in (False, True):
            ours = _last(train, network="seed_unet", precision=precision, jit_compile=jit)
            peer = _last(train, network="plain_keras_port", precision=precision, jit_compile=jit)
            label = f"{precision}{', XLA' if jit else ''}"
            if ours:
                floor = None if jit else {"float32": 100, "mixed_bfloat16": 200}[precision]
                add(f"seed_unet train images/s ({label})", ours["images_per_s"], floor and f">= {floor}",
                    floor and ours["images_per_s"] >= floor, ours["contended"])
            if peer:
                add(f"plain_keras_port train images/s ({label})", peer["images_per_s"], contended=peer["contended"])
            if ours and peer:
                ratio = ours["images_per_s"] / peer["images_per_s"]
                add(f"seed_unet / plain_keras_port ({label})", ratio, ">= 1.0", ratio >= 1.0,
                    ours["contended"] or peer["contended"])
    fp32 = _last(train, network="seed_unet", precision="float32", jit_compile=False)
    bf16 = _last(train, network="seed_unet", precision="mixed_bfloat16", jit_compile=False)
    if fp32 and bf16:
        add("seed_unet mixed_bfloat16 / float32 images/s", bf16["images_per_s"] / fp32["images_per_s"],
            contended=fp32["contended"] or bf16["contended"])
    # Issue 7's memory target is for training as the binaries run it on CPU (float32, graph mode).
    if fp32:
        add("seed_unet training peak RSS MiB (float32, graph mode: the CPU default)", fp32["peak_rss_mb"], "<= 1536",
            fp32["peak_rss_mb"] <= 1536)
    seed_runs = [r for r in train if r["network"] == "seed_unet"]
    if seed_runs:
        worst = max(seed_runs, key=lambda r: r["peak_rss_mb"])
        add(f"seed_unet training peak RSS MiB (max over runs: {worst['precision']}"
            f"{', XLA' if worst['jit_compile'] else ''})", worst["peak_rss_mb"])
    torch_metrics(train, {"float32": fp32, "bf16_autocast": bf16}, add)


def torch_metrics(train, ours, add):
    """The PyTorch port (eager and torch.compile, fp32 and bf16 autocast) and tfdiffusion against its fastest."""
    for precision, target in (("float32", 1.0), ("bf16_autocast", 1.15)):
        peers = []
        for compiled in (False, True):
            peer = _last(train, network="pytorch_port", precision=precision, torch_compile=compiled)
            if peer:
                peers.append(peer)
                add(f"pytorch_port train images/s ({precision}{', torch.compile' if compiled else ''})",
                    peer["images_per_s"], contended=peer["contended"])
        if ours[precision] and peers:
            best = max(peers, key=lambda r: r["images_per_s"])
            ratio = ours[precision]["images_per_s"] / best["images_per_s"]
            add(f"seed_unet {ours[precision]['precision']} / fastest pytorch_port {precision}"
                f"{' (torch.compile)' if best['torch_compile'] else ' (eager)'}", ratio, f">= {target}",
                ratio >= target, ours[precision]["contended"] or best["contended"])


def sampling_metrics(records, add):
    """Issue 7's sampling targets (float32 rows), served and eager against in-process, bf16 / fp32 time."""
    fp32 = _sampling_records(records, "float32")
    ddpm = _last(fp32, sampler="ddpm", num_steps=400)
    dpm = _last(fp32, sampler="dpmpp_2m", num_steps=20)
    if ddpm and "inprocess_s" in ddpm:
        add("DDPM 400 steps, 16 images, in-process s", ddpm["inprocess_s"], "<= 20", ddpm["inprocess_s"] <= 20,
            ddpm["inprocess_contended"])
    if ddpm and dpm and "inprocess_s" in ddpm and "inprocess_s" in dpm:
        speedup = ddpm["inprocess_s"] / dpm["inprocess_s"]
        add("DDPM 400 / DPM-Solver++ 20 time (speed-up)", speedup, ">= 15 (at equal FID)", speedup >= 15,
            ddpm["inprocess_contended"] or dpm["inprocess_contended"])
    for r in _sampling_records(records):
        bf16 = r.get("precision", "float32") != "float32"
        label = f"{r['sampler']} {r['num_steps']}" + (f", {r['precision']}" if bf16 else "")
        if "served_over_inprocess" in r:
            add(f"served / in-process ({label})", r["served_over_inprocess"], "<= 1.1", r["served_over_inprocess"] <= 1.1,
                r["served_contended"] or r["inprocess_contended"])
        if "eager_over_inprocess" in r:
            add(f"eager loop / in-process ({label})", r["eager_over_inprocess"], None, None,
                r["eager_contended"] or r["inprocess_contended"])
        reference = _last(fp32, sampler=r["sampler"], num_steps=r["num_steps"])
        if bf16 and reference and "inprocess_s" in r and "inprocess_s" in reference:
            add(f"sampling {r['precision']} / float32 in-process time ({r['sampler']} {r['num_steps']})",
                r["inprocess_s"] / reference["inprocess_s"], contended=r["inprocess_contended"]
                or reference["inprocess_contended"])


def metrics(records):
    """[{metric, value, target text, met or None, contended}] of one run."""
    out = []

    def add(name, value, target=None, met=None, contended=False):
        out.append({"metric": name, "value": value, "target": target, "met": met, "contended": bool(contended)})

    machine_metrics(records, add)
    training_metrics(_training_records(records), add)
    sampling_metrics(records, add)
    return out


# Issue 7's table: (implementation, its figures on the issue's 2-core AMD EPYC (quoted), and the
# record of this run that measures the same thing here: network, precision, XLA, torch.compile).
PEER_ROWS = (
    ("the JAX tutorial's own code (vmap per example, NCHW)", "37 / 96 s", None),
    ("PyTorch eager (port, channels-last: `peers_torch.py`)", "87 / 24 s", ("pytorch_port", "float32", False, False)),
    ("PyTorch torch.compile", "102 / 20 s", ("pytorch_port", "float32", False, True)),
    ("diffusers UNet2DModel (2.04M) + DDPMScheduler", "104 / 22 s", None),
    ("a plain Keras 3 port, graph mode + oneDNN, NHWC (`peers.py`)", "106 / 20 s",
     ("plain_keras_port", "float32", False, None)),
    ("the same port with `jit_compile=True`", "74 / 27 s", ("plain_keras_port", "float32", True, None)),
    ("PyTorch port with bf16 autocast, channels-last", "174 / —", ("pytorch_port", "bf16_autocast", False, False)),
    ("PyTorch port with bf16 autocast, torch.compile", "—", ("pytorch_port", "bf16_autocast", False, True)),
    ("the plain Keras port under `mixed_bfloat16`", "166 / —", ("plain_keras_port", "mixed_bfloat16", False, None)),
    ("**tfdiffusion** `SeedUNet`, float32, graph mode + oneDNN (the CPU default)", "",
     ("seed_unet", "float32", False, None)),
    ("**tfdiffusion** `SeedUNet`, float32, `jit_compile=True`", "", ("seed_unet", "float32", True, None)),
    ("**tfdiffusion** `SeedUNet`, `mixed_bfloat16`", "", ("seed_unet", "mixed_bfloat16", False, None)),
)


def peer_table(records):
    """Issue 7's peer table with this run's figures and tfdiffusion's rows added (markdown lines)."""
    train = _training_records(records)
    ddpm = _last(_sampling_records(records, "float32"), sampler="ddpm", num_steps=400)
    lines = ["| implementation | issue 7, AMD EPYC (quoted): train images/s / 16 images × 400 DDPM steps "
             "| this run: train images/s | this run: 16 images × 400 DDPM steps |",
             "|---|---|---|---|"]
    for label, quoted, measured in PEER_ROWS:
        rate, sampling = "not measured here", "—"
        if measured is not None:
            network, precision, jit, compiled = measured
            match = {"network": network, "precision": precision, "jit_compile": jit}
            if compiled is not None:
                match["torch_compile"] = compiled
            record = _last(train, **match)
            if record is None:
                continue
            rate = common.format_value(record["images_per_s"]) + (" (contended)" if record["contended"] else "")
            if ddpm and network == "seed_unet" and precision == "float32" and not jit:
                sampling = (f"{common.format_value(ddpm['inprocess_s'])} s in-process, "
                            f"{common.format_value(ddpm.get('served_s'))} s served (one `tf.while_loop`)")
        lines.append(f"| {label} | {quoted} | {rate} | {sampling} |")
    return lines


def main(argv):
    del argv
    records = load(FLAGS.jsonl)
    if not records:
        raise SystemExit(f"No summary records in {FLAGS.jsonl}")
    info, run_id = records[0].get("machine") or {}, os.path.basename(FLAGS.jsonl)
    for metric in metrics(records):
        common.emit_json({"event": "run_summary", "run": run_id, **metric})
        verdict = "" if metric["target"] is None else f"  (target {metric['target']}: {'met' if metric['met'] else 'NOT met'})"
        print(f"    {metric['metric']}: {common.format_value(metric['value'])}{verdict}"
              + ("  [contended]" if metric["contended"] else ""), file=sys.stderr)
        common.append_markdown_row("Run summary", {"date": common.row_date(info) if info else "", "run": run_id, **metric},
                                   FLAGS.command, info)
    print("\nIssue 7's table from this run (for README.md and docs/BENCHMARKS.md):\n" + "\n".join(peer_table(records)),
          file=sys.stderr)


if __name__ == "__main__":
    app.run(main)
