"""Progressive distillation: the grids, the target on an analytic denoiser, the loss weighting, tiny rounds end
to end, the distilled model's sampling and export, resume, and tools/distill.py's usage errors."""

import os
import pathlib
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from test_training import write_idx_mnist
from training_runs import checkpoint_arrays
from tfdiffusion import analytic, builders, distillation, export, layers, precision, samplers, schedules, training
from tfdiffusion import config as config_lib
from tfdiffusion.diffusion import PREDICTION_TYPES, GaussianDiffusion, eps_from_x0
from tfdiffusion.model import DiffusionModel, distilled_timesteps

ROOT = pathlib.Path(__file__).resolve().parents[1]
DISTILL = [sys.executable, str(ROOT / "tools" / "distill.py")]


def load_config(name, variant="tiny"):
    namespace = {}
    exec(compile((ROOT / "configs" / f"{name}.py").read_text(), name, "exec"), namespace)
    return namespace["get_config"](variant)


# -- the grids ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_timesteps", [400, 1000, 10, 7])
def test_grids_span_the_chain_and_nest(num_timesteps):
    for num_steps in range(1, num_timesteps + 1):
        grid = distilled_timesteps(num_timesteps, num_steps)
        assert grid[0] == -1 and grid[-1] == num_timesteps - 1 and len(grid) == num_steps + 1
        assert np.all(np.diff(grid) >= 1)
        if 2 * num_steps <= num_timesteps:  # the 2N-step teacher passes through every student point
            np.testing.assert_array_equal(distilled_timesteps(num_timesteps, 2 * num_steps)[::2], grid)
    np.testing.assert_array_equal(distilled_timesteps(num_timesteps, num_timesteps), np.arange(-1, num_timesteps))


def test_round_steps_halve_down_to_the_final_count():
    assert distillation.round_steps(256, 4) == [(256, 128), (128, 64), (64, 32), (32, 16), (16, 8), (8, 4)]
    assert distillation.round_steps(8, 2) == [(8, 4), (4, 2)]
    assert config_lib.PREDICTION_TYPES == PREDICTION_TYPES  # config.py repeats them without TensorFlow


# -- the objective ------------------------------------------------------------------------------------
def test_one_student_step_to_the_target_equals_two_teacher_steps():
    """With the exact ε* of Gaussian data as the teacher, one DDIM step of x̃ lands on two teacher DDIM steps."""
    diffusion = GaussianDiffusion(schedules.make_betas("linear", 400))
    data = analytic.Gaussian(0.3, 0.5)
    grid = distilled_timesteps(400, 8)  # the teacher's; the student steps g_{2i} → g_{2i−2}
    rng = np.random.default_rng(0)
    for i in (4, 1):  # a step inside the chain, and the last step into the data
        t, t_mid, t_next = grid[2 * i], grid[2 * i - 1], grid[2 * i - 2]
        z_t = rng.standard_normal((64, 1))
        timesteps = tuple(tf.fill([64], tf.constant(s, tf.int32)) for s in (t, t_mid, t_next))
        target, _ = distillation.teacher_target(data.denoise_fn(diffusion), diffusion, tf.constant(z_t), timesteps)
        alpha = np.append(1.0, diffusion.alphas_cumprod)[np.array([t, t_mid, t_next]) + 1]
        z = z_t  # the teacher's two steps, in NumPy: z_s = √ᾱ_s x̂_0 + √(1 − ᾱ_s) ε̂ (Song et al. 2020, eq. 12, η = 0)
        for now, after in ((alpha[0], alpha[1]), (alpha[1], alpha[2])):
            z = np.sqrt(after) * data.x0(z, now) + np.sqrt(1.0 - after) * data.eps(z, now)
        alpha_t, alpha_next = (tf.constant(a, tf.float64) for a in (alpha[0], alpha[2]))
        student_eps = eps_from_x0(tf.constant(z_t), target, alpha_t)
        one_step = samplers.ddim_step(tf.constant(z_t), target, student_eps, alpha_t, alpha_next, 0.0, 0.0).numpy()
        assert target.dtype == tf.float64
        np.testing.assert_allclose(one_step, z, rtol=0, atol=1e-6)
    np.testing.assert_allclose(target.numpy(), z, rtol=0, atol=1e-12)  # into the data, x̃ is z_t'' itself


