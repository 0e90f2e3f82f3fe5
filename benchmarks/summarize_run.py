"""Ratios and targets of one `run_all.sh` run, from its JSON lines: the "Run summary" table.

    python benchmarks/summarize_run.py --jsonl=/tmp/tfdiffusion-bench-....jsonl

The ratios that only mean something within one run (tfdiffusion against the Keras and PyTorch
ports, bf16 against fp32 for training and sampling, DPM-Solver++ 20 against DDPM 400, served and
eager against in-process) with issues 7 and 16's targets, after the CPU's bf16 units and what
`mixed_precision="auto"` picks here; also issue 7's peer table as measured in this run.
"""

import os
import sys

from absl import app, flags

import common
from tfdiffusion import results

flags.DEFINE_string("jsonl", None, "The JSON lines of one run.", required=True)
flags.DEFINE_string("command", "bash benchmarks/run_all.sh", "The command of the run.")
common.define_markdown_flag()
flags.adopt_module_key_flags(common)  # --help lists the shared flags too
FLAGS = flags.FLAGS
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


def last(records, **match):
    return next((r for r in reversed(records) if all(r.get(k) == v for k, v in match.items())), None)


def training_records(records):
    """The training summaries comparable with issue 7's figures: batch 64, one step per execution."""
    return [r for r in records if r["benchmark"] == "train_throughput" and r["batch_size"] == 64
            and r["steps_per_execution"] == 1]


def sampling_records(records, precision=None):
    """The sampling summaries of 16 images (of one precision, if given; rows before bf16 sampling are float32)."""
    return [r for r in records if r["benchmark"] == "sampling" and r["batch_size"] == 16
            and precision in (None, r.get("precision", "float32"))]


def machine_metrics(records, metrics):
    """The CPU's bf16 units and tfdiffusion's "auto" precision here (from the first record's machine info)."""
    info = next((r["machine"] for r in records if "auto_precision" in r.get("machine", {})), None)
    if info:
        metrics.add("CPU bf16 units (amx_bf16, avx512_bf16)", f"amx_bf16 {'yes' if info['amx_bf16'] else 'no'}, "
                    f"avx512_bf16 {'yes' if info['avx512_bf16'] else 'no'}")
        metrics.add('tfdiffusion mixed_precision="auto" here', f"{info['auto_precision']} "
                    f"({info['auto_precision_reason']})")


def training_metrics(train, metrics):
    """tfdiffusion against the Keras and PyTorch ports, bf16 / fp32, peak RSS, and the targets."""
    for precision, jit in ((p, j) for p in ("float32", "mixed_bfloat16") for j in (False, True)):
        ours, peer = (last(train, network=n, precision=precision, jit_compile=jit)
                      for n in ("seed_unet", "plain_keras_port"))
        label, floor = f"{precision}{', XLA' if jit else ''}", {"float32": 100, "mixed_bfloat16": 200}[precision]
        metrics.value(f"seed_unet train images/s ({label})", ours, "images_per_s", None if jit else f">= {floor}")
        metrics.value(f"plain_keras_port train images/s ({label})", peer, "images_per_s")
        metrics.ratio(f"seed_unet / plain_keras_port ({label})", ours, peer, "images_per_s", ">= 1.0")
    ours = {p: last(train, network="seed_unet", precision=p, jit_compile=False) for p in ("float32", "mixed_bfloat16")}
    metrics.ratio("seed_unet mixed_bfloat16 / float32 images/s", ours["mixed_bfloat16"], ours["float32"],
                  "images_per_s")
    # Issue 7's memory target is for training as the binaries run it on CPU; never contended (memory, not time).
    metrics.value("seed_unet training peak RSS MiB (float32, graph mode: the CPU default)", ours["float32"],
                  "peak_rss_mb", "<= 1536", flag=None)
    worst = max((r for r in train if r["network"] == "seed_unet"), key=lambda r: r["peak_rss_mb"], default=None)
    if worst:
        metrics.add(f"seed_unet training peak RSS MiB (max over runs: {worst['precision']}"
                    f"{', XLA' if worst['jit_compile'] else ''})", worst["peak_rss_mb"])
    for precision, theirs, target in (("float32", "float32", 1.0), ("mixed_bfloat16", "bf16_autocast", 1.15)):
        peers = [r for r in (last(train, network="pytorch_port", precision=theirs, torch_compile=c)
                             for c in (False, True)) if r]
        for peer in peers:
            metrics.value(f"pytorch_port train images/s ({theirs}{', torch.compile' if peer['torch_compile'] else ''})",
                          peer, "images_per_s")
        best = max(peers, key=lambda r: r["images_per_s"], default=None)
        metrics.ratio(f"seed_unet {precision} / fastest pytorch_port {theirs}"
                      f"{' (torch.compile)' if best and best['torch_compile'] else ' (eager)'}",
                      ours[precision], best, "images_per_s", f">= {target}")


