"""Fashion-MNIST (TFDS): UNet (1,755,169 params), linear T=1000, ε-prediction (the DDPM recipe).

Command (downloads Fashion-MNIST through TFDS on first use):
    python tools/train.py --config=configs/fashion_mnist.py --workdir=/tmp/fashion_mnist

The network: base 32, channel_mult (1, 2, 2) for 28→14→7, 2 residual blocks per level,
self-attention at 7×7 and in the middle, dropout 0.1, GroupNorm(8); Adam 2e-4 with 500 warm-up
steps, EMA 0.999.

Run time: 0.88 s per step of 64 images (73 images/s, graph mode + oneDNN, float32; measured with
`python benchmarks/train_throughput.py --config=configs/fashion_mnist.py`, 2026-11-23, on this
2-core CPU), so the 20k steps take about 5 h. It was not trained here beyond the 4-step tiny run. Expected after the full run
(not measured): loss ≈ 0.03 and 16 DDIM (100-step) samples of recognisable garments — shirts,
trousers, shoes, bags — with coarse texture. `--config=configs/fashion_mnist.py:tiny` is a 4-step
run of a 2-level UNet with base width 8 (for tests, e.g. under `tfds.testing.mock_data`).
"""

from tfdiffusion.config import base_config, check_variant, tiny


def get_config(variant=None):
    check_variant(variant)
    config = base_config()
    config.name = "fashion_mnist"
    config.network = "UNet"
    config.model = {"base_channels": 32, "channel_mult": (1, 2, 2), "num_res_blocks": 2,
                    "attention_levels": (2,), "dropout": 0.1, "num_groups": 8, "num_heads": 4,
                    "output_channels": 1}
    config.diffusion = {"name": "linear", "num_timesteps": 1000}
    config.data.update({"name": "fashion_mnist", "batch_size": 64})
    config.optimizer.update({"learning_rate": 2e-4, "schedule": "cosine", "warmup_steps": 500, "clipnorm": 1.0,
                             "use_ema": True, "ema_momentum": 0.999})
    config.train.update({"steps": 20_000, "checkpoint_every": 1000, "log_every": 100})
    config.sample.update({"num_samples": 16, "sampler": "ddim", "num_steps": 100})
    if variant == "tiny":
        tiny(config, model={"base_channels": 8, "channel_mult": (1, 2), "num_res_blocks": 1,
                            "attention_levels": (1,), "dropout": 0.0, "num_groups": 4, "num_heads": 2})
    return config
