"""Samplers on a trained image model: FID against network evaluations, inpainting and image-to-image (issue 14).

    python benchmarks/sampler_quality.py --mode=fid --workdir=/work/runs/mnist --classifier=CLS --nfe=5,10,20,50,100

Samples by `tfdiffusion.evaluation`'s protocol, scored by `evaluation.image_report`; the modes, the
figures and the inpainting levels are described in README.md ("Sampler quality").
"""

import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import common  # noqa: E402
from tfdiffusion import data, evaluation, plots, results, samplers  # noqa: E402

MODES = ("fid", "inpaint", "img2img", "checkpoints")
_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir written by tools/train.py (its model.keras is used).")
_CLASSIFIER = common.define_classifier_flag()
_DATASET = flags.DEFINE_string("dataset", "mnist", "The array dataset of the reference and the edited images.")
_IDX_DIR = flags.DEFINE_string("idx_dir", None, "IDX directory of the dataset (default: the local copy, else TFDS).")
_MODES = flags.DEFINE_list("mode", list(MODES[:3]), f"What to run, a subset of {MODES}.")
_SAMPLERS = flags.DEFINE_list("samplers", [s for s in samplers.SAMPLERS if s != "ddpm"],
                               "Solvers of the FID sweep; `solver:spacing` runs that solver at that spacing only.")
_SPACINGS = flags.DEFINE_list("spacings", list(samplers.SPACINGS), "Spacings of the FID sweep.")
_NFE = flags.DEFINE_list("nfe", ["5", "10", "20", "50", "100"], "Network evaluations of the FID sweep (Heun: the "
                         "odd count 2n − 1 at or below each).")
