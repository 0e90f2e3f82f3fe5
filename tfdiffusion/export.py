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

`spacing` may be "auto", each sampler's own grid (`samplers.Solver.spacing`), as in `generate`.

`export_fixed_sampler` and `export_tflite` freeze one request instead (a sampler, its number of
steps and spacing, a batch size): `sample_fixed` takes only a seed (and labels, guidance_scale),
with every coefficient a float32 constant (`fixed_step_plan`); see docs/SERVING.md, "Fixed-step
and TFLite export".

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

import functools
import os
import re
import shutil
import typing

import keras
import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from tfdiffusion import samplers
from tfdiffusion.checkpoints import atomic_path, atomic_write_text
from tfdiffusion.diffusion import x0_and_eps
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
        spacings = tf.constant(list(samplers.SPACING_CHOICES))
        checks.append(_assert(tf.reduce_any(tf.equal(spacing, spacings)),
                              "Unknown spacing. Expected one of {}. Received: spacing={}", spacings, spacing))
    if max_num_samples is not None:
        checks.append(_assert(num_samples <= max_num_samples,
                              f"num_samples must be <= {max_num_samples}. Received: num_samples={{}}", num_samples))
    return checks + condition_checks(num_samples=num_samples, guidance_scale=guidance_scale, labels=labels,
                                     null_label=null_label)


def condition_checks(*, num_samples, guidance_scale=None, labels=None, null_label=None):
    """Assertions on a request's guidance_scale (finite) and, given `null_label`, its labels (one per
    sample, in [0, null_label]), as a list of ops."""
    checks = []
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
    checks = sample_checks(model.diffusion.num_timesteps, sampler=sampler, num_steps=num_steps, eta=eta,
                           num_samples=num_samples, guidance_scale=guidance_scale if conditional else None,
                           labels=labels if conditional else None, null_label=model.num_classes,
                           max_num_samples=max_num_samples, spacing=spacing)
    if model.distilled_steps is None:
        return checks
    # A distilled student was trained for its own grid only.
    distilled = _assert(tf.equal(num_steps, model.distilled_steps),
                        f"num_steps must be {model.distilled_steps}, the steps this model was distilled for. "
                        "Received: num_steps={}", num_steps)
    return checks + [distilled]


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
            "spacings": np.asarray(samplers.SPACING_CHOICES, object)}


def _limits_function(model, max_num_samples):
    """The `limits` signature's function: no inputs, the model's request limits as constants."""
    return _constants_function(model_limits(model, max_num_samples))


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
    return {name: _decoded(value.numpy()) if value.dtype == tf.string else value.numpy()
            for name, value in limits.items()}


def _decoded(value):
    return value.decode() if isinstance(value, bytes) else [v.decode() for v in value.tolist()]


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


def version_directory(export_base, name, version=None):
    """EXPORT_BASE/NAME/VERSION as an absolute path; VERSION None is the next free integer (1 for a new model).

    Raises:
      ValueError: a bad name (letters, digits, '_', '.', '-') or version (an integer >= 1).
    """
    if not isinstance(name, str) or not _NAME_PATTERN.match(name):
        raise ValueError(
            f"name must be letters, digits, '_', '.' or '-' (not starting with '.', '_' or '-'). Received: name={name!r}"
        )
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
        raise ValueError(f"version must be None or an integer >= 1. Received: version={version!r}")
    model_dir = os.path.join(os.path.abspath(os.fspath(export_base)), name)
    if version is None:
        versions = existing_versions(model_dir)
        version = versions[-1] + 1 if versions else 1
    return os.path.join(model_dir, str(version))


