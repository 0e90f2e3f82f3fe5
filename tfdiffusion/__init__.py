"""tfdiffusion: denoising diffusion models for TensorFlow 2 / Keras 3.

    import keras, tfdiffusion as tfd
    diffusion = tfd.GaussianDiffusion(tfd.schedules.make_betas("linear", 400))
    model = tfd.DiffusionModel(network=tfd.layers.SeedUNet(), diffusion=diffusion)
"""

from tfdiffusion import data, layers, optimizers, samplers, schedules
from tfdiffusion.diffusion import GaussianDiffusion
from tfdiffusion.model import DiffusionModel
from tfdiffusion.samplers import sample

__version__ = "0.1.0"
