"""Class-conditional CIFAR-10 (TFDS): UNet (9,645,507 params), cosine T=1000, v-pred., min-SNR, CFG.

Command (downloads CIFAR-10 through TFDS on first use):
    python tools/train.py --config=configs/cifar10.py --workdir=/tmp/cifar10

The network is the DDPM CIFAR-10 U-Net at half width: base 64, channel_mult (1, 2, 2, 2) for
32→16→8→4, 2 residual blocks per level, self-attention at 16×16 and in the middle, dropout
0.1, GroupNorm(32). Labels are replaced by the null class with probability 0.1 (classifier-free
guidance); samples.png shows two DPM-Solver++(2M) 25-step samples per class at guidance scale 3.

Run time: 5.1 s per step of 64 images (12.5 images/s, graph mode + oneDNN, float32; the first
step adds ~45 s of graph building; measured with `python benchmarks/train_throughput.py
--config=configs/cifar10.py`, 2026-11-23, on this 2-core CPU). The 100k steps (≈ 6 days here) are
therefore GPU work: `train.jit_compile="auto"` uses XLA there, and `--config.train.mixed_precision=mixed_bfloat16` halves activation memory.
It was not trained here beyond the 4-step tiny run, so nothing below is measured. Expected, by
analogy with DDPM / improved DDPM at this size: blurry class-coloured blobs after a few thousand
steps, and recognisable objects of the requested classes (EMA weights, guidance 3) after the full
run. `--config=configs/cifar10.py:tiny` is a 4-step run of a 2-level UNet with base width 8 (for
tests, e.g. under `tfds.testing.mock_data`).
"""

from tfdiffusion.config import base_config, check_variant, tiny


def get_config(variant=None):
    check_variant(variant)
    config = base_config()
    config.name = "cifar10"
    config.network = "UNet"
    config.model = {"base_channels": 64, "channel_mult": (1, 2, 2, 2), "num_res_blocks": 2,
                    "attention_levels": (1,), "dropout": 0.1, "num_groups": 32, "num_heads": 4,
                    "output_channels": 3, "num_classes": 10}
    config.diffusion = {"name": "cosine", "num_timesteps": 1000}
    config.objective.update({"prediction_type": "v", "loss_weighting": "min_snr", "label_dropout": 0.1})
    config.data.update({"name": "cifar10", "batch_size": 64})
    config.optimizer.update({"learning_rate": 2e-4, "schedule": "cosine", "warmup_steps": 1000, "clipnorm": 1.0,
                             "use_ema": True, "ema_momentum": 0.9999})
    config.train.update({"steps": 100_000, "checkpoint_every": 5000, "log_every": 100})
    config.sample.update({"num_samples": 20, "sampler": "dpmpp_2m", "num_steps": 25, "guidance_scale": 3.0})
    if variant == "tiny":
        tiny(config, model={"base_channels": 8, "channel_mult": (1, 2), "num_res_blocks": 1,
                            "attention_levels": (1,), "dropout": 0.0, "num_groups": 4, "num_heads": 2},
             sample={"sampler": "ddim"})
    return config
