"""Progressive distillation of a configs/mnist.py teacher to 4 DDIM steps (Salimans & Ho 2022), v-prediction students.

Command (TEACHER_WORKDIR is a finished `tools/train.py --config=configs/mnist.py` run, holding model.keras):
    python tools/distill.py --config=configs/mnist_distill.py --config.distill.teacher=TEACHER_WORKDIR \
        --workdir=/tmp/mnist_distill

Rounds 256 → 128 → 64 → 32 → 16 → 8 → 4 steps on the nested grids g_k = ⌊400k/N + ½⌋ − 1
(`tfdiffusion.distillation`), 1,500 optimizer steps of batch 64 each (Adam 2e-4 decayed by a cosine
to 0 within the round, EMA 0.999, as the paper anneals its rate per round); round_K/model.keras
samples in N steps, /tmp/mnist_distill/model.keras in 4. For 8, 2 or 1 steps pass
--config.distill.final_steps=8 (or 2, 1). A step costs two teacher evaluations and one student
evaluation and gradient. Time here: 2.8 s per step measured on this 2-core CPU while other jobs
kept its load average at 5 (40 steps of the default network, `tools/distill.py ...
--config.distill.initial_steps=8 --config.distill.final_steps=4 --config.distill.steps_per_round=40`),
so about 1 s per step is expected idle (an estimate, not measured; a configs/mnist.py training step
takes 0.49 s): a round of 1,500 steps ≈ 25 minutes, the six rounds ≈ 2.5 hours. Not run to the end here, so no quality
is claimed yet; the target (issue 15) is a 4-step student within 1.3× the teacher's best FID.
`--config=configs/mnist_distill.py:tiny` distills 8 → 4 → 2 steps in 4 optimizer steps per round (for tests:
the teacher is a configs/mnist.py:tiny run).
"""

from tfdiffusion.config import base_distill_config, check_variant


def get_config(variant=None):
    check_variant(variant)
    config = base_distill_config()
    config.name = "mnist_distill"
    config.distill.update({"initial_steps": 256, "final_steps": 4, "steps_per_round": 1500, "prediction_type": "v"})
    config.data.update({"name": "mnist", "batch_size": 64})
    config.optimizer.update({"learning_rate": 2e-4, "schedule": "cosine", "warmup_steps": 0, "clipnorm": 1.0,
                             "use_ema": True, "ema_momentum": 0.999})
    config.train.update({"checkpoint_every": 500, "log_every": 100})
    config.sample.update({"num_samples": 16, "seed": 0})
    if variant == "tiny":
        config.distill.update({"initial_steps": 8, "final_steps": 2, "steps_per_round": 4})
        config.data.update({"batch_size": 8, "synthetic_if_missing": True})
        config.optimizer.update({"ema_momentum": 0.9})
        config.train.update({"checkpoint_every": 2, "log_every": 1})
        config.sample.update({"num_samples": 4})
    return config
