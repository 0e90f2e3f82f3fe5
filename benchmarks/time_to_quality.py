"""Time to quality: FID against minutes of training, MNIST's default config vs the tutorial's recipe.

    python benchmarks/time_to_quality.py --recipe=tutorial --minutes=20 --classifier=CLS --output=/tmp/ttq/tutorial.jsonl
    python benchmarks/time_to_quality.py --recipe=default  --minutes=20 --classifier=CLS --output=/tmp/ttq/default.jsonl
    python benchmarks/time_to_quality.py --compare=/tmp/ttq/tutorial.jsonl,/tmp/ttq/default.jsonl

`default` trains `--config` as `tools/train.py` would (its "auto" precision included); `tutorial` the
same config with the tutorial's recipe. Snapshots of the sampling weights every `--snapshot_minutes`,
off the clock, are scored afterwards by `tfdiffusion.evaluation`'s protocol (see README.md).
"""

import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

import common  # noqa: E402
from tfdiffusion import builders, checkpoints, data, evaluation, plots, precision  # noqa: E402

RECIPES = ("default", "tutorial")
TUTORIAL = {"optimizer": {"learning_rate": 1e-4, "schedule": "constant", "warmup_steps": 0, "clipnorm": None,
                          "use_ema": False},
            "diffusion": {"name": "linear", "num_timesteps": 400},
            "objective": {"prediction_type": "epsilon", "loss_weighting": "none"},
            "data": {"batch_size": 64}, "train": {"mixed_precision": "float32", "steps_per_execution": 1}}
_RECIPE = flags.DEFINE_enum("recipe", None, RECIPES, "Which recipe to train.")
_CONFIG = config_flags.DEFINE_config_file("config", os.path.join(common.REPO_ROOT, "configs", "mnist.py"),
                                          "The default configuration (the `default` recipe).", lock_config=False)
_MINUTES = flags.DEFINE_float("minutes", 20.0, "Training budget in minutes of wall-clock time.")
_SNAPSHOT_MINUTES = flags.DEFINE_float("snapshot_minutes", 2.5, "Minutes between weight snapshots.")
_CLASSIFIER = flags.DEFINE_string("classifier", None, "classifier.keras from tools/train_classifier.py.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 400, "Samples per FID.", lower_bound=1)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 200, "Samples per sampler call.", lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the first sample batch.")
_OUTPUT = flags.DEFINE_string("output", None, "JSON-lines file of this recipe's curve.")
_COMPARE = flags.DEFINE_list("compare", [], "JSON-lines files of finished runs: write the table and the figure.")
_FIGURE = flags.DEFINE_string("figure", os.path.join(common.REPO_ROOT, "docs", "figures", "time_to_quality.png"),
                              "FID-vs-minutes figure of --compare.")
common.define_markdown_flag()
flags.adopt_module_key_flags(common)  # --help lists the shared flags too


class WallClockSnapshots(keras.callbacks.Callback):
    """Copies the sampling weights every `every_s` seconds of training (off the clock); stops at `budget_s`."""

    def __init__(self, budget_s, every_s):
        super().__init__()
        self.budget_s, self.every_s = budget_s, every_s
        self.snapshots = []  # (training seconds, step, weights)

    def on_train_begin(self, logs=None):
        self.start, self.paused, self.next_mark = time.perf_counter(), 0.0, self.every_s

    def on_train_batch_end(self, batch, logs=None):
        elapsed = time.perf_counter() - self.start - self.paused
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
        self.model.stop_training = elapsed >= self.budget_s


def train_for(config):
    """(model, snapshots) of `config` trained for --minutes, as `training.train` would set it up."""
    x, _ = builders.load_training_data(config.data, config.seed)
    keras.utils.set_random_seed(config.seed)
    keras.mixed_precision.set_global_policy(precision.resolve_precision(config.train.mixed_precision)[0])
    # The schedule's length only matters for a cosine schedule; config.train.steps bounds the steps.
    model = builders.build_compiled_model(config, x.shape[1:],
                                          jit_compile=builders.resolve_jit_compile(config.train.jit_compile),
                                          steps_per_execution=config.train.steps_per_execution)
    snapshots = WallClockSnapshots(_MINUTES.value * 60, _SNAPSHOT_MINUTES.value * 60)
    model.fit(data.step_indexed_batches(x, None, config.data.batch_size, seed=config.seed), steps_per_epoch=10**7,
              epochs=1, callbacks=[snapshots], verbose=0)
    return model, snapshots.snapshots


def run_recipe():
    config = _CONFIG.value.copy_and_resolve_references()
    if _RECIPE.value == "tutorial":
        for section, values in TUTORIAL.items():
            config[section].update(values)
    extractor, reference = evaluation.image_reference(_CLASSIFIER.value, "mnist")
    with common.Timer() as timer:
        model, snapshots = train_for(config)
    policy, reason = precision.resolve_precision(config.train.mixed_precision)
    header = {"event": "training", "recipe": _RECIPE.value, "config": config.to_dict(), **timer.record(),
              "precision": policy, "precision_reason": reason, "steps": snapshots[-1][1] if snapshots else 0,
              "machine": common.machine_info(), "command": common.command_line()}
    common.emit_json(header)
    points = []
    for seconds, step, weights in snapshots:
        model.set_weights(weights)
        _, quality = common.sample_quality(model, extractor, reference, sampler="dpmpp_2m", num_steps=20,
                                           num_samples=_NUM_SAMPLES.value, batch_size=_BATCH_SIZE.value,
                                           seed=_SEED.value)
        points.append({"event": "point", "recipe": _RECIPE.value, "num_samples": _NUM_SAMPLES.value,
                       "minutes": seconds / 60, "step": step, **quality})
        common.emit_json(points[-1])
    if _OUTPUT.value:  # written aside and renamed, so a failed run never replaces an earlier good curve
        checkpoints.atomic_write_text(_OUTPUT.value, "".join(common.json_line(r) + "\n" for r in [header] + points))


def compare():
    curves = {}
    for path in _COMPARE.value:
        with open(path, encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
        header = next(r for r in records if r["event"] == "training")
        curves[header["recipe"]] = (header, [r for r in records if r["event"] == "point"])
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
        return compare()
    if _RECIPE.value is None or _CLASSIFIER.value is None:
        raise app.UsageError(f"--recipe and --classifier are required without --compare. "
                             f"Received: --recipe={_RECIPE.value!r}, --classifier={_CLASSIFIER.value!r}")
    return run_recipe()


if __name__ == "__main__":
    app.run(main)