def test_truncated_snr_loss_is_the_larger_of_the_x0_and_eps_losses():
    """max(SNR, 1)‖x̃ − x̂‖² = max(‖x̃ − x̂‖², ‖ε̃ − ε̂‖²) at fixed z_t (Salimans & Ho 2022, §4)."""
    rng = np.random.default_rng(1)
    alpha_bar = tf.constant([0.999, 0.7, 0.5, 0.2, 3.6e-5], tf.float64)[:, None]  # SNR from 999 to 3.6e-5
    z_t, target, predicted = (tf.constant(rng.standard_normal((5, 6)), tf.float64) for _ in range(3))
    loss = distillation.distillation_loss(target, predicted, alpha_bar).numpy()
    x0_loss = np.mean((target - predicted).numpy() ** 2, axis=1)
    eps_loss = np.mean((eps_from_x0(z_t, target, alpha_bar) - eps_from_x0(z_t, predicted, alpha_bar)).numpy() ** 2, 1)
    np.testing.assert_allclose(loss, np.mean(np.maximum(x0_loss, eps_loss)), rtol=1e-12)
    snr = (alpha_bar / (1.0 - alpha_bar)).numpy().ravel()
    np.testing.assert_allclose(distillation.truncated_snr_weight(alpha_bar).numpy().ravel(), np.maximum(snr, 1.0))


def _toy_model(prediction_type="epsilon", num_classes=None, label_dropout=0.0):
    network = layers.MLPDenoiser(2, hidden_units=16, num_hidden_layers=1, time_embedding_dim=8, num_classes=num_classes)
    model = DiffusionModel(network, GaussianDiffusion(schedules.make_betas("cosine", 10)),
                           prediction_type=prediction_type, data_range=None, label_dropout=label_dropout)
    model(tf.zeros((1, 2)), tf.zeros((1,), tf.int32), None if num_classes is None else tf.zeros((1,), tf.int32))
    return model


def test_student_is_the_teacher_copied_with_its_step_count_and_prediction_type():
    teacher = _toy_model()
    student = distillation.make_student(teacher, 4, "v")
    assert (student.distilled_steps, student.prediction_type, teacher.distilled_steps) == (4, "v", None)
    for a, b in zip(student.network.get_weights(), teacher.network.get_weights()):
        np.testing.assert_array_equal(a, b)
    x, t = tf.random.stateless_normal((3, 2), (0, 1)), tf.constant([0, 4, 9])
    np.testing.assert_array_equal(student(x, t).numpy(), teacher(x, t).numpy())  # same network output, read as v


def test_draws_lie_on_the_grids_and_are_functions_of_seed_and_step():
    teacher = _toy_model()
    distiller = distillation.ProgressiveDistiller(distillation.make_student(teacher, 2), teacher, seed=5)
    x0 = tf.zeros((256, 2))
    (t, t_mid, t_next), noise, _ = distiller.draws(x0, None, tf.constant(7, tf.int64))
    student_grid = distilled_timesteps(10, 2)  # [-1, 4, 9]
    assert set(t.numpy()) == {4, 9}  # both student steps are drawn
    np.testing.assert_array_equal(t_next.numpy(), np.where(t.numpy() == 9, 4, -1))
    np.testing.assert_array_equal(t_mid.numpy(), np.where(t.numpy() == 9, 7, 2))  # the 4-step grid [-1, 2, 4, 7, 9]
    assert set(t.numpy()) <= set(student_grid[1:])
    again = distiller.draws(x0, None, tf.constant(7, tf.int64))
    np.testing.assert_array_equal(again[1].numpy(), noise.numpy())
    np.testing.assert_array_equal(again[0][0].numpy(), t.numpy())
    assert not np.array_equal(distiller.draws(x0, None, tf.constant(8, tf.int64))[1].numpy(), noise.numpy())


def test_a_class_conditional_teacher_is_distilled_for_its_labels_and_the_null_class():
    teacher = _toy_model(num_classes=3, label_dropout=0.5)
    distiller = distillation.ProgressiveDistiller(distillation.make_student(teacher, 2, "v"), teacher, seed=1)
    labels = tf.constant([0, 1, 2, 0] * 64)
    dropped = distiller.draws(tf.zeros((256, 2)), labels, tf.constant(3, tf.int64))[2].numpy()
    assert 0.35 < np.mean(dropped == 3) < 0.65 and np.all((dropped == 3) | (dropped == labels.numpy()))
    distiller.compile(optimizer=keras.optimizers.Adam(1e-3))
    data = tf.data.Dataset.from_tensors((tf.random.stateless_normal((8, 2), (0, 2)), labels[:8])).repeat()
    history = distiller.fit(data, steps_per_epoch=3, epochs=1, verbose=0, shuffle=False).history
    assert np.isfinite(history["loss"][-1]) and history["nonfinite_steps"][-1] == 0
    samples = distiller.student.generate(4, labels=[0, 1, 2, 3], guidance_scale=1.0)
    assert samples.shape == (4, 2) and np.all(np.isfinite(samples))


