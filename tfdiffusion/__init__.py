"""tfdiffusion: denoising diffusion models for TensorFlow 2 / Keras 3.

    import keras, tfdiffusion as tfd
    diffusion = tfd.GaussianDiffusion(tfd.schedules.make_betas("linear", 400))
    model = tfd.DiffusionModel(network=tfd.layers.SeedUNet(), diffusion=diffusion)

The names below are imported on first use (PEP 562), so that `import tfdiffusion.config`
(what config files do) does not import TensorFlow. To load a saved model, import
`tfdiffusion.builders` (or call `builders.load_model`), which registers every class a
`.keras` file can name; `tfd.load_model(path)` does both.
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = ("data", "layers", "optimizers", "samplers", "schedules")
_ATTRIBUTES = {"GaussianDiffusion": "tfdiffusion.diffusion", "DiffusionModel": "tfdiffusion.model",
               "sample": "tfdiffusion.samplers", "load_model": "tfdiffusion.builders"}
__all__ = list(_SUBMODULES) + list(_ATTRIBUTES)


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _ATTRIBUTES:
        value = getattr(importlib.import_module(_ATTRIBUTES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
