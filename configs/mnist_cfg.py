"""Class-conditional MNIST, classifier-free guidance: small UNet (1,204,929 params), linear T=400.

Command (reads the original IDX files from ../shared/data/mnist or $TFDIFFUSION_MNIST_DIR when
present, else downloads through TFDS):
    python tools/train.py --config=configs/mnist_cfg.py --workdir=/tmp/mnist_cfg

The network: UNet base 32, channel_mult (1, 2, 2) for 28→14→7, 1 residual block per level (2 on
the way up), self-attention at 7×7 and in the middle, GroupNorm(8), and a class embedding with a
null row (`num_classes=10`). Training replaces each label by the null class with probability 0.1
(`objective.label_dropout`); sampling mixes the conditional and unconditional predictions with
guidance scale w = 3 (ε̃ = (1 + w)·ε_y − w·ε_∅, Ho & Salimans 2022). The training binary feeds
labels to the model only because the network has `num_classes` set.

Run time: 2.6 s per step of 64 images (graph mode + oneDNN, float32), measured on this 2-core CPU
while other jobs shared it (load ≈ 6; `mnist.py`'s SeedUNet took 1.5 s/step in the same conditions
against 0.6 s idle, so an idle machine is about 2.5× faster); the 6000 steps take about 4.3 h at
that rate (≈ 2 h idle). It was not trained here beyond the 4-step tiny run. Expected after the full
run (not measured; the unconditional `mnist.py` reaches recognisable digits in as many steps):
samples.png shows 20 DDIM (50-step) samples, two per digit 0–9 in order, each of the requested
class. `--config=configs/mnist_cfg.py:tiny` is a 4-step run of a 2-level UNet of base width 8 (for
tests).
"""

from tfdiffusion.training import base_config, check_variant


def get_config(variant=None):
    check_variant(variant)
    config = base_config()
    config.name = "mnist_cfg"
    config.network = "UNet"
    config.model = {"base_channels": 32, "channel_mult": (1, 2, 2), "num_res_blocks": 1,
                    "attention_resolutions": (7,), "dropout": 0.0, "num_groups": 8, "num_heads": 4,
                    "output_channels": 1, "num_classes": 10}
    config.diffusion = {"name": "linear", "num_timesteps": 400}
    config.objective.update({"prediction_type": "epsilon", "label_dropout": 0.1})
    config.data.update({"name": "mnist", "batch_size": 64})
    config.optimizer.update({"learning_rate": 2e-4, "use_ema": True, "ema_momentum": 0.999})
    config.train.update({"steps": 6000, "checkpoint_every": 500, "log_every": 100})
    config.sample.update({"num_samples": 20, "sampler": "ddim", "num_steps": 50, "guidance_scale": 3.0})
    if variant == "tiny":
        config.model.update({"base_channels": 8, "channel_mult": (1, 2), "attention_resolutions": (),
                             "num_groups": 4, "num_heads": 2})
        config.data.batch_size = 8
        config.optimizer.ema_momentum = 0.9
        config.train.update({"steps": 4, "checkpoint_every": 2, "log_every": 1})
        config.sample.update({"num_samples": 4, "num_steps": 5})
    return config
