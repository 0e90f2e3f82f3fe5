"""Sampling speed: seconds per image batch, in-process, served (exported) and eager.

    python benchmarks/sampling.py --sampler=ddpm --num_steps=400 --batch_size=16 --repeats=3

Three ways of drawing the same batch (same seed, so the same work and, up to float
round-off, the same images) are timed in turn, rotating their order every repeat so that
a drift in the machine's load hits them alike:

  inprocess  `DiffusionModel.generate`: one `tf.function` around the sampler's `tf.while_loop`;
  served     the SavedModel's `sample` signature (`tfdiffusion.export.export_sampler` into a
             temporary directory, `tf.saved_model.load`, `signatures["sample"]`) called in
             this process, i.e. what TF Serving runs minus the RPC;
  eager      the tutorial style: a Python `for` loop calling the network eagerly at every
             step, with the same step maths (`tfdiffusion.samplers` step functions) and noise.

Each mode's first, untimed call runs `--warmup_num_steps` steps (default 2; the graphs
take num_steps as an input, so this traces and optimises the very graph that is timed) and
is reported as `<mode>_first_call_s`. Reported: median seconds per batch over the uncontended repeats, images/s,
the ratios served/in-process (target ≤ 1.1) and eager/in-process, the largest difference
between the modes' images, export and load times, peak RSS and the CPU used by other
processes. JSON lines on stdout; a row in the "Sampling" table of --markdown (default
docs/BENCHMARKS.md; '' for none).

The model is `--model=PATH.keras` (a saved `DiffusionModel`), else an untrained `SeedUNet`
on 28×28×1 with the linear schedule, T = 400 (sampling time does not depend on the weights).
"""

import argparse
import os
import shutil
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  pylint: disable=wrong-import-position

MODES = ("inprocess", "served", "eager")
SAMPLERS = ("ddpm", "ddim", "dpmpp_2m")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sampler", choices=SAMPLERS, default="ddpm")
    parser.add_argument("--num_steps", type=int, default=None, help="model evaluations (default: T)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--eta", type=float, default=0.0)
    parser.add_argument("--guidance_scale", type=float, default=None, help="class-conditional models only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup_num_steps", type=int, default=2,
                        help="num_steps of each mode's untimed first call (the graphs take num_steps as an input, "
                             "so a short call traces and optimises the same graph)")
    parser.add_argument("--extra_repeats", type=int, default=1,
                        help="further repeats allowed while a mode has fewer than --repeats uncontended ones")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {MODES}")
    parser.add_argument("--model", default=None, help="a saved DiffusionModel (.keras); default: untrained SeedUNet")
    parser.add_argument("--precision", choices=("float32", "mixed_bfloat16"), default="float32",
                        help="global dtype policy for the untrained model (a loaded model keeps its saved policies)")
    parser.add_argument("--contention_threshold", type=float, default=common.DEFAULT_CONTENTION_THRESHOLD)
    parser.add_argument("--max_wait_idle_s", type=float, default=0.0,
                        help="before each timed call, wait up to this long for the machine to be quiet")
    parser.add_argument("--markdown", default=common.DEFAULT_MARKDOWN,
                        help="results file to append a row to ('' for none); use /tmp for smoke tests")
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(args.modes) - set(MODES))
    if unknown or not args.modes:
        parser.error(f"--modes must be a non-empty subset of {MODES}. Received: {unknown or args.modes}")
    if args.batch_size < 1 or args.repeats < 1 or args.extra_repeats < 0:
        parser.error("--batch_size and --repeats must be >= 1 and --extra_repeats >= 0")
    return args


def load_or_build_model(args):
    import keras  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    import tfdiffusion as tfd  # pylint: disable=import-outside-toplevel

    if args.model:
        model = keras.saving.load_model(args.model, compile=False)
        if not isinstance(model, tfd.DiffusionModel):
            raise SystemExit(f"--model must hold a tfdiffusion.DiffusionModel. Received: {type(model).__name__}")
        if model.data_shape is None:
            raise SystemExit("--model holds an unbuilt DiffusionModel")
        return model, os.path.basename(args.model)
    diffusion = tfd.GaussianDiffusion(tfd.schedules.make_betas("linear", 400))
    model = tfd.DiffusionModel(network=tfd.layers.SeedUNet(), diffusion=diffusion)
    model(tf.zeros((1, 28, 28, 1)))
    return model, "seed_unet (untrained)"


