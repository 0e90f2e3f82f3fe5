"""Class-conditional MNIST with classifier-free guidance: the tutorial's SeedUNet plus a class embedding.

Command (reads the original IDX files from ../shared/data/mnist or $TFDIFFUSION_MNIST_DIR when
present, else downloads through TFDS):
    python tools/train.py --config=configs/mnist_cfg.py --workdir=/tmp/mnist_cfg

The network is `mnist.py`'s SeedUNet (2,020,353 params) with `num_classes=10`: a class embedding
with an extra null row (2,021,057 params) added to the time embedding. Training replaces each label
by the null class with probability 0.1 (`objective.label_dropout`); sampling mixes the conditional
and unconditional predictions with guidance scale w = 3 (ε̃ = (1 + w)·ε_y − w·ε_∅, Ho & Salimans
2022), both halves in one batched network call. The SeedUNet is about 2.5× cheaper per step here
than the residual `UNet` of the same width, so this config uses it.

Run time and result: see the docstring's numbers in docs/RESULTS.md ("Class-conditional MNIST"),
measured with the command above. `--config=configs/mnist_cfg.py:tiny` is a 4-step run of a tiny
SeedUNet (for tests).
"""

from tfdiffusion.config import base_config, check_variant, tiny


def get_config(variant=None):
    check_variant(variant)
    config = base_config()
    config.name = "mnist_cfg"
    config.network = "SeedUNet"
    config.model = {"channels": (64, 128, 256), "initial_channels": 32, "time_embedding_dim": 64,
                    "time_mlp_width": 256, "time_mlp_depth": 2, "output_channels": 1, "num_classes": 10}
    config.diffusion = {"name": "linear", "num_timesteps": 400}
    config.objective.update({"prediction_type": "epsilon", "label_dropout": 0.1})
    config.data.update({"name": "mnist", "batch_size": 64})
    config.optimizer.update({"learning_rate": 5e-4, "warmup_steps": 200, "clipnorm": 1.0, "use_ema": True,
                             "ema_momentum": 0.999})
    config.train.update({"steps": 2000, "checkpoint_every": 500, "log_every": 100, "keep_checkpoints": 8})
    config.sample.update({"num_samples": 20, "sampler": "dpmpp_2m", "num_steps": 20, "guidance_scale": 3.0})
    if variant == "tiny":
        tiny(config, model={"channels": (8, 16, 32), "initial_channels": 8, "time_embedding_dim": 16,
                            "time_mlp_width": 32},
             optimizer={"warmup_steps": 2})
    return config