def export_for_serving(model, export_base, name, version=None, *, serving_base=None, max_num_samples=None,
                       fixed_step=None):
    """Exports `model` as version `version` of model `name` in a TF Serving model base.

    Writes EXPORT_BASE/NAME/VERSION/ (a SavedModel, see `export_sampler`, or with `fixed_step`
    `export_fixed_sampler`) and adds or updates the entry `name` of EXPORT_BASE/models.config (a
    model_config_list text proto for `tensorflow_model_server --model_config_file=...`).

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
      fixed_step: None, or the keyword arguments of `export_fixed_sampler` (sampler, num_steps,
        spacing, eta, batch_size, jit_compile) to export that fixed-step sampler instead.

    Returns:
      The absolute path of the version directory.

    Raises:
      FileExistsError: the version exists already.
      ValueError: a bad name or version, an unbuilt model, max_num_samples with fixed_step.
    """
    path = version_directory(export_base, name, version)
    _check_model(model)
    if fixed_step is not None and max_num_samples is not None:
        raise ValueError(f"A fixed-step export has a fixed batch size; max_num_samples does not apply. "
                         f"Received: max_num_samples={max_num_samples!r}")
    export_base = os.path.abspath(os.fspath(export_base))
    config_path = os.path.join(export_base, MODEL_CONFIG_FILE)
    read_model_config(config_path)  # an unreadable config fails before anything is written
    if fixed_step is None:
        path = export_sampler(model, path, max_num_samples=max_num_samples)
    else:
        path = export_fixed_sampler(model, path, **fixed_step)
    base_path = os.path.dirname(path) if serving_base is None else serving_base.rstrip("/") + "/" + name
    update_model_config(config_path, name, base_path)
    return path


# -- fixed-step sampler (a whole sampler with its schedule baked in) ---------------------------------
FIXED_SIGNATURE = "sample_fixed"
FIXED_NOISE_SIGNATURE = "sample_from_noise"
# The slots a step combines, in this order, then the solver's state tensors.
_SLOTS = ("x_t", "x0", "eps", "noise")


class FixedStep(typing.NamedTuple):
    """One network evaluation of a fixed-step sampler: its timestep and float32 coefficients.

    timestep: t at which the network is called.
    denoise: float32 [2, 2], (x̂_0, ε̂) as combinations of (x_t, the network's prediction).
    update: float32 [1 + p, 4 + p], (x_next, the p state tensors) as combinations of the slots
      (x_t, x̂_0, ε̂, z, the p state tensors).
    noise_seed: i + 1 when the step draws z (the driver's seed pair [seed, i + 1]), else None.
    """

    timestep: int
    denoise: np.ndarray
    update: np.ndarray
    noise_seed: typing.Optional[int]


class FixedPlan(typing.NamedTuple):
    """A sampler request frozen at export time (`fixed_step_plan`)."""

    sampler: str
    num_steps: int
    spacing: str
    eta: float
    timesteps: np.ndarray  # int32 [num_steps], the spacing's sequence
    initial_state: np.ndarray  # float32 [p, 4 + p]: the state tensors from x_T (slot 0)
    steps: tuple  # FixedStep per network evaluation

    @property
    def noise_seeds(self):
        """The seed indices k of the draws [seed, k] the steps take, in order."""
        return [step.noise_seed for step in self.steps if step.noise_seed is not None]


def _is_state_tensor(leaf):
    return leaf.dtype == tf.float32


def _probe_state(structure, values, basis):
    """The solver state for a probe: tensor leaves are basis vectors, scalar leaves their current values."""
    leaves, tensors = [], iter(basis)
    for leaf, value in zip(tf.nest.flatten(structure), values):
        leaves.append(next(tensors) if _is_state_tensor(leaf) else value)
    return tf.nest.pack_sequence_as(structure, leaves)


def _split_state(state):
    """(rows of the state tensors, the other leaves' values) of a probed state."""
    leaves = tf.nest.flatten(state)
    return [leaf.numpy() for leaf in leaves if _is_state_tensor(leaf)], leaves


