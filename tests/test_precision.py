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
