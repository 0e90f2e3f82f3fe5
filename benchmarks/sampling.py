"""Sampling speed: one batch drawn in-process, served (exported) and eagerly (see README.md).

    python benchmarks/sampling.py --sampler=dpmpp_2m --num_steps=20 --batch_size=16 --precision=mixed_bfloat16

`inprocess` is `DiffusionModel.generate`, `served` the exported `sample` signature loaded here, `eager`
the library's driver run eagerly (the tutorial's style); same seed, order rotated every repeat.
`--precision=mixed_bfloat16` samples with `DiffusionModel.with_dtype_policy("mixed_bfloat16")`.
"""

import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

import common  # noqa: E402
from tfdiffusion import builders, config as config_lib, evaluation, export, machine, precision, samplers  # noqa: E402

MODES = ("inprocess", "served", "eager")

flags.DEFINE_enum("sampler", "ddpm", list(samplers.SAMPLERS), "The sampler.")
flags.DEFINE_integer("num_steps", None, "Model evaluations (default: T).", lower_bound=1)
flags.DEFINE_integer("batch_size", 16, "Samples per call.", lower_bound=1)
flags.DEFINE_float("eta", 0.0, "DDIM's η.")
flags.DEFINE_float("guidance_scale", 0.0, "Classifier-free guidance weight (class-conditional models only).")
flags.DEFINE_integer("seed", 0, "Seed of the samples.")
flags.DEFINE_integer("warmup_num_steps", 2, "num_steps of each mode's untimed first call.", lower_bound=1)
flags.DEFINE_list("modes", list(MODES), f"The modes to time, a comma-separated subset of {MODES}.")
flags.register_validator("modes", lambda modes: modes and set(modes) <= set(MODES),
                         f"--modes must be a non-empty subset of {MODES}")
flags.DEFINE_string("model", None, "A saved DiffusionModel (.keras); default: an untrained SeedUNet.")
flags.DEFINE_enum("precision", "float32", ("float32", "mixed_bfloat16", "auto"), "The network's compute precision.")
common.define_timing_flags(extra_repeats=1)
flags.adopt_module_key_flags(common)  # --help lists the shared flags too
FLAGS = flags.FLAGS


def load_model(policy):
    """(model, its name for the table): --model or an untrained SeedUNet, computing under `policy`."""
    if FLAGS.model:
        model, name = builders.load_model(FLAGS.model, compile=False), os.path.basename(FLAGS.model)
        if getattr(model, "data_shape", None) is None:
            raise SystemExit(f"--model must hold a built DiffusionModel. Received: --model={FLAGS.model}")
    else:
        model, name = builders.build_model(config_lib.base_config(), (28, 28, 1)), "seed_unet (untrained)"
        model(tf.zeros((1, 28, 28, 1)))
    return (model if policy == "float32" else model.with_dtype_policy(policy)), name


def eager_sample(adapter, num_steps):
    """`adapter`'s request by the library's driver run eagerly: its `tf.while_loop` is then a Python loop
    calling the network op by op at every step, the tutorial's style."""
    model, labels = adapter.model, adapter.requested_labels(0, FLAGS.batch_size)
    x = samplers.reverse_process(
        lambda x_t, t, y: model.denoise(x_t, t, y, adapter.guidance_scale), model.diffusion,
        (FLAGS.batch_size,) + adapter.data_shape, seed=FLAGS.seed, num_steps=num_steps, sampler=FLAGS.sampler,
        eta=FLAGS.eta, labels=None if labels is None else labels.astype(np.int32))
    return model.to_data_space(x).numpy()


def sampling_calls(model, directory, extra):
    """{mode: fn(num_steps) → images} for --modes (`evaluation`'s sampler adapters); export and load times → `extra`."""
    request = {"sampler": FLAGS.sampler, "eta": FLAGS.eta, "guidance_scale": FLAGS.guidance_scale}

    def call(adapter, num_steps):
        adapter.num_steps = num_steps
        return adapter(FLAGS.batch_size, FLAGS.seed, 0)

    inprocess = evaluation.ModelSampler(model, **request)
    calls = {"inprocess": lambda steps: call(inprocess, steps), "eager": lambda steps: eager_sample(inprocess, steps)}
    if "served" in FLAGS.modes:
        with common.Timer() as export_timer:
            path = export.export_sampler(model, os.path.join(directory, "1"))
        with common.Timer() as load_timer:
            served = evaluation.SavedModelSampler(path, num_classes=model.num_classes or 1, **request)
        extra.update(export_s=export_timer.wall_s, load_s=load_timer.wall_s)
        calls["served"] = lambda steps: call(served, steps)
    return {mode: calls[mode] for mode in MODES if mode in FLAGS.modes}