_REFERENCE = flags.DEFINE_string("reference", "ddpm:400", "sampler:steps of the reference row ('' for none).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 2000, "Samples per FID.", lower_bound=2)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 250, "Samples per sampler call.", lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the first batch (every row uses the same seeds).")
_EDIT_SAMPLER = flags.DEFINE_string("edit_sampler", "ddpm:100:uniform", "sampler:steps:spacing of the edit modes.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 1000, "Test images to inpaint.", lower_bound=1)
_JUMPS = flags.DEFINE_list("jumps", [], "RePaint's jump_length,resamples for the inpainting (none: no resampling).")
flags.register_validator("jumps", lambda v: not v or (len(v) == 2 and all(s.isdigit() and int(s) >= 1 for s in v)),
                         "--jumps must be two integers >= 1, jump_length,resamples")
_STRENGTHS = flags.DEFINE_list("strengths", ["0", "0.2", "0.4", "0.5", "0.6", "0.8", "1"], "img2img strengths.")
_CHECKPOINTS = flags.DEFINE_list("checkpoints", [], "Checkpoint steps of --mode=checkpoints (raw weights, "
                                 "DPM-Solver++(2M) 20 uniform steps).")
_EARLIER_ROWS = flags.DEFINE_list("earlier_rows", [], "JSON-lines outputs of earlier --mode=fid runs of the same "
                                   "model, --num_samples and --seed: their FID rows join this run's (figure, best "
                                   "spacings), and a reference row among them is not drawn again.")
_REPORT = flags.DEFINE_string("report", None, "Markdown file the rows are appended to (none: JSON lines only).")
_FIGURE_DIR = flags.DEFINE_string("figure_dir", None, "Directory of the figures (none: no figures).")


@flags.validator("earlier_rows")
def _earlier_rows_exist(paths):
    missing = [path for path in paths if not os.path.isfile(path)]
    if missing:
        raise flags.ValidationError(f"--earlier_rows must be existing files. Received: earlier_rows={missing[0]}")
    return True


flags.mark_flags_as_required(["workdir", "classifier"])
flags.register_validator("mode", lambda modes: modes and set(modes) <= set(MODES), f"--mode must be a subset of {MODES}")


def fid_row(model, extractor, reference, **request):
    """One FID cell: `request` (sampler, num_steps, spacing) at --num_samples, --batch_size, --seed."""
    quality = evaluation.sample_quality(model, extractor, reference, num_samples=_NUM_SAMPLES.value,
                                        batch_size=_BATCH_SIZE.value, seed=_SEED.value, **request)
    row = {**request, "nfe": samplers.network_evaluations(request["sampler"], request["num_steps"]),
           "num_samples": _NUM_SAMPLES.value, **quality}
    common.emit_json(row)
    return row


def earlier_rows():
    """The FID rows of --earlier_rows (lines of other kinds are skipped)."""
    rows = [row for path in _EARLIER_ROWS.value for row in results.read_records(path) if "fid" in row]
    mismatched = sorted({row["num_samples"] for row in rows} - {_NUM_SAMPLES.value})
    if mismatched:
        raise app.UsageError(f"--earlier_rows hold FIDs at N = {mismatched}, not --num_samples. "
                             f"Received: num_samples={_NUM_SAMPLES.value}")
    return rows


def _is_reference(row):
    return f"{row['sampler']}:{row['num_steps']}" == _REFERENCE.value


def fid_sweep(model, extractor, reference, rows=()):
    """`rows` (earlier runs') extended by this run's: the reference row unless `rows` has it, then the sweep."""
    rows = list(rows)
    if _REFERENCE.value and not any(_is_reference(row) for row in rows):
        sampler, steps = _REFERENCE.value.split(":")
        rows.append(fid_row(model, extractor, reference, sampler=sampler, num_steps=int(steps), spacing="uniform"))
    for nfe in (int(v) for v in _NFE.value):
        for entry in _SAMPLERS.value:
            sampler, _, only_spacing = entry.partition(":")
            num_steps = (nfe + 1) // 2 if sampler == "heun" else nfe
            for spacing in [only_spacing] if only_spacing else _SPACINGS.value:
                if 1 <= num_steps <= model.diffusion.num_timesteps:
                    rows.append(fid_row(model, extractor, reference, sampler=sampler, num_steps=num_steps,
                                        spacing=spacing))
    return rows


def best_spacings(rows):
    """{solver: the spacing with the lowest mean log-FID over its NFEs}."""
    scores = {}
    for row in rows:
        scores.setdefault(row["sampler"], {}).setdefault(row["spacing"], []).append(math.log(row["fid"]))
    return {s: min(by, key=lambda spacing: np.mean(by[spacing])) for s, by in scores.items()}


def fid_figure(rows, path):
    """FID against NFE (log-log) of each solver at its best spacing, the reference row as a flat line."""
    reference = [r for r in rows if _is_reference(r)]
    sweep = [r for r in rows if r not in reference]
    curves = {}
    for sampler, spacing in best_spacings(sweep).items():
        points = sorted((r["nfe"], r["fid"]) for r in sweep if r["sampler"] == sampler and r["spacing"] == spacing)
        curves[f"{sampler} ({spacing})"] = tuple(zip(*points))
    span = [min(r["nfe"] for r in sweep), max(r["nfe"] for r in sweep)] if sweep else [1, 1]
    curves.update({f"{r['sampler']} {r['num_steps']} (uniform)": (span, [r["fid"]] * 2) for r in reference})
    fig = plots.loss_curve_figure(curves, xlabel="network evaluations", ylabel=f"FID (N = {_NUM_SAMPLES.value})",
                                  title="FID against NFE, each solver at its best spacing")
    fig.axes[0].set_xscale("log")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, bbox_inches="tight")


def _edit_request():
    sampler, steps, spacing = _EDIT_SAMPLER.value.split(":")
    return {"sampler": sampler, "num_steps": int(steps), "spacing": spacing}


def _test_images(count):
    images, labels = data.load_arrays(_DATASET.value, "test", idx_dir=_IDX_DIR.value, uint8=True)
    return images[:count].astype(np.float32) / 255.0, labels[:count]


