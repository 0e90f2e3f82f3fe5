"""Export a `DiffusionModel`'s samplers as a SavedModel for TensorFlow Serving.

    import tfdiffusion as tfd
    from tfdiffusion import export
    path = export.export_for_serving(model, "/srv/models", "mnist")   # /srv/models/mnist/1
    # tensorflow_model_server --model_config_file=/srv/models/models.config --rest_api_port=8501

The SavedModel holds these signatures (see docs/SERVING.md):

| signature                     | inputs                                                            | outputs            |
|-------------------------------|-------------------------------------------------------------------|--------------------|
| `sample` (= `serving_default`)| seed int64 [], num_samples int32 [], num_steps int32 [],          | samples float32    |
|                               | sampler string [], eta float32 [], guidance_scale float32 [],     | [N, H, W, C]       |
|                               | labels int32 [N], spacing string []                               | (data space)       |
| `edit`                        | images float32 [N, H, W, C] (data space), mask float32            | samples float32    |
|                               | [N, H, W, 1] (1: keep, 0: generate; all zeros: image-to-image     | [N, H, W, C]       |
|                               | only), strength float32 [], and every input of `sample`           | (data space)       |
| `denoise`                     | x_t float32 [N, H, W, C], t int32 [N], labels int32 [N]           | eps float32 [N,H,W,C] |
| `limits`                      | none                                                              | num_timesteps, num_classes (0: unconditional), data_shape, data_range, max_num_samples (0: no bound), samplers, spacings |

`edit` takes images and mask of any rank, so that a wrong shape is refused by its own check, which
names the input, rather than by the feed.

The archive is written through `keras.export.ExportArchive`, whose SavedModel also loads
in the TF1-session loader that TF Serving and `saved_model_cli run` use (Keras 3 layers
saved from a plain `tf.Module` do not). No signature is XLA-compiled: TF Serving
runs without XLA on CPU, and the noise is drawn with `tf.random.stateless_normal` exactly
as `DiffusionModel.generate` draws it, so one seed gives the same samples (and edits) eagerly,
with `generate` and from the server.

A bad request (num_steps outside [1, T], num_samples < 1, an unknown sampler or spacing, eta
outside [0, 1], labels out of range or not one per sample for a class-conditional model, t outside
[0, T); for `edit` images not [N, H, W, C] or not finite, a mask not [N, H, W, 1] or outside {0, 1},
strength outside [0, 1], num_samples ≠ N) fails with an InvalidArgumentError whose message names the
argument, e.g. "num_steps must be in [1, 20]. Received: num_steps=0"; the server keeps serving. These
graph assertions live here only: the samplers and the model trust the tensors they are given, and
Python callers are checked where they enter (`DiffusionModel.generate`, `samplers.sample`).
"""

import os
import re

import keras
import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from tfdiffusion import samplers
from tfdiffusion.checkpoints import atomic_path, atomic_write_text
from tfdiffusion.model import DiffusionModel

SAMPLE_SIGNATURE = "sample"
EDIT_SIGNATURE = "edit"
DENOISE_SIGNATURE = "denoise"
LIMITS_SIGNATURE = "limits"
DEFAULT_SIGNATURE = "serving_default"
MODEL_CONFIG_FILE = "models.config"

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _check_model(model):
    if not isinstance(model, DiffusionModel):
        raise ValueError(f"model must be a tfdiffusion.DiffusionModel. Received: model={model!r}")
    if model.data_shape is None or not model.built:
        raise ValueError(
            "The model is not built: train it or call it on data, e.g. model(tf.zeros((1, H, W, C))), before "
            f"exporting. Received: model.data_shape={model.data_shape!r}"
        )


# -- graph assertions on a request ------------------------------------------------------------
def _assert(condition, template, *values):
    """A graph assertion whose message formats `values` into `template` at run time ("{}")."""
    return tf.debugging.Assert(condition, [tf.strings.format(template, values)])