def fixed_step_plan(diffusion, prediction_type, *, sampler, num_steps, spacing=samplers.DEFAULT_SPACING, eta=0.0,
                    ddpm_variance="beta_tilde"):
    """Every coefficient of `sampler`'s `num_steps` steps, computed now by the library's own step functions.

    The reverse loop (`samplers._reverse_loop`) is linear in its tensors: each solver step maps
    (x_t, x̂_0, ε̂, z, state tensors) to (x_next, state tensors) with float64 coefficients of ᾱ (and
    of float64/bool state scalars such as the last step size h) cast once to float32, and x̂_0, ε̂
    are linear in (x_t, prediction) (`diffusion.x0_and_eps`). Each step function is therefore called
    here once, eagerly, on one-hot float32 vectors: its outputs are its float32 coefficients (c·1 and
    the sums with c·0 are exact), and the scalars it returns are carried to the next step. No solver's
    maths is written twice, and the exported graph holds only float32 constants.

    Raises:
      ValueError: a bad request, naming the argument (as `samplers.validate_request`).
    """
    T = diffusion.num_timesteps
    samplers.validate_request(T, sampler=sampler, num_steps=num_steps, eta=eta, spacing=spacing,
                              ddpm_variance=ddpm_variance)
    spacing = samplers.resolve_spacing(sampler, spacing)  # the plan records the grid it baked in
    solver = samplers.SOLVERS[sampler]
    sequence = samplers.timestep_sequence(num_steps, T, spacing, diffusion.alphas_cumprod)
    timesteps = solver.loop_timesteps(sequence).numpy().tolist()
    alpha_bar = np.append(1.0, diffusion.alphas_cumprod)  # alpha_bar[t + 1] = ᾱ_t, ᾱ_{−1} = 1
    structure = solver.initial_state(tf.zeros([1]))
    width = len(_SLOTS) + sum(_is_state_tensor(leaf) for leaf in tf.nest.flatten(structure))
    basis = tf.unstack(tf.eye(width, dtype=tf.float32))
    initial_rows, values = _split_state(solver.initial_state(basis[0]))
    options = {"eta": tf.constant(eta, tf.float32), "ddpm_variance": ddpm_variance,
               "num_steps": tf.constant(len(timesteps))}
    steps = []
    for i, t in enumerate(timesteps):
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        alpha_bar_t, alpha_bar_prev = (tf.constant(alpha_bar[s + 1], tf.float64) for s in (t, t_prev))
        denoise = np.stack(x0_and_eps(basis[0][:2], basis[1][:2], alpha_bar_t, prediction_type)).astype(np.float32)
        noise = basis[3] * float(t_prev >= 0) if solver.stochastic else None
        state = _probe_state(structure, values, basis[len(_SLOTS):])
        x_next, state = solver.step(basis[0], basis[1], basis[2], alpha_bar_t, alpha_bar_prev, noise, state,
                                    dict(options, index=tf.constant(i)))
        rows, values = _split_state(state)
        update = np.stack([x_next.numpy()] + rows)
        steps.append(FixedStep(int(t), denoise, update, i + 1 if update[:, 3].any() else None))
    initial = np.stack(initial_rows) if initial_rows else np.zeros((0, width), np.float32)
    plan = FixedPlan(sampler, int(num_steps), spacing, float(eta), sequence.numpy(), initial, tuple(steps))
    if plan.noise_seeds != list(range(1, len(plan.noise_seeds) + 1)):  # what `fixed_limits` tells clients
        raise NotImplementedError(f"{sampler} draws noise on steps {plan.noise_seeds}; a fixed export expects the "
                                  f"first S steps. Received: sampler={sampler!r}")
    return plan


def _combine(row, slots):
    """Σ_k row[k]·slots[k] over the nonzero float32 coefficients; a lone coefficient 1 is the slot itself."""
    terms = [(float(c), slot) for c, slot in zip(row, slots) if c != 0.0]
    if not terms:
        return tf.zeros_like(slots[0])
    if len(terms) == 1 and terms[0][0] == 1.0:
        return terms[0][1]
    return tf.add_n([tf.constant(c, tf.float32) * slot for c, slot in terms])


def _predictor(model):
    """`(x_t, t, labels, guidance_scale) -> prediction`: the network, guided as `DiffusionModel.denoise` guides it."""

    def predict(x, t, labels, guidance_scale):
        return samplers.classifier_free_guidance(model, guidance_scale, model.num_classes)(x, t, labels)

    return predict


def run_fixed_plan(model, plan, x_T, step_noise=None, labels=None, guidance_scale=None):
    """The samples (data space) of `plan` from x_T and the steps' draws `step_noise` [S, *x_T.shape].

    One unrolled graph: every step is the network call and float32 constant combinations
    (`_combine`). Inputs are trusted (the signatures assert on theirs).
    """
    predict = _predictor(model)
    batch = tf.shape(x_T)[:1]
    draws = {} if step_noise is None else dict(zip(plan.noise_seeds, tf.unstack(step_noise)))
    x = x_T
    state = [_combine(row[:1], (x_T,)) for row in plan.initial_state]
    for step in plan.steps:
        prediction = predict(x, tf.fill(batch, tf.constant(step.timestep, tf.int32)), labels, guidance_scale)
        x0 = _combine(step.denoise[0], (x, prediction))
        eps = _combine(step.denoise[1], (x, prediction)) if step.update[:, 2].any() else None
        outputs = [_combine(row, (x, x0, eps, draws.get(step.noise_seed), *state)) for row in step.update]
        x, state = outputs[0], outputs[1:]
    return model.to_data_space(x)


