"""Training throughput: steady-state images/s of one network under `model.fit`.

    python benchmarks/train_throughput.py --network=seed_unet --batch_size=64 \
        --precision=float32 --jit_compile=0 --warmup_steps=5 --timed_steps=20 --repeats=3

Measures, in this order and in one process:
  1. the first `fit` call of `steps_per_execution` steps (tracing, graph optimisation and,
     with --jit_compile=1, XLA compilation): `first_call_s`, and `compile_s` = that minus
     the steady-state time of those steps;
  2. `--warmup_steps` untimed steps;
  3. `--repeats` timed `fit` calls of `--timed_steps` steps each (more, up to
     `--extra_repeats`, while fewer than `--repeats` were uncontended): images/s per call,
     the median over the uncontended calls, and the CPU other processes used meanwhile.
Peak RSS is the process's high-water mark at the end (so run one network per process).

Data: random images in [−1, 1], `--cache_batches` distinct batches held in memory by a
`tf.data` pipeline (batch → cache, filled before timing → repeat → prefetch), so the
input never starves the step.

Prints JSON lines (one per timed repeat with "event": "repeat", then the summary with
"event": "summary") and appends the summary to the "Training throughput" table of
--markdown (default docs/BENCHMARKS.md; --markdown='' to skip).

Networks: seed_unet (tfdiffusion's `DiffusionModel` + `SeedUNet`, the tutorial's U-Net),
plain_keras_port (the peer in `peers.py`, no tfdiffusion code), and, when tfdiffusion has
them, unet (`layers.UNet()`) and dit (`layers.DiT()`), all on 28×28×1 with T = 400.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  pylint: disable=wrong-import-position

NETWORKS = ("seed_unet", "plain_keras_port", "unet", "dit")
IMAGE_SHAPE = (28, 28, 1)
CONFIG_IMAGE_SHAPES = {"mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3)}
NUM_TIMESTEPS = 400


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--network", choices=NETWORKS, default="seed_unet")
    parser.add_argument("--config", default=None,
                        help="a config file (e.g. configs/fashion_mnist.py): time its network, diffusion and "
                             "objective on its image shape instead of --network")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--precision", choices=("float32", "mixed_bfloat16"), default="float32")
    parser.add_argument("--jit_compile", type=int, choices=(0, 1), default=0)
    parser.add_argument("--steps_per_execution", type=int, default=1)
    parser.add_argument("--warmup_steps", type=int, default=5)
    parser.add_argument("--timed_steps", type=int, default=20, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--extra_repeats", type=int, default=2,
                        help="further repeats allowed while fewer than --repeats were uncontended")
    parser.add_argument("--contention_threshold", type=float, default=common.DEFAULT_CONTENTION_THRESHOLD)
    parser.add_argument("--max_wait_idle_s", type=float, default=0.0,
                        help="before each repeat, wait up to this long for the machine to be quiet")
    parser.add_argument("--cache_batches", type=int, default=8, help="distinct batches held in memory")
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--markdown", default=common.DEFAULT_MARKDOWN,
                        help="results file to append a row to ('' for none); use /tmp for smoke tests")
    args = parser.parse_args(argv)
    args.image_shape = IMAGE_SHAPE
    if args.config:
        args.training_config = common.load_config(args.config)
        args.network = f"{args.training_config.network} ({os.path.basename(args.config)})"
        args.image_shape = CONFIG_IMAGE_SHAPES.get(args.training_config.data.name)
        if args.image_shape is None:
            parser.error(f"--config must train on an image dataset of {sorted(CONFIG_IMAGE_SHAPES)}. "
                         f"Received: --config={args.config} (data {args.training_config.data.name!r})")
    for name in ("batch_size", "steps_per_execution", "timed_steps", "repeats", "cache_batches"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1. Received: {getattr(args, name)}")
    if args.warmup_steps < 0 or args.extra_repeats < 0:
        parser.error("--warmup_steps and --extra_repeats must be >= 0")
    return args


def _round_up(steps, multiple):
    return -(-steps // multiple) * multiple


def build_model(args):
    """The compiled model to train, and its network's parameter count."""
    import keras  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    if args.network == "plain_keras_port":
        import peers  # pylint: disable=import-outside-toplevel

        model = peers.build_plain_keras_port(jit_compile=bool(args.jit_compile),
                                             steps_per_execution=args.steps_per_execution,
                                             learning_rate=args.learning_rate)
        return model, model.network.count_params()

    import tfdiffusion as tfd  # pylint: disable=import-outside-toplevel

    if args.config:
        from tfdiffusion import training  # pylint: disable=import-outside-toplevel

        model = training.build_model(args.training_config)
        model(tf.zeros((2,) + args.image_shape), tf.zeros((2,), tf.int32))
        model.compile(optimizer=keras.optimizers.Adam(args.learning_rate), jit_compile=bool(args.jit_compile),
                      steps_per_execution=args.steps_per_execution)
        return model, model.network.count_params()
    if args.network == "seed_unet":
        network = tfd.layers.SeedUNet(output_channels=IMAGE_SHAPE[-1])
    else:
        name = {"unet": "UNet", "dit": "DiT"}[args.network]
        if not hasattr(tfd.layers, name):
            raise SystemExit(f"tfdiffusion.layers has no {name} in this checkout. Received: --network={args.network}")
        network = getattr(tfd.layers, name)(output_channels=IMAGE_SHAPE[-1])
    diffusion = tfd.GaussianDiffusion(tfd.schedules.make_betas("linear", NUM_TIMESTEPS))
    model = tfd.DiffusionModel(network=network, diffusion=diffusion)
    model(tf.zeros((2,) + IMAGE_SHAPE))  # builds the network's weights
    if args.network == "seed_unet":
        count = network.count_params()
        if count != 2_020_353:
            raise AssertionError(f"SeedUNet has {count} parameters, expected 2,020,353")
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate), jit_compile=bool(args.jit_compile),
                  steps_per_execution=args.steps_per_execution)
    return model, network.count_params()