def sample_checks(num_timesteps, *, sampler, num_steps, eta, num_samples, guidance_scale=None, labels=None,
                  null_label=None, max_num_samples=None, spacing=None):
    """Assertions on a `sample` request (InvalidArgumentError naming the argument), as a list of ops.

    `samplers.validate_request`'s checks for run-time values, plus the request's shape: num_samples
    (≥ 1, ≤ max_num_samples) and, given `null_label`, one label in [0, null_label] per sample.
    """
    names = tf.constant(list(samplers.SOLVERS))
    checks = [
        _assert(tf.reduce_any(tf.equal(sampler, names)), "Unknown sampler. Expected one of {}. Received: sampler={}",
                names, sampler),
        _assert(tf.logical_and(num_steps >= 1, num_steps <= num_timesteps),
                f"num_steps must be in [1, {num_timesteps}]. Received: num_steps={{}}", num_steps),
        _assert(tf.logical_and(eta >= 0.0, eta <= 1.0), "eta must be in [0, 1]. Received: eta={}", eta),
        _assert(num_samples >= 1, "num_samples must be >= 1. Received: num_samples={}", num_samples),
    ]
    if spacing is not None:
        spacings = tf.constant(list(samplers.SPACINGS))
        checks.append(_assert(tf.reduce_any(tf.equal(spacing, spacings)),
                              "Unknown spacing. Expected one of {}. Received: spacing={}", spacings, spacing))
    if max_num_samples is not None:
        checks.append(_assert(num_samples <= max_num_samples,
                              f"num_samples must be <= {max_num_samples}. Received: num_samples={{}}", num_samples))
    if guidance_scale is not None:
        checks.append(_assert(tf.math.is_finite(guidance_scale),
                              "guidance_scale must be finite. Received: guidance_scale={}", guidance_scale))
    if labels is not None and null_label is not None:
        checks += [
            _assert(tf.reduce_all(tf.logical_and(labels >= 0, labels <= null_label)),
                    f"labels must lie in [0, {null_label}]. Received: labels={{}}", labels),
            _assert(tf.equal(tf.size(labels), num_samples),
                    "labels must hold num_samples={} values. Received: labels={}", num_samples, labels),
        ]
    return checks


def _has_shape(tensor, expected):
    """Whether `tensor` has the shape `expected` (a list of ints, None for any), whatever its rank."""
    shape = tf.shape(tensor)

    def same():
        return tf.reduce_all([tf.equal(shape[i], d) for i, d in enumerate(expected) if d is not None])

    return tf.cond(tf.equal(tf.size(shape), len(expected)), same, lambda: tf.constant(False))


def _chained(*builders):
    """The assertions `builders` make, each created after the one before, so the first failure is reported."""
    checks = []
    for build in builders:
        with tf.control_dependencies(checks[-1:]):
            checks.append(build())
    return checks


def edit_checks(data_shape, *, images, mask, strength, num_samples):
    """Assertions on an `edit` request's images [N, *data_shape], mask [N, *data_shape[:-1], 1] in {0, 1},
    strength in [0, 1] and num_samples = N, in this order, as a list of ops (InvalidArgumentError naming
    the input)."""
    image_shape, mask_shape = [None] + list(data_shape), [None] + list(data_shape[:-1]) + [1]
    image_text, mask_text = (f"[N, {', '.join(str(d) for d in shape[1:])}]" for shape in (image_shape, mask_shape))
    rows = tf.shape(images)[:1]
    return _chained(
        lambda: _assert(_has_shape(images, image_shape),
                        f"images must have shape {image_text}. Received: images of shape {{}}", tf.shape(images)),
        lambda: _assert(tf.reduce_all(tf.math.is_finite(images)), "images must be finite. Received: images with NaN "
                        "or inf"),
        lambda: _assert(tf.logical_and(_has_shape(mask, mask_shape), tf.reduce_all(tf.equal(tf.shape(mask)[:1], rows))),
                        f"mask must have shape {mask_text}, one per image. Received: mask of shape {{}}",
                        tf.shape(mask)),
        lambda: _assert(tf.reduce_all(tf.logical_or(tf.equal(mask, 0.0), tf.equal(mask, 1.0))),
                        "mask must hold only 0 (generate) and 1 (keep). Received: mask values {}",
                        tf.unique(tf.reshape(mask, [-1]))[0][:5]),
        lambda: _assert(tf.logical_and(strength >= 0.0, strength <= 1.0),
                        "strength must be in [0, 1]. Received: strength={}", strength),
        lambda: _assert(tf.reduce_all(tf.equal(num_samples, rows)),
                        "num_samples must equal the number of images, {}. Received: num_samples={}", rows, num_samples),
    )


