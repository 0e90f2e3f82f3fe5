"""Two moons (the PyTorch guide's toy): T=10 polynomial schedule, small MLP denoiser.

Command (the README's main job; offline, about 25 s on 2 cores, 16–19 s of it training):
    python tools/train.py --config=configs/moons.py --workdir=/tmp/moons

Expected: loss ≈ 0.30 after 4000 steps; `samples.png` shows 2000 DDPM samples on the two moons
(energy distance to held-out moons data ≈ 0.005, against ≈ 0.09 for N(0, I) noise).
`--config=configs/moons.py:tiny` runs 200 steps in a few seconds (for tests).
"""

from tfdiffusion.config import base_config, check_variant, tiny


def get_config(variant=None):
    check_variant(variant)
    config = base_config()
    config.name = "moons"
    config.network = "MLPDenoiser"
    config.model = {"data_dim": 2, "hidden_units": 128, "num_hidden_layers": 3, "time_embedding_dim": 32}
    config.diffusion = {"name": "polynomial", "num_timesteps": 10}
    config.objective.data_range = None
    config.data.update({"name": "moons", "num_samples": 10_000, "batch_size": 512})
    config.optimizer.update({"learning_rate": 3e-3, "schedule": "cosine"})
    config.train.update({"steps": 4000, "checkpoint_every": 1000, "log_every": 100,
                         # A step of this MLP takes milliseconds, so fit's per-step Python work would dominate:
                         # 50 steps per call train 1.4-1.6x faster here, with bitwise the same losses.
                         "steps_per_execution": 50})
    config.sample.num_samples = 2000
    if variant == "tiny":
        # The toy's own batch and 200 steps (checkpoints at 100 and 200): tests compare the samples with the data.
        tiny(config, data={"batch_size": 512}, train={"steps": 200, "checkpoint_every": 100})
    return config