def make_dataset(batch_size, cache_batches, image_shape=IMAGE_SHAPE, seed=0):
    """Endless batches of random images in [−1, 1] from memory; the cache is filled up front."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    images = np.random.default_rng(seed).uniform(-1.0, 1.0, (cache_batches * batch_size,) + tuple(image_shape))
    base = tf.data.Dataset.from_tensor_slices(images.astype(np.float32))
    base = base.batch(batch_size, drop_remainder=True).cache()
    for _ in base:  # one full pass fills the in-memory cache, so timed epochs never read the slices
        pass
    return base.repeat().prefetch(tf.data.AUTOTUNE)


def run(args):
    import keras  # pylint: disable=import-outside-toplevel

    if args.precision != "float32":
        keras.mixed_precision.set_global_policy(args.precision)
    info = common.machine_info()
    command = common.command_line()
    k = args.steps_per_execution
    timed_steps = _round_up(args.timed_steps, k)
    warmup_steps = _round_up(args.warmup_steps, k) if args.warmup_steps else 0

    model, params = build_model(args)
    dataset = make_dataset(args.batch_size, args.cache_batches, args.image_shape)
    rss_before_training = common.peak_rss_mb()

    def fit(steps):
        history = model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
        return float(history.history["loss"][-1])

    with common.Timer(args.contention_threshold) as first:
        first_loss = fit(k)
    if warmup_steps:
        fit(warmup_steps)

    base = {"benchmark": "train_throughput", "network": args.network, "batch_size": args.batch_size,
            "precision": args.precision, "jit_compile": bool(args.jit_compile), "steps_per_execution": k,
            "params": params}

    def timed():
        loss = fit(timed_steps)
        return {"loss": loss}

    summary = common.measure(timed, args.repeats, threshold=args.contention_threshold,
                             extra_repeats=args.extra_repeats, max_wait_idle_s=args.max_wait_idle_s)
    record = common.throughput_summary(
        base, summary, first, first_loss, batch_size=args.batch_size, timed_steps=timed_steps, first_call_steps=k,
        warmup_steps=warmup_steps, repeats=args.repeats, contention_threshold=args.contention_threshold,
        rss_after_build_mb=rss_before_training, command=command, info=info)
    if args.markdown:
        row = common.throughput_row(record, compiler=bool(args.jit_compile),
                                    environment=common.short_environment(info))
        common.append_markdown_row("Training throughput", row, command, path=args.markdown, info=info)
    return record


def main(argv=None):
    run(parse_args(argv))


if __name__ == "__main__":
    main()