def denoise_checks(num_timesteps, *, x_t, t, labels=None, null_label=None):
    """Assertions on a `denoise` request: t in [0, T) and, given `null_label`, labels, one per row."""
    rows = tf.shape(x_t)[0]
    checks = [
        _assert(tf.reduce_all(tf.logical_and(t >= 0, t < num_timesteps)),
                f"t must lie in [0, {num_timesteps - 1}]. Received: t={{}}", t),
        _assert(tf.equal(tf.size(t), rows), "t must hold one timestep per row of x_t. Received: t={}", t),
    ]
    if labels is not None and null_label is not None:
        checks += [
            _assert(tf.reduce_all(tf.logical_and(labels >= 0, labels <= null_label)),
                    f"labels must lie in [0, {null_label}]. Received: labels={{}}", labels),
            _assert(tf.equal(tf.size(labels), rows), "labels must hold one label per row of x_t. Received: labels={}",
                    labels),
        ]
    return checks


# -- the signatures ---------------------------------------------------------------------------
def _request(model, *, seed, num_steps, sampler, eta, guidance_scale, labels, spacing):
    """The `sample`/`edit` inputs as `DiffusionModel.sample_data_space` arguments (labels only when conditional)."""
    conditional = model.num_classes is not None
    return dict(seed=tf.identity(seed), sampler=tf.identity(sampler), spacing=tf.identity(spacing),
                num_steps=tf.identity(num_steps), eta=tf.identity(eta),
                labels=tf.identity(labels) if conditional else None,
                guidance_scale=tf.identity(guidance_scale) if conditional else None)


def _checks(model, max_num_samples, *, seed, num_samples, num_steps, sampler, eta, guidance_scale, labels, spacing):
    del seed  # any int64 is a seed
    conditional = model.num_classes is not None
    return sample_checks(model.diffusion.num_timesteps, sampler=sampler, num_steps=num_steps, eta=eta,
                         num_samples=num_samples, guidance_scale=guidance_scale if conditional else None,
                         labels=labels if conditional else None, null_label=model.num_classes,
                         max_num_samples=max_num_samples, spacing=spacing)


def _sample_function(model, max_num_samples):
    """The `sample` signature's function (plain graph, no XLA)."""

    def sample(seed, num_samples, num_steps, sampler, eta, guidance_scale, labels, spacing):
        request = dict(seed=seed, num_steps=num_steps, sampler=sampler, eta=eta, guidance_scale=guidance_scale,
                       labels=labels, spacing=spacing)
        # Every op of the sampler is created under the checks, so a bad request fails before it
        # reaches a shape or a gather (e.g. linspace with num_steps = 0) with a message that
        # does not name the argument.
        with tf.control_dependencies(_checks(model, max_num_samples, num_samples=num_samples, **request)):
            samples = model.sample_data_space(tf.identity(num_samples), **_request(model, **request))
            return {"samples": tf.identity(samples, name="samples")}

    return sample


def _edit_function(model, max_num_samples):
    """The `edit` signature's function: image-to-image and inpainting of data-space images."""
    data_shape = tuple(model.data_shape)

    def edit(images, mask, strength, seed, num_samples, num_steps, sampler, eta, guidance_scale, labels, spacing):
        request = dict(seed=seed, num_steps=num_steps, sampler=sampler, eta=eta, guidance_scale=guidance_scale,
                       labels=labels, spacing=spacing)
        checks = _checks(model, max_num_samples, num_samples=num_samples, **request)
        checks += edit_checks(data_shape, images=images, mask=mask, strength=strength, num_samples=num_samples)
        with tf.control_dependencies(checks):
            # Any rank is accepted (and named when wrong); past the checks the shapes are the model's.
            images = tf.reshape(images, (-1,) + data_shape)
            mask = tf.reshape(mask, (-1,) + data_shape[:-1] + (1,))
            samples = model.sample_data_space(tf.identity(num_samples), init_images=images, strength=tf.identity(strength),
                                              mask=mask, **_request(model, **request))
            return {"samples": tf.identity(samples, name="samples")}

    return edit


def _denoise_function(model):
    """The `denoise` signature's function: ε̂(x_t, t) whatever the prediction type."""
    conditional = model.num_classes is not None

    def denoise(x_t, t, labels):
        checks = denoise_checks(model.diffusion.num_timesteps, x_t=x_t, t=t, labels=labels if conditional else None,
                                null_label=model.num_classes)
        with tf.control_dependencies(checks):
            eps = model.predict_eps(tf.identity(x_t), tf.identity(t), tf.identity(labels) if conditional else None)
            return {"eps": tf.identity(tf.cast(eps, tf.float32), name="eps")}

    return denoise


