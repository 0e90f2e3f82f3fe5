"""Samplers on a trained image model: FID against network evaluations, inpainting and image-to-image (issue 14).

    # FID of every solver × spacing × NFE, and DDPM 400 (the reference row), at one N and seed:
    python benchmarks/sampler_quality.py --mode=fid --workdir=/work/runs/mnist --classifier=CLS \
        --num_samples=2000 --nfe=5,10,20,50,100
    # Inpainting: the bottom half of test digits generated, read back by the classifier:
    python benchmarks/sampler_quality.py --mode=inpaint --workdir=/work/runs/mnist --classifier=CLS --num_images=1000
    # Image-to-image: a strength sweep on a few test digits:
    python benchmarks/sampler_quality.py --mode=img2img --workdir=/work/runs/mnist --classifier=CLS
    # FID over a run's checkpoints (raw weights), DPM-Solver++(2M) 20 steps:
    python benchmarks/sampler_quality.py --mode=checkpoints --workdir=/work/runs/mnist --classifier=CLS \
        --num_samples=400 --checkpoints=2000,2500,3000

Samples are drawn by `tfdiffusion.evaluation`'s protocol (batch i seeded `batch_seed(seed, i)`, labels
cycling over the classes for a conditional model) and scored with `evaluation.image_report` against the
dataset's test split. Every row is printed as a JSON line and, with --report, appended as markdown;
--figure_dir receives fid_vs_nfe.png (each solver at its best spacing, DDPM 400 as a line),
inpainting.png (originals, masked inputs, completions) and img2img.png (rows: images; columns: strengths).

Inpainting reports the rate at which the classifier reads a completion as the original's digit, beside
three levels: chance (the rate for plain samples drawn with the same seeds, and 1/K), the classifier on
the masked input with its unknown half left black (what the known half alone says), and on the originals.
"""

import json
import math
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import common  # noqa: E402
from tfdiffusion import data, evaluation, plots, samplers  # noqa: E402

MODES = ("fid", "inpaint", "img2img", "checkpoints")
_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir written by tools/train.py (its model.keras is used).")
_CLASSIFIER = flags.DEFINE_string("classifier", None, "classifier.keras from tools/train_classifier.py.")
_DATASET = flags.DEFINE_string("dataset", "mnist", "The array dataset of the reference and the edited images.")
_IDX_DIR = flags.DEFINE_string("idx_dir", None, "IDX directory of the dataset (default: the local copy, else TFDS).")
_MODES = flags.DEFINE_list("mode", list(MODES[:3]), f"What to run, a subset of {MODES}.")
_SAMPLERS = flags.DEFINE_list("samplers", [s for s in samplers.SAMPLERS if s != "ddpm"], "Solvers of the FID sweep.")
_SPACINGS = flags.DEFINE_list("spacings", list(samplers.SPACINGS), "Spacings of the FID sweep.")
_NFE = flags.DEFINE_list("nfe", ["5", "10", "20", "50", "100"], "Network evaluations of the FID sweep (Heun: the "
                         "odd count 2n − 1 at or below each).")
