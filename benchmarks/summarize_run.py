"""Ratios and targets from one run of the suite (the JSON lines `run_all.sh` collects).

    python benchmarks/summarize_run.py --jsonl=/tmp/tfdiffusion-bench-....jsonl [--markdown=docs/BENCHMARKS.md]

Reads the "summary" records of `train_throughput.py` and `sampling.py`, forms the ratios
that only mean something within one run on one machine (tfdiffusion vs the plain Keras port
under the same precision and XLA setting, bf16 vs fp32, DPM-Solver++ 20 steps vs DDPM 400,
served vs in-process), compares them with the targets of issue 7, prints them as JSON lines
and appends them to the "Run summary" table of --markdown ('' for none). A ratio built from
a contended median is marked contended. Also prints issue 7's peer table as measured in this
run, with tfdiffusion's rows added, for README.md and docs/BENCHMARKS.md.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  pylint: disable=wrong-import-position


def load(path):
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("event") == "summary":
                records.append(record)
    return records


def _last(records, **match):
    found = [r for r in records if all(r.get(k) == v for k, v in match.items())]
    return found[-1] if found else None


def _training_records(records):
    """The training summaries comparable with issue 7's figures: batch 64, one step per execution."""
    return [r for r in records if r["benchmark"] == "train_throughput" and r["batch_size"] == 64
            and r["steps_per_execution"] == 1]


