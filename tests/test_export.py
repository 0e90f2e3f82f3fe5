"""Tests for tfdiffusion.export and tools/export.py: the SavedModel that TF Serving loads.

The test networks are tiny untrained SeedUNets with x0-prediction: an untrained ε-network
makes the chain explode (|x| ~ 1e3), and the clip to [0, 1] then hides any difference
between two runs; an untrained x0-network keeps the samples inside (0, 1), so the
comparisons below see every bit.

Equality contract (measured on this machine, TF 2.21 with oneDNN): `sample_model_space` called
eagerly, `generate` (tf.function), the SavedModel reloaded in TF2 and the TF1-session loader (what
TF Serving and `saved_model_cli run` use) give bitwise-equal samples for one seed. Eager calls of
`samplers.sample` run their loop as one graph: op by op, the network may differ from the graph by
~1e-7, because grappler's remapper fuses the ConvBlocks' Conv2D + BiasAdd + SiLU only in graphs
(with oneDNN into `_MklNativeFusedConv2D` + `_MklSwish`; `test_op_by_op_network_and_its_graph`).
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfdiffusion as tfd
from tfdiffusion import export

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H = W = 8
T = 20
NUM_CLASSES = 3
MAX_NUM_SAMPLES = {"cond": 8}  # the conditional export also bounds num_samples
SIGNATURE_INPUTS = {
    "sample": {
        "seed": "DT_INT64",
        "num_samples": "DT_INT32",
        "num_steps": "DT_INT32",
        "sampler": "DT_STRING",
        "eta": "DT_FLOAT",
        "guidance_scale": "DT_FLOAT",
        "labels": "DT_INT32",
        "spacing": "DT_STRING",
    },
    "denoise": {"x_t": "DT_FLOAT", "t": "DT_INT32", "labels": "DT_INT32"},
    "limits": {},
}
SIGNATURE_INPUTS["serving_default"] = SIGNATURE_INPUTS["sample"]
SIGNATURE_INPUTS["edit"] = {"images": "DT_FLOAT", "mask": "DT_FLOAT", "strength": "DT_FLOAT", **SIGNATURE_INPUTS["sample"]}
SAMPLE_DTYPES = {"seed": tf.int64, "num_samples": tf.int32, "num_steps": tf.int32, "sampler": tf.string,
                 "eta": tf.float32, "guidance_scale": tf.float32, "labels": tf.int32, "spacing": tf.string}
DENOISE_DTYPES = {"x_t": tf.float32, "t": tf.int32, "labels": tf.int32}


def _env():
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


def _make_model(num_classes=None):
    network = tfd.layers.SeedUNet(channels=(8, 16), initial_channels=8, time_embedding_dim=16, time_mlp_width=32,
                                  num_classes=num_classes)
    model = tfd.DiffusionModel(network, tfd.GaussianDiffusion(tfd.schedules.make_betas("cosine", T)),
                               prediction_type="x0")
    model(tf.zeros((1, H, W, 1)))
    if num_classes:
        # Untrained N(0, 1) class rows push the x0-network's outputs past the [0, 1] clip;
        # shrunk, the samples stay inside it and every comparison below sees every bit.
        table = network.time_embedding.class_embedding.embeddings
        table.assign(0.05 * table)
    return model


def _sample_body(signature="sample", **inputs):
    values = {"seed": 0, "num_samples": 2, "num_steps": T, "sampler": "ddpm", "eta": 0.0, "guidance_scale": 0.0,
              "labels": [], "spacing": "uniform"}
    values.update(inputs)
    body = {"inputs": values}
    if signature is not None:
        body["signature_name"] = signature
    return body


_X_T = np.random.default_rng(0).standard_normal((2, H, W, 1)).astype(np.float32)
_IMAGES = np.random.default_rng(1).uniform(0.0, 1.0, (3, H, W, 1)).astype(np.float32)
_TOP_KNOWN = np.concatenate([np.ones((3, H // 2, W, 1)), np.zeros((3, H // 2, W, 1))], 1).astype(np.float32)


def _edit_body(images=_IMAGES, mask=_TOP_KNOWN, strength=1.0, **inputs):
    body = _sample_body("edit", num_samples=len(images), **inputs)
    body["inputs"] = {"images": np.asarray(images).tolist(), "mask": np.asarray(mask).tolist(), "strength": strength,
                      **body["inputs"]}
    return body

GOOD = {
    "uncond": {
        "ddpm": _sample_body(seed=3, num_samples=2, num_steps=20, sampler="ddpm"),
        "ddim": _sample_body(seed=11, num_samples=3, num_steps=7, sampler="ddim", eta=0.5),
        "dpmpp_2m_auto": _sample_body(seed=5, num_samples=2, num_steps=5, sampler="dpmpp_2m", spacing="auto"),
        "unipc_logsnr": _sample_body(seed=6, num_samples=2, num_steps=6, sampler="unipc", spacing="logsnr"),
        "heun_karras": _sample_body(seed=7, num_samples=2, num_steps=4, sampler="heun", spacing="karras"),
        "dpmpp_2m_sde_quadratic": _sample_body(seed=8, num_samples=2, num_steps=5, sampler="dpmpp_2m_sde",
                                               spacing="quadratic"),
        "edit_inpaint": _edit_body(seed=9, num_steps=6, sampler="dpmpp_3m", spacing="logsnr"),
        "edit_img2img": _edit_body(seed=10, num_steps=5, sampler="ddim", eta=0.5, mask=np.zeros_like(_TOP_KNOWN),
                                   strength=0.6),
        "edit_both": _edit_body(images=_IMAGES[:2], mask=_TOP_KNOWN[:2], seed=11, num_steps=20, sampler="ddpm",
                                strength=0.5),
        "limits": {"signature_name": "limits", "inputs": {}},
        "serving_default": _sample_body(signature=None, seed=11, num_samples=3, num_steps=7, sampler="ddim", eta=0.5),
        "labels_ignored": _sample_body(seed=11, num_samples=3, num_steps=7, sampler="ddim", eta=0.5, labels=[5, 9, -1]),
        "denoise": {"signature_name": "denoise", "inputs": {"x_t": _X_T.tolist(), "t": [0, 19], "labels": []}},
    },
    "cond": {
        "ddpm": _sample_body(seed=3, num_samples=3, num_steps=10, sampler="ddpm", guidance_scale=2.0, labels=[0, 1, 2]),
        "ddim": _sample_body(seed=4, num_samples=3, num_steps=20, sampler="ddim", eta=0.3, labels=[2, 3, 1]),
        "dpmpp_2m": _sample_body(seed=5, num_samples=2, num_steps=6, sampler="dpmpp_2m", guidance_scale=1.5,
                                 labels=[1, 1]),
        "limits": {"signature_name": "limits", "inputs": {}},
        "edit_guided": _edit_body(seed=12, num_steps=5, sampler="unipc", spacing="karras", strength=0.8,
                                  guidance_scale=2.0, labels=[0, 1, 2]),
        "denoise": {"signature_name": "denoise", "inputs": {"x_t": _X_T.tolist(), "t": [0, 19], "labels": [2, 3]}},
    },
}


def _bad(good, **changes):
    body = json.loads(json.dumps(good))
    body["inputs"].update(changes)
    return body


_U, _C, _E = GOOD["uncond"]["ddim"], GOOD["cond"]["ddpm"], GOOD["uncond"]["edit_inpaint"]
BAD = {  # (body, text the error must contain)
    "uncond": {
        "num_steps_0": (_bad(_U, num_steps=0), "Received: num_steps=0"),
        "num_steps_above_T": (_bad(_U, num_steps=T + 1), f"Received: num_steps={T + 1}"),
        "num_samples_0": (_bad(_U, num_samples=0), "Received: num_samples=0"),
        "num_samples_negative": (_bad(_U, num_samples=-4), "Received: num_samples=-4"),
        "sampler_unknown": (_bad(_U, sampler="euler"), "Received: sampler=\\\"euler\\\""),
        "eta_above_1": (_bad(_U, eta=1.5), "Received: eta=1.5"),
        "eta_negative": (_bad(_U, eta=-0.25), "Received: eta=-0.25"),
        "spacing_unknown": (_bad(_U, spacing="cosine"), "Received: spacing=\\\"cosine\\\""),
        "edit_images_shape": (_bad(_E, images=_IMAGES[:, :4].tolist()), "images must have shape [N, 8, 8, 1]. "
                              "Received: images of shape [3 4 8 1]"),
        "edit_images_rank": (_bad(_E, images=_IMAGES[0].tolist()), "Received: images of shape [8 8 1]"),
        "edit_mask_values": (_bad(_E, mask=(0.5 * _TOP_KNOWN).tolist()), "mask must hold only 0 (generate) and 1 "
                             "(keep). Received: mask values [0.5 0]"),
        "edit_mask_shape": (_bad(_E, mask=np.ones((3, H, W, 3)).tolist()), "mask must have shape [N, 8, 8, 1]"),
        "edit_strength": (_bad(_E, strength=1.25), "strength must be in [0, 1]. Received: strength=1.25"),
        "edit_num_samples": (_bad(_E, num_samples=2), "num_samples must equal the number of images, [3]. "
                             "Received: num_samples=2"),
        "denoise_t_out_of_range": (_bad(GOOD["uncond"]["denoise"], t=[0, T]), "Received: t="),
    },
    "cond": {
        "labels_above_null": (_bad(_C, labels=[0, 1, NUM_CLASSES + 1]), "Received: labels="),
        "labels_negative": (_bad(_C, labels=[-1, 0, 1]), "Received: labels="),
        "labels_wrong_count": (_bad(_C, labels=[0, 1]), "labels must hold num_samples=3 values"),
        "labels_empty": (_bad(_C, labels=[]), "labels must hold num_samples=3 values"),
        "num_steps_0": (_bad(_C, num_steps=0), "Received: num_steps=0"),
        "num_samples_above_max": (_bad(_C, num_samples=9, labels=[0] * 9), "num_samples must be <= 8. Received: num_samples=9"),
        "denoise_labels_wrong_count": (_bad(GOOD["cond"]["denoise"], labels=[1]), "labels must hold one label"),
    },
}

# Runs requests given as REST bodies against a SavedModel, without importing tfdiffusion:
#   tf2: tf.saved_model.load(...).signatures[name](**inputs)
#   tf1: tf.compat.v1.saved_model.loader.load in a Session (as TF Serving), each request a
#        predict_pb2.PredictRequest built from the body with the signature's dtypes.
SERVE_SCRIPT = textwrap.dedent(
    r'''
    import json, sys
    import numpy as np
    import tensorflow as tf

    spec_path, out_path = sys.argv[1:]
    with open(spec_path) as f:
        spec = json.load(f)
    arrays, meta = {}, {"errors": {}}

    def tf2_runner(export_dir):
        loaded = tf.saved_model.load(export_dir)
        def run(body):
            function = loaded.signatures[body.get("signature_name", "serving_default")]
            specs = function.structured_input_signature[1]
            inputs = {k: tf.constant(v, specs[k].dtype) for k, v in body["inputs"].items()}
            return {k: v.numpy() for k, v in function(**inputs).items()}
        return run

    def tf1_runner(export_dir, model_name):
        from tensorflow_serving.apis import predict_pb2
        graph = tf.Graph()
        session = tf.compat.v1.Session(graph=graph)
        with graph.as_default():
            meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], export_dir)
        def run(body):
            name = body.get("signature_name", "serving_default")
            signature = meta_graph.signature_def[name]
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = name
            for key, value in body["inputs"].items():
                dtype = tf.dtypes.as_dtype(signature.inputs[key].dtype)
                request.inputs[key].CopyFrom(tf.make_tensor_proto(value, dtype=dtype))
            request = predict_pb2.PredictRequest.FromString(request.SerializeToString())  # the gRPC wire
            missing = set(signature.inputs) - set(request.inputs)
            if missing:
                raise ValueError(f"missing inputs {sorted(missing)}")
            feed = {signature.inputs[k].name: tf.make_ndarray(request.inputs[k]) for k in request.inputs}
            fetches = {k: v.name for k, v in signature.outputs.items()}
            outputs = session.run(fetches, feed)
            response = predict_pb2.PredictResponse()
            for key, value in outputs.items():
                response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
            response = predict_pb2.PredictResponse.FromString(response.SerializeToString())
            return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}
        return run

    for mode in ("tf2", "tf1"):
        for item in spec:
            run = tf2_runner(item["export_dir"]) if mode == "tf2" else tf1_runner(item["export_dir"], item["name"])
            for request_id, body in item["requests"]:
                try:
                    for key, value in run(body).items():
                        arrays[f"{mode}/{request_id}/{key}"] = value.astype("S") if value.dtype == object else value
                except tf.errors.InvalidArgumentError as error:
                    meta["errors"][f"{mode}/{request_id}"] = error.message
    meta["tfdiffusion_modules"] = sorted(m for m in sys.modules if m.split(".")[0] == "tfdiffusion")
    np.savez(out_path + ".npz", **arrays)
    with open(out_path + ".json", "w") as f:
        json.dump(meta, f)
    '''
)


# -- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models():
    keras.utils.set_random_seed(1)
    return {"uncond": _make_model(), "cond": _make_model(NUM_CLASSES)}


@pytest.fixture(scope="module")
def exports(models, tmp_path_factory):
    base = tmp_path_factory.mktemp("exports")
    return {key: pathlib.Path(export.export_sampler(model, base / key / "1", max_num_samples=MAX_NUM_SAMPLES.get(key)))
            for key, model in models.items()}


@pytest.fixture(scope="module")
def loaded_cond(exports):
    return tf.saved_model.load(str(exports["cond"]))


def _requests(key):
    """The good requests, then every bad request followed by a good one."""
    requests = list(GOOD[key].items())
    first = next(iter(GOOD[key].items()))
    for bad_id, (body, _) in BAD[key].items():
        requests.append((f"bad/{bad_id}", body))
        requests.append((f"after/{bad_id}", first[1]))
    return [(f"{key}/{request_id}", body) for request_id, body in requests]


@pytest.fixture(scope="module")
def served(exports, tmp_path_factory):
    """Every request through TF2 `tf.saved_model.load` and through the TF1-session loader (as TF
    Serving), in one fresh process that does not import tfdiffusion."""
    directory = tmp_path_factory.mktemp("served")
    script = directory / "serve.py"
    script.write_text(SERVE_SCRIPT)
    spec = [{"export_dir": str(path), "name": key, "requests": _requests(key)} for key, path in exports.items()]
    (directory / "spec.json").write_text(json.dumps(spec))
    result = subprocess.run([sys.executable, str(script), str(directory / "spec.json"), str(directory / "out")],
                            cwd=str(directory), env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"serving subprocess failed:\n{result.stderr[-4000:]}"
    with np.load(directory / "out.npz") as arrays:
        outputs = {name: arrays[name] for name in arrays.files}
    meta = json.loads((directory / "out.json").read_text())
    results = {"modules": meta["tfdiffusion_modules"]}
    for mode in ("tf2", "tf1"):
        prefix = mode + "/"
        results[mode] = {
            "outputs": {k[len(prefix):]: v for k, v in outputs.items() if k.startswith(prefix)},
            "errors": {k[len(prefix):]: v for k, v in meta["errors"].items() if k.startswith(prefix)},
        }
    return results


def _eager_samples(model, inputs, traced=False):
    """Samples from a plain call, or from a `tf.function` of it traced on the request as constants."""
    conditional = model.num_classes is not None

    def draw():
        samples = model.sample_model_space(
            inputs["num_samples"], seed=inputs["seed"], sampler=inputs["sampler"], num_steps=inputs["num_steps"],
            spacing=inputs["spacing"], eta=inputs["eta"],
            labels=tf.constant(inputs["labels"], tf.int32) if conditional else None,
            guidance_scale=inputs["guidance_scale"] if conditional else None)
        return model.to_data_space(samples)

    return (tf.function(draw) if traced else draw)().numpy()


def _generate(model, inputs):
    conditional = model.num_classes is not None
    edit = {}
    if "images" in inputs:
        edit = dict(init_images=inputs["images"], mask=inputs["mask"], strength=inputs["strength"])
    return model.generate(inputs["num_samples"], seed=inputs["seed"], sampler=inputs["sampler"],
                          num_steps=inputs["num_steps"], eta=inputs["eta"], spacing=inputs["spacing"],
                          labels=inputs["labels"] if conditional else None,
                          guidance_scale=inputs["guidance_scale"] if conditional else None, **edit)


def _call(function, body):
    specs = function.structured_input_signature[1]
    return function(**{k: tf.constant(v, specs[k].dtype) for k, v in body["inputs"].items()})


# -- signatures ----------------------------------------------------------------------------
def _parse_saved_model_cli(text):
    """{signature: {"inputs": {name: (dtype, shape)}, "outputs": {...}}} from `show --all`."""
    signatures, current, kind, key = {}, None, None, None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("signature_def['"):
            current = signatures.setdefault(stripped.split("'")[1], {"inputs": {}, "outputs": {}})
        elif current is not None and (stripped.startswith("inputs['") or stripped.startswith("outputs['")):
            kind = "inputs" if stripped.startswith("inputs") else "outputs"
            key = stripped.split("'")[1]
            current[kind][key] = [None, None]
        elif current is not None and key is not None and stripped.startswith("dtype:"):
            current[kind][key][0] = stripped.split()[1]
        elif current is not None and key is not None and stripped.startswith("shape:"):
            current[kind][key][1] = stripped.split(":", 1)[1].strip()
        elif stripped.startswith("Method name is") or stripped.startswith("Concrete Functions"):
            key = None
    return signatures


def test_saved_model_cli_lists_the_signatures(exports):
    result = subprocess.run(["saved_model_cli", "show", "--all", "--dir", str(exports["uncond"])],
                            capture_output=True, text=True, env=_env(), timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    signatures = _parse_saved_model_cli(result.stdout)
    for name, inputs in SIGNATURE_INPUTS.items():
        assert name in signatures, f"signature {name!r} missing from:\n{result.stdout[:3000]}"
        assert {k: v[0] for k, v in signatures[name]["inputs"].items()} == inputs
    for name in ("sample", "serving_default", "edit"):
        scalars = {k: v[1] for k, v in signatures[name]["inputs"].items() if k not in ("labels", "images", "mask")}
        assert set(scalars.values()) == {"()"}
        assert signatures[name]["inputs"]["labels"][1] == "(-1)"
        assert signatures[name]["outputs"] == {"samples": ["DT_FLOAT", f"(-1, {H}, {W}, 1)"]}
    # Any rank: a wrong one is named by the signature's own check, not refused by a feed's shape.
    assert signatures["edit"]["inputs"]["images"][1] == signatures["edit"]["inputs"]["mask"][1] == "unknown_rank"
    assert signatures["limits"]["outputs"] == {
        "num_timesteps": ["DT_INT32", "()"], "num_classes": ["DT_INT32", "()"], "data_shape": ["DT_INT32", "(3)"],
        "data_range": ["DT_FLOAT", "(2)"], "max_num_samples": ["DT_INT32", "()"],
        "samplers": ["DT_STRING", f"({len(tfd.samplers.SAMPLERS)})"],
        "spacings": ["DT_STRING", f"({len(tfd.samplers.SPACING_CHOICES)})"]}
    assert signatures["denoise"]["inputs"]["x_t"][1] == f"(-1, {H}, {W}, 1)"
    assert signatures["denoise"]["outputs"] == {"eps": ["DT_FLOAT", f"(-1, {H}, {W}, 1)"]}


def test_conditional_export_has_the_same_signatures(loaded_cond):
    loaded = loaded_cond
    assert {"sample", "serving_default", "denoise"} <= set(loaded.signatures)
    for name, inputs in SIGNATURE_INPUTS.items():
        specs = loaded.signatures[name].structured_input_signature[1]
        assert {k: tf.dtypes.as_dtype(v.dtype).as_datatype_enum for k, v in specs.items()} == {
            k: getattr(tf.dtypes, {"DT_INT64": "int64", "DT_INT32": "int32", "DT_STRING": "string",
                                   "DT_FLOAT": "float32"}[v]).as_datatype_enum for k, v in inputs.items()}


def test_signatures_are_not_xla_compiled(exports):
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((exports["cond"] / "saved_model.pb").read_bytes())
    graph = saved_model.meta_graphs[0].graph_def
    attributes = [f.attr for f in graph.library.function] + [n.attr for n in graph.node]
    attributes += [n.attr for f in graph.library.function for n in f.node_def]
    compiled = [a for a in attributes if a.get("_XlaMustCompile") is not None and a["_XlaMustCompile"].b]
    assert not compiled


# -- same seed, same samples -------------------------------------------------------------
@pytest.mark.parametrize("key", ["uncond", "cond"])
def test_same_seed_same_samples_everywhere(models, served, key):
    model = models[key]
    assert served["modules"] == []
    report, failures = [], []
    for request_id, body in GOOD[key].items():
        if body.get("signature_name") in ("denoise", "limits"):
            continue
        graph = _generate(model, body["inputs"])
        editing = body.get("signature_name") == "edit"  # compared with generate and served only
        eager = graph if editing else _eager_samples(model, body["inputs"])
        traced = graph if editing else _eager_samples(model, body["inputs"], traced=True)
        tf2 = served["tf2"]["outputs"][f"{key}/{request_id}/samples"]
        tf1 = served["tf1"]["outputs"][f"{key}/{request_id}/samples"]
        assert graph.shape == tf2.shape == tf1.shape == (body["inputs"]["num_samples"], H, W, 1)
        assert 0.0 < graph.mean() < 1.0 and np.mean((graph > 0) & (graph < 1)) > 0.9  # not saturated by the clip
        differences = {"tf2 vs generate": np.abs(tf2 - graph).max(), "tf1 vs tf2": np.abs(tf1 - tf2).max(),
                       "eager vs generate": np.abs(eager - graph).max(),
                       "tf.function on constants vs generate": np.abs(traced - graph).max()}
        report.append(f"{key}/{request_id}: " + ", ".join(f"{k} {v:.3g}" for k, v in differences.items()))
        if differences["tf2 vs generate"] != 0:
            failures.append(f"{request_id}: the reloaded SavedModel is not bitwise equal to generate")
        if differences["tf1 vs tf2"] != 0:  # the brief's bound is 1e-5; bitwise holds here
            failures.append(f"{request_id}: the TF1-session loader is not bitwise equal to TF2")
        if differences["eager vs generate"] != 0 or differences["tf.function on constants vs generate"] != 0:
            failures.append(f"{request_id}: an eager call or a tf.function of it is not bitwise equal to generate")
    assert not failures, "\n".join(failures + ["max |difference| per request:"] + report)


@pytest.mark.parametrize("key", ["uncond", "cond"])
def test_limits_signature_reads_the_models_limits(models, served, exports, key):
    """Issue 17, item 5: T, classes, data shape and range, max_num_samples, samplers and spacings from the export."""
    expected = export.model_limits(models[key], MAX_NUM_SAMPLES.get(key))
    assert expected["num_classes"] == (NUM_CLASSES if key == "cond" else 0) and expected["num_timesteps"] == T
    read = export.read_limits(exports[key])
    for mode in ("tf2", "tf1"):
        outputs = served[mode]["outputs"]
        for name, value in expected.items():
            got = outputs[f"{key}/limits/{name}"]
            if value.dtype == object:
                assert [v.decode() for v in got.tolist()] == list(value) == read[name], (mode, name)
            else:
                np.testing.assert_array_equal(got, value, err_msg=f"{mode}/{name}")
                np.testing.assert_array_equal(read[name], value)
    assert read["samplers"] == list(tfd.samplers.SAMPLERS) and read["spacings"] == list(tfd.samplers.SPACING_CHOICES)


def test_served_edits_keep_the_known_pixels_exactly(served):
    for mode in ("tf2", "tf1"):
        outputs = served[mode]["outputs"]
        for request_id in ("uncond/edit_inpaint", "cond/edit_guided"):
            samples = outputs[f"{request_id}/samples"]
            np.testing.assert_array_equal(samples[:, : H // 2], _IMAGES[:, : H // 2], err_msg=f"{mode}/{request_id}")
            assert np.abs(samples[:, H // 2:] - _IMAGES[:, H // 2:]).mean() > 0.01
        # An all-zero mask keeps nothing: image-to-image of the whole image.
        assert np.abs(outputs["uncond/edit_img2img/samples"] - _IMAGES).mean() > 0.01


def test_unconditional_model_ignores_labels(served):
    outputs = served["tf2"]["outputs"]
    np.testing.assert_array_equal(outputs["uncond/labels_ignored/samples"], outputs["uncond/ddim/samples"])
    np.testing.assert_array_equal(outputs["uncond/serving_default/samples"], outputs["uncond/ddim/samples"])


@pytest.mark.parametrize("key", ["uncond", "cond"])
def test_denoise_signature(models, served, key):
    model = models[key]
    inputs = GOOD[key]["denoise"]["inputs"]
    labels = tf.constant(inputs["labels"], tf.int32) if model.num_classes is not None else None
    expected = tf.function(model.predict_eps)(tf.constant(_X_T), tf.constant(inputs["t"]), labels).numpy()
    for mode in ("tf2", "tf1"):
        np.testing.assert_array_equal(served[mode]["outputs"][f"{key}/denoise/eps"], expected, err_msg=mode)


def _onednn_enabled():
    try:
        from tensorflow.python.util import _pywrap_util_port  # pylint: disable=import-outside-toplevel
    except ImportError:
        return False
    return bool(_pywrap_util_port.IsMklEnabled())  # False under TF_ENABLE_ONEDNN_OPTS=0


def test_op_by_op_network_and_its_graph(models):
    """Why `sample` runs eager calls as a graph: the network alone may round differently op by op.

    Everywhere: with grappler's remapper off, graph and eager agree bitwise, and with it on they
    differ by rounding at most. With oneDNN on, the remapper's Conv2D + BiasAdd + SiLU fusion
    (`_MklNativeFusedConv2D` + `_MklSwish`) makes the difference, which is pinned there.
    """
    model = models["cond"]
    x, t, labels = tf.constant(_X_T), tf.constant([5, 9], tf.int32), tf.constant([1, 2], tf.int32)
    eager = model.predict_eps(x, t, labels).numpy()
    fused = tf.function(model.predict_eps)(x, t, labels).numpy()
    previous = tf.config.optimizer.get_experimental_options()
    tf.config.optimizer.set_experimental_options({"remapping": False})
    try:
        unfused = tf.function(model.predict_eps)(x, t, labels).numpy()
    finally:
        tf.config.optimizer.set_experimental_options({"remapping": previous.get("remapping", True)})
    np.testing.assert_array_equal(eager, unfused)
    assert np.abs(eager - fused).max() < 1e-5
    if _onednn_enabled():
        assert np.abs(eager - fused).max() > 0


# -- graph assertions (the exported signatures' only validation) --------------------------------
@pytest.fixture(scope="module")
def sample_checks_fn():
    @tf.function(input_signature=[tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.float32)])
    def fn(sampler, num_steps, eta):
        checks = export.sample_checks(T, sampler=sampler, num_steps=num_steps, eta=eta, num_samples=tf.constant(1))
        with tf.control_dependencies(checks):
            return tf.identity(num_steps)

    return fn


@pytest.mark.parametrize("args,pattern", [
    (("foo", 5, 0.0), 'sampler=\\\\?"foo'),
    (("ddpm", 0, 0.0), "num_steps=0"),
    (("ddpm", T + 1, 0.0), f"num_steps={T + 1}"),
    (("ddim", 5, 1.5), "eta=1.5"),
    (("ddim", 5, -0.1), "eta=-0.1"),
])
def test_sample_checks_raise_invalid_argument(sample_checks_fn, args, pattern):
    assert sample_checks_fn("ddim", 5, 0.5).numpy() == 5
    with pytest.raises(tf.errors.InvalidArgumentError, match=pattern):
        sample_checks_fn(*args)


def test_sample_checks_guidance_labels_and_num_samples():
    @tf.function(input_signature=[tf.TensorSpec([], tf.float32), tf.TensorSpec([None], tf.int32), tf.TensorSpec([], tf.int32)])
    def fn(w, labels, num_samples):
        checks = export.sample_checks(T, sampler=tf.constant("ddpm"), num_steps=tf.constant(5), eta=tf.constant(0.0),
                                      num_samples=num_samples, guidance_scale=w, labels=labels, null_label=NUM_CLASSES,
                                      max_num_samples=4)
        with tf.control_dependencies(checks):
            return tf.identity(num_samples)

    assert fn(1.0, [0, NUM_CLASSES], 2).numpy() == 2
    with pytest.raises(tf.errors.InvalidArgumentError, match="guidance_scale=inf"):
        fn(float("inf"), [0, 1], 2)
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"labels=.*{NUM_CLASSES + 1}"):
        fn(1.0, [0, NUM_CLASSES + 1], 2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="num_samples=3"):
        fn(1.0, [0, 1], 3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="num_samples=0"):
        fn(1.0, np.zeros([0], np.int32), 0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="num_samples must be <= 4. Received: num_samples=5"):
        fn(1.0, [0] * 5, 5)


# -- serving requests ------------------------------------------------------------------------
def test_rest_columnar_body_through_predict_request(served):
    """The documented REST body, as a PredictRequest through the TF1-session loader (as TF Serving)."""
    body_text = json.dumps(GOOD["uncond"]["ddpm"])  # {"signature_name": "sample", "inputs": {"seed": 3, ...}}
    body = json.loads(body_text)
    assert body["signature_name"] == "sample" and body["inputs"]["num_samples"] == 2
    samples = served["tf1"]["outputs"]["uncond/ddpm/samples"]
    assert samples.dtype == np.float32 and samples.shape == (2, H, W, 1)
    assert samples.min() >= 0.0 and samples.max() <= 1.0
    np.testing.assert_allclose(samples, served["tf2"]["outputs"]["uncond/ddpm/samples"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("key", ["uncond", "cond"])
def test_bad_requests_are_invalid_argument_and_serving_continues(served, key):
    first = next(iter(GOOD[key]))
    for mode in ("tf2", "tf1"):
        errors, outputs = served[mode]["errors"], served[mode]["outputs"]
        assert not [r for r in errors if not r.startswith(f"{key}/bad/") and r.startswith(key)], errors
        for bad_id, (_, expected) in BAD[key].items():
            message = errors.get(f"{key}/bad/{bad_id}")
            assert message is not None, f"{mode}: {key}/{bad_id} did not fail"
            assert expected in message, f"{mode}: {key}/{bad_id}: {message[:500]}"
            output_key = "eps" if "denoise" in first else "samples"
            np.testing.assert_array_equal(outputs[f"{key}/after/{bad_id}/{output_key}"],
                                          outputs[f"{key}/{first}/{output_key}"])


def test_bad_requests_in_process(loaded_cond):
    sample = loaded_cond.signatures["sample"]
    good = GOOD["cond"]["ddim"]
    expected = _call(sample, good)["samples"].numpy()
    cases = {"guidance_scale": _bad(good, guidance_scale=float("nan")),
             "guidance_scale=inf": _bad(good, guidance_scale=float("inf")),
             "eta": _bad(good, eta=float("nan")),
             "sampler": _bad(good, sampler=""),
             "spacing": _bad(good, spacing="Karras"),
             "num_steps": _bad(good, num_steps=-1)}
    for expected_text, body in cases.items():
        with pytest.raises(tf.errors.InvalidArgumentError, match=expected_text.replace("[", r"\[")):
            _call(sample, body)
        np.testing.assert_array_equal(_call(sample, good)["samples"].numpy(), expected)


def test_max_num_samples_must_be_positive(models, tmp_path):
    with pytest.raises(ValueError, match="max_num_samples=0"):
        export.export_sampler(models["uncond"], tmp_path / "1", max_num_samples=0)
    assert os.listdir(tmp_path) == []


# -- export_for_serving ------------------------------------------------------------------------
def _parse_config(path):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(path.read_text(), config)
    return config


def test_export_for_serving_versions_and_config(models, tmp_path, monkeypatch):
    model = models["uncond"]
    base = tmp_path / "serving"
    first = export.export_for_serving(model, base, "tiny")
    assert first == str(base / "tiny" / "1") and os.path.exists(os.path.join(first, "saved_model.pb"))
    config = _parse_config(base / "models.config")
    entries = [(c.name, c.base_path, c.model_platform) for c in config.model_config_list.config]
    assert entries == [("tiny", str(base / "tiny"), "tensorflow")]

    # Another entry, written by hand with fields of its own, is kept with its fields.
    config_text = (base / "models.config").read_text().replace(
        "}\n", '}\n  config {\n    name: "hand"  # kept\n    base_path: "/srv/{hand}"\n'
        '    model_platform: "tensorflow"\n    model_version_policy { specific { versions: 3 } }\n  }\n', 1)
    (base / "models.config").write_text(config_text)

    second = export.export_for_serving(model, base, "tiny", serving_base="/models/")
    assert second == str(base / "tiny" / "2")
    export.update_model_config(str(base / "models.config"), "other", "/models/other")
    config = _parse_config(base / "models.config")
    by_name = {c.name: c for c in config.model_config_list.config}
    assert list(by_name) == ["tiny", "hand", "other"]
    assert by_name["tiny"].base_path == "/models/tiny"
    assert list(by_name["hand"].model_version_policy.specific.versions) == [3]
    assert by_name["hand"].base_path == "/srv/{hand}"
    # (The file is rewritten from the ModelServerConfig proto: fields are kept, comments are not.)

    with pytest.raises(FileExistsError, match=str(base / "tiny" / "1")):
        export.export_for_serving(model, base, "tiny", version=1)
    with pytest.raises(ValueError, match="version=0"):
        export.export_for_serving(model, base, "tiny", version=0)
    with pytest.raises(ValueError, match="name='../x'"):
        export.export_for_serving(model, base, "../x")
    (base / "bad.config").write_text("not a config")
    with pytest.raises(ValueError, match="bad.config"):
        export.update_model_config(str(base / "bad.config"), "tiny", "/x")
    bad_base = tmp_path / "bad_base"
    bad_base.mkdir()
    (bad_base / "models.config").write_text("model_config_list { config { name: 'x' }")  # unbalanced
    with pytest.raises(ValueError, match="models.config"):
        export.export_for_serving(model, bad_base, "tiny")
    assert os.listdir(bad_base) == ["models.config"]  # checked before anything was written

    # A failure in the middle of the write leaves no version directory and no temporary.
    config_before = (base / "models.config").read_text()

    def failing_write(archive, path):
        with open(os.path.join(path, "saved_model.pb"), "wb") as f:
            f.write(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(export, "_write_archive", failing_write)
    with pytest.raises(RuntimeError, match="disk full"):
        export.export_for_serving(model, base, "tiny")
    assert sorted(os.listdir(base / "tiny")) == ["1", "2"]
    assert (base / "models.config").read_text() == config_before
    assert export.existing_versions(str(base / "tiny")) == [1, 2]


def test_export_refuses_unbuilt_model_and_existing_dir(models, tmp_path):
    network = tfd.layers.SeedUNet(channels=(8, 16), initial_channels=8, time_embedding_dim=16, time_mlp_width=32)
    unbuilt = tfd.DiffusionModel(network, tfd.GaussianDiffusion(tfd.schedules.make_betas("cosine", T)))
    with pytest.raises(ValueError, match="not built"):
        export.export_sampler(unbuilt, tmp_path / "1")
    (tmp_path / "2").mkdir()
    with pytest.raises(FileExistsError, match=str(tmp_path / "2")):
        export.export_sampler(models["uncond"], tmp_path / "2")
    assert os.listdir(tmp_path) == ["2"]


# -- tools/export.py -------------------------------------------------------------------------
def _tool(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "export.py"), *args],
                          capture_output=True, text=True, env=_env(), timeout=300)


def test_tool_exports_a_trained_workdir(models, tmp_path):
    workdir = tmp_path / "run_dir"
    workdir.mkdir()
    models["cond"].save(workdir / "model.keras")
    base = tmp_path / "serving"
    # Without config.json the name is the workdir's basename.
    result = _tool(f"--workdir={workdir}", f"--export_base={base}")
    assert result.returncode == 0, result.stderr[-3000:]
    path = base / "run_dir" / "1"
    assert result.stdout.strip().splitlines()[-1] == str(path)
    sample = tf.saved_model.load(str(path)).signatures["sample"]
    body = GOOD["cond"]["ddim"]
    np.testing.assert_array_equal(_call(sample, body)["samples"].numpy(), _generate(models["cond"], body["inputs"]))
    assert _parse_config(base / "models.config").model_config_list.config[0].name == "run_dir"

    # With config.json its "name"; an existing version is refused before anything is loaded.
    (workdir / "config.json").write_text(json.dumps({"name": "mnist_cond", "batch_size": 64}))
    (base / "mnist_cond" / "3").mkdir(parents=True)
    result = _tool(f"--workdir={workdir}", f"--export_base={base}", "--version=3")
    assert result.returncode == 1 and str(base / "mnist_cond" / "3") in result.stderr, result.stderr[-2000:]


def test_tool_errors_name_the_value(tmp_path):
    empty = tmp_path / "empty_run"
    empty.mkdir()
    result = _tool(f"--workdir={empty}", f"--export_base={tmp_path / 'serving'}")
    assert result.returncode == 1 and str(empty / "model.keras") in result.stderr
    result = _tool(f"--workdir={empty}", f"--export_base={tmp_path / 'serving'}", "--version=0")
    assert result.returncode == 1 and "--version=0" in result.stderr
    assert not (tmp_path / "serving").exists()


def test_random_requests_succeed_or_name_the_argument(loaded_cond, models):
    """≥ 200 random requests at the exported `sample` signature: each returns samples of the
    requested shape in [0, 1], or an InvalidArgumentError naming the argument it rejects."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    sample = loaded_cond.signatures["sample"]
    timesteps = models["cond"].diffusion.num_timesteps
    arguments = ("seed", "num_samples", "num_steps", "sampler", "eta", "guidance_scale", "labels", "spacing")
    outcomes = {"ok": 0, "rejected": 0}

    def mostly(valid, invalid):
        return st.one_of(valid, valid, valid, valid, invalid)  # four in five draws are valid

    @settings(max_examples=220, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(
        seed=st.integers(-2**63, 2**63 - 1),
        num_samples=mostly(st.integers(1, 4), st.integers(-3, 0) | st.integers(9, 12)),
        num_steps=mostly(st.integers(1, timesteps), st.integers(-2, 0) | st.integers(timesteps + 1, timesteps + 3)),
        sampler=mostly(st.sampled_from(tfd.samplers.SAMPLERS), st.sampled_from(["", "DDIM", "euler", "ddpm "])),
        spacing=mostly(st.sampled_from(tfd.samplers.SPACING_CHOICES), st.sampled_from(["", "LOGSNR", "cosine", "AUTO"])),
        eta=mostly(st.floats(0, 1), st.floats(-0.5, -0.01) | st.sampled_from([1.5, float("nan"), float("inf")])),
        guidance_scale=mostly(st.floats(0, 8), st.sampled_from([float("nan"), float("-inf"), float("inf")])),
        label_draw=st.data(),
    )
    def request(seed, num_samples, num_steps, sampler, spacing, eta, guidance_scale, label_draw):
        size = mostly(st.just(max(num_samples, 0)), st.integers(0, 5))
        labels = label_draw.draw(size.flatmap(lambda n: st.lists(
            mostly(st.integers(0, NUM_CLASSES), st.integers(-2, -1) | st.just(NUM_CLASSES + 1)), min_size=n, max_size=n)))
        inputs = dict(seed=seed, num_samples=num_samples, num_steps=num_steps, sampler=sampler, eta=eta,
                      guidance_scale=guidance_scale, labels=labels, spacing=spacing)
        try:
            samples = _call(sample, {"inputs": inputs})["samples"].numpy()
        except tf.errors.InvalidArgumentError as error:
            assert any(f"{name}=" in error.message for name in arguments), error.message[:300]
            outcomes["rejected"] += 1
            return
        assert samples.shape[0] == num_samples == len(labels) and 1 <= num_steps <= timesteps
        assert np.all((samples >= 0) & (samples <= 1))
        outcomes["ok"] += 1

    request()
    assert outcomes["ok"] >= 5 and outcomes["rejected"] >= 100 and sum(outcomes.values()) >= 200, outcomes


@pytest.mark.slow  # the fast suite checks the bf16 copy in-process (test_model) and fp32 exports against generate
def test_bfloat16_export_serves_close_to_float32(models, tmp_path):
    """`tools/export.py --compute_dtype=bfloat16`: same signatures, samples within bf16 rounding of float32."""
    model = models["uncond"]
    path = export.export_sampler(model.with_dtype_policy("mixed_bfloat16"), tmp_path / "1")
    loaded = tf.saved_model.load(str(path))
    body = GOOD["uncond"]["dpmpp_2m_auto"]
    served = _call(loaded.signatures["sample"], body)["samples"].numpy()
    reference = _generate(model, body["inputs"])
    assert served.dtype == np.float32 and served.shape == reference.shape
    assert 0 < np.abs(served - reference).max() < 0.1
