"""Progressive distillation (Salimans & Ho 2022): students that sample in N/2, N/4, … DDIM steps.

    from tfdiffusion import distillation
    summary = distillation.distill(config, "runs/mnist_distill")   # what tools/distill.py runs

Each round trains a student, initialised as a copy of its teacher, so that one DDIM step of the
student equals two DDIM steps of the teacher (Algorithm 2 of the paper); the student becomes the
next round's teacher. Rounds go from `config.distill.initial_steps` (the first teacher's steps)
by halving down to `config.distill.final_steps`.

The grid. An N-step sampler runs on the integer timesteps g_k = ⌊kT/N + ½⌋ − 1, k = 0..N
(`model.distilled_timesteps`): the network is evaluated at g_N = T − 1, …, g_1, and g_0 = −1 is
the data (ᾱ_{−1} = 1). Grids nest, g_k(N) = g_{2k}(2N), so the student step g_i → g_{i−1} of an
N-step grid is the two teacher steps t = g_{2i} → t' = g_{2i−1} → t'' = g_{2i−2} of the 2N-step
grid, the discrete form of the paper's t → t − ½/N → t − 1/N. Any initial_steps ≤ T works; the
first teacher samples on its own grid of initial_steps (every timestep when initial_steps = T).

The objective. With t drawn uniformly among the student's N steps and z_t = α_t x + σ_t ε
(α = √ᾱ, σ = √(1 − ᾱ)), the teacher's two DDIM steps give z_t'', and the x̂_0 that one DDIM step
of the student t → t'' must produce to land there is (Algorithm 2)

    x̃ = (z_t'' − (σ_t''/σ_t) z_t) / (α_t'' − (σ_t''/σ_t) α_t)             (x̃ = z_t'' into the data)

The loss is max(SNR_t, 1) ‖x̃ − x̂_θ(z_t)‖² ("truncated SNR" weighting, §4), whatever the
student's prediction type: its x̂_0 comes from `diffusion.x0_and_eps`. The paper's students predict
v (`config.distill.prediction_type`, default "v"): at T − 1 an ε-prediction's x̂_0 divides by α
(≈ 0.006 for the linear T = 400 schedule), which a one-step student cannot afford. A student whose
prediction type differs from its teacher's is the teacher's network with the weights copied.

A workdir holds config.json (the config and the data's shape), round_K/ for K = 1, 2, … laid out
like a training workdir (checkpoints/, logs/, loss.csv, samples.png) plus model.keras — the student,
a `DiffusionModel` with `distilled_steps=N`, which samples in those N steps by default and in no
other number — and round.json (its steps, its grid, its teacher's steps, the time), and at the end
model.keras (the last round's student) and summary.json. Rerunning with the same workdir resumes:
finished rounds (round_K/model.keras exists) are skipped, the current round continues from its
newest checkpoint, and every teacher is read from its model.keras; batch k of round K and every draw
of its step k are functions of (seed, K, k), so the result equals an uninterrupted run bitwise.
"""

import json
import os
import shutil
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tfdiffusion import builders, checkpoints, plots, reports, samplers, training
from tfdiffusion import config as config_lib
from tfdiffusion.model import DiffusionModel, distilled_timesteps, guarded_train_step

MODEL_FILE = "model.keras"


# -- the objective ---------------------------------------------------------------------------------
def truncated_snr_weight(alpha_bar):
    """max(SNR, 1) with SNR = ᾱ/(1 − ᾱ) (Salimans & Ho 2022, §4, "truncated SNR"): weighted by it, the x̂_0 loss
    is the larger of ‖x − x̂‖² (at high noise, SNR < 1) and the ε loss ‖ε − ε̂‖² = SNR ‖x − x̂‖² (at low noise)."""
    return tf.maximum(alpha_bar / (1.0 - alpha_bar), 1.0)