def metrics(records):
    """(metric, value, target text, met or None, contended) tuples."""
    out = []

    def add(name, value, target=None, met=None, contended=False):
        out.append({"metric": name, "value": value, "target": target, "met": met, "contended": bool(contended)})

    train = _training_records(records)
    for precision in ("float32", "mixed_bfloat16"):
        for jit in (False, True):
            ours = _last(train, network="seed_unet", precision=precision, jit_compile=jit)
            peer = _last(train, network="plain_keras_port", precision=precision, jit_compile=jit)
            label = f"{precision}{', XLA' if jit else ''}"
            if ours:
                target, met = None, None
                if precision == "float32" and not jit:
                    target, met = ">= 100", ours["images_per_s"] >= 100
                if precision == "mixed_bfloat16" and not jit:
                    target, met = ">= 200", ours["images_per_s"] >= 200
                add(f"seed_unet train images/s ({label})", ours["images_per_s"], target, met, ours["contended"])
            if peer:
                add(f"plain_keras_port train images/s ({label})", peer["images_per_s"], None, None, peer["contended"])
            if ours and peer:
                ratio = ours["images_per_s"] / peer["images_per_s"]
                add(f"seed_unet / plain_keras_port ({label})", ratio, ">= 1.0", ratio >= 1.0,
                    ours["contended"] or peer["contended"])
    fp32 = _last(train, network="seed_unet", precision="float32", jit_compile=False)
    bf16 = _last(train, network="seed_unet", precision="mixed_bfloat16", jit_compile=False)
    if fp32 and bf16:
        add("seed_unet mixed_bfloat16 / float32 images/s", bf16["images_per_s"] / fp32["images_per_s"], None, None,
            fp32["contended"] or bf16["contended"])
    # The PyTorch port (benchmarks/peers_torch.py): eager and torch.compile, fp32 and bf16 autocast.
    torch_runs = {}
    for precision in ("float32", "bf16_autocast"):
        for compiled in (False, True):
            peer = _last(train, network="pytorch_port", precision=precision, torch_compile=compiled)
            if peer:
                torch_runs[precision, compiled] = peer
                add(f"pytorch_port train images/s ({precision}{', torch.compile' if compiled else ''})",
                    peer["images_per_s"], None, None, peer["contended"])
    for ours, precision, target in ((fp32, "float32", 1.0), (bf16, "bf16_autocast", 1.15)):
        peers = [r for (p, _), r in torch_runs.items() if p == precision]
        if ours and peers:
            best = max(peers, key=lambda r: r["images_per_s"])
            ratio = ours["images_per_s"] / best["images_per_s"]
            add(f"seed_unet {ours['precision']} / fastest pytorch_port {precision}"
                f"{' (torch.compile)' if best['torch_compile'] else ' (eager)'}", ratio, f">= {target}",
                ratio >= target, ours["contended"] or best["contended"])
    # Issue 7's memory target is for training as the binaries run it on CPU (float32, graph mode).
    if fp32:
        add("seed_unet training peak RSS MiB (float32, graph mode: the CPU default)", fp32["peak_rss_mb"], "<= 1536",
            fp32["peak_rss_mb"] <= 1536)
    seed_runs = [r for r in train if r["network"] == "seed_unet"]
    if seed_runs:
        worst = max(seed_runs, key=lambda r: r["peak_rss_mb"])
        add(f"seed_unet training peak RSS MiB (max over runs: {worst['precision']}"
            f"{', XLA' if worst['jit_compile'] else ''})", worst["peak_rss_mb"])

    sampling = [r for r in records if r["benchmark"] == "sampling" and r["batch_size"] == 16]
    ddpm = _last(sampling, sampler="ddpm", num_steps=400)
    dpm = _last(sampling, sampler="dpmpp_2m", num_steps=20)
    if ddpm and "inprocess_s" in ddpm:
        add("DDPM 400 steps, 16 images, in-process s", ddpm["inprocess_s"], "<= 20", ddpm["inprocess_s"] <= 20,
            ddpm["inprocess_contended"])
    if ddpm and dpm and "inprocess_s" in ddpm and "inprocess_s" in dpm:
        speedup = ddpm["inprocess_s"] / dpm["inprocess_s"]
        add("DDPM 400 / DPM-Solver++ 20 time (speed-up)", speedup, ">= 15 (at equal FID)", speedup >= 15,
            ddpm["inprocess_contended"] or dpm["inprocess_contended"])
    for r in sampling:
        if "served_over_inprocess" in r:
            add(f"served / in-process ({r['sampler']} {r['num_steps']})", r["served_over_inprocess"], "<= 1.1",
                r["served_over_inprocess"] <= 1.1, r["served_contended"] or r["inprocess_contended"])
        if "eager_over_inprocess" in r:
            add(f"eager loop / in-process ({r['sampler']} {r['num_steps']})", r["eager_over_inprocess"], None, None,
                r["eager_contended"] or r["inprocess_contended"])
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
    ddpm = _last([r for r in records if r["benchmark"] == "sampling" and r["batch_size"] == 16],
                 sampler="ddpm", num_steps=400)
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
                            f"{common.format_value(ddpm['served_s'])} s served (one `tf.while_loop`)")
        lines.append(f"| {label} | {quoted} | {rate} | {sampling} |")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jsonl", required=True, help="the JSON lines of one run")
    parser.add_argument("--markdown", default=common.DEFAULT_MARKDOWN, help="results file ('' for none)")
    parser.add_argument("--command", default="bash benchmarks/run_all.sh", help="the command of the run")
    args = parser.parse_args(argv)
    records = load(args.jsonl)
    if not records:
        raise SystemExit(f"No summary records in {args.jsonl}")
    info = records[0].get("machine") or {}
    run_id = os.path.basename(args.jsonl)
    for metric in metrics(records):
        common.emit_json({"event": "run_summary", "run": run_id, **metric})
        verdict = "" if metric["target"] is None else f"  (target {metric['target']}: " + (
            "met)" if metric["met"] else "NOT met)")
        print(f"    {metric['metric']}: {common.format_value(metric['value'])}{verdict}"
              + ("  [contended]" if metric["contended"] else ""), file=sys.stderr)
        if args.markdown:
            row = {
                "date": str(info.get("date", ""))[:16].replace("T", " "),
                "run": run_id,
                "metric": metric["metric"],
                "value": metric["value"],
                "target": metric["target"],
                "met": metric["met"],
                "contended": metric["contended"],
            }
            common.append_markdown_row("Run summary", row, args.command, path=args.markdown, info=info or None)
    print("\nIssue 7's table from this run (for README.md and docs/BENCHMARKS.md):\n" + "\n".join(peer_table(records)),
          file=sys.stderr)


if __name__ == "__main__":
    main()
