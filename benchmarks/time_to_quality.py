"""Time to quality: FID against minutes of training, tfdiffusion's MNIST default vs the tutorial's recipe.

    python benchmarks/time_to_quality.py --recipe=tutorial --minutes=20 --output=/tmp/ttq/tutorial.jsonl \
        --classifier=/work/runs/classifier/classifier.keras
    python benchmarks/time_to_quality.py --recipe=default --minutes=20 --output=/tmp/ttq/default.jsonl \
        --classifier=/work/runs/classifier/classifier.keras
    python benchmarks/time_to_quality.py --compare=/tmp/ttq/tutorial.jsonl,/tmp/ttq/default.jsonl \
        --figure=docs/figures/time_to_quality.png

Recipes (both the tutorial's SeedUNet, 2,020,353 params, on the MNIST training images):
  * `default`: `configs/mnist.py` exactly as `tools/train.py` runs it.
  * `tutorial`: the JAX tutorial's own recipe on the same code: float32, Adam 1e-4 constant, no EMA,
    batch 64, ε-MSE, linear β, T = 400 (the default config with those keys overridden).

Protocol: the clock runs while `model.fit` runs (tracing and the first step included); every
`--snapshot_minutes` of it the weights used for sampling (the EMA ones when the recipe has EMA)
are copied aside, off the clock, and training stops at `--minutes`. Then, still in the same
process, each snapshot is evaluated with `tfdiffusion.evaluation`'s protocol: `--num_samples`
samples with DPM-Solver++(2M), 20 steps (the same for every recipe), batch i with seed
`evaluation.batch_seed(--seed, i)` (runs before this change used seed + i: same distribution,
other draws), FID of the classifier's features against the 10,000 MNIST test images (statistics
cached beside the classifier), as `benchmarks/mnist_quality.py`.
Run one recipe per process, one after the other, on a quiet machine.
"""

import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

import common  # noqa: E402
from tfdiffusion import builders, checkpoints, data, evaluation, plots  # noqa: E402

RECIPES = ("default", "tutorial")
_RECIPE = flags.DEFINE_enum("recipe", None, RECIPES, "Which recipe to train.")
_CONFIG = config_flags.DEFINE_config_file("config", os.path.join(common.REPO_ROOT, "configs", "mnist.py"),
                                         "The default configuration (the `default` recipe).", lock_config=False)
_MINUTES = flags.DEFINE_float("minutes", 20.0, "Training budget in minutes of wall-clock time.")
_SNAPSHOT_MINUTES = flags.DEFINE_float("snapshot_minutes", 2.5, "Minutes between weight snapshots.")
_CLASSIFIER = flags.DEFINE_string("classifier", None, "classifier.keras from tools/train_classifier.py.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 400, "Samples per FID.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 200, "Samples per sampler call.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the first sample batch.")
_OUTPUT = flags.DEFINE_string("output", None, "JSON-lines file of this recipe's curve.")
_COMPARE = flags.DEFINE_list("compare", [], "JSON-lines files of finished runs: write the table and the figure.")
_FIGURE = flags.DEFINE_string("figure", os.path.join(common.REPO_ROOT, "docs", "figures", "time_to_quality.png"),
                              "FID-vs-minutes figure of --compare.")
common.define_markdown_flag()


def recipe_config(recipe, config):
    """The ConfigDict a recipe trains with (`config` is the default recipe's)."""
    config = config.copy_and_resolve_references()
    if recipe == "tutorial":
        config.optimizer.update({"learning_rate": 1e-4, "schedule": "constant", "warmup_steps": 0,
                                 "clipnorm": None, "use_ema": False})
        config.diffusion.update({"name": "linear", "num_timesteps": 400})
        config.objective.update({"prediction_type": "epsilon", "loss_weighting": "none"})
        config.data.batch_size = 64
        config.train.mixed_precision = "float32"
    return config


class WallClockSnapshots(keras.callbacks.Callback):
    """Copies the sampling weights every `every_s` seconds of training and stops at `budget_s`.

    Time spent copying is taken off the clock.
    """

    def __init__(self, budget_s, every_s):
        super().__init__()
        self.budget_s, self.every_s = budget_s, every_s
        self.snapshots = []  # (training seconds, step, weights)

    def on_train_begin(self, logs=None):
        self.start, self.paused = time.perf_counter(), 0.0
        self.next_mark = self.every_s

    def elapsed(self):
        return time.perf_counter() - self.start - self.paused

    def on_train_batch_end(self, batch, logs=None):
        elapsed = self.elapsed()
        if elapsed < self.next_mark and elapsed < self.budget_s:
            return
        pause = time.perf_counter()
        with self.model.ema_weights():
            weights = self.model.get_weights()
        step = int(self.model.optimizer.iterations.numpy())
        self.snapshots.append((min(elapsed, self.budget_s), step, weights))
        common.emit_json({"event": "snapshot", "minutes": elapsed / 60, "step": step, "loss": float(logs["loss"])})
        self.next_mark += self.every_s
        self.paused += time.perf_counter() - pause
        if elapsed >= self.budget_s:
            self.model.stop_training = True