def sampling_metrics(records, metrics):
    """Issue 7's sampling targets (float32 rows), served and eager against in-process, bf16 / fp32 time."""
    fp32, flag = [r for r in sampling_records(records, "float32") if "inprocess_s" in r], "inprocess_contended"
    ddpm, dpm = last(fp32, sampler="ddpm", num_steps=400), last(fp32, sampler="dpmpp_2m", num_steps=20)
    metrics.value("DDPM 400 steps, 16 images, in-process s", ddpm, "inprocess_s", "<= 20", flag)
    metrics.ratio("DDPM 400 / DPM-Solver++ 20 time (speed-up)", ddpm, dpm, "inprocess_s", ">= 15 (at equal FID)", flag)
    for r in sampling_records(records):
        bf16 = r.get("precision", "float32") != "float32"
        label = f"{r['sampler']} {r['num_steps']}" + (f", {r['precision']}" if bf16 else "")
        for mode, name, target in (("served", "served", "<= 1.1"), ("eager", "eager loop", None)):
            if f"{mode}_over_inprocess" in r:
                metrics.add(f"{name} / in-process ({label})", r[f"{mode}_over_inprocess"], target,
                            r[f"{mode}_contended"] or r["inprocess_contended"])
        if bf16:
            metrics.ratio(f"sampling {r['precision']} / float32 in-process time ({r['sampler']} {r['num_steps']})",
                          r, last(fp32, sampler=r["sampler"], num_steps=r["num_steps"]), "inprocess_s", None, flag)


def peer_table(records):
    """Issue 7's peer table with this run's figures and tfdiffusion's rows added (markdown lines)."""
    train, fmt = training_records(records), common.format_value
    ddpm = last(sampling_records(records, "float32"), sampler="ddpm", num_steps=400)
    lines = ["| implementation | issue 7, AMD EPYC (quoted): train images/s / 16 images × 400 DDPM steps "
             "| this run: train images/s | this run: 16 images × 400 DDPM steps |", "|---|---|---|---|"]
    for label, quoted, match in PEER_ROWS:
        record = match and last(train, **dict(zip(("network", "precision", "jit_compile", "torch_compile"), match)))
        if match and not record:
            continue
        rate = "not measured here" if not record else (
            fmt(record["images_per_s"]) + (" (contended)" if record["contended"] else ""))
        sampling = "—" if not ddpm or match != ("seed_unet", "float32", False, None) else (
            f"{fmt(ddpm['inprocess_s'])} s in-process, {fmt(ddpm.get('served_s'))} s served (one `tf.while_loop`)")
        lines.append(f"| {label} | {quoted} | {rate} | {sampling} |")
    return lines


def main(argv):
    del argv
    records = results.read_records(FLAGS.jsonl, "summary")
    if not records:
        raise SystemExit(f"No summary records in {FLAGS.jsonl}")
    info, run_id = records[0].get("machine") or {}, os.path.basename(FLAGS.jsonl)
    metrics = results.Metrics()
    machine_metrics(records, metrics)
    training_metrics(training_records(records), metrics)
    sampling_metrics(records, metrics)
    for metric in metrics:
        common.emit_json({"event": "run_summary", "run": run_id, **metric})
        verdict = f"  (target {metric['target']}: {'met' if metric['met'] else 'NOT met'})" if metric["target"] else ""
        print(f"    {metric['metric']}: {common.format_value(metric['value'])}{verdict}"
              + ("  [contended]" if metric["contended"] else ""), file=sys.stderr)
        row = {"date": common.row_date(info) if info else "", "run": run_id, **metric}
        common.append_markdown_row("Run summary", row, FLAGS.command, info)
    print("\nIssue 7's table from this run (for README.md and docs/BENCHMARKS.md):\n" + "\n".join(peer_table(records)),
          file=sys.stderr)


if __name__ == "__main__":
    app.run(main)
