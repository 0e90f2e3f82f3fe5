"""The textbook's 1-D toy: a mixture of three Gaussians, MLP denoiser, T=100 cosine schedule.

Command (offline, about 20 s on 2 cores, 15 s of it training):
    python tools/train.py --config=configs/gmm1d.py --workdir=/tmp/gmm1d

Expected: loss ≈ 0.5 after 3000 steps; `samples.png` overlays the histogram of 2000 samples on
the data histogram: three modes at −2, 0.5 and 2. `:tiny` runs 200 steps (for tests).
"""

from tfdiffusion.config import base_config, check_variant, tiny


def get_config(variant=None):
    check_variant(variant)
    config = base_config()
    config.name = "gmm1d"
    config.network = "MLPDenoiser"
    config.model = {"data_dim": 1, "hidden_units": 128, "num_hidden_layers": 3, "time_embedding_dim": 32}
    config.diffusion = {"name": "cosine", "num_timesteps": 100}
    config.objective.data_range = None
    config.data.update({"name": "gmm1d", "num_samples": 10_000, "batch_size": 512})
    config.optimizer.update({"learning_rate": 3e-3, "schedule": "cosine"})
    config.train.update({"steps": 3000, "checkpoint_every": 1000, "log_every": 100,
                         # A step of this MLP takes milliseconds, so fit's per-step Python work would dominate:
                         # 50 steps per call train 1.4-1.6x faster here, with bitwise the same losses.
                         "steps_per_execution": 50})
    config.sample.num_samples = 2000
    if variant == "tiny":
        # The toy's own batch and 200 steps (checkpoints at 100 and 200): tests compare the samples with the data.
        tiny(config, data={"batch_size": 512}, train={"steps": 200, "checkpoint_every": 100})
    return config