def train_for(config, budget_s, every_s):
    x, _ = builders.load_training_data(config.data, config.seed)
    keras.utils.set_random_seed(config.seed)
    # The schedule's length only matters for a cosine schedule; an upper bound on the steps.
    model = builders.build_compiled_model(config, x.shape[1:],
                                          jit_compile=builders.resolve_jit_compile(config.train.jit_compile))
    snapshots = WallClockSnapshots(budget_s, every_s)
    dataset = data.step_indexed_batches(x, None, config.data.batch_size, seed=config.seed)
    model.fit(dataset, steps_per_epoch=10**7, epochs=1, callbacks=[snapshots], verbose=0)
    return model, snapshots.snapshots


def evaluate(model, snapshots, extractor, reference):
    for seconds, step, weights in snapshots:
        model.set_weights(weights)
        _, quality = common.sample_quality(model, extractor, reference, sampler="dpmpp_2m", num_steps=20,
                                           num_samples=_NUM_SAMPLES.value, batch_size=_BATCH_SIZE.value,
                                           seed=_SEED.value)
        yield {"minutes": seconds / 60, "step": step, **quality}


def run_recipe():
    config = recipe_config(_RECIPE.value, _CONFIG.value)
    extractor, reference = evaluation.image_reference(_CLASSIFIER.value, "mnist")
    with common.Timer() as timer:
        model, snapshots = train_for(config, _MINUTES.value * 60, _SNAPSHOT_MINUTES.value * 60)
    header = {"event": "training", "recipe": _RECIPE.value, "config": config.to_dict(), **timer.record(),
              "steps": snapshots[-1][1] if snapshots else 0, "machine": common.machine_info(),
              "command": common.command_line()}
    common.emit_json(header)
    points = []
    for point in evaluate(model, snapshots, extractor, reference):
        point.update({"event": "point", "recipe": _RECIPE.value, "num_samples": _NUM_SAMPLES.value})
        common.emit_json(point)
        points.append(point)
    if _OUTPUT.value:  # written aside and renamed, so a failed run never replaces an earlier good curve
        checkpoints.atomic_write_text(
            _OUTPUT.value, "".join(common.json_line(record) + "\n" for record in [header] + points))


def read_curve(path):
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    header = next(r for r in records if r["event"] == "training")
    return header, [r for r in records if r["event"] == "point"]


def compare():
    curves = {}
    for path in _COMPARE.value:
        header, points = read_curve(path)
        curves[header["recipe"]] = (header, points)
    if _FIGURE.value:
        plots.save_loss_curve({recipe: ([p["minutes"] for p in points], [p["fid"] for p in points])
                               for recipe, (_, points) in curves.items()},
                              _FIGURE.value, xlabel="training minutes", ylabel=f"FID (N={_NUM_SAMPLES.value})",
                              title="MNIST: FID against training time")
    final = {recipe: points[-1] for recipe, (_, points) in curves.items()}
    summary = {"event": "comparison", **{f"{r}_final": p for r, p in final.items()}}
    if set(final) == set(RECIPES):
        summary["fid_ratio_default_over_tutorial"] = final["default"]["fid"] / final["tutorial"]["fid"]
    common.emit_json(summary)
    for recipe, (header, points) in curves.items():
        row = {"date": header["machine"]["date"], "recipe": recipe, "minutes": points[-1]["minutes"],
               "steps": header["steps"], "other CPU": header.get("other_cpu_fraction"),
               "FID by minute": ", ".join(f"{p['minutes']:.1f}: {p['fid']:.1f}" for p in points),
               "final FID": points[-1]["fid"],
               "ratio to tutorial": final[recipe]["fid"] / final["tutorial"]["fid"] if "tutorial" in final else None}
        common.append_markdown_row("Time to quality (MNIST, FID against training minutes)", row, header["command"],
                                   header["machine"])


def main(argv):
    del argv
    if _COMPARE.value:
        compare()
        return 0
    if _RECIPE.value is None or _CLASSIFIER.value is None:
        raise app.UsageError(f"--recipe and --classifier are required without --compare. "
                             f"Received: --recipe={_RECIPE.value!r}, --classifier={_CLASSIFIER.value!r}")
    run_recipe()
    return 0


if __name__ == "__main__":
    app.run(main)
