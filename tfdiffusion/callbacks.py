"""The Keras callbacks of a training run: stop on a non-finite loss, a checkpoint per `fit` epoch, a progress
line with ETA, and TensorBoard grids of EMA samples. `training` attaches them; a user's own `fit` can too.
"""

import sys
import time

import keras
import numpy as np
import tensorflow as tf

from tfdiffusion import plots


class NonFiniteLossError(RuntimeError):
    """Raised when a training step produced a NaN or infinite loss."""


def nonfinite_loss_error(step):
    return NonFiniteLossError(f"The training loss was not finite at step {step}; that update was not applied and "
                              "training stopped. Lower the learning rate or check the data.")


# -- callbacks -----------------------------------------------------------------------------------
class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops `fit` with `NonFiniteLossError` naming the step (the step's update was skipped)."""

    def on_train_batch_end(self, batch, logs=None):
        if logs and logs.get("nonfinite_steps", 0) > 0:
            raise nonfinite_loss_error(int(self.model.optimizer.iterations.numpy()))


class CheckpointEveryEpoch(keras.callbacks.Callback):
    """Saves a checkpoint through `manager` at the end of every `fit` epoch (`checkpoint_every` steps)."""

    def __init__(self, manager):
        super().__init__()
        self.manager = manager

    def on_epoch_end(self, epoch, logs=None):
        self.manager.save(int(self.model.optimizer.iterations.numpy()))


def _duration(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


class ProgressBar(keras.callbacks.Callback):
    """The run's step, loss, time per step and ETA, after every `fit` step.

    On a terminal one line is redrawn in place (at most 5 times a second); elsewhere (CI logs,
    files) a line is printed every `log_every` steps and at the end, so that logs stay readable.
    Time per step and the ETA leave out the first call, which includes tracing the graph.

    Args:
      total_steps: the step the run ends at.
      log_every: steps between lines when not on a terminal.
      stream: where to write (default sys.stdout).
      interactive: redraw in place (default: whether `stream` is a terminal).
      clock: seconds, as `time.monotonic`.
    """

    def __init__(self, total_steps, log_every, stream=None, interactive=None, clock=time.monotonic):
        super().__init__()
        self.total_steps, self.log_every = total_steps, log_every
        self.stream = stream or sys.stdout
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.clock = clock
        self._timed_from = None
        self._last_draw = 0.0

    def on_train_batch_end(self, batch, logs=None):
        step, now = int(self.model.optimizer.iterations.numpy()), self.clock()
        if self._timed_from is None:
            self._timed_from = (step, now)
        first_step, started = self._timed_from
        per_step = (now - started) / (step - first_step) if step > first_step else None
        loss = float((logs or {}).get("loss", float("nan")))
        line = f"step {step}/{self.total_steps} loss {loss:.4f}"
        if per_step is not None:
            line += f" · {per_step:.3g} s/step · ETA {_duration(per_step * (self.total_steps - step))}"
        if self.interactive:
            if now - self._last_draw >= 0.2 or step >= self.total_steps:
                done = int(30 * step / self.total_steps)
                print(f"\r[{'=' * done}{'.' * (30 - done)}] {line}\033[K", end="", file=self.stream, flush=True)
                self._last_draw = now
        elif step % self.log_every == 0 or step >= self.total_steps:
            print(line, file=self.stream, flush=True)

    def on_train_end(self, logs=None):
        if self.interactive:
            print(file=self.stream, flush=True)


def sample_images(model, sample):
    """`model.generate` of a config's `sample` section, cycling through the classes of a conditional model."""
    request = dict(sample)
    num_samples = request.pop("num_samples")
    labels = None if model.num_classes is None else np.arange(num_samples) % model.num_classes
    guidance_scale = request.pop("guidance_scale", 0.0)
    request["num_steps"] = request.get("num_steps") or None
    return model.generate(num_samples, labels=labels, guidance_scale=guidance_scale if labels is not None else None,
                          **request)


class SampleGrid(keras.callbacks.Callback):
    """Every `every` steps, a grid of samples drawn with the EMA weights to TensorBoard (`tf.summary.image`).

    The request (a config's `sample` section, seed included) is the same every time, so the grids
    show how the same noise is denoised as training goes on.

    Args:
      log_dir: the TensorBoard run directory (e.g. workdir/logs/samples).
      every: steps between grids.
      sample: the request of `sample_images`.
    """

    def __init__(self, log_dir, every, sample):
        super().__init__()
        self.log_dir, self.every, self.sample = log_dir, every, dict(sample)
        self._writer = None
        self._written = None

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if self._written is None:
            self._written = (step - 1) // self.every
        if step // self.every > self._written:
            self._written = step // self.every
            self.write(step)

    def write(self, step):
        with self.model.ema_weights():
            images = sample_images(self.model, self.sample)
        low, high = self.model.data_range or (-1.0, 1.0)
        grid = plots.image_grid((images - low) / (high - low))
        self._writer = self._writer or tf.summary.create_file_writer(self.log_dir)
        with self._writer.as_default():
            tf.summary.image("samples (EMA weights)", grid[np.newaxis], step=step)
        self._writer.flush()