def fixed_noise(plan, shape, seed):
    """(x_T, step_noise) as `DiffusionModel.generate` draws them: x_T from [seed, 0], step i's z from [seed, i + 1]."""
    x_T = samplers.noise_draw(shape, seed, 0)
    draws = [samplers.noise_draw(shape, seed, k) for k in plan.noise_seeds]
    return x_T, (tf.stack(draws) if draws else None)


def fixed_input_specs(model, plan, batch_size):
    """The inputs of the noise-fed fixed-step graph (`sample_from_noise`, also the TFLite model's), in order.

    x_T [B, *data_shape]; step_noise [S, B, *data_shape] when the plan draws noise (S = len(plan.noise_seeds));
    labels int32 [B] and guidance_scale float32 [] for a class-conditional model.
    """
    shape = [batch_size] + list(model.data_shape)
    specs = [tf.TensorSpec(shape, tf.float32, name="x_T")]
    if plan.noise_seeds:
        specs.append(tf.TensorSpec([len(plan.noise_seeds)] + shape, tf.float32, name="step_noise"))
    if model.num_classes is not None:
        specs += [tf.TensorSpec([batch_size], tf.int32, name="labels"),
                  tf.TensorSpec([], tf.float32, name="guidance_scale")]
    return specs


def _by_name(specs, function):
    """`function(inputs: dict)` as a function of the positional tensors `specs` name (a signature's form)."""
    names = [spec.name for spec in specs]

    def positional(*tensors):
        return function(dict(zip(names, tensors)))

    return positional


def fixed_functions(model, plan, batch_size, jit_compile):
    """The fixed-step signatures' functions, {name: (function, input specs)}; `sample_fixed` first.

    The noise is drawn outside the core (XLA-compiled with `jit_compile`), as in `samplers`, so that
    one seed gives `generate`'s draws bitwise with or without XLA.
    """
    shape = [batch_size] + list(model.data_shape)
    conditional = model.num_classes is not None
    core = tf.function(functools.partial(run_fixed_plan, model, plan), jit_compile=jit_compile, autograph=False)

    def sample(inputs, x_T, step_noise):
        labels, guidance_scale = (inputs[k] if conditional else None for k in ("labels", "guidance_scale"))
        checks = condition_checks(num_samples=batch_size, guidance_scale=guidance_scale, labels=labels,
                                  null_label=model.num_classes)
        with tf.control_dependencies(checks):
            samples = core(x_T, step_noise, *(None if v is None else tf.identity(v) for v in (labels, guidance_scale)))
        return {"samples": tf.identity(samples, name="samples")}

    def from_seed(inputs):
        return sample(inputs, *fixed_noise(plan, shape, inputs["seed"]))

    def from_noise(inputs):
        return sample(inputs, inputs["x_T"], inputs.get("step_noise"))

    noise_specs = fixed_input_specs(model, plan, batch_size)
    seed_specs = [tf.TensorSpec([], tf.int64, name="seed")] + noise_specs[1 + bool(plan.noise_seeds):]
    return {FIXED_SIGNATURE: (_by_name(seed_specs, from_seed), seed_specs),
            FIXED_NOISE_SIGNATURE: (_by_name(noise_specs, from_noise), noise_specs)}


def fixed_limits(model, plan, batch_size):
    """The `limits` of a fixed-step export (NumPy values): the model's shape and the frozen request.

    data_range is (NaN, NaN) for a model without one (its samples are in model space), and the
    step draws are counted, not listed (`num_noise_draws` S: step_noise[k] is drawn from
    [seed, k + 1]): TFLite cannot return an empty tensor.
    """
    return {"num_timesteps": np.int32(model.diffusion.num_timesteps),
            "num_classes": np.int32(model.num_classes or 0),
            "data_shape": np.asarray(model.data_shape, np.int32),
            "data_range": np.asarray(model.data_range or (np.nan, np.nan), np.float32),
            "batch_size": np.int32(batch_size),
            "sampler": np.asarray(plan.sampler, object),
            "num_steps": np.int32(plan.num_steps),
            "spacing": np.asarray(plan.spacing, object),
            "eta": np.float32(plan.eta),
            "timesteps": np.asarray(plan.timesteps, np.int32),
            "num_noise_draws": np.int32(len(plan.noise_seeds))}