def model_limits(model, max_num_samples=None):
    """The request limits of an export of `model`, as the `limits` signature returns them (NumPy values)."""
    return {"num_timesteps": np.int32(model.diffusion.num_timesteps),
            "num_classes": np.int32(model.num_classes or 0),
            "data_shape": np.asarray(model.data_shape, np.int32),
            "data_range": np.asarray(model.data_range or (), np.float32),
            "max_num_samples": np.int32(max_num_samples or 0),
            "samplers": np.asarray(samplers.SAMPLERS, object),
            "spacings": np.asarray(samplers.SPACINGS, object)}


def _limits_function(model, max_num_samples):
    """The `limits` signature's function: no inputs, the model's request limits as constants."""
    limits = model_limits(model, max_num_samples)

    def read_limits():
        return {name: tf.constant(value.tolist() if value.dtype == object else value,
                                  tf.string if value.dtype == object else None)
                for name, value in limits.items()}

    return read_limits


_SAMPLE_INPUTS = [
    tf.TensorSpec([], tf.int64, name="seed"),
    tf.TensorSpec([], tf.int32, name="num_samples"),
    tf.TensorSpec([], tf.int32, name="num_steps"),
    tf.TensorSpec([], tf.string, name="sampler"),
    tf.TensorSpec([], tf.float32, name="eta"),
    tf.TensorSpec([], tf.float32, name="guidance_scale"),
    tf.TensorSpec([None], tf.int32, name="labels"),
    tf.TensorSpec([], tf.string, name="spacing"),
]


def _archive(model, max_num_samples):
    data_shape = tuple(model.data_shape)
    archive = keras.export.ExportArchive()
    # The network's variables are all the signatures read (the schedule is baked in as constants).
    archive.track(model.network)
    archive.add_endpoint(SAMPLE_SIGNATURE, _sample_function(model, max_num_samples), input_signature=_SAMPLE_INPUTS)
    archive.add_endpoint(
        EDIT_SIGNATURE,
        _edit_function(model, max_num_samples),
        input_signature=[tf.TensorSpec(None, tf.float32, name="images"), tf.TensorSpec(None, tf.float32, name="mask"),
                         tf.TensorSpec([], tf.float32, name="strength")] + _SAMPLE_INPUTS,
    )
    archive.add_endpoint(
        DENOISE_SIGNATURE,
        _denoise_function(model),
        input_signature=[
            tf.TensorSpec((None,) + data_shape, tf.float32, name="x_t"),
            tf.TensorSpec([None], tf.int32, name="t"),
            tf.TensorSpec([None], tf.int32, name="labels"),
        ],
    )
    archive.add_endpoint(LIMITS_SIGNATURE, _limits_function(model, max_num_samples), input_signature=[])
    # The first endpoint ("sample") is also written as "serving_default" by write_out.
    return archive


def read_limits(export_dir):
    """The `limits` signature of a SavedModel as a dict of NumPy values (strings decoded)."""
    limits = tf.saved_model.load(os.fspath(export_dir)).signatures[LIMITS_SIGNATURE]()
    return {name: ([v.decode() for v in value.numpy().tolist()] if value.dtype == tf.string else value.numpy())
            for name, value in limits.items()}


def _write_archive(archive, path):
    archive.write_out(path, verbose=False)


def export_sampler(model, export_dir, *, max_num_samples=None):
    """Writes `model`'s `sample` (also `serving_default`), `edit`, `denoise` and `limits` signatures to `export_dir`.

    The SavedModel is written through `checkpoints.atomic_path`: into a hidden directory beside
    `export_dir` (which TF Serving's version scan ignores), renamed into place when complete, so a
    reader never sees a half-written version; on failure nothing is left behind.

    Args:
      model: a built `DiffusionModel` (trained, or called once on data).
      export_dir: the directory to create (e.g. `.../mnist/1` for TF Serving); must not exist.
      max_num_samples: optional upper bound on a request's `num_samples` (a server guard
        against requests that would exhaust memory); None for no bound.

    Returns:
      `export_dir` as an absolute path.

    Raises:
      FileExistsError: `export_dir` exists (a version is never overwritten).
      ValueError: the model is not a built `DiffusionModel`, or a bad `max_num_samples`.
    """
    _check_model(model)
    if max_num_samples is not None and (
        isinstance(max_num_samples, bool) or not isinstance(max_num_samples, int) or max_num_samples < 1
    ):
        raise ValueError(f"max_num_samples must be None or an integer >= 1. Received: max_num_samples={max_num_samples!r}")
    export_dir = os.path.abspath(os.fspath(export_dir))
    with atomic_path(export_dir, directory=True, overwrite=False) as temporary:
        _write_archive(_archive(model, max_num_samples), temporary)
    return export_dir