_REFERENCE = flags.DEFINE_string("reference", "ddpm:400", "sampler:steps of the reference row ('' for none).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 2000, "Samples per FID.", lower_bound=2)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 250, "Samples per sampler call.", lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the first batch (every row uses the same seeds).")
_EDIT_SAMPLER = flags.DEFINE_string("edit_sampler", "ddpm:100:uniform", "sampler:steps:spacing of the edit modes.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 1000, "Test images to inpaint.", lower_bound=1)
_STRENGTHS = flags.DEFINE_list("strengths", ["0", "0.2", "0.4", "0.5", "0.6", "0.8", "1"], "img2img strengths.")
_CHECKPOINTS = flags.DEFINE_list("checkpoints", [], "Checkpoint steps of --mode=checkpoints (raw weights, "
                                 "DPM-Solver++(2M) 20 uniform steps).")
_REPORT = flags.DEFINE_string("report", None, "Markdown file the tables are appended to (none: JSON lines only).")
_FIGURE_DIR = flags.DEFINE_string("figure_dir", None, "Directory of the figures (none: no figures).")
flags.mark_flags_as_required(["workdir", "classifier"])
flags.register_validator("mode", lambda modes: modes and set(modes) <= set(MODES), f"--mode must be a subset of {MODES}")


def fid_row(model, extractor, reference, **request):
    """One FID cell: `request` (sampler, num_steps, spacing) at --num_samples, --batch_size, --seed."""
    _, quality = common.sample_quality(model, extractor, reference, num_samples=_NUM_SAMPLES.value,
                                       batch_size=_BATCH_SIZE.value, seed=_SEED.value, **request)
    row = {**request, "nfe": samplers.network_evaluations(request["sampler"], request["num_steps"]),
           "num_samples": _NUM_SAMPLES.value, **quality}
    common.emit_json(row)
    return row


def fid_sweep(model, extractor, reference):
    rows = []
    if _REFERENCE.value:
        sampler, steps = _REFERENCE.value.split(":")
        rows.append(fid_row(model, extractor, reference, sampler=sampler, num_steps=int(steps), spacing="uniform"))
    for nfe in (int(v) for v in _NFE.value):
        for sampler in _SAMPLERS.value:
            num_steps = (nfe + 1) // 2 if sampler == "heun" else nfe
            for spacing in _SPACINGS.value:
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
    reference = [r for r in rows if f"{r['sampler']}:{r['num_steps']}" == _REFERENCE.value]
    sweep = [r for r in rows if r not in reference]
    fig = Figure(figsize=(6.4, 4.2), dpi=100)
    ax = fig.subplots()
    for sampler, spacing in best_spacings(sweep).items():
        points = sorted((r["nfe"], r["fid"]) for r in sweep if r["sampler"] == sampler and r["spacing"] == spacing)
        ax.plot(*zip(*points), marker="o", label=f"{sampler} ({spacing})")
    for r in reference:
        ax.axhline(r["fid"], color="black", linestyle="--", label=f"{r['sampler']} {r['num_steps']} (uniform)")
    ax.set(xscale="log", yscale="log", xlabel="network evaluations", ylabel=f"FID (N = {_NUM_SAMPLES.value})",
           title="FID against NFE, each solver at its best spacing")
    ax.legend(fontsize=7)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, bbox_inches="tight")


def _edit_request():
    sampler, steps, spacing = _EDIT_SAMPLER.value.split(":")
    return {"sampler": sampler, "num_steps": int(steps), "spacing": spacing}


def _test_images(count):
    images, labels = data.load_arrays(_DATASET.value, "test", idx_dir=_IDX_DIR.value, uint8=True)
    return images[:count].astype(np.float32) / 255.0, labels[:count]


def _read(extractor, images):
    return np.argmax(extractor(images)[1], axis=1)


def _batched_generate(model, images, **edit):
    """model.generate over --batch_size chunks, chunk i seeded `batch_seed(seed, i)`, unconditional."""
    parts = []
    for index, start in enumerate(range(0, len(images), _BATCH_SIZE.value)):
        chunk = images[start:start + _BATCH_SIZE.value]
        labels = None if model.num_classes is None else np.full(len(chunk), model.num_classes)  # the null class
        edit_chunk = {k: v[start:start + _BATCH_SIZE.value] if isinstance(v, np.ndarray) else v for k, v in edit.items()}
        parts.append(model.generate(len(chunk), seed=evaluation.batch_seed(_SEED.value, index), labels=labels,
                                    **_edit_request(), **edit_chunk))
    return np.concatenate(parts)


