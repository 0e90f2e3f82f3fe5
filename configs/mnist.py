"""MNIST DDPM on the JAX tutorial's SeedUNet (2,020,353 params), T=400 linear, batch 64, tuned for time to quality.

Command (reads the original IDX files from ../shared/data/mnist or $TFDIFFUSION_MNIST_DIR when
present, else downloads through TFDS):
    python tools/train.py --config=configs/mnist.py --workdir=/tmp/mnist

Against the tutorial's recipe (Adam 1e-4, plain ε-MSE, no EMA) this uses Adam 1e-3 with a 200-step
linear warm-up and gradient clipping at norm 1, min-SNR loss weighting (Hang et al. 2023, γ = 5), and
samples with EMA weights (momentum 0.999 with TF's num_updates warm-up). Run time on the 2-core CPU
here: about 0.5 s per step of 64 images (≈ 120 steps a minute, graph mode + oneDNN, float32: "auto"
picks bf16 only on an AMX CPU), so the default 6,000 steps take about 50 minutes. Measured
(benchmarks/time_to_quality.py, docs/RESULTS.md, 2026-11-30): after 20 minutes (2,337 steps) FID 21.1
(N=2,000, mean of seeds 0 and 1, DPM-Solver++ 20 steps, classifier features) against 112.1 for the
tutorial's recipe in the same 20 minutes (0.19×), and 31.6 for this config before the learning rate
and the weighting were tuned (Adam 5e-4, plain ε-MSE: the recipe of ../shared/models/mnist_default_6000,
which `--config.optimizer.learning_rate=5e-4 --config.objective.loss_weighting=none` reproduces). The
full 6,000 steps took 51.7 minutes here (2026-11-30, float32) and score FID 7.35 at N=10,000 with
DPM-Solver++ 20 uniform steps, 5.15 with SDE-DPM-Solver++(2M) on 20 Karras steps (docs/RESULTS.md).
samples.png shows 16 DDPM (400-step) samples.
`--config=configs/mnist.py:tiny` is a 4-step run of a 3-level tiny U-Net (for tests).
"""

from tfdiffusion.config import base_config, check_variant, tiny


def get_config(variant=None):
    check_variant(variant)
    config = base_config()
    config.name = "mnist"
    config.network = "SeedUNet"
    config.model = {"channels": (64, 128, 256), "initial_channels": 32, "time_embedding_dim": 64,
                    "time_mlp_width": 256, "time_mlp_depth": 2, "output_channels": 1}
    config.diffusion = {"name": "linear", "num_timesteps": 400}
    config.data.update({"name": "mnist", "batch_size": 64})
    config.objective.update({"loss_weighting": "min_snr"})
    config.optimizer.update({"learning_rate": 1e-3, "warmup_steps": 200, "clipnorm": 1.0, "use_ema": True,
                             "ema_momentum": 0.999})
    config.train.update({"steps": 6000, "checkpoint_every": 500, "log_every": 100})
    config.sample.update({"num_samples": 16, "sampler": "ddpm"})
    if variant == "tiny":
        # Two warm-up steps keep the warm-up schedule exercised by the tests.
        tiny(config, model={"channels": (8, 16, 32), "initial_channels": 8, "time_embedding_dim": 16,
                            "time_mlp_width": 32},
             optimizer={"warmup_steps": 2}, sample={"sampler": "ddim"})
    return config
