"""Sampling speed: seconds per batch of samples, in-process, served (exported) and eager.

    python benchmarks/sampling.py --sampler=ddpm --num_steps=400 --batch_size=16 --repeats=3
    python benchmarks/sampling.py --sampler=dpmpp_2m --num_steps=20 --precision=mixed_bfloat16

Three ways of drawing the same batch (same seed, so the same work and, up to float round-off, the
same images), timed in turn with their order rotated every repeat so that a drifting load hits
them alike:

  inprocess  `DiffusionModel.generate`: one `tf.function` around the sampler's `tf.while_loop`;
  served     the SavedModel's `sample` signature (`export.export_sampler` into a temporary
             directory, `tf.saved_model.load`) called in this process: TF Serving minus the RPC;
  eager      the tutorial's style: a Python `for` loop calling the network eagerly at every step,
             with the library's solver step (`samplers.SOLVERS`) and the same noise.

Each mode's untimed first call runs `--warmup_num_steps` steps (the graphs take num_steps as an
input, so it traces the very graph that is timed): `<mode>_first_call_s`. Reported: median seconds
per batch over the uncontended repeats, images/s, served/in-process (target ≤ 1.1) and
eager/in-process (as a ratio of medians and, `*_paired`, as the median of per-repeat ratios), the
largest difference between the modes' images, export and load times, peak RSS.

The model is `--model=PATH.keras` (`builders.load_model`), else an untrained `SeedUNet` of
`base_config()` (28×28×1, linear schedule, T = 400; the time does not depend on the weights).
`--precision=mixed_bfloat16` samples with `DiffusionModel.with_dtype_policy("mixed_bfloat16")`:
the network computes in bfloat16, the sampler's coefficients in float32/float64; `auto` asks
`precision.resolve_precision`. Conditional models sample labels `arange(N) % num_classes`.
"""

import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

import common  # noqa: E402
from tfdiffusion import builders, config as config_lib, export, precision, samplers  # noqa: E402

MODES = ("inprocess", "served", "eager")

flags.DEFINE_enum("sampler", "ddpm", list(samplers.SAMPLERS), "The sampler.")
flags.DEFINE_integer("num_steps", None, "Model evaluations (default: T).", lower_bound=1)
flags.DEFINE_integer("batch_size", 16, "Samples per call.", lower_bound=1)
flags.DEFINE_float("eta", 0.0, "DDIM's η.")
flags.DEFINE_float("guidance_scale", None, "Classifier-free guidance weight (class-conditional models only).")
flags.DEFINE_integer("seed", 0, "Seed of the samples.")
flags.DEFINE_integer("warmup_num_steps", 2, "num_steps of each mode's untimed first call.", lower_bound=1)
flags.DEFINE_list("modes", list(MODES), f"The modes to time, a comma-separated subset of {MODES}.")
flags.register_validator("modes", lambda modes: modes and set(modes) <= set(MODES),
                         f"--modes must be a non-empty subset of {MODES}")
flags.DEFINE_string("model", None, "A saved DiffusionModel (.keras); default: an untrained SeedUNet.")
flags.DEFINE_enum("precision", "float32", ("float32", "mixed_bfloat16", "auto"), "The network's compute precision.")
common.define_timing_flags(extra_repeats=1)
FLAGS = flags.FLAGS


def load_model(policy):
    """(model, its name for the table): --model or an untrained SeedUNet, computing under `policy`."""
    if FLAGS.model:
        model, name = builders.load_model(FLAGS.model, compile=False), os.path.basename(FLAGS.model)
        if getattr(model, "data_shape", None) is None:
            raise SystemExit(f"--model must hold a built DiffusionModel. Received: --model={FLAGS.model}")
    else:
        model, name = builders.build_model(config_lib.base_config()), "seed_unet (untrained)"
        model(tf.zeros((1, 28, 28, 1)))
    return (model if policy == "float32" else model.with_dtype_policy(policy)), name