def inpainting(model, extractor):
    images, labels = _test_images(_NUM_IMAGES.value)
    height = images.shape[1]
    mask = np.zeros(images.shape[:-1] + (1,), np.float32)
    mask[:, : height // 2] = 1.0  # the top half is kept, the bottom half generated
    completions = _batched_generate(model, images, init_images=images, mask=mask)
    plain = _batched_generate(model, images)  # the same seeds, no image: the chance level
    num_classes = extractor.num_classes
    row = {"mode": "inpaint", **_edit_request(), "num_images": len(images), "kept": "top half",
           "completion_reads_as_original": float(np.mean(_read(extractor, completions) == labels)),
           "plain_sample_reads_as_original": float(np.mean(_read(extractor, plain) == labels)),
           "uniform_chance": 1.0 / num_classes,
           "masked_input_reads_as_original": float(np.mean(_read(extractor, images * mask) == labels)),
           "original_reads_as_original": float(np.mean(_read(extractor, images) == labels))}
    common.emit_json(row)
    if _FIGURE_DIR.value:
        shown = min(10, len(images))
        panels = np.concatenate([images[:shown], images[:shown] * mask[:shown] + 0.5 * (1 - mask[:shown]),
                                 completions[:shown]])
        plots.save_image_grid(panels, os.path.join(_FIGURE_DIR.value, "inpainting.png"), columns=shown,
                              title=f"originals; kept half (grey: generated); completions ({_EDIT_SAMPLER.value})")
    return row


def img2img(model, extractor):
    images, labels = _test_images(8)
    strengths = [float(s) for s in _STRENGTHS.value]
    outputs = [_batched_generate(model, images, init_images=images, strength=s) for s in strengths]
    rows = [{"mode": "img2img", **_edit_request(), "strength": s, "num_images": len(images),
             "mean_abs_change": float(np.abs(out - images).mean()),
             "reads_as_original": float(np.mean(_read(extractor, out) == labels))} for s, out in zip(strengths, outputs)]
    for row in rows:
        common.emit_json(row)
    if _FIGURE_DIR.value:
        grid = np.stack(outputs, axis=1).reshape((-1,) + images.shape[1:])  # row i: image i at every strength
        plots.save_image_grid(grid, os.path.join(_FIGURE_DIR.value, "img2img.png"), columns=len(strengths),
                              title="image-to-image, strength " + ", ".join(f"{s:g}" for s in strengths))
    return rows


def _markdown(rows, title):
    keys = list(rows[0])
    lines = [f"\n### {title}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n",
             f"`{common.command_line()}`\n", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(common.format_value(row[k]) for k in keys) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    model = evaluation.load_model(_WORKDIR.value)
    extractor, reference = evaluation.image_reference(_CLASSIFIER.value, _DATASET.value, idx_dir=_IDX_DIR.value)
    tables = []
    if "fid" in _MODES.value:
        rows = fid_sweep(model, extractor, reference)
        tables.append(_markdown(rows, f"FID against NFE: `{_WORKDIR.value}`"))
        common.emit_json({"best_spacings": best_spacings([r for r in rows
                                                          if f"{r['sampler']}:{r['num_steps']}" != _REFERENCE.value])})
        if _FIGURE_DIR.value:
            fid_figure(rows, os.path.join(_FIGURE_DIR.value, "fid_vs_nfe.png"))
    if "inpaint" in _MODES.value:
        tables.append(_markdown([inpainting(model, extractor)], f"Inpainting: `{_WORKDIR.value}`"))
    if "img2img" in _MODES.value:
        tables.append(_markdown(img2img(model, extractor), f"Image-to-image: `{_WORKDIR.value}`"))
    if "checkpoints" in _MODES.value and _CHECKPOINTS.value:
        rows = [{"checkpoint": int(step), **fid_row(evaluation.load_model(_WORKDIR.value, checkpoint_step=int(step),
                                                                          use_ema=False), extractor, reference,
                                                    sampler="dpmpp_2m", num_steps=20, spacing="uniform")}
                for step in _CHECKPOINTS.value]
        tables.append(_markdown(rows, f"FID over checkpoints: `{_WORKDIR.value}`"))
    if _REPORT.value:
        with open(_REPORT.value, "a", encoding="utf-8") as f:
            f.write("".join(tables))
    else:
        print(json.dumps({"markdown": "".join(tables)}))
    return 0


if __name__ == "__main__":
    app.run(main)