# -- TF Serving layout ---------------------------------------------------------------------
def existing_versions(model_dir):
    """Sorted integer versions (all-digit subdirectory names) under `model_dir`."""
    if not os.path.isdir(model_dir):
        return []
    return sorted(
        int(name) for name in os.listdir(model_dir) if name.isdigit() and os.path.isdir(os.path.join(model_dir, name))
    )


def read_model_config(config_path):
    """The `ModelServerConfig` of a TF Serving model config file (empty when there is none).

    Raises:
      ValueError: naming the path, when the file is not a `model_config_list` text proto.
    """
    config = model_server_config_pb2.ModelServerConfig()
    if not os.path.exists(config_path):
        return config
    with open(config_path, encoding="utf-8") as f:
        text = f.read()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as error:
        raise ValueError(f"Cannot read the TF Serving model config ({error}). Received: config_path={config_path!r}"
                         ) from error
    if config.WhichOneof("config") == "custom_model_config":
        raise ValueError("Cannot add a model to a custom_model_config; expected a model_config_list. "
                         f"Received: config_path={config_path!r}")
    return config


def update_model_config(config_path, name, base_path):
    """Adds or replaces the entry `name` of a TF Serving model_config_list file.

    Other entries are kept with all their fields (version policies, labels); a replaced entry
    keeps its place. The file is rewritten from the `ModelServerConfig` proto (comments are not
    kept) and replaced atomically.
    """
    config = read_model_config(config_path)
    entries = config.model_config_list.config
    entry = next((e for e in entries if e.name == name), None) or entries.add()
    entry.Clear()
    entry.name, entry.base_path, entry.model_platform = name, base_path, "tensorflow"
    atomic_write_text(config_path, text_format.MessageToString(config))
    return config_path


def export_for_serving(model, export_base, name, version=None, *, serving_base=None, max_num_samples=None):
    """Exports `model` as version `version` of model `name` in a TF Serving model base.

    Writes EXPORT_BASE/NAME/VERSION/ (a SavedModel, see `export_sampler`) and adds or
    updates the entry `name` of EXPORT_BASE/models.config (a model_config_list text proto
    for `tensorflow_model_server --model_config_file=...`).

    Args:
      model: a built `DiffusionModel`.
      export_base: the directory holding one subdirectory per model.
      name: the model's serving name (letters, digits, '_', '.', '-').
      version: a positive integer; None takes the next integer after the existing
        numeric versions (1 for a new model).
      serving_base: where the server sees `export_base` (e.g. "/models" in a Docker
        container); the config's base_path is SERVING_BASE/NAME. Default: the absolute
        `export_base`.
      max_num_samples: see `export_sampler`.

    Returns:
      The absolute path of the version directory.

    Raises:
      FileExistsError: the version exists already.
      ValueError: a bad name or version, or an unbuilt model.
    """
    if not isinstance(name, str) or not _NAME_PATTERN.match(name):
        raise ValueError(
            f"name must be letters, digits, '_', '.' or '-' (not starting with '.', '_' or '-'). Received: name={name!r}"
        )
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
        raise ValueError(f"version must be None or an integer >= 1. Received: version={version!r}")
    _check_model(model)
    export_base = os.path.abspath(os.fspath(export_base))
    model_dir = os.path.join(export_base, name)
    config_path = os.path.join(export_base, MODEL_CONFIG_FILE)
    read_model_config(config_path)  # an unreadable config fails before anything is written
    if version is None:
        versions = existing_versions(model_dir)
        version = versions[-1] + 1 if versions else 1
    path = export_sampler(model, os.path.join(model_dir, str(version)), max_num_samples=max_num_samples)
    base_path = model_dir if serving_base is None else serving_base.rstrip("/") + "/" + name
    update_model_config(config_path, name, base_path)
    return path
