"""The figures of a trained workdir (what `tools/plot.py` draws) and the samples.png of a run."""

import os

import numpy as np

from tfdiffusion import builders, callbacks, checkpoints, plots, schedules
from tfdiffusion import data as data_lib

FIGURES = ("schedules", "forward", "trajectory", "vector_field", "loss", "samples", "guidance")


def load_workdir(workdir):
    """(model, config dict) of a workdir written by `training.train`."""
    model_path = os.path.join(workdir, "model.keras")
    if not os.path.exists(model_path):
        raise FileNotFoundError(f"No trained model in the workdir. Received: workdir={workdir!r} (missing {model_path})")
    config, _ = builders.read_workdir_config(workdir)
    return builders.load_model(model_path), config.to_dict()


def write_samples(model, path, *, name, reference=None, **sample):
    """Draws a config's `sample` section of samples and writes them as a PNG: a grid of images or a scatter.

    `sample` holds the section's keys (`num_samples`, `sampler`, `num_steps` with 0 for all T
    steps, `spacing`, `seed`, `guidance_scale` for class-conditional models, whose samples cycle
    through the classes); `name` titles the figure and `reference` (toy data) is drawn under a
    scatter. Returns the samples.
    """
    samples = callbacks.sample_images(model, sample)
    labels = None if model.num_classes is None else np.arange(len(samples)) % model.num_classes
    steps = sample.get("num_steps") or model.diffusion.num_timesteps
    with checkpoints.atomic_path(path) as temporary:
        plots.save_samples(samples, temporary, reference=None if reference is None else reference[: len(samples)],
                           labels=labels, title=f"{name}: {sample.get('sampler', 'ddpm')}, {steps} steps")
    return samples


def schedules_figure(path, num_timesteps=10):
    """Linear vs polynomial β from 0.01 to 0.9 (the two-moons guide's comparison), and cosine."""
    # "linear" rescales its endpoints by 1000/T: these give β from 0.01 to 0.9 at T=10.
    scale = num_timesteps / 1000.0
    return plots.save_schedules(
        {
            "linear": schedules.make_betas("linear", num_timesteps, beta_start=0.01 * scale, beta_end=0.9 * scale),
            "polynomial": schedules.make_betas("polynomial", num_timesteps),
            "cosine": schedules.make_betas("cosine", num_timesteps),
        },
        path,
    )


def write_figures(workdir, output_dir, figures=FIGURES, seed=0):
    """Draws the requested figures for the model in `workdir`; returns {name: path}."""
    unknown = [f for f in figures if f not in FIGURES]
    if unknown:
        raise ValueError(f"Unknown figure. Expected names from {FIGURES}. Received: figures={unknown}")
    model, config = load_workdir(workdir)
    name = config.get("name", "model")
    data_config = config["data"]
    toy = data_config["name"] in data_lib.TOY_DATASET_NAMES
    written = {}
    os.makedirs(output_dir, exist_ok=True)

    def out(figure):
        return os.path.join(output_dir, f"{name}_{figure}.png")

    if "schedules" in figures:
        written["schedules"] = schedules_figure(out("schedules"))
    reference = None
    if toy:
        reference = data_lib.toy_dataset(data_config["name"], 2000, seed=seed + 1)
    if "forward" in figures and not toy:
        # The first training example, from whatever source the run trained on (arrays, a folder, TFDS).
        examples = builders.training_data(data_config, config.get("seed", 0)).examples(1, with_labels=False)
        first = next(iter(examples))[0].numpy()
        written["forward"] = plots.save_forward_process(
            first, model.diffusion, _spread(model.diffusion.num_timesteps, 8), out("forward"), seed=seed)
    if "trajectory" in figures:
        T = model.diffusion.num_timesteps
        every = max(1, T // 10)
        if toy:
            _, trajectory = model.generate(500, seed=seed, trajectory_every=1)
            if trajectory.shape[-1] >= 2:
                written["trajectory"] = plots.save_point_trajectories(trajectory, out("trajectory"), reference=reference)
        else:
            _, trajectory = model.generate(3, seed=seed, trajectory_every=every)
            written["trajectory"] = plots.save_trajectory_strip(trajectory, out("trajectory"), every=every,
                                                                num_timesteps=T)
    if "vector_field" in figures and toy and reference.shape[-1] == 2:
        _, trajectory = model.generate(1, seed=seed, trajectory_every=1)
        T = model.diffusion.num_timesteps
        written["vector_field"] = plots.save_vector_field(
            lambda x, t: model.predict_eps(x, t).numpy(), [T - 1, T // 2, 0], out("vector_field"),
            path_points=trajectory[:, 0], reference=reference)
    loss_path = os.path.join(workdir, "loss.csv")
    if "loss" in figures and os.path.exists(loss_path):
        epochs, losses = plots.read_loss_csv(loss_path)
        steps = (epochs + 1) * config["train"]["checkpoint_every"]
        written["loss"] = plots.save_loss_curve({name: (steps, losses)}, out("loss"))
    if "samples" in figures:
        write_samples(model, out("samples"), name=name, num_samples=2000 if toy else 16, seed=seed,
                      guidance_scale=config["sample"]["guidance_scale"], reference=reference)
        written["samples"] = out("samples")
    if "guidance" in figures and not toy and model.num_classes is not None:
        written["guidance"] = guidance_figure(model, out("guidance"), (0.0, config["sample"]["guidance_scale"] or 3.0),
                                              sampler=config["sample"]["sampler"],
                                              num_steps=config["sample"]["num_steps"] or None, seed=seed)
    return written


def guidance_figure(model, path, scales, *, per_class=8, sampler="dpmpp_2m", num_steps=20, seed=0):
    """One row per class, `per_class` samples each, for every guidance scale side by side (same noise)."""
    labels = np.repeat(np.arange(model.num_classes), per_class)
    panels = [model.generate(len(labels), seed=seed, sampler=sampler, num_steps=num_steps, labels=labels,
                             guidance_scale=scale) for scale in scales]
    blank = np.ones((1,) + panels[0].shape[1:], np.float32)
    # Grid rows are classes; each row holds the class's samples at every scale, a blank cell between.
    cells = []
    for c in range(model.num_classes):
        for index, panel in enumerate(panels):
            cells += ([blank] if index else []) + [panel[c * per_class:(c + 1) * per_class]]
    columns = len(scales) * per_class + len(scales) - 1
    steps = num_steps or model.diffusion.num_timesteps
    return plots.save_image_grid(np.concatenate(cells), path, columns=columns,
                                 labels=np.repeat(np.arange(model.num_classes), columns),
                                 title="   |   ".join(f"w = {scale:g}" for scale in scales) + f"  ({sampler}, {steps} steps)")


def _spread(num_timesteps, count):
    return sorted({int(round(v)) for v in np.linspace(0, num_timesteps - 1, count)})