def x0_target(z_t, z_next, alpha_bar_t, alpha_bar_next):
    """x̃ such that one DDIM step from (z_t, ᾱ_t) to ᾱ_next with x̂_0 = x̃ lands on z_next (Algorithm 2).

    The step z_next = α'' x̃ + σ'' (z_t − α x̃)/σ solved for x̃; into the data (σ'' = 0) x̃ = z_next.
    ᾱ are float64 and broadcast against z; the coefficients are formed in float64 and cast once.
    """
    ratio = tf.sqrt((1.0 - alpha_bar_next) / (1.0 - alpha_bar_t))
    inverse = 1.0 / (tf.sqrt(alpha_bar_next) - ratio * tf.sqrt(alpha_bar_t))
    return tf.cast(inverse, z_t.dtype) * z_next - tf.cast(ratio * inverse, z_t.dtype) * z_t


def teacher_target(denoise_fn, diffusion, z_t, timesteps, labels=None):
    """x̃ from two DDIM steps (η = 0) of the teacher t → t' → t'' (`samplers.ddim_step`), and z_t''.

    Args:
      denoise_fn: the teacher's `(x_t, t, labels) -> (x̂_0, ε̂)` (`DiffusionModel.denoise`).
      diffusion: the `GaussianDiffusion` of t (the teacher's; −1 is the data).
      z_t: the noisy batch at t.
      timesteps: (t, t', t''), int32 [N] each.
      labels: passed to denoise_fn.
    """
    t, t_mid, t_next = timesteps
    alpha_t, alpha_mid, alpha_next = (diffusion.alpha_bar(s, z_t) for s in timesteps)
    x0, eps = denoise_fn(z_t, t, labels)
    z_mid = samplers.ddim_step(z_t, tf.cast(x0, z_t.dtype), tf.cast(eps, z_t.dtype), alpha_t, alpha_mid, 0.0, 0.0)
    x0, eps = denoise_fn(z_mid, t_mid, labels)
    z_next = samplers.ddim_step(z_mid, tf.cast(x0, z_t.dtype), tf.cast(eps, z_t.dtype), alpha_mid, alpha_next, 0.0, 0.0)
    return x0_target(z_t, z_next, alpha_t, alpha_next), z_next


def distillation_loss(target_x0, predicted_x0, alpha_bar):
    """The batch mean of max(SNR_t, 1) · mean over elements of (x̃ − x̂_θ)²."""
    batch = tf.shape(target_x0)[0]
    per_example = tf.reduce_mean(tf.reshape(tf.square(target_x0 - predicted_x0), [batch, -1]), axis=1)
    weight = tf.cast(tf.reshape(truncated_snr_weight(alpha_bar), [-1]), per_example.dtype)
    return tf.reduce_mean(weight * per_example)


