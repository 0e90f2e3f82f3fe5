"""Resumable `fit` (what tools/train.py does): run it, stop it at any moment, run it again.

    python examples/resume.py                                  # 4 epochs of 500 steps; writes runs/examples/resume/
    EXAMPLE_STEPS=5 EXAMPLE_EPOCHS=2 python examples/resume.py # a smoke run (tests/test_examples.py)

A second run in the same directory continues from the newest readable checkpoint. Checkpoints
are numbered by the optimizer's step, and batch k of `step_indexed_batches` is a fixed function
of (seed, k), so the resumed run trains on the same batches as an uninterrupted one.
"""

import os

import keras

import tfdiffusion as tfd
from tfdiffusion import checkpoints, training

steps_per_epoch = int(os.environ.get("EXAMPLE_STEPS", 500))
epochs = int(os.environ.get("EXAMPLE_EPOCHS", 4))
workdir = os.path.join(os.environ.get("EXAMPLE_OUTPUT", "runs/examples"), "resume")

diffusion = tfd.GaussianDiffusion(tfd.schedules.make_betas("linear", 400))
model = tfd.DiffusionModel(network=tfd.layers.SeedUNet(), diffusion=diffusion)
model.compile(optimizer=keras.optimizers.Adam(1e-4))
images, _ = tfd.data.load_arrays("digits")

manager = checkpoints.CheckpointManager(os.path.join(workdir, "checkpoints"), model)  # atomic, keeps the newest 3
start = manager.restore(input_shape=images.shape[1:])  # builds the model and optimizer; 0, or the newest good step
model.fit(tfd.data.step_indexed_batches(images, None, 64, start_step=start), steps_per_epoch=steps_per_epoch,
          epochs=epochs, initial_epoch=start // steps_per_epoch, verbose=2,
          callbacks=[training.StopOnNonFiniteLoss(), training.CheckpointEveryEpoch(manager)])
print(f"started at step {start}; checkpoints at steps {manager.steps()}")
