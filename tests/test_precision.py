"""`mixed_precision="auto"`: the decision for each kind of hardware, faked."""

import pytest

from tfdiffusion import precision

SAPPHIRE_RAPIDS = {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"}
COOPER_LAKE = {"avx512f", "avx512_bf16"}
SKYLAKE = {"avx2", "avx512f"}


@pytest.mark.parametrize(
    "flags, accelerators, expected, reason_part",
    [
        (SAPPHIRE_RAPIDS, [], "mixed_bfloat16", "AMX"),
        (COOPER_LAKE, [], "float32", "no AMX"),
        (SKYLAKE, [], "float32", "without bfloat16"),
        (SKYLAKE, [("GPU", (8, 0))], "mixed_bfloat16", "8.0"),
        (SAPPHIRE_RAPIDS, [("GPU", (7, 5))], "float32", "7.5"),
        (SKYLAKE, [("GPU", None)], "float32", "unknown"),
        (SKYLAKE, [("TPU", None)], "mixed_bfloat16", "TPU"),
    ],
    ids=["amx", "avx512_bf16", "no-bf16", "ampere", "turing", "gpu-unknown", "tpu"],
)
def test_auto_picks_bfloat16_only_where_the_hardware_pays(flags, accelerators, expected, reason_part, monkeypatch):
    monkeypatch.delenv("TFDIFFUSION_PRECISION", raising=False)
    policy, reason = precision.resolve_precision("auto", flags=flags, accelerators=accelerators)
    assert policy == expected
    assert reason.startswith("auto: ") and reason_part in reason


@pytest.mark.parametrize("setting", ["float32", "mixed_bfloat16", "mixed_float16"])
def test_explicit_settings_are_kept(setting):
    assert precision.resolve_precision(setting, flags=SAPPHIRE_RAPIDS, accelerators=[]) == (setting, "set explicitly")


def test_environment_overrides_auto(monkeypatch):
    monkeypatch.setenv("TFDIFFUSION_PRECISION", "float32")
    assert precision.resolve_precision("auto", flags=SAPPHIRE_RAPIDS, accelerators=[])[0] == "float32"
    monkeypatch.setenv("TFDIFFUSION_PRECISION", "fp8")
    with pytest.raises(ValueError, match="Received: TFDIFFUSION_PRECISION='fp8'"):
        precision.resolve_precision("auto", flags=SAPPHIRE_RAPIDS, accelerators=[])


def test_unknown_setting_names_the_value():
    with pytest.raises(ValueError, match="Received: mixed_precision='bf16'"):
        precision.resolve_precision("bf16")


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Fake\nflags\t\t: fpu avx512_bf16 amx_bf16\n\nprocessor\t: 1\n")
    assert precision.cpu_flags(str(cpuinfo)) == {"fpu", "avx512_bf16", "amx_bf16"}
    assert precision.cpu_flags(str(tmp_path / "missing")) == frozenset()


def test_this_machine_gets_a_decision_with_a_reason(monkeypatch):
    monkeypatch.delenv("TFDIFFUSION_PRECISION", raising=False)
    policy, reason = precision.resolve_precision("auto")
    assert policy in ("float32", "mixed_bfloat16") and len(reason) > len("auto: ")
    if not precision._accelerators():  # a CPU host: bfloat16 exactly when it has AMX
        assert (policy == "mixed_bfloat16") == ("amx_bf16" in precision.cpu_flags())


def _pretend(monkeypatch, cpu_flags):
    """This host as a CPU with `cpu_flags` and no accelerator."""
    monkeypatch.delenv("TFDIFFUSION_PRECISION", raising=False)
    monkeypatch.setattr(precision, "cpu_flags", lambda *args: frozenset(cpu_flags))
    monkeypatch.setattr(precision, "_accelerators", lambda: [])


def _tiny_image_model():
    import keras
    import tensorflow as tf

    import tfdiffusion as tfd

    keras.utils.set_random_seed(0)  # the same weights whichever tests ran before in this process (pytest-xdist)
    network = tfd.layers.SeedUNet(channels=(8, 16), initial_channels=8, time_embedding_dim=16, time_mlp_width=32)
    model = tfd.DiffusionModel(network, tfd.GaussianDiffusion(tfd.schedules.make_betas("cosine", 20)))
    model(tf.zeros((1, 8, 8, 1)))
    return model


def test_auto_samples_in_bfloat16_on_amx_and_in_float32_without(monkeypatch):
    import numpy as np

    model = _tiny_image_model()
    _pretend(monkeypatch, COOPER_LAKE)
    same, policy, reason = model.inference_model("auto")
    assert same is model and policy == "float32" and "no AMX" in reason
    _pretend(monkeypatch, SAPPHIRE_RAPIDS)
    copy, policy, reason = model.inference_model("auto")
    assert copy is not model and policy == "mixed_bfloat16" and "AMX" in reason
    assert copy.network.dtype_policy.name == "mixed_bfloat16"
    assert copy.inference_model("auto")[0] is copy  # already bfloat16: no second copy
    assert copy.generate(4, seed=3, sampler="ddim", num_steps=5).dtype == np.float32

    def unclipped(m, seed):  # in model space: an untrained network's samples mostly clip to the data range's ends
        return m.sample_model_space(4, seed=seed, sampler="ddim", num_steps=5).numpy()

    fp32, bf16, other_seed = unclipped(model, 3), unclipped(copy, 3), unclipped(model, 4)
    assert bf16.dtype == np.float32 and not np.array_equal(fp32, bf16)
    # bfloat16 keeps 8 bits of mantissa in the network; the coefficient arithmetic stays float32.
    assert np.abs(fp32 - bf16).mean() < 0.02 * np.abs(fp32 - other_seed).mean()
    fp32 = model.generate(4, seed=3, sampler="ddim", num_steps=5)
    # An explicit float32 request turns a bfloat16 model back.
    back, policy, _ = copy.inference_model("float32")
    assert policy == "float32" and np.array_equal(back.generate(4, seed=3, sampler="ddim", num_steps=5), fp32)


def test_evaluation_records_the_sampling_precision(monkeypatch, tmp_path):
    from tfdiffusion import evaluation

    model = _tiny_image_model()
    _pretend(monkeypatch, SAPPHIRE_RAPIDS)
    sampler = evaluation.ModelSampler(model, sampler="ddim", num_steps=3, mixed_precision="auto")
    assert sampler.precision["policy"] == "mixed_bfloat16" and "AMX" in sampler.precision["reason"]
    assert sampler.model.network.dtype_policy.name == "mixed_bfloat16"
    assert evaluation.ModelSampler(model, num_steps=3).precision is None  # as it is
