"""MNIST DDPM of the JAX tutorial: SeedUNet (2,020,353 params), T=400 linear, Adam 1e-4, batch 64.

Command (reads the original IDX files from ../shared/data/mnist or $TFDIFFUSION_MNIST_DIR when
present, else downloads through TFDS):
    python tools/train.py --config=configs/mnist.py --workdir=/tmp/mnist

Run time on the 2-core CPU here: about 0.6 s per step of 64 images (≈105 images/s, graph mode +
oneDNN), so the default 6000 steps (6.4 epochs) take about an hour. Expected: loss ≈ 0.03;
samples.png shows 16 DDPM (400-step) digits that are recognisable. EMA (momentum 0.999) is used
for sampling. `--config=configs/mnist.py:tiny` is a 4-step run of a 3-level tiny U-Net on 64
images (for tests).
"""

from tfdiffusion.training import base_config, check_variant


def get_config(variant=None):
    check_variant(variant)
    config = base_config()
    config.name = "mnist"
    config.network = "SeedUNet"
    config.model = {"channels": (64, 128, 256), "initial_channels": 32, "time_embedding_dim": 64,
                    "time_mlp_width": 256, "time_mlp_depth": 2, "output_channels": 1}
    config.diffusion = {"name": "linear", "num_timesteps": 400}
    config.data.update({"name": "mnist", "batch_size": 64})
    config.optimizer.update({"learning_rate": 5e-4, "warmup_steps": 200, "clipnorm": 1.0, "use_ema": True,
                             "ema_momentum": 0.999})
    config.train.update({"steps": 6000, "checkpoint_every": 500, "log_every": 100})
    config.sample.update({"num_samples": 16, "sampler": "ddpm"})
    if variant == "tiny":
        config.model.update({"channels": (8, 16, 32), "initial_channels": 8, "time_embedding_dim": 16,
                             "time_mlp_width": 32})
        config.data.batch_size = 8
        config.optimizer.warmup_steps = 2
        config.train.update({"steps": 4, "checkpoint_every": 2, "log_every": 1})
        config.sample.update({"num_samples": 4, "sampler": "ddim", "num_steps": 5})
    return config