def eager_sample(model, num_samples, *, seed, sampler, num_steps, eta, labels, guidance_scale):
    """The reverse process as a Python loop with the network called eagerly at every step."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from tfdiffusion import samplers  # pylint: disable=import-outside-toplevel

    shape = (num_samples,) + tuple(model.data_shape)
    x = tf.random.stateless_normal(shape, tf.constant([seed, 0], tf.int64))
    alpha_bar = np.append(1.0, model.diffusion.alphas_cumprod)  # alpha_bar[t + 1] = ᾱ_t, ᾱ_{−1} = 1
    timesteps = samplers.timestep_sequence(num_steps, model.diffusion.num_timesteps).numpy().tolist()
    eps_fn = model.predict_eps
    if labels is not None:
        labels = tf.constant(labels, tf.int32)
        if guidance_scale is not None:
            eps_fn = samplers.guided_eps_fn(model.predict_eps, tf.constant(guidance_scale, tf.float32),
                                            model.num_classes)
    previous_x0 = tf.zeros_like(x)
    previous_h = tf.constant(1.0, tf.float64)
    for i, t in enumerate(timesteps):
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        alpha_bar_t = tf.constant(alpha_bar[t + 1], tf.float64)
        alpha_bar_prev = tf.constant(alpha_bar[t_prev + 1], tf.float64)
        eps = tf.cast(eps_fn(x, tf.fill([num_samples], t), labels), x.dtype)
        x0 = samplers.predict_x0(x, eps, alpha_bar_t)
        if sampler == "dpmpp_2m":
            x, previous_h = samplers.dpmpp_2m_step(x, x0, previous_x0, alpha_bar_t, alpha_bar_prev, previous_h,
                                                   tf.constant(i == 0))
        else:
            noise = tf.random.stateless_normal(shape, tf.constant([seed, i + 1], tf.int64))
            noise = noise * float(t_prev >= 0)
            if sampler == "ddpm":
                x = samplers.ddpm_step(x, eps, alpha_bar_t, alpha_bar_prev, noise)
            else:
                x = samplers.ddim_step(x, eps, alpha_bar_t, alpha_bar_prev, eta, noise)
        previous_x0 = x0
    return model.to_data_space(x).numpy()


def run(args):
    import keras  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from tfdiffusion import export  # pylint: disable=import-outside-toplevel

    if args.precision != "float32":
        keras.mixed_precision.set_global_policy(args.precision)
    info = common.machine_info()
    command = common.command_line()
    model, model_name = load_or_build_model(args)
    T = model.diffusion.num_timesteps
    num_steps = T if args.num_steps is None else args.num_steps
    if not 1 <= num_steps <= T:
        raise SystemExit(f"--num_steps must be in [1, {T}]. Received: {num_steps}")
    B = args.batch_size
    conditional = model.num_classes is not None
    labels = (np.arange(B) % model.num_classes).astype(np.int32) if conditional else None
    guidance_scale = args.guidance_scale if conditional else None
    request = dict(seed=args.seed, sampler=args.sampler, num_steps=num_steps, eta=args.eta)

    calls = {}
    extra = {}
    if "inprocess" in args.modes:
        calls["inprocess"] = lambda: model.generate(num_samples=B, labels=labels, guidance_scale=guidance_scale,
                                                    **request)
    temporary = None
    try:
        if "served" in args.modes:
            temporary = tempfile.mkdtemp(prefix="tfdiffusion-bench-")
            with common.Timer(args.contention_threshold) as timer:
                path = export.export_sampler(model, os.path.join(temporary, "1"))
            extra["export_s"] = timer.wall_s
            with common.Timer(args.contention_threshold) as timer:
                loaded = tf.saved_model.load(path)
            extra["load_s"] = timer.wall_s
            signature = loaded.signatures["sample"]
            inputs = dict(
                seed=tf.constant(args.seed, tf.int64),
                num_samples=tf.constant(B, tf.int32),
                num_steps=tf.constant(num_steps, tf.int32),
                sampler=tf.constant(args.sampler),
                eta=tf.constant(args.eta, tf.float32),
                guidance_scale=tf.constant(0.0 if guidance_scale is None else guidance_scale, tf.float32),
                labels=tf.constant(np.zeros(B, np.int32) if labels is None else labels),
            )
            calls["served"] = lambda: signature(**inputs)["samples"].numpy()
        if "eager" in args.modes:
            calls["eager"] = lambda: eager_sample(model, B, labels=labels, guidance_scale=guidance_scale, **request)

        base = {"benchmark": "sampling", "model": model_name, "sampler": args.sampler, "num_steps": num_steps,
                "batch_size": B, "eta": args.eta, "precision": args.precision}
        modes = [m for m in MODES if m in calls]
        outputs, first_call = {}, {}
        full_steps = num_steps
        request["num_steps"] = warmup_steps = max(1, min(args.warmup_num_steps, num_steps))
        if "served" in calls:
            inputs["num_steps"] = tf.constant(warmup_steps, tf.int32)
        for mode in modes:  # untimed first calls: tracing, graph optimisation, Keras eager set-up
            with common.Timer(args.contention_threshold) as timer:
                calls[mode]()
            first_call[mode] = timer.wall_s
        request["num_steps"] = full_steps
        if "served" in calls:
            inputs["num_steps"] = tf.constant(full_steps, tf.int32)

        runs = {mode: [] for mode in modes}
        attempt = 0
        while True:
            clean = {m: sum(not r["contended"] for r in runs[m]) for m in modes}
            if attempt >= args.repeats and (min(clean.values()) >= args.repeats
                                            or attempt >= args.repeats + args.extra_repeats):
                break
            order = modes[attempt % len(modes):] + modes[:attempt % len(modes)]
            for mode in order:
                if attempt >= args.repeats and clean[mode] >= args.repeats:
                    continue
                common.wait_for_quiet(args.max_wait_idle_s, args.contention_threshold)
                with common.Timer(args.contention_threshold) as timer:
                    outputs[mode] = calls[mode]()
                record = {**timer.record(), "images_per_s": B / timer.wall_s, "attempt": attempt}
                runs[mode].append(record)
                common.emit_json({**base, "event": "repeat", "mode": mode, **record})
            attempt += 1

        summaries = {mode: common.summarize(runs[mode]) for mode in modes}
        seconds = {mode: summaries[mode]["median_wall_s"] for mode in modes}
        record = {**base, "event": "summary", "params": model.network.count_params(),
                  "repeats": args.repeats, "num_timesteps": T, "warmup_num_steps": warmup_steps, **extra}
        for mode in modes:
            s = summaries[mode]
            record.update({
                f"{mode}_s": s["median_wall_s"],
                f"{mode}_s_min": s["min_wall_s"],
                f"{mode}_s_max": s["max_wall_s"],
                f"{mode}_images_per_s": B / s["median_wall_s"],
                f"{mode}_first_call_s": first_call[mode],
                f"{mode}_other_cpu_fraction": s["median_other_cpu_fraction"],
                f"{mode}_contended": s["contended"],
                f"{mode}_runs_used": s["num_uncontended"] if not s["contended"] else s["num_runs"],
                f"{mode}_num_runs": s["num_runs"],
            })
        for mode in ("served", "eager"):
            if mode in seconds and "inprocess" in seconds:
                record[f"{mode}_over_inprocess"] = seconds[mode] / seconds["inprocess"]
                # Paired by attempt (same moment, so the same load): robust to drift.
                pairs = [(r, p) for r in runs[mode] for p in runs["inprocess"] if r["attempt"] == p["attempt"]]
                clean_pairs = [(r, p) for r, p in pairs if not (r["contended"] or p["contended"])]
                paired = [r["wall_s"] / p["wall_s"] for r, p in (clean_pairs or pairs)]
                record[f"{mode}_over_inprocess_paired"] = float(np.median(paired)) if paired else None
                record[f"{mode}_over_inprocess_paired_contended"] = not clean_pairs
                record[f"{mode}_max_abs_diff"] = float(np.max(np.abs(outputs[mode] - outputs["inprocess"])))
        record.update({
            "contended": any(summaries[m]["contended"] for m in modes),
            "max_other_cpu_fraction": max((r["other_cpu_fraction"] or 0.0) for m in modes for r in runs[m]),
            "peak_rss_mb": common.peak_rss_mb(),
            "contention_threshold": args.contention_threshold,
            "command": command,
            "machine": info,
        })
        common.emit_json(record)
        if args.markdown:
            def get(key):
                return record.get(key)

            row = {
                "date": info["date"][:16].replace("T", " "),
                "model": model_name,
                "sampler": args.sampler,
                "steps": num_steps,
                "batch": B,
                "precision": args.precision,
                "in-process s": get("inprocess_s"),
                "served s": get("served_s"),
                "served images/s": get("served_images_per_s"),
                "eager s": get("eager_s"),
                "served / in-process": get("served_over_inprocess"),
                "eager / in-process": get("eager_over_inprocess"),
                "export s": get("export_s"),
                "peak RSS MiB": record["peak_rss_mb"],
                "other CPU (max)": record["max_other_cpu_fraction"],
                "runs used": ", ".join(f"{m} {get(m + '_runs_used')}/{get(m + '_num_runs')}" for m in modes),
                "contended": record["contended"],
                "environment": common.short_environment(info),
            }
            common.append_markdown_row("Sampling", row, command, path=args.markdown, info=info)
        return record
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)


def main(argv=None):
    run(parse_args(argv))


if __name__ == "__main__":
    main()