def eager_sample(model, num_steps, labels, guidance_scale):
    """The reverse process as a Python loop, the network called eagerly at every step."""
    solver = samplers.SOLVERS[FLAGS.sampler]
    shape = (FLAGS.batch_size,) + tuple(model.data_shape)
    x = tf.random.stateless_normal(shape, tf.constant([FLAGS.seed, 0], tf.int64))
    alpha_bar = np.append(1.0, model.diffusion.alphas_cumprod)  # alpha_bar[t + 1] = ᾱ_t, ᾱ_{−1} = 1
    timesteps = samplers.timestep_sequence(num_steps, model.diffusion.num_timesteps).numpy().tolist()
    state, options = solver.initial_state(x), {"eta": tf.constant(FLAGS.eta, tf.float32), "ddpm_variance": "beta_tilde"}
    for i, (t, t_prev) in enumerate(zip(timesteps, timesteps[1:] + [-1])):
        x0, eps = model.denoise(x, tf.fill([shape[0]], t), labels, guidance_scale)
        noise = None
        if solver.stochastic:
            noise = tf.random.stateless_normal(shape, tf.constant([FLAGS.seed, i + 1], tf.int64)) * float(t_prev >= 0)
        x, state = solver.step(x, x0, eps, tf.constant(alpha_bar[t + 1], tf.float64),
                               tf.constant(alpha_bar[t_prev + 1], tf.float64), noise, state, options)
    return model.to_data_space(x).numpy()


def sampling_calls(model, directory, extra):
    """{mode: fn(num_steps) → images} for --modes; export and load times go into `extra`."""
    n = FLAGS.batch_size
    labels = None if model.num_classes is None else (np.arange(n) % model.num_classes).astype(np.int32)
    guidance_scale = FLAGS.guidance_scale if labels is not None else None
    request = {"seed": FLAGS.seed, "sampler": FLAGS.sampler, "eta": FLAGS.eta}
    calls = {"inprocess": lambda steps: model.generate(n, num_steps=steps, labels=labels,
                                                       guidance_scale=guidance_scale, **request),
             "eager": lambda steps: eager_sample(model, steps, None if labels is None else tf.constant(labels),
                                                 None if guidance_scale is None else tf.constant(guidance_scale))}
    if "served" in FLAGS.modes:
        with common.Timer() as timer:
            path = export.export_sampler(model, os.path.join(directory, "1"))
        with common.Timer() as load_timer:
            signature = tf.saved_model.load(path).signatures["sample"]
        extra.update(export_s=timer.wall_s, load_s=load_timer.wall_s)
        inputs = {"seed": tf.constant(FLAGS.seed, tf.int64), "num_samples": tf.constant(n, tf.int32),
                  "sampler": tf.constant(FLAGS.sampler), "eta": tf.constant(FLAGS.eta, tf.float32),
                  "guidance_scale": tf.constant(guidance_scale or 0.0, tf.float32),
                  "labels": tf.constant(np.zeros(n, np.int32) if labels is None else labels)}
        calls["served"] = lambda steps: signature(num_steps=tf.constant(steps, tf.int32), **inputs)["samples"].numpy()
    return {mode: calls[mode] for mode in MODES if mode in FLAGS.modes}


def time_modes(calls, num_steps, base):
    """{mode: Timer records}, rotating the order every attempt, and each mode's last images."""
    runs, outputs, modes = {mode: [] for mode in calls}, {}, list(calls)
    attempt = 0
    while not all(common.enough_runs(runs[m], FLAGS.repeats, FLAGS.extra_repeats) for m in modes):
        for mode in modes[attempt % len(modes):] + modes[:attempt % len(modes)]:
            if attempt >= FLAGS.repeats and common.enough_runs(runs[mode], FLAGS.repeats, FLAGS.extra_repeats):
                continue
            with common.timed_section() as timer:
                outputs[mode] = calls[mode](num_steps)
            runs[mode].append({**timer.record(), "images_per_s": FLAGS.batch_size / timer.wall_s, "attempt": attempt})
            common.emit_json({**base, "event": "repeat", "mode": mode, **runs[mode][-1]})
        attempt += 1
    return runs, outputs


def ratio_to_inprocess(mode, runs, outputs, seconds):
    """`<mode>_over_inprocess`, its median of per-attempt ratios (robust to drift) and the images' largest difference."""
    pairs = [(r, p) for r in runs[mode] for p in runs["inprocess"] if r["attempt"] == p["attempt"]]
    clean = [(r, p) for r, p in pairs if not (r["contended"] or p["contended"])]
    return {f"{mode}_over_inprocess": seconds[mode] / seconds["inprocess"],
            f"{mode}_over_inprocess_paired": float(np.median([r["wall_s"] / p["wall_s"] for r, p in clean or pairs])),
            f"{mode}_over_inprocess_paired_contended": not clean,
            f"{mode}_max_abs_diff": float(np.max(np.abs(outputs[mode] - outputs["inprocess"])))}