def time_modes(calls, num_steps, base):
    """{mode: Timer records} (`RepeatPolicy.measure_each`: the order rotates every attempt), each mode's last images."""
    outputs = {}

    def timed(mode):
        outputs[mode] = calls[mode](num_steps)
        return {}

    runs = common.repeat_policy().measure_each({mode: lambda mode=mode: timed(mode) for mode in calls})
    for mode, mode_runs in runs.items():
        for run in mode_runs:
            run["images_per_s"] = FLAGS.batch_size / run["wall_s"]
            common.emit_json({**base, "event": "repeat", "mode": mode, **run})
    return runs, outputs


def summary_record(base, runs, outputs):
    record = {**base, "event": "summary", "peak_rss_mb": common.peak_rss_mb(),
              "max_other_cpu_fraction": max((r["other_cpu_fraction"] or 0.0) for rs in runs.values() for r in rs),
              "contention_threshold": FLAGS.contention_threshold}
    for mode, mode_runs in runs.items():
        s = common.summarize(mode_runs)
        record.update({f"{mode}_s": s["median_wall_s"], f"{mode}_s_min": s["min_wall_s"],
                       f"{mode}_s_max": s["max_wall_s"], f"{mode}_images_per_s": FLAGS.batch_size / s["median_wall_s"],
                       f"{mode}_other_cpu_fraction": s["median_other_cpu_fraction"],
                       f"{mode}_contended": s["contended"], f"{mode}_num_runs": s["num_runs"],
                       f"{mode}_runs_used": s["num_runs"] if s["contended"] else s["num_uncontended"]})
    record["contended"] = any(record[f"{mode}_contended"] for mode in runs)
    for mode in ("served", "eager") if "inprocess" in runs else ():
        if mode in runs:  # the per-attempt ratio is robust to drift, the ratio of medians is not
            paired, contended = machine.paired_ratio(runs[mode], runs["inprocess"])
            record.update({f"{mode}_over_inprocess": record[f"{mode}_s"] / record["inprocess_s"],
                           f"{mode}_over_inprocess_paired": paired,
                           f"{mode}_over_inprocess_paired_contended": contended,
                           f"{mode}_max_abs_diff": float(np.max(np.abs(outputs[mode] - outputs["inprocess"])))})
    return record


COLUMNS = (("in-process s", "inprocess_s"), ("served s", "served_s"), ("served images/s", "served_images_per_s"),
           ("eager s", "eager_s"), ("served / in-process", "served_over_inprocess"),
           ("eager / in-process", "eager_over_inprocess"), ("export s", "export_s"), ("peak RSS MiB", "peak_rss_mb"),
           ("other CPU (max)", "max_other_cpu_fraction"))


def append_row(record, modes):
    row = {"date": common.row_date(record["machine"]), "model": record["model"], "sampler": record["sampler"],
           "steps": record["num_steps"], "batch": record["batch_size"], "precision": record["precision"],
           **{column: record.get(key) for column, key in COLUMNS},
           "runs used": ", ".join(f"{m} {record[m + '_runs_used']}/{record[m + '_num_runs']}" for m in modes),
           "contended": record["contended"], "environment": common.short_environment(record["machine"])}
    common.append_markdown_row("Sampling", row, record["command"], record["machine"])


def main(argv):
    del argv
    policy, reason = precision.resolve_precision(FLAGS.precision)
    info, command = common.machine_info(), common.command_line()
    model, name = load_model(policy)
    T = model.diffusion.num_timesteps
    num_steps, warmup_steps = FLAGS.num_steps or T, min(FLAGS.warmup_num_steps, FLAGS.num_steps or T)
    if num_steps > T:
        raise SystemExit(f"--num_steps must be in [1, {T}]. Received: --num_steps={num_steps}")
    base = {"benchmark": "sampling", "model": name, "sampler": FLAGS.sampler, "num_steps": num_steps,
            "batch_size": FLAGS.batch_size, "eta": FLAGS.eta, "precision": policy, "precision_setting": FLAGS.precision,
            "precision_reason": reason}
    extra = {"params": model.network.count_params(), "repeats": FLAGS.repeats, "num_timesteps": T,
             "warmup_num_steps": warmup_steps, "command": command, "machine": info}
    with tempfile.TemporaryDirectory(prefix="tfdiffusion-bench-") as directory:
        calls = sampling_calls(model, directory, extra)
        for mode, call in calls.items():  # untimed first calls: tracing, graph optimisation, Keras eager set-up
            with common.Timer() as timer:
                call(warmup_steps)
            extra[f"{mode}_first_call_s"] = timer.wall_s
        runs, outputs = time_modes(calls, num_steps, base)
    record = summary_record(base, runs, outputs) | extra
    common.emit_json(record)
    append_row(record, list(calls))


if __name__ == "__main__":
    app.run(main)