def round_steps(initial_steps, final_steps):
    """[(teacher steps, student steps)] of the rounds initial → initial/2 → … → final."""
    rounds, steps = [], initial_steps
    while steps > final_steps:
        rounds.append((steps, steps // 2))
        steps //= 2
    return rounds


def round_seed(seed, round_index):
    """The seed of round K's batches and draws: a function of (seed, K)."""
    return int(np.random.SeedSequence([seed, round_index]).generate_state(1)[0])


# -- the student and its training -------------------------------------------------------------
def make_student(teacher, num_steps, prediction_type=None):
    """A copy of `teacher` (built) with `distilled_steps=num_steps`, predicting `prediction_type` (default:
    the teacher's); the network is rebuilt from the teacher's config and its weights are copied."""
    model_config = teacher.get_config()
    model_config.update(distilled_steps=num_steps, prediction_type=prediction_type or teacher.prediction_type)
    student = DiffusionModel.from_config(model_config)
    batch = (1,) + tuple(teacher.data_shape)
    labels = None if student.num_classes is None else tf.zeros((1,), tf.int32)
    student(tf.zeros(batch), tf.zeros((1,), tf.int32), labels)
    student.network.set_weights(teacher.network.get_weights())
    return student


class ProgressiveDistiller(keras.Model):
    """Trains `student` so that one of its DDIM steps equals two of `teacher`'s (Salimans & Ho 2022, Algorithm 2).

    `fit` it on batches of data (x in model space, with labels for a class-conditional model); each
    step draws i ~ U{1, …, N} (t = g_{2i} of the teacher's 2N-step grid, see the module doc), ε and,
    with the student's `label_dropout`, which labels become the null class — all stateless functions
    of (`seed`, optimizer step) — and minimises `distillation_loss`. Only the student is trained
    and checkpointed; the teacher is kept out of Keras' tracking.

    Args:
      student: a built `DiffusionModel` with `distilled_steps` N (`make_student`).
      teacher: a built `DiffusionModel` of the same process, sampled here in 2N steps.
      seed: seed of the draws.
    """

    def __init__(self, student, teacher, seed=0, **kwargs):
        super().__init__(**kwargs)
        if student.distilled_steps is None or not np.array_equal(student.diffusion.betas, teacher.diffusion.betas):
            raise ValueError(f"The student must have distilled_steps and the teacher's process. Received: "
                             f"distilled_steps={student.distilled_steps}, {student.diffusion} and {teacher.diffusion}")
        self.student = student
        object.__setattr__(self, "teacher", teacher)
        self.noise_seed = seed
        self.teacher_grid = distilled_timesteps(student.diffusion.num_timesteps, 2 * student.distilled_steps)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.nonfinite_tracker = keras.metrics.Sum(name="nonfinite_steps")
        self.built = True

    @property
    def metrics(self):
        return [self.loss_tracker, self.nonfinite_tracker]

    def draws(self, x0, labels, step):
        """((t, t', t''), ε, labels with dropout) for the batch x0 at optimizer step `step`."""
        seed = tf.stack([tf.cast(self.noise_seed, tf.int64), tf.cast(step, tf.int64)])
        index_seed, noise_seed, drop_seed = (tf.random.experimental.stateless_fold_in(seed, i) for i in range(3))
        batch = tf.shape(x0)[:1]
        i = tf.random.stateless_uniform(batch, index_seed, minval=1, maxval=self.student.distilled_steps + 1,
                                        dtype=tf.int32)
        grid = tf.constant(self.teacher_grid, tf.int32)
        timesteps = tuple(tf.gather(grid, 2 * i - offset) for offset in (0, 1, 2))
        noise = tf.random.stateless_normal(tf.shape(x0), noise_seed, dtype=x0.dtype)
        if labels is None or self.student.num_classes is None:
            return timesteps, noise, None
        return timesteps, noise, self.student.drop_labels(labels, drop_seed, batch)

    def batch_loss(self, x0, labels, step, training=False):
        """`distillation_loss` of one batch of data at optimizer step `step`."""
        x0 = tf.cast(x0, tf.float32)
        timesteps, noise, labels = self.draws(x0, labels, step)
        diffusion = self.student.diffusion
        z_t = diffusion.q_sample(x0, timesteps[0], noise)
        target = tf.stop_gradient(teacher_target(self.teacher.denoise, diffusion, z_t, timesteps, labels)[0])
        prediction = self.student(z_t, timesteps[0], labels, training=training)
        predicted_x0 = diffusion.x0_and_eps(z_t, timesteps[0], prediction, self.student.prediction_type)[0]
        return distillation_loss(target, predicted_x0, diffusion.alpha_bar(timesteps[0], z_t))

    def train_step(self, data):
        x0, labels = data if isinstance(data, tuple) else (data, None)
        return guarded_train_step(self, lambda: self.batch_loss(x0, labels, self.optimizer.iterations, training=True))


# -- the run ---------------------------------------------------------------------------------------
def _check_teacher_steps(teacher, config):
    initial = config.distill.initial_steps
    if not isinstance(teacher, DiffusionModel):
        raise config_lib.ConfigError(f"The teacher must be a DiffusionModel. Received: config.distill.teacher="
                                     f"{config.distill.teacher!r} holding a {type(teacher).__name__}")
    limit = teacher.distilled_steps or teacher.diffusion.num_timesteps
    if initial > limit or (teacher.distilled_steps and initial != limit):
        allowed = f"equal its distilled_steps={limit}" if teacher.distilled_steps else f"be at most its T={limit}"
        raise config_lib.ConfigError(f"config.distill.initial_steps must {allowed} for this teacher. Received: "
                                     f"config.distill.initial_steps={initial}")


def _prepare(config, workdir):
    """Checks the teacher and the data before anything is written; returns (teacher path, examples)."""
    teacher_path = config_lib.distill_teacher_path(config.distill.teacher)
    requested = config_lib.config_to_dict(config)
    if os.path.exists(os.path.join(workdir, "config.json")):
        config_lib.check_same_run(builders.read_workdir_record(workdir)[0].to_dict(), requested, workdir)
    teacher = builders.load_model(teacher_path, compile=False)
    _check_teacher_steps(teacher, config)
    examples = builders.training_data(config.data, config.seed)
    logging.info("Distillation data: %s", examples.description)
    if tuple(teacher.data_shape) != tuple(examples.element_shape):
        raise config_lib.ConfigError(f"The data must have the teacher's shape {tuple(teacher.data_shape)}. Received: "
                                     f"examples of shape {tuple(examples.element_shape)} from config.data.name="
                                     f"{config.data.name!r}")
    os.makedirs(workdir, exist_ok=True)
    checkpoints.atomic_write_json(os.path.join(workdir, "config.json"), requested | {
        "data_shape": list(examples.element_shape),
        "class_names": None if examples.class_names is None else list(examples.class_names)})
    return teacher_path, examples


def distill(config, workdir):
    """Runs (or resumes) the rounds of `config` (see `config.base_distill_config`) in `workdir`; returns a summary."""
    config_lib.validate_distill_config(config)
    if config.train.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(config.seed)
    teacher_path, examples = _prepare(config, workdir)
    rounds = []
    for index in range(1, len(round_steps(config.distill.initial_steps, config.distill.final_steps)) + 1):
        round_dir = os.path.join(workdir, f"round_{index}")
        if not os.path.isfile(os.path.join(round_dir, MODEL_FILE)):
            run_round(config, round_dir, index, teacher_path, examples)
        with open(os.path.join(round_dir, "round.json"), encoding="utf-8") as f:
            rounds.append(json.load(f))
        teacher_path = os.path.join(round_dir, MODEL_FILE)
    with checkpoints.atomic_path(os.path.join(workdir, MODEL_FILE)) as temporary:
        shutil.copyfile(teacher_path, temporary)
    rounds_figure(config_lib.distill_teacher_path(config.distill.teacher), config.distill.initial_steps,
                  [os.path.join(workdir, f"round_{r['round']}", MODEL_FILE) for r in rounds],
                  os.path.join(workdir, "rounds.png"), num_images=config.sample.num_samples, seed=config.sample.seed,
                  mixed_precision=config.train.mixed_precision)
    summary = {"name": config.name, "final_steps": config.distill.final_steps, "rounds": rounds}
    checkpoints.atomic_write_json(os.path.join(workdir, "summary.json"), summary)
    logging.info("Done: %s", summary)
    return summary


def rounds_figure(teacher_path, teacher_steps, student_paths, path, *, num_images=8, seed=0, mixed_precision="auto"):
    """One row per model from the same x_T: the teacher's DDIM in `teacher_steps`, then each student in its own
    steps (DDIM is deterministic given x_T, so each row shows what its round kept of the teacher's map
    x_T → x_0). Class-conditional models cycle through the classes. Returns {row title: images}.

    The teacher row is the teacher on the grid it was distilled on (`make_student(teacher, teacher_steps)`
    samples there), not on the default spacing's timesteps, computing under `mixed_precision` as the rounds
    did (`run_round`); the students were saved computing so."""
    teacher = builders.load_model(teacher_path, compile=False).inference_model(mixed_precision)[0]
    models = {f"teacher {teacher_steps}": teacher if teacher.distilled_steps else make_student(teacher, teacher_steps)}
    for student_path in student_paths:
        student = builders.load_model(student_path, compile=False)
        models[f"student {student.distilled_steps}"] = student
    rows = {title: model.generate(num_images, seed=seed, labels=None if model.num_classes is None else
                                  np.arange(num_images) % model.num_classes) for title, model in models.items()}
    with checkpoints.atomic_path(path) as temporary:
        plots.save_image_grid(np.concatenate(list(rows.values())), temporary, columns=num_images,
                              labels=np.repeat(list(rows), num_images),
                              title=f"DDIM steps, the same x_T in every row (seed {seed})")
    return rows


def run_round(config, round_dir, index, teacher_path, examples):
    """Round `index`: trains (or resumes) the student of the teacher at `teacher_path` in `round_dir`."""
    # Teacher and student compute under the resolved policy whatever the teacher was saved with (a teacher
    # trained in mixed_bfloat16 on an AMX machine would otherwise run at half speed on a CPU without AMX).
    teacher, policy, reason = builders.load_model(teacher_path, compile=False).inference_model(
        config.train.mixed_precision)
    logging.info("Round %d computes in %s (config.train.mixed_precision=%r: %s)", index, policy,
                 config.train.mixed_precision, reason)
    teacher_steps = teacher.distilled_steps or config.distill.initial_steps
    student = make_student(teacher, teacher_steps // 2, config.distill.prediction_type)
    seed = round_seed(config.seed, index)
    distiller = ProgressiveDistiller(student, teacher, seed=seed)
    steps = config.distill.steps_per_round
    distiller.compile(optimizer=builders.build_optimizer(config.optimizer, steps),
                      jit_compile=builders.resolve_jit_compile(config.train.jit_compile),
                      steps_per_execution=config.train.steps_per_execution)
    distiller.optimizer.build(distiller.trainable_variables)
    manager = checkpoints.CheckpointManager(os.path.join(round_dir, "checkpoints"), distiller,
                                            keep=config.train.keep_checkpoints)
    start_step, started = manager.restore(), time.time()
    final_loss = None
    if start_step < steps:
        logging.info("Round %d: %d → %d steps, training steps %d → %d in %s", index, teacher_steps,
                     student.distilled_steps, start_step, steps, round_dir)
        batches = examples.batches(config.data.batch_size, seed=seed, start_step=start_step,
                                   with_labels=student.num_classes is not None)
        student.check_first_batch(batches)
        final_loss = training.keras_fit_loop(
            distiller, batches, start_step=start_step, total_steps=steps,
            checkpoint_every=config.train.checkpoint_every, log_every=config.train.log_every, manager=manager,
            workdir=round_dir, verbose=config.train.verbose)
    if distiller.optimizer.use_ema:
        distiller.optimizer.finalize_variable_values(distiller.trainable_variables)
    reports.write_samples(student, os.path.join(round_dir, "samples.png"), name=f"{config.name} round {index}",
                          num_samples=config.sample.num_samples, seed=config.sample.seed, sampler="ddim",
                          num_steps=student.distilled_steps)
    record = {"round": index, "teacher_steps": teacher_steps, "student_steps": student.distilled_steps,
              "grid": distilled_timesteps(student.diffusion.num_timesteps, student.distilled_steps).tolist(),
              "steps": steps, "resumed_from": start_step, "final_loss": final_loss, "seconds": time.time() - started,
              "mixed_precision": policy, "mixed_precision_reason": reason}
    checkpoints.atomic_write_json(os.path.join(round_dir, "round.json"), record)
    # Written last: its presence marks the round done.
    with checkpoints.atomic_path(os.path.join(round_dir, MODEL_FILE)) as temporary:
        student.save(temporary)
    return record
