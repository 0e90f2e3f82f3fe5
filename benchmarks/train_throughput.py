"""Training throughput: steady-state images/s of one network under `model.fit`.

    python benchmarks/train_throughput.py --network=seed_unet --batch_size=64 \
        --precision=float32 --jit_compile=0 --warmup_steps=5 --timed_steps=20 --repeats=3

Measures, in this order and in one process:
  1. the first `fit` call of `steps_per_execution` steps (tracing, graph optimisation and,
     with --jit_compile=1, XLA compilation): `first_call_s`, and `compile_s` = that minus
     the steady-state time of those steps;
  2. one more `fit`: `--warmup_steps` untimed steps, then `--repeats` timed blocks of
     `--timed_steps` consecutive steps (more, up to `--extra_repeats`, while fewer than
     `--repeats` were uncontended): images/s per block, the median over the uncontended
     blocks, and the CPU other processes used meanwhile. The blocks run inside one `fit`
     so that the per-`fit` setup (about a second here) stays out of the steady state.
     Each block also records the median, min and max wall time of one execution
     (`execution_s_*`): a uniformly slow block means the process got less CPU, one long
     execution means it waited.
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
import statistics
import sys
import time

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


def _timed_repeats_callback():
    import keras  # pylint: disable=import-outside-toplevel

    class TimedRepeats(keras.callbacks.Callback):
        """Times consecutive blocks of `block_executions` executions inside one `fit`.

        After `warmup_executions` untimed executions, each block is one repeat: a
        `common.Timer` record plus the median/min/max wall time of one execution (a uniformly
        slow block means the process got less CPU; one long execution means it waited).
        Training stops once `common.enough_runs` holds. One `fit` for all repeats keeps the
        per-`fit` setup (iterator, callbacks; about a second here) out of the steady state.
        """

        def __init__(self, warmup_executions, block_executions, repeats, extra_repeats, threshold, max_wait_idle_s):
            super().__init__()
            self.warmup_executions = warmup_executions
            self.block_executions = block_executions
            self.repeats = repeats
            self.extra_repeats = extra_repeats
            self.threshold = threshold
            self.max_wait_idle_s = max_wait_idle_s
            self.runs = []

        def on_train_begin(self, logs=None):
            self.runs, self._executions, self._timer, self._times = [], 0, None, []

        def on_train_batch_begin(self, batch, logs=None):
            if self._timer is None and self._executions >= self.warmup_executions:
                common.wait_for_quiet(self.max_wait_idle_s, self.threshold)
                self._timer, self._times = common.Timer(self.threshold).__enter__(), []
            self._start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self._executions += 1
            if self._timer is None:
                return
            self._times.append(time.perf_counter() - self._start)
            if len(self._times) < self.block_executions:
                return
            self._timer.__exit__(None, None, None)
            record = self._timer.record()
            record.update(loss=float((logs or {}).get("loss", float("nan"))),
                          execution_s_median=statistics.median(self._times),
                          execution_s_min=min(self._times), execution_s_max=max(self._times))
            self.runs.append(record)
            self._timer = None
            if common.enough_runs(self.runs, self.repeats, self.extra_repeats):
                self.model.stop_training = True

    return TimedRepeats


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

    def fit(steps, callbacks=()):
        history = model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False,
                            callbacks=list(callbacks))
        return float(history.history["loss"][-1])

    with common.Timer(args.contention_threshold) as first:
        first_loss = fit(k)

    base = {"benchmark": "train_throughput", "network": args.network, "batch_size": args.batch_size,
            "precision": args.precision, "jit_compile": bool(args.jit_compile), "steps_per_execution": k,
            "params": params}

    timed_repeats = _timed_repeats_callback()(
        warmup_executions=warmup_steps // k, block_executions=timed_steps // k, repeats=args.repeats,
        extra_repeats=args.extra_repeats, threshold=args.contention_threshold, max_wait_idle_s=args.max_wait_idle_s)
    most_steps = warmup_steps + (args.repeats + args.extra_repeats) * timed_steps
    fit(most_steps, [timed_repeats])
    record = common.throughput_summary(
        base, timed_repeats.runs, first, first_loss, batch_size=args.batch_size, timed_steps=timed_steps, first_call_steps=k,
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