def _constants_function(values):
    """A function of no inputs returning `values` (NumPy; object arrays as strings) as constants."""

    def constants():
        return {name: tf.constant(value.tolist() if value.dtype == object else value,
                                  tf.string if value.dtype == object else None)
                for name, value in values.items()}

    return constants


def _check_fixed_request(model, sampler, num_steps, spacing, eta, batch_size):
    _check_model(model)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1. Received: batch_size={batch_size!r}")
    return fixed_step_plan(model.diffusion, model.prediction_type, sampler=sampler, num_steps=num_steps,
                           spacing=spacing, eta=eta)


def _fixed_archive(model, plan, batch_size, jit_compile):
    archive = keras.export.ExportArchive()
    archive.track(model.network)
    for name, (function, specs) in fixed_functions(model, plan, batch_size, jit_compile).items():
        archive.add_endpoint(name, function, input_signature=specs)
    archive.add_endpoint(LIMITS_SIGNATURE, _constants_function(fixed_limits(model, plan, batch_size)),
                         input_signature=[])
    return archive  # the first endpoint, `sample_fixed`, is also written as `serving_default`


def export_fixed_sampler(model, export_dir, *, sampler, num_steps, spacing=samplers.DEFAULT_SPACING, eta=0.0,
                         batch_size=16, jit_compile=False):
    """Writes a SavedModel that runs one sampler request, frozen: `num_steps` steps of `sampler` on `spacing`.

    Signatures (see docs/SERVING.md, "Fixed-step and TFLite export"):
      `sample_fixed` (= `serving_default`): seed int64 [] (and labels int32 [B], guidance_scale
        float32 [] for a class-conditional model) → samples float32 [B, *data_shape] in data space,
        equal to `model.generate(B, seed=seed, sampler=..., num_steps=..., spacing=..., eta=...)`
        up to float32 rounding: the same coefficients are added in another order (docs/SERVING.md
        says how far apart that puts a trained model's samples).
      `sample_from_noise`: x_T [B, ...] and, for a sampler that draws noise, step_noise [S, B, ...]
        instead of the seed (the TFLite model's inputs).
      `limits`: `fixed_limits`.
    The graph is unrolled (one network call per step) with every coefficient a float32 constant
    (`fixed_step_plan`): no float64 and no string op at run time. `jit_compile=True` compiles the
    steps with XLA (for GPU/TPU serving; see docs/SERVING.md for the CPU figure). Written through
    `checkpoints.atomic_path` like `export_sampler`.

    Raises:
      FileExistsError: `export_dir` exists.
      ValueError: an unbuilt model or a bad request, naming the argument.
    """
    plan = _check_fixed_request(model, sampler, num_steps, spacing, eta, batch_size)
    export_dir = os.path.abspath(os.fspath(export_dir))
    with atomic_path(export_dir, directory=True, overwrite=False) as temporary:
        _write_archive(_fixed_archive(model, plan, int(batch_size), bool(jit_compile)), temporary)
    return export_dir


TFLITE_FILE = "model.tflite"


def export_tflite(model, export_dir, *, sampler, num_steps, spacing=samplers.DEFAULT_SPACING, eta=0.0, batch_size=16):
    """Writes EXPORT_DIR/model.tflite: the fixed-step sampler (float32) for the TFLite interpreter.

    The TFLite builtin ops have no stateless random op (the converter refuses
    StatelessRandomNormalV2 without SELECT_TF_OPS), so the model takes the noise as inputs: its
    `sample_from_noise` signature is the SavedModel's (x_T, step_noise, labels, guidance_scale →
    samples); `limits` tells a client the shapes, the data range and `num_noise_draws`. Drawn with
    `fixed_noise`'s seeds, the noise gives `generate`'s samples. Graph assertions are dropped by the
    converter: a TFLite caller checks labels itself (tools/sample_tflite.py does). A network that
    computes in (b)float16 (e.g. trained under mixed_bfloat16) is converted computing in float32.

    Returns:
      The path of model.tflite.
    """
    plan = _check_fixed_request(model, sampler, num_steps, spacing, eta, batch_size)
    if model.network.dtype_policy.compute_dtype != "float32":
        model = model.with_dtype_policy("float32")
    export_dir = os.path.abspath(os.fspath(export_dir))
    with atomic_path(export_dir, directory=True, overwrite=False) as temporary:
        saved_model = os.path.join(temporary, "saved_model")
        _write_archive(_fixed_archive(model, plan, int(batch_size), False), saved_model)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model,
                                                             signature_keys=[FIXED_NOISE_SIGNATURE, LIMITS_SIGNATURE])
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        flatbuffer = converter.convert()
        shutil.rmtree(saved_model)
        with open(os.path.join(temporary, TFLITE_FILE), "wb") as f:
            f.write(flatbuffer)
    return os.path.join(export_dir, TFLITE_FILE)


