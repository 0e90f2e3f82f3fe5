"""Export a `DiffusionModel`'s samplers as a SavedModel for TensorFlow Serving.

    import tfdiffusion as tfd
    from tfdiffusion import export
    path = export.export_for_serving(model, "/srv/models", "mnist")   # /srv/models/mnist/1
    # tensorflow_model_server --model_config_file=/srv/models/models.config --rest_api_port=8501

The SavedModel holds two signatures (see docs/SERVING.md):

| signature                    | inputs                                                            | outputs            |
|------------------------------|-------------------------------------------------------------------|--------------------|
| `sample` (= `serving_default`)| seed int64 [], num_samples int32 [], num_steps int32 [],         | samples float32    |
|                              | sampler string [], eta float32 [], guidance_scale float32 [],     | [N, H, W, C]       |
|                              | labels int32 [N]                                                  | (data space)       |
| `denoise`                    | x_t float32 [N, H, W, C], t int32 [N], labels int32 [N]           | eps float32 [N,H,W,C] |

The archive is written through `keras.export.ExportArchive`, whose SavedModel also loads
in the TF1-session loader that TF Serving and `saved_model_cli run` use (Keras 3 layers
saved from a plain `tf.Module` do not). Neither signature is XLA-compiled: TF Serving
runs without XLA on CPU, and the noise is drawn with `tf.random.stateless_normal` exactly
as `DiffusionModel.generate` draws it, so one seed gives the same samples eagerly, with
`generate` and from the server.

A bad request (num_steps outside [1, T], num_samples < 1, an unknown sampler, eta outside
[0, 1], labels out of range or not one per sample for a class-conditional model, t outside
[0, T)) fails with an InvalidArgumentError whose message names the argument, e.g.
"num_steps must be in [1, 20]. Received: num_steps=0"; the server keeps serving. These graph
assertions live here only: the samplers and the model trust the tensors they are given, and
Python callers are checked where they enter (`DiffusionModel.generate`, `samplers.sample`).
"""

import os
import re

import keras
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from tfdiffusion import samplers
from tfdiffusion.checkpoints import atomic_path, atomic_write_text
from tfdiffusion.model import DiffusionModel

SAMPLE_SIGNATURE = "sample"
DENOISE_SIGNATURE = "denoise"
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
                  null_label=None, max_num_samples=None):
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
def _sample_function(model, max_num_samples):
    """The `sample` signature's function (plain graph, no XLA)."""
    conditional = model.num_classes is not None

    def sample(seed, num_samples, num_steps, sampler, eta, guidance_scale, labels):
        checks = sample_checks(model.diffusion.num_timesteps, sampler=sampler, num_steps=num_steps, eta=eta,
                               num_samples=num_samples, guidance_scale=guidance_scale if conditional else None,
                               labels=labels if conditional else None, null_label=model.num_classes,
                               max_num_samples=max_num_samples)
        # Every op of the sampler is created under the checks, so a bad request fails before it
        # reaches a shape or a gather (e.g. linspace with num_steps = 0) with a message that
        # does not name the argument.
        with tf.control_dependencies(checks):
            x0 = model.sample_model_space(
                tf.identity(num_samples),
                seed=tf.identity(seed),
                sampler=tf.identity(sampler),
                num_steps=tf.identity(num_steps),
                eta=tf.identity(eta),
                labels=tf.identity(labels) if conditional else None,
                guidance_scale=tf.identity(guidance_scale) if conditional else None,
            )
            return {"samples": tf.identity(model.to_data_space(x0), name="samples")}

    return sample


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


def _archive(model, max_num_samples):
    data_shape = tuple(model.data_shape)
    archive = keras.export.ExportArchive()
    # The network's variables are all the signatures read (the schedule is baked in as constants).
    archive.track(model.network)
    archive.add_endpoint(
        SAMPLE_SIGNATURE,
        _sample_function(model, max_num_samples),
        input_signature=[
            tf.TensorSpec([], tf.int64, name="seed"),
            tf.TensorSpec([], tf.int32, name="num_samples"),
            tf.TensorSpec([], tf.int32, name="num_steps"),
            tf.TensorSpec([], tf.string, name="sampler"),
            tf.TensorSpec([], tf.float32, name="eta"),
            tf.TensorSpec([], tf.float32, name="guidance_scale"),
            tf.TensorSpec([None], tf.int32, name="labels"),
        ],
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
    # The first endpoint ("sample") is also written as "serving_default" by write_out.
    return archive


def _write_archive(archive, path):
    archive.write_out(path, verbose=False)


def export_sampler(model, export_dir, *, max_num_samples=None):
    """Writes `model`'s `sample`, `serving_default` and `denoise` signatures to `export_dir`.

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