def summary_record(base, runs, outputs):
    record = {**base, "event": "summary"}
    summaries = {mode: common.summarize(mode_runs) for mode, mode_runs in runs.items()}
    for mode, s in summaries.items():
        record.update({f"{mode}_s": s["median_wall_s"], f"{mode}_s_min": s["min_wall_s"], f"{mode}_s_max": s["max_wall_s"],
                       f"{mode}_images_per_s": FLAGS.batch_size / s["median_wall_s"],
                       f"{mode}_other_cpu_fraction": s["median_other_cpu_fraction"], f"{mode}_contended": s["contended"],
                       f"{mode}_runs_used": s["num_runs"] if s["contended"] else s["num_uncontended"],
                       f"{mode}_num_runs": s["num_runs"]})
    seconds = {mode: s["median_wall_s"] for mode, s in summaries.items()}
    for mode in ("served", "eager"):
        if mode in runs and "inprocess" in runs:
            record.update(ratio_to_inprocess(mode, runs, outputs, seconds))
    return record | {"contended": any(s["contended"] for s in summaries.values()),
                     "max_other_cpu_fraction": max((r["other_cpu_fraction"] or 0.0) for rs in runs.values() for r in rs),
                     "peak_rss_mb": common.peak_rss_mb(), "contention_threshold": FLAGS.contention_threshold}


def append_row(record, modes):
    row = {"date": common.row_date(record["machine"]), "model": record["model"], "sampler": record["sampler"],
           "steps": record["num_steps"], "batch": record["batch_size"], "precision": record["precision"]}
    for column, key in (("in-process s", "inprocess_s"), ("served s", "served_s"),
                        ("served images/s", "served_images_per_s"), ("eager s", "eager_s"),
                        ("served / in-process", "served_over_inprocess"), ("eager / in-process", "eager_over_inprocess"),
                        ("export s", "export_s"), ("peak RSS MiB", "peak_rss_mb"),
                        ("other CPU (max)", "max_other_cpu_fraction")):
        row[column] = record.get(key)
    row["runs used"] = ", ".join(f"{m} {record[m + '_runs_used']}/{record[m + '_num_runs']}" for m in modes)
    row |= {"contended": record["contended"], "environment": common.short_environment(record["machine"])}
    common.append_markdown_row("Sampling", row, record["command"], record["machine"])


def main(argv):
    del argv
    policy, reason = precision.resolve_precision(FLAGS.precision)
    info, command = common.machine_info(), common.command_line()
    model, name = load_model(policy)
    T = model.diffusion.num_timesteps
    num_steps = FLAGS.num_steps or T
    if num_steps > T:
        raise SystemExit(f"--num_steps must be in [1, {T}]. Received: --num_steps={num_steps}")
    base = {"benchmark": "sampling", "model": name, "sampler": FLAGS.sampler, "num_steps": num_steps,
            "batch_size": FLAGS.batch_size, "eta": FLAGS.eta, "precision": policy, "precision_setting": FLAGS.precision,
            "precision_reason": reason}
    directory = tempfile.mkdtemp(prefix="tfdiffusion-bench-")
    try:
        extra = {}
        calls = sampling_calls(model, directory, extra)
        first_call = {}
        for mode, call in calls.items():  # untimed first calls: tracing, graph optimisation, Keras eager set-up
            with common.Timer() as timer:
                call(min(FLAGS.warmup_num_steps, num_steps))
            first_call[f"{mode}_first_call_s"] = timer.wall_s
        runs, outputs = time_modes(calls, num_steps, base)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    record = summary_record(base, runs, outputs) | extra | first_call | {
        "params": model.network.count_params(), "repeats": FLAGS.repeats, "num_timesteps": T,
        "warmup_num_steps": min(FLAGS.warmup_num_steps, num_steps), "command": command, "machine": info}
    common.emit_json(record)
    append_row(record, list(calls))


if __name__ == "__main__":
    app.run(main)