# -- what an export accepts, for people ----------------------------------------------------------------
def describe_limits(limits):
    """What a `sample` request may ask for, as printable lines, and a REST body within those limits.

    Args:
      limits: `model_limits(model, max_num_samples)`, what the SavedModel's `limits` signature returns.
    """
    T, num_classes = int(limits["num_timesteps"]), int(limits["num_classes"])
    max_num_samples = int(limits["max_num_samples"])
    bound = f"<= {max_num_samples}" if max_num_samples else ">= 1 (no upper bound; --max_num_samples sets one)"
    if num_classes:
        classes = (f"{num_classes} classes: one label per sample in [0, {num_classes}] "
                   f"({num_classes} = no class, for classifier-free guidance)")
        labels, guidance_scale = [0, min(1, num_classes - 1)], 2.0
    else:
        classes = "unconditional: labels and guidance_scale are ignored (send any one label, e.g. [0])"
        labels, guidance_scale = [0], 0.0
    names, spacings = (", ".join(str(name) for name in limits[key]) for key in ("samplers", "spacings"))
    lines = [
        f"T = {T}: num_steps in [1, {T}]",
        classes,
        f"samples of shape [num_samples, {', '.join(str(d) for d in limits['data_shape'])}]; num_samples {bound}",
        f"sampler one of {names}; spacing one of {spacings}; eta in [0, 1]",
    ]
    body = {"signature_name": SAMPLE_SIGNATURE,
            "inputs": {"seed": 3, "num_samples": 2, "num_steps": min(T, 20), "sampler": "ddim", "eta": 0.0,
                       "guidance_scale": guidance_scale, "labels": labels, "spacing": str(limits["spacings"][0])}}
    return lines, body


def describe_fixed_limits(limits):
    """What a fixed-step export computes and takes, as printable lines, and a `sample_fixed` REST body.

    Args:
      limits: `fixed_limits(...)`, what the fixed export's `limits` signature returns.
    """
    batch, num_classes = int(limits["batch_size"]), int(limits["num_classes"])
    sampler, spacing = (str(np.asarray(limits[key]).item()) for key in ("sampler", "spacing"))
    timesteps = [int(t) for t in limits["timesteps"]]
    calls = samplers.network_evaluations(sampler, len(timesteps))
    eta = f", eta = {float(limits['eta']):g}" if sampler == "ddim" else ""
    lines = [f"{sampler}{eta}, {len(timesteps)} steps on the {spacing} spacing (t = {timesteps}): {calls} network "
             f"calls; samples of shape [{batch}, {', '.join(str(d) for d in limits['data_shape'])}] in data space"]
    inputs = {"seed": 3}
    if num_classes:
        lines.append(f"labels: {batch} labels in [0, {num_classes}] ({num_classes} = no class); guidance_scale: "
                     f"the classifier-free guidance weight w (0: none)")
        inputs.update(labels=[i % num_classes for i in range(batch)], guidance_scale=2.0)
    noise = int(limits["num_noise_draws"])
    lines.append(f"noise: x_T and {noise} step draws" if noise else "noise: x_T only (a deterministic sampler)")
    return lines, {"signature_name": FIXED_SIGNATURE, "inputs": inputs}


def describe_export(model, export_format, max_num_samples=None, fixed_step=None):
    """`describe_limits` ("saved_model") or `describe_fixed_limits` ("fixed", "tflite") of an export of `model`.

    fixed_step: the fixed formats' sampler, num_steps, spacing, eta and batch_size.
    """
    if export_format == "saved_model":
        return describe_limits(model_limits(model, max_num_samples))
    request = dict(fixed_step)
    batch_size = request.pop("batch_size")
    plan = fixed_step_plan(model.diffusion, model.prediction_type, **request)
    return describe_fixed_limits(fixed_limits(model, plan, batch_size))
