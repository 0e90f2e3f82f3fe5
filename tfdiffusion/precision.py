"""Which compute precision pays on this machine: `mixed_precision="auto"`.

bfloat16 compute halves the bytes a step moves, but it is faster only where the hardware has
bfloat16 matrix units: a CPU with AMX (`amx_bf16` in /proc/cpuinfo; the seed U-Net trained
2.2× faster than float32 on one, 2026-11-29), an NVIDIA GPU of compute capability 8.0 or newer
(Ampere), or a TPU. On a CPU with only AVX512_BF16, oneDNN's bfloat16 kernels are slower than
its float32 ones (0.5–0.7× in TensorFlow and in PyTorch, measured here), so "auto" keeps
float32 there. The decision and its reason are returned together so that callers can log and
record both.
"""

import os

PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
CPUINFO_PATH = "/proc/cpuinfo"


def cpu_flags(cpuinfo_path=CPUINFO_PATH):
    """The CPU feature flags of the first processor in `cpuinfo_path` (empty where unreadable)."""
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _accelerators():
    """[(kind, compute capability or None)] of the visible GPUs and TPUs (imports TensorFlow)."""
    import tensorflow as tf

    found = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        found.append(("GPU", details.get("compute_capability")))
    found += [("TPU", None) for _ in tf.config.list_physical_devices("TPU")]
    return found


def fast_bfloat16(*, flags=None, accelerators=None):
    """(True or False, reason): whether bfloat16 compute is expected to beat float32 here.

    Args:
      flags: CPU feature flags (default: read from /proc/cpuinfo).
      accelerators: [(kind, compute_capability)] as `("GPU", (8, 0))` or `("TPU", None)`
        (default: TensorFlow's visible devices).
    """
    accelerators = _accelerators() if accelerators is None else accelerators
    if accelerators:
        kind, capability = accelerators[0]
        if kind == "TPU":
            return True, "a TPU (bfloat16 matrix units)"
        if capability is not None and tuple(capability) >= (8, 0):
            return True, f"a GPU of compute capability {capability[0]}.{capability[1]} (>= 8.0 has bfloat16 tensor cores)"
        shown = "unknown" if capability is None else f"{capability[0]}.{capability[1]}"
        return False, f"a GPU of compute capability {shown} (bfloat16 tensor cores need >= 8.0)"
    flags = cpu_flags() if flags is None else frozenset(flags)
    if "amx_bf16" in flags:
        return True, "a CPU with AMX (amx_bf16)"
    if "avx512_bf16" in flags:
        return False, "a CPU with AVX512_BF16 but no AMX (its bfloat16 kernels are slower than float32)"
    return False, "a CPU without bfloat16 matrix units"


def resolve_precision(setting, *, flags=None, accelerators=None):
    """The Keras dtype policy name for `setting`, and why.

    Args:
      setting: "auto", or an explicit policy ("float32", "mixed_bfloat16", "mixed_float16"),
        which is returned unchanged.
      flags, accelerators: see `fast_bfloat16` (for tests).

    Returns:
      (policy name, reason string).
    """
    if setting not in PRECISIONS:
        raise ValueError(f"mixed_precision must be one of {PRECISIONS}. Received: mixed_precision={setting!r}")
    if setting != "auto":
        return setting, "set explicitly"
    forced = os.environ.get("TFDIFFUSION_PRECISION")
    if forced:
        if forced not in PRECISIONS[1:]:
            raise ValueError(f"$TFDIFFUSION_PRECISION must be one of {PRECISIONS[1:]}. "
                             f"Received: TFDIFFUSION_PRECISION={forced!r}")
        return forced, "set by $TFDIFFUSION_PRECISION"
    fast, reason = fast_bfloat16(flags=flags, accelerators=accelerators)
    return ("mixed_bfloat16" if fast else "float32"), f"auto: {reason}"
