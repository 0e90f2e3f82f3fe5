"""Train a denoising diffusion model with Keras `fit`, then sample it with DDPM and DPM-Solver++(2M).

    python examples/fit.py                            # 2,000 steps; writes runs/examples/fit/
    EXAMPLE_STEPS=20 python examples/fit.py           # a smoke run (what tests/test_examples.py runs)

The data are scikit-learn's 8×8 digits (1,797 images, shipped with scikit-learn, so this runs
offline). For MNIST use `tfd.data.load_arrays("mnist")`: it reads the IDX files from `idx_dir=`
or $TFDIFFUSION_MNIST_DIR, else TFDS (which downloads once into ~/tensorflow_datasets).
"""

import os

import keras

import tfdiffusion as tfd
from tfdiffusion import plots

steps = int(os.environ.get("EXAMPLE_STEPS", 2000))
output_dir = os.path.join(os.environ.get("EXAMPLE_OUTPUT", "runs/examples"), "fit")

diffusion = tfd.GaussianDiffusion(tfd.schedules.make_betas("linear", 400))
model = tfd.DiffusionModel(network=tfd.layers.SeedUNet(), diffusion=diffusion)
model.compile(optimizer=keras.optimizers.Adam(1e-4))

images, _ = tfd.data.load_arrays("digits")  # [1797, 8, 8, 1] in [-1, 1]
model.fit(tfd.data.step_indexed_batches(images, None, 64), steps_per_epoch=steps, epochs=1, verbose=2)

samples = model.generate(num_samples=16, seed=0)  # DDPM, 400 steps, in [0, 1]
fast = model.generate(num_samples=16, seed=0, sampler="dpmpp_2m", num_steps=20)

os.makedirs(output_dir, exist_ok=True)
model.save(os.path.join(output_dir, "model.keras"))  # reload with tfd.load_model(path)
plots.save_image_grid(samples, os.path.join(output_dir, "ddpm.png"), title="DDPM, 400 steps")
plots.save_image_grid(fast, os.path.join(output_dir, "dpmpp_2m.png"), title="DPM-Solver++(2M), 20 steps")
print(f"wrote model.keras, ddpm.png and dpmpp_2m.png to {output_dir}")
