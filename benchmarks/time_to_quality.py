"""Time to quality: FID against minutes of training, MNIST's default config vs the tutorial's recipe.

    python benchmarks/time_to_quality.py --recipe=tutorial --minutes=20 --classifier=CLS --output=/tmp/tutorial.jsonl
    python benchmarks/time_to_quality.py --compare=/tmp/tutorial.jsonl,/tmp/default.jsonl

`default` trains `--config` by `tfdiffusion.training.train` (as `tools/train.py` does, checkpointing only
at the end), `tutorial` with the tutorial's recipe, until --minutes or config.train.steps; snapshots of
the sampling weights, off the clock, are scored afterwards (see README.md, "Time to quality"): the curve
at --num_samples, and the last snapshot again at --final_num_samples once per --final_seeds (issue 16's
N = 2,000, seeds 0 and 1), whose mean is the recipe's result in --compare.
"""

import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

import common  # noqa: E402
from tfdiffusion import checkpoints, evaluation, machine, plots, results, training  # noqa: E402

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
_CLASSIFIER = common.define_classifier_flag()
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 400, "Samples per FID.", lower_bound=1)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 200, "Samples per sampler call.", lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the first sample batch.")
_FINAL_NUM_SAMPLES = flags.DEFINE_integer("final_num_samples", 2000, "Samples per FID of the last snapshot, once per "
                                          "--final_seeds (0: the curve's last point is the result).", lower_bound=0)
_FINAL_SEEDS = flags.DEFINE_list("final_seeds", ["0", "1"], "Seeds of the last snapshot's FIDs.")
flags.register_validator("final_seeds", lambda seeds: bool(seeds) and all(s.lstrip("-").isdigit() for s in seeds),
                         "--final_seeds must be integers")
_OUTPUT = flags.DEFINE_string("output", None, "JSON-lines file of this recipe's curve.")
_COMPARE = flags.DEFINE_list("compare", [], "JSON-lines files of finished runs: write the table and the figure.")
_FIGURE = flags.DEFINE_string("figure", os.path.join(common.REPO_ROOT, "docs", "figures", "time_to_quality.png"),
                              "FID-vs-minutes figure of --compare.")
common.define_markdown_flag()
flags.adopt_module_key_flags(common)  # --help lists the shared flags too


def run_recipe():
    config = _CONFIG.value.copy_and_resolve_references()
    for section, values in TUTORIAL.items() if _RECIPE.value == "tutorial" else ():
        config[section].update(values)
    # One checkpoint, after the budget: the curve times training alone, as the snapshots do.
    config.train.update({"checkpoint_every": config.train.steps, "verbose": False})
    extractor, reference = evaluation.image_reference(_CLASSIFIER.value, "mnist", idx_dir=config.data.idx_dir or None)
    snapshots = []  # (training seconds, step, sampling weights), copied off the clock

    def snapshot(seconds, model, logs):
        with model.ema_weights():
            snapshots.append((seconds, int(model.optimizer.iterations.numpy()), model.get_weights()))
        common.emit_json({"event": "snapshot", "minutes": seconds / 60, "step": snapshots[-1][1],
                          "loss": float(logs.get("loss", float("nan")))})

    clock = machine.training_clock(_MINUTES.value * 60, _SNAPSHOT_MINUTES.value * 60, snapshot)
    with tempfile.TemporaryDirectory(prefix="time_to_quality_") as workdir, common.Timer() as timer:
        summary = training.train(config, workdir, callbacks=[clock])
    model = clock.model
    header = {"event": "training", "recipe": _RECIPE.value, "config": config.to_dict(), **timer.record(),
              "precision": summary["mixed_precision"], "precision_reason": summary["mixed_precision_reason"],
              "steps": snapshots[-1][1] if snapshots else 0, "machine": common.machine_info(),
              "command": common.command_line()}
    records = [header]
    common.emit_json(header)

    def score(num_samples, seed):
        # The recorded curves' protocol (docs/RESULTS.md) predates the "auto" spacing: keep their uniform grid.
        return evaluation.sample_quality(model, extractor, reference, sampler="dpmpp_2m", num_steps=20,
                                         spacing="uniform", num_samples=num_samples, batch_size=_BATCH_SIZE.value,
                                         seed=seed)

    for seconds, step, weights in snapshots:
        model.set_weights(weights)
        records.append({"event": "point", "recipe": _RECIPE.value, "num_samples": _NUM_SAMPLES.value,
                        "minutes": seconds / 60, "step": step, **score(_NUM_SAMPLES.value, _SEED.value)})
        common.emit_json(records[-1])
    if snapshots and _FINAL_NUM_SAMPLES.value:  # the last snapshot's weights are still set
        seeds = [int(seed) for seed in _FINAL_SEEDS.value]
        fids = [score(_FINAL_NUM_SAMPLES.value, seed)["fid"] for seed in seeds]
        records.append({"event": "final", "recipe": _RECIPE.value, "num_samples": _FINAL_NUM_SAMPLES.value,
                        "seeds": seeds, "fids": fids, "fid": float(np.mean(fids)),
                        "minutes": snapshots[-1][0] / 60, "step": snapshots[-1][1]})
        common.emit_json(records[-1])
    if _OUTPUT.value:  # written aside and renamed, so a failed run never replaces an earlier good curve
        checkpoints.atomic_write_text(_OUTPUT.value, "".join(common.json_line(r) + "\n" for r in records))


def compare():
    curves, final = {}, {}
    for path in _COMPARE.value:
        header = results.read_records(path, "training")[0]
        curves[header["recipe"]] = (header, results.read_records(path, "point"))
        final[header["recipe"]] = (results.read_records(path, "final") or curves[header["recipe"]][1])[-1]
    if _FIGURE.value:
        plots.save_loss_curve({recipe: ([p["minutes"] for p in points], [p["fid"] for p in points])
                               for recipe, (_, points) in curves.items()},
                              _FIGURE.value, xlabel="training minutes", ylabel=f"FID (N={_NUM_SAMPLES.value})",
                              title="MNIST: FID against training time")
    summary = {"event": "comparison", **{f"{r}_final": p for r, p in final.items()}}
    if set(final) == set(RECIPES):
        summary["fid_ratio_default_over_tutorial"] = final["default"]["fid"] / final["tutorial"]["fid"]
    common.emit_json(summary)
    for recipe, (header, points) in curves.items():
        row = {"date": header["machine"]["date"], "recipe": recipe, "minutes": points[-1]["minutes"],
               "steps": header["steps"], "other CPU": header.get("other_cpu_fraction"),
               "FID by minute": ", ".join(f"{p['minutes']:.1f}: {p['fid']:.1f}" for p in points),
               "final FID": final[recipe]["fid"],
               "final N, seeds": f"{final[recipe]['num_samples']}, {final[recipe].get('seeds', [_SEED.value])}",
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
