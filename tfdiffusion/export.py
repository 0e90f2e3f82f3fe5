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
"num_steps must be in [1, 20]. Received: num_steps=0"; the server keeps serving.
"""

import os
import re
import shutil
import tempfile

import keras
import tensorflow as tf

from tfdiffusion import samplers
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


def _sample_function(model, max_num_samples):
    """The `sample` signature's function (plain graph, no XLA)."""
    T = model.diffusion.num_timesteps
    conditional = model.num_classes is not None

    def sample(seed, num_samples, num_steps, sampler, eta, guidance_scale, labels):
        checks = samplers.graph_checks(
            T,
            sampler=sampler,
            num_steps=num_steps,
            eta=eta,
            guidance_scale=guidance_scale if conditional else None,
            labels=labels if conditional else None,
            num_samples=num_samples,
            null_label=model.num_classes,
        )
        if max_num_samples is not None:
            checks.append(
                tf.debugging.Assert(
                    num_samples <= max_num_samples,
                    [tf.strings.format(f"num_samples must be <= {max_num_samples}. Received: num_samples={{}}", num_samples)],
                )
            )
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
    T = model.diffusion.num_timesteps
    conditional = model.num_classes is not None

    def denoise(x_t, t, labels):
        checks = [
            tf.debugging.Assert(
                tf.reduce_all(tf.logical_and(t >= 0, t < T)),
                [tf.strings.format(f"t must lie in [0, {T - 1}]. Received: t={{}}", t)],
            ),
            tf.debugging.Assert(
                tf.equal(tf.size(t), tf.shape(x_t)[0]),
                [tf.strings.format("t must hold one timestep per row of x_t. Received: t={}", t)],
            ),
        ]
        if conditional:
            checks += [
                tf.debugging.Assert(
                    tf.reduce_all(tf.logical_and(labels >= 0, labels <= model.num_classes)),
                    [tf.strings.format(f"labels must lie in [0, {model.num_classes}]. Received: labels={{}}", labels)],
                ),
                tf.debugging.Assert(
                    tf.equal(tf.size(labels), tf.shape(x_t)[0]),
                    [tf.strings.format("labels must hold one label per row of x_t. Received: labels={}", labels)],
                ),
            ]
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

    The SavedModel is written into a temporary directory beside `export_dir` (a hidden name,
    which TF Serving's version scan ignores) and renamed into place, so a reader never sees
    a half-written version; on failure nothing is left behind.

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
    if os.path.lexists(export_dir):
        raise FileExistsError(f"Refusing to overwrite an existing export. Received: export_dir={export_dir!r}")
    parent = os.path.dirname(export_dir)
    os.makedirs(parent, exist_ok=True)
    archive = _archive(model, max_num_samples)
    temporary = tempfile.mkdtemp(prefix=f".{os.path.basename(export_dir)}.tmp-", dir=parent)
    try:
        _write_archive(archive, temporary)
        if os.path.lexists(export_dir):  # created by someone else while we were writing
            raise FileExistsError(f"Refusing to overwrite an existing export. Received: export_dir={export_dir!r}")
        os.rename(temporary, export_dir)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return export_dir


# -- TF Serving layout ---------------------------------------------------------------------
def existing_versions(model_dir):
    """Sorted integer versions (all-digit subdirectory names) under `model_dir`."""
    if not os.path.isdir(model_dir):
        return []
    return sorted(
        int(name) for name in os.listdir(model_dir) if name.isdigit() and os.path.isdir(os.path.join(model_dir, name))
    )


def _split_config_blocks(text):
    """The `config { ... }` blocks of a model_config_list text proto, as raw text.

    A small scanner that respects quoted strings and `#` comments; returns None when the
    text is not `model_config_list { config {...} ... }`.
    """
    length = len(text)

    def skip_space(i):
        while i < length:
            if text[i].isspace():
                i += 1
            elif text[i] == "#":
                while i < length and text[i] != "\n":
                    i += 1
            else:
                break
        return i

    def block_end(i):
        """Index just past the `}` closing the `{` at text[i]."""
        depth = 0
        while i < length:
            c = text[i]
            if c in "\"'":
                i += 1
                while i < length and text[i] != c:
                    i += 2 if text[i] == "\\" else 1
            elif c == "#":
                while i < length and text[i] != "\n":
                    i += 1
            elif c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
        return None

    position = skip_space(0)
    match = re.compile(r"model_config_list\s*:?\s*\{").match(text, position)
    if not match:
        return None
    end = block_end(match.end() - 1)
    if end is None or skip_space(end) != length:
        return None
    inner_end = end - 1
    blocks, position = [], skip_space(match.end())
    config = re.compile(r"config\s*:?\s*\{")
    while position < inner_end:
        found = config.match(text, position)
        if not found:
            return None
        block_stop = block_end(found.end() - 1)
        if block_stop is None or block_stop > inner_end:
            return None
        blocks.append(text[position:block_stop])
        position = skip_space(block_stop)
    return blocks


def _config_block_name(block):
    found = re.search(r"\bname\s*:\s*\"((?:[^\"\\]|\\.)*)\"", block)
    return None if found is None else found.group(1)


def _quote(value):
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _read_config_blocks(config_path):
    """The raw `config { ... }` blocks of an existing model config ([] when there is none)."""
    if not os.path.exists(config_path):
        return []
    with open(config_path, encoding="utf-8") as f:
        text = f.read()
    blocks = [] if not text.strip() else _split_config_blocks(text)
    if blocks is None:
        raise ValueError(
            "Cannot update a model config that is not a plain `model_config_list { config { ... } }` text "
            f"proto. Received: config_path={config_path!r}"
        )
    return blocks


def update_model_config(config_path, name, base_path):
    """Adds or replaces the entry `name` of a TF Serving model_config_list file.

    Other entries are kept verbatim (with any version policy or labels they carry). The
    file is replaced atomically.
    """
    blocks = _read_config_blocks(config_path)
    entry = (
        "config {\n"
        f"    name: {_quote(name)}\n"
        f"    base_path: {_quote(base_path)}\n"
        '    model_platform: "tensorflow"\n'
        "  }"
    )
    kept = [block for block in blocks if _config_block_name(block) != name]
    replaced = len(kept) != len(blocks)
    if replaced:  # keep the entry where it was
        index = next(i for i, block in enumerate(blocks) if _config_block_name(block) == name)
        kept.insert(index, entry)
    else:
        kept.append(entry)
    text = "model_config_list {\n" + "".join(f"  {block}\n" for block in kept) + "}\n"
    directory = os.path.dirname(os.path.abspath(config_path))
    descriptor, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(config_path)}.tmp-", dir=directory)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(temporary, config_path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
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
    _read_config_blocks(config_path)  # an unreadable config fails before anything is written
    if version is None:
        versions = existing_versions(model_dir)
        version = versions[-1] + 1 if versions else 1
    path = export_sampler(model, os.path.join(model_dir, str(version)), max_num_samples=max_num_samples)
    base_path = model_dir if serving_base is None else serving_base.rstrip("/") + "/" + name
    update_model_config(config_path, name, base_path)
    return path