def test_the_distill_configs_validate():
    for variant in (None, "tiny"):
        config = load_config("mnist_distill", variant)
        with pytest.raises(config_lib.ConfigError, match="Received: config.distill.teacher=''"):
            config_lib.validate_distill_config(config)  # the teacher comes from the command line
        config.distill.teacher = "runs/mnist"
        config_lib.validate_distill_config(config)
    assert load_config("mnist_distill", None).distill.final_steps == 4
    config.train.mixed_precision = "bf16"
    with pytest.raises(config_lib.ConfigError, match="Received: config.train.mixed_precision='bf16'"):
        config_lib.validate_distill_config(config)


# -- tiny runs ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    return write_idx_mnist(tmp_path_factory.mktemp("idx"))


@pytest.fixture(scope="module")
def teacher_workdir(tmp_path_factory, idx_dir):
    config = load_config("mnist")
    config.data.update({"source": "idx", "idx_dir": str(idx_dir)})
    config.train.verbose = False
    workdir = tmp_path_factory.mktemp("teacher")
    training.train(config, str(workdir))
    return workdir


def distill_config(teacher_workdir, idx_dir, **distill):
    config = load_config("mnist_distill")
    config.distill.teacher = str(teacher_workdir)
    config.distill.update(distill)
    config.data.update({"source": "idx", "idx_dir": str(idx_dir)})
    config.train.verbose = False
    return config


@pytest.fixture(scope="module")
def distilled(tmp_path_factory, teacher_workdir, idx_dir):
    workdir = tmp_path_factory.mktemp("distilled")
    return workdir, distillation.distill(distill_config(teacher_workdir, idx_dir), str(workdir))


def test_tiny_rounds_write_students_of_halved_step_counts(distilled):
    workdir, summary = distilled
    assert [(r["teacher_steps"], r["student_steps"], r["steps"]) for r in summary["rounds"]] == [(8, 4, 4), (4, 2, 4)]
    assert summary["rounds"][1]["grid"] == [-1, 199, 399]
    for index, steps in ((1, 4), (2, 2)):
        model = builders.load_model(workdir / f"round_{index}" / "model.keras")
        assert model.distilled_steps == steps and model.prediction_type == "v"
        assert (workdir / f"round_{index}" / "samples.png").stat().st_size > 500
        assert np.isfinite(summary["rounds"][index - 1]["final_loss"])
    final = builders.load_model(workdir / "model.keras")
    assert final.distilled_steps == 2 and final.get_config()["distilled_steps"] == 2


def test_the_rounds_figure_shows_teacher_and_students_from_the_same_noise(distilled, teacher_workdir):
    workdir, _ = distilled
    assert (workdir / "rounds.png").stat().st_size > 500
    rows = distillation.rounds_figure(str(teacher_workdir / "model.keras"), 8, [str(workdir / "model.keras")],
                                      str(workdir / "again.png"), num_images=4, seed=3)
    assert list(rows) == ["teacher 8", "student 2"]
    final = builders.load_model(workdir / "model.keras")
    np.testing.assert_array_equal(rows["student 2"], final.generate(4, seed=3))
    # The teacher row is the teacher's DDIM on the 8-step grid it was distilled on, in the rounds' precision.
    teacher = distillation.make_student(builders.load_model(teacher_workdir / "model.keras").inference_model()[0], 8)
    np.testing.assert_array_equal(rows["teacher 8"], teacher.generate(4, seed=3))


def test_rounds_compute_in_the_precision_auto_resolves_to_and_record_it(distilled):
    workdir, summary = distilled
    policy, reason = precision.resolve_precision("auto")
    assert [(r["mixed_precision"], r["mixed_precision_reason"]) for r in summary["rounds"]] == [(policy, reason)] * 2
    assert builders.load_model(workdir / "model.keras").network.dtype_policy.name == policy


