"""Files that must never be seen half-written: the one atomic-write helper and `CheckpointManager`.

Every file or directory tfdiffusion writes for later (checkpoints, `model.keras`, `config.json`,
`summary.json`, metric caches, evaluation reports, figures, SavedModel exports, TF Serving's
`models.config`) is written under a temporary hidden name in the target's directory and renamed
onto the target only when complete, so a kill at any moment leaves the previous good file intact.
"""

import contextlib
import json
import os
import shutil
import tempfile
import uuid

import numpy as np
from absl import logging


class CheckpointError(ValueError):
    """No checkpoint of a workdir can be read."""


@contextlib.contextmanager
def atomic_path(path, *, directory=False, overwrite=True):
    """Yields a temporary path beside `path`; renames it onto `path` only if the block succeeds.

    Args:
      path: the file (or, with `directory=True`, the directory) to create or replace.
      directory: create the temporary as an empty directory (e.g. for a SavedModel).
      overwrite: when False, raise FileExistsError instead of replacing an existing `path`
        (checked before and after writing).

    The temporary name starts with "." (TF Serving's version scan and `ls` ignore it) and keeps
    `path`'s suffix, since some writers choose the format from it (".keras", ".weights.h5").
    """
    path = os.path.abspath(os.fspath(path))
    parent, name = os.path.split(path)
    if not overwrite and os.path.lexists(path):
        raise FileExistsError(f"Refusing to overwrite an existing file. Received: path={path!r}")
    os.makedirs(parent, exist_ok=True)
    stem, dot, suffix = name.partition(".")
    if directory:
        # os.mkdir applies the umask (mkdtemp's 0700 would hide an export from a server run as another user).
        temporary = os.path.join(parent, f".{name}.partial-{uuid.uuid4().hex[:12]}")
        os.mkdir(temporary)
    else:
        descriptor, temporary = tempfile.mkstemp(prefix=f".{stem}.partial-", suffix=dot + suffix, dir=parent)
        os.close(descriptor)
        os.remove(temporary)  # writers such as h5py want to create the file themselves
    try:
        yield temporary
        if not overwrite and os.path.lexists(path):  # created by someone else meanwhile
            raise FileExistsError(f"Refusing to overwrite an existing file. Received: path={path!r}")
        if directory and os.path.isdir(path) and overwrite:
            shutil.rmtree(path)
        os.replace(temporary, path)
    finally:
        if os.path.isdir(temporary) and not os.path.islink(temporary):
            shutil.rmtree(temporary, ignore_errors=True)
        elif os.path.lexists(temporary):
            os.remove(temporary)


def atomic_write_text(path, text):
    """Writes `text` to `path` atomically (flushed to disk before the rename)."""
    with atomic_path(path) as temporary:
        with open(temporary, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    return path


def atomic_write_json(path, payload):
    """Writes `payload` as indented JSON to `path` atomically."""
    return atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"Cannot write {type(value).__name__} as JSON. Received: {value!r}")


class CheckpointManager:
    """Keeps the newest `keep` checkpoints of a model's weights and its optimizer (and EMA) state.

    Each checkpoint is written through `atomic_path`, so a kill at any moment leaves every
    existing checkpoint intact. `restore` falls back to an older checkpoint when the newest
    cannot be read or holds non-finite weights.

    Args:
      directory: where `ckpt-<step>.weights.h5` files go (created if missing).
      model: the built, compiled `keras.Model` whose weights are saved.
      keep: how many of the newest checkpoints to keep.
    """

    def __init__(self, directory, model, keep=3):
        self.directory = directory
        self.model = model
        self.keep = keep
        os.makedirs(directory, exist_ok=True)

    def path(self, step):
        return os.path.join(self.directory, f"ckpt-{step:09d}.weights.h5")

    def steps(self):
        found = []
        for name in os.listdir(self.directory):
            if name.startswith("ckpt-") and name.endswith(".weights.h5"):
                with contextlib.suppress(ValueError):
                    found.append(int(name[len("ckpt-"):-len(".weights.h5")]))
        return sorted(found)

    def save(self, step):
        with atomic_path(self.path(step)) as temporary:
            self.model.save_weights(temporary)
        for old in self.steps()[: -self.keep]:
            os.remove(self.path(old))

    def restore(self, input_shape=None):
        """Builds what is unbuilt, loads the newest good checkpoint, and returns the optimizer's step.

        The model must be built before weights can load into it: a model that has never been
        called is built here for examples of `input_shape` (e.g. `(28, 28, 1)`), and its
        optimizer's variables are created, so that the order of these steps is never the
        caller's to get wrong. The step returned is the optimizer's iteration count after
        restoring (0 for a new model and no checkpoint), the same number `save` names
        checkpoints by, so `fit(..., initial_epoch=step // steps_per_epoch)` continues it.

        Args:
          input_shape: the shape of one example, needed only when the model is not built.

        Raises:
          CheckpointError: checkpoints exist but none of them can be read.
          ValueError: the model is unbuilt and `input_shape` is missing.
        """
        self._build(input_shape)
        for step in reversed(self.steps()):
            try:
                self.model.load_weights(self.path(step))
            except Exception as error:  # h5py raises OSError, KeyError, ValueError… on damage
                logging.warning("Checkpoint %s is unreadable (%s); trying an older one.", self.path(step), error)
                continue
            if all(np.all(np.isfinite(v.numpy())) for v in self.model.weights):
                logging.info("Restored %s (step %d).", self.path(step), step)
                return self._optimizer_step()
            logging.warning("Checkpoint %s holds non-finite weights; trying an older one.", self.path(step))
        if self.steps():
            raise CheckpointError(f"No readable checkpoint in {self.directory}; move the damaged files away to start "
                                  f"over. Received: checkpoint steps {self.steps()}")
        return self._optimizer_step()

    def _build(self, input_shape):
        if not self.model.built:
            if input_shape is None:
                raise ValueError("The model has not been called yet, so its weights do not exist: pass the shape of "
                                 "one example, e.g. restore(input_shape=(28, 28, 1)). Received: input_shape=None")
            self.model.build((1,) + tuple(input_shape))
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)

    def _optimizer_step(self):
        optimizer = getattr(self.model, "optimizer", None)
        return 0 if optimizer is None else int(optimizer.iterations.numpy())
