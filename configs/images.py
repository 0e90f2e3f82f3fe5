"""Your own images: a folder of PNG/JPEG/BMP/GIF files, 64×64 RGB, residual UNet (9,642,691 params), cosine T=1000.

Command (the folder is searched recursively; any image size, resized and centre-cropped to 64×64):
    python tools/train.py --config=configs/images.py --workdir=/tmp/images --config.data.path=DIR

Add `--config.data.class_subfolders=True` when DIR's first-level subfolders are classes (DIR/tulip/…,
DIR/rose/…): the network becomes class-conditional with one class per subfolder (sorted names,
recorded in the workdir's config.json as "class_names"), trained with label dropout 0.1 and sampled
with classifier-free guidance w = 3 (samples.png cycles through the classes). Without it the
guidance settings are unused. Any TFDS image set works the same way with
`--config.data.source=tfds --config.data.name=oxford_flowers102` (downloads on first use).

The network is the DDPM U-Net (Ho et al. 2020) at 64×64: base 64, channel_mult (1, 2, 2, 2) for
64→32→16→8, 2 residual blocks per level, self-attention at 16×16 and in the middle, dropout 0.1,
GroupNorm(32); its output channels follow the data (3). v-prediction with min-SNR-5 weighting
(Hang et al. 2023), Adam 2e-4 with 1000 warm-up steps and a cosine decay, EMA 0.9999, random
horizontal flips. Every 5000 steps a grid of 16 EMA samples (fixed seed) goes to TensorBoard.

Run time here: 13.8 s per step of 64 images streamed from a PNG folder, 13.2 s from memory (graph mode
+ oneDNN, float32, a quiet 2-core CPU; `benchmarks/data_throughput.py`, docs/BENCHMARKS.md,
2026-11-30). The 200k steps are therefore GPU work; there `train.jit_compile="auto"` uses XLA. This
config itself was not trained here beyond a few steps. A narrower 32×32 version trained 2,400 steps
on a folder of coloured shapes in 29 minutes; its samples are in docs/RESULTS.md ("Training from a
folder"). So nothing below is measured. Expected, by analogy with DDPM at this size: colour blobs that follow
the data's palette after a few thousand steps, recognisable layouts of the data after ~50k, sharp
samples after the 200k steps on a few thousand images or more (small folders are memorised).

`--config=configs/images.py:tiny` is a 4-step run of a 2-level UNet of width 8 at 16×16 with a
sample grid at step 4, for tests: with `--config.data.path=DIR` it reads DIR; without a path it
trains on synthetic 16×16 RGB images (said so in one log line), so it runs offline anywhere (about
30 s here, most of it tracing the graphs).
"""

from tfdiffusion.config import base_config, check_variant, tiny


def get_config(variant=None):
    check_variant(variant)
    config = base_config()
    config.name = "images"
    config.network = "UNet"
    # No output_channels (the data's) and no num_classes (the class subfolders', when on).
    config.model = {"base_channels": 64, "channel_mult": (1, 2, 2, 2), "num_res_blocks": 2,
                    "attention_levels": (2,), "dropout": 0.1, "num_groups": 32, "num_heads": 4}
    config.diffusion = {"name": "cosine", "num_timesteps": 1000}
    # Label dropout and guidance act only when class subfolders make the network class-conditional.
    config.objective.update({"prediction_type": "v", "loss_weighting": "min_snr", "label_dropout": 0.1})
    config.data.update({"name": "images", "source": "folder", "image_size": 64, "channels": 3, "random_flip": True,
                        "batch_size": 64})
    config.optimizer.update({"learning_rate": 2e-4, "schedule": "cosine", "warmup_steps": 1000, "clipnorm": 1.0,
                             "use_ema": True, "ema_momentum": 0.9999})
    config.train.update({"steps": 200_000, "checkpoint_every": 5000, "log_every": 100, "sample_every": 5000})
    config.sample.update({"num_samples": 16, "sampler": "dpmpp_2m", "num_steps": 25, "guidance_scale": 3.0})
    if variant == "tiny":
        tiny(config, model={"base_channels": 8, "channel_mult": (1, 2), "num_res_blocks": 1,
                            "attention_levels": (1,), "dropout": 0.0, "num_groups": 4, "num_heads": 2},
             data={"image_size": 16}, train={"sample_every": 4}, sample={"sampler": "ddim"})
    return config