def test_distilled_model_samples_by_ddim_on_its_grid_and_refuses_another_step_count(distilled):
    model = builders.load_model(distilled[0] / "model.keras")
    samples = model.generate(3, seed=4)  # DDIM in 2 steps by default
    np.testing.assert_array_equal(samples, model.generate(3, seed=4, sampler="ddim", num_steps=2))
    # The same two DDIM steps by hand, t = 399 → 199 → data, from the seed's x_T.
    x = tf.random.stateless_normal((3, 28, 28, 1), seed=tf.constant([4, 0], tf.int64))
    alpha_bar = np.append(1.0, model.diffusion.alphas_cumprod)
    for t, t_next in ((399, 199), (199, -1)):
        x0, eps = model.denoise(x, tf.fill([3], t))
        x = samplers.ddim_step(x, x0, eps, tf.constant(alpha_bar[t + 1]), tf.constant(alpha_bar[t_next + 1]), 0.0, 0.0)
    np.testing.assert_allclose(samples, model.to_data_space(x).numpy(), rtol=0, atol=1e-5)
    for num_steps in (1, 3, 400):
        with pytest.raises(ValueError, match=f"Received: num_steps={num_steps}$"):
            model.generate(2, num_steps=num_steps)


def test_distilled_model_exports_and_serves_the_samples_of_generate(distilled, tmp_path):
    model = builders.load_model(distilled[0] / "model.keras")
    path = export.export_sampler(model, tmp_path / "export")
    sample = tf.saved_model.load(path).signatures["sample"]
    served = sample(seed=tf.constant(11, tf.int64), num_samples=tf.constant(3), num_steps=tf.constant(2),
                    sampler=tf.constant("ddim"), eta=tf.constant(0.0), guidance_scale=tf.constant(0.0),
                    labels=tf.zeros([0], tf.int32), spacing=tf.constant("uniform"))["samples"].numpy()
    np.testing.assert_array_equal(served, model.generate(3, seed=11))
    with pytest.raises(tf.errors.InvalidArgumentError, match="distilled for. Received: num_steps=3"):
        sample(seed=tf.constant(11, tf.int64), num_samples=tf.constant(3), num_steps=tf.constant(3),
               sampler=tf.constant("ddim"), eta=tf.constant(0.0), guidance_scale=tf.constant(0.0),
               labels=tf.zeros([0], tf.int32), spacing=tf.constant("uniform"))


@pytest.mark.slow  # 10 s; the fast suite keeps the other round tests, and the SIGKILL test covers resuming too
def test_resuming_a_round_from_a_checkpoint_equals_the_uninterrupted_run(distilled, teacher_workdir, idx_dir, tmp_path):
    """A run that stopped after round 1's step-2 checkpoint (the state a kill there leaves) ends bitwise equal."""
    straight, _ = distilled
    resumed = tmp_path / "resumed"
    (resumed / "round_1" / "checkpoints").mkdir(parents=True)
    shutil.copy(straight / "config.json", resumed / "config.json")
    name = "ckpt-000000002.weights.h5"
    shutil.copy(straight / "round_1" / "checkpoints" / name, resumed / "round_1" / "checkpoints" / name)
    summary = distillation.distill(distill_config(teacher_workdir, idx_dir), str(resumed))
    assert [r["resumed_from"] for r in summary["rounds"]] == [2, 0]
    for index in (1, 2):
        a = checkpoint_arrays(straight / f"round_{index}" / "checkpoints" / "ckpt-000000004.weights.h5")
        b = checkpoint_arrays(resumed / f"round_{index}" / "checkpoints" / "ckpt-000000004.weights.h5")
        assert a.keys() == b.keys() and any(k.startswith("optimizer") for k in a)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"round {index}: {key}")
    for x, y in zip(keras.saving.load_model(straight / "model.keras").get_weights(),
                    keras.saving.load_model(resumed / "model.keras").get_weights()):
        np.testing.assert_array_equal(x, y)


def test_a_changed_config_or_a_teacher_of_too_few_steps_is_refused(distilled, teacher_workdir, idx_dir, tmp_path):
    changed = distill_config(teacher_workdir, idx_dir, steps_per_round=6)
    with pytest.raises(config_lib.ConfigError, match="config.distill.steps_per_round: saved 4, requested 6"):
        distillation.distill(changed, str(distilled[0]))
    student = distilled[0] / "round_2" / "model.keras"
    with pytest.raises(config_lib.ConfigError, match="distilled_steps=2.*Received: config.distill.initial_steps=8"):
        distillation.distill(distill_config(student, idx_dir), str(tmp_path / "again"))
    assert not (tmp_path / "again").exists()