def inpainting(model, extractor):
    images, labels = _test_images(_NUM_IMAGES.value)
    mask = np.zeros(images.shape[:-1] + (1,), np.float32)
    mask[:, : images.shape[1] // 2] = 1.0  # the top half is kept, the bottom half generated
    jumps = tuple(int(v) for v in _JUMPS.value) or None
    report, completions = evaluation.inpainting_report(model, extractor, images, labels, mask, _edit_request(),
                                                       batch_size=_BATCH_SIZE.value, seed=_SEED.value, jumps=jumps)
    row = {"mode": "inpaint", "edit_sampler": _EDIT_SAMPLER.value, "jumps": jumps, "kept": "top half", **report}
    common.emit_json(row)
    if _FIGURE_DIR.value:
        shown, grey = min(10, len(images)), images * mask + 0.5 * (1 - mask)
        plots.save_image_grid(np.concatenate([images[:shown], grey[:shown], completions[:shown]]),
                              os.path.join(_FIGURE_DIR.value, "inpainting.png"), columns=shown,
                              title=f"originals; kept half (grey: generated); completions ({_EDIT_SAMPLER.value})")
    return row


def img2img(model, extractor):
    images, labels = _test_images(8)
    strengths = [float(s) for s in _STRENGTHS.value]
    reports, outputs = evaluation.img2img_report(model, extractor, images, labels, strengths, _edit_request(),
                                                 batch_size=_BATCH_SIZE.value, seed=_SEED.value)
    rows = [{"mode": "img2img", "edit_sampler": _EDIT_SAMPLER.value, **report} for report in reports]
    for row in rows:
        common.emit_json(row)
    if _FIGURE_DIR.value:
        grid = np.stack(outputs, axis=1).reshape((-1,) + images.shape[1:])  # row i: image i at every strength
        plots.save_image_grid(grid, os.path.join(_FIGURE_DIR.value, "img2img.png"), columns=len(strengths),
                              title="image-to-image, strength " + ", ".join(f"{s:g}" for s in strengths))
    return rows


def report(rows, section, info):
    """Appends `rows` to the table `## section: `--workdir`` of --report, each dated and with this command."""
    for row in rows if _REPORT.value else ():
        results.append_row(_REPORT.value, f"{section}: `{_WORKDIR.value}`", {"date": common.row_date(info), **row},
                           common.command_line(), info)


def main(argv):
    del argv
    earlier = earlier_rows() if "fid" in _MODES.value else []
    model = evaluation.load_model(_WORKDIR.value)
    extractor, reference = evaluation.image_reference(_CLASSIFIER.value, _DATASET.value, idx_dir=_IDX_DIR.value)
    info = common.machine_info()
    if "fid" in _MODES.value:
        rows = fid_sweep(model, extractor, reference, earlier)
        report(rows[len(earlier):], "FID against NFE", info)
        common.emit_json({"best_spacings": best_spacings([r for r in rows if not _is_reference(r)])})
        if _FIGURE_DIR.value:
            fid_figure(rows, os.path.join(_FIGURE_DIR.value, "fid_vs_nfe.png"))
    if "inpaint" in _MODES.value:
        report([inpainting(model, extractor)], "Inpainting", info)
    if "img2img" in _MODES.value:
        report(img2img(model, extractor), "Image-to-image", info)
    if "checkpoints" in _MODES.value and _CHECKPOINTS.value:
        rows = [{"checkpoint": int(step), **fid_row(evaluation.load_model(_WORKDIR.value, checkpoint_step=int(step),
                                                                          use_ema=False), extractor, reference,
                                                    sampler="dpmpp_2m", num_steps=20, spacing="uniform")}
                for step in _CHECKPOINTS.value]
        report(rows, "FID over checkpoints", info)
    return 0


if __name__ == "__main__":
    app.run(main)