# -- the binary --------------------------------------------------------------------------------------
def run_binary(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(DISTILL + list(args), capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)


@pytest.mark.parametrize("flags, message", [
    ([], "Received: config.distill.teacher=''"),
    (["--config.distill.teacher=/nonexistent"], "Received: config.distill.teacher='/nonexistent'"),
    (["--config.distill.teacher=/x", "--config.distill.final_steps=3"], "Received: config.distill.final_steps=3"),
    (["--config.distill.teacher=/x", "--config.distill.steps_per_round=0"],
     "Received: config.distill.steps_per_round=0"),
    (["--config.distill.teacher=/x", "--config.distill.prediction_type=score"],
     "Received: config.distill.prediction_type='score'"),
    (["--config.distill.stepz=3"], "config.distill has no key 'stepz'"),
])
def test_usage_errors_are_one_line_and_exit_1(tmp_path, flags, message):
    workdir = tmp_path / "run"
    result = run_binary("--config=configs/mnist_distill.py:tiny", f"--workdir={workdir}", *flags)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: ") and message in errors[0], result.stderr
    assert not workdir.exists()


@pytest.mark.parametrize("binary, config, message", [
    ("train.py", "configs/mnist_distill.py:tiny", "distillation config (it has a distill section): run it with "
                                                   "tools/distill.py"),
    ("distill.py", "configs/mnist.py:tiny", "training config (it has no distill section): run it with tools/train.py"),
])
def test_a_config_given_to_the_other_binary_is_one_line_and_exit_1(tmp_path, binary, config, message):
    workdir = tmp_path / "run"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, str(ROOT / "tools" / binary), f"--config={config}",
                             f"--workdir={workdir}"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(errors) == 1 and message in errors[0], result.stderr
    assert not workdir.exists()


def _progress(workdir, steps_per_round):
    """Optimizer steps checkpointed so far over all rounds: (round − 1)·steps_per_round + the newest step."""
    found = workdir.glob("round_*/checkpoints/ckpt-*.weights.h5")
    return max([(int(p.parent.parent.name.split("_")[1]) - 1) * steps_per_round + int(p.name[5:14]) for p in found],
               default=0)


@pytest.mark.slow
def test_sigkill_anywhere_then_resume_equals_an_uninterrupted_run(teacher_workdir, idx_dir, tmp_path):
    """Five SIGKILLs, in round 1, at its end or round 2's start, and inside round 2; then the run ends bitwise equal."""
    import random
    import signal
    import time

    flags = ["--config=configs/mnist_distill.py:tiny", f"--config.distill.teacher={teacher_workdir}",
             "--config.data.source=idx", f"--config.data.idx_dir={idx_dir}", "--config.distill.initial_steps=16",
             "--config.distill.steps_per_round=40", "--config.train.checkpoint_every=2", "--config.train.verbose=False",
             "--config.train.deterministic=True"]
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    assert run_binary(*flags, f"--workdir={straight}").returncode == 0
    rng, kills, target = random.Random(0), [], 0
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    while len(kills) < 5:
        process = subprocess.Popen(DISTILL + flags + [f"--workdir={interrupted}"], cwd=ROOT, env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        target = max(target, _progress(interrupted, 40)) + 2 * rng.randint(3, 12)  # 18, 36, 42, 56, 78 steps
        while process.poll() is None and _progress(interrupted, 40) < target:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.5))  # anywhere in a step, a checkpoint write or a round's end
        assert process.poll() is None, "the run ended before it could be killed; lengthen it"
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills.append(_progress(interrupted, 40))
    assert kills == sorted(kills) and kills[0] < 40 < kills[-1] < 120, kills
    assert run_binary(*flags, f"--workdir={interrupted}").returncode == 0
    for round_dir in sorted(straight.glob("round_*")):
        assert (round_dir / "model.keras").exists()
        a = checkpoint_arrays(round_dir / "checkpoints" / "ckpt-000000040.weights.h5")
        b = checkpoint_arrays(interrupted / round_dir.name / "checkpoints" / "ckpt-000000040.weights.h5")
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{round_dir.name}: {key}")
    for x, y in zip(keras.saving.load_model(straight / "model.keras").get_weights(),
                    keras.saving.load_model(interrupted / "model.keras").get_weights()):
        np.testing.assert_array_equal(x, y)
