"""Small helpers shared by the layer files: argument checks and FiLM / adaLN modulation."""


def _is_positive_int(value):
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_positive_int(name, value):
    """Raises a ValueError naming `name` unless `value` is an integer >= 1 (bools refused)."""
    if not _is_positive_int(value):
        raise ValueError(f"{name} must be a positive integer. Received: {name}={value!r}")


def check_positive_ints(name, values, min_length=1):
    """Checks a sequence of widths: at least `min_length` integers >= 1. Returns it as a tuple."""
    values = tuple(values)
    if len(values) < min_length or not all(_is_positive_int(v) for v in values):
        count = f"at least {min_length} " if min_length > 1 else "one or more " if min_length == 1 else ""
        raise ValueError(f"{name} must hold {count}positive integers. Received: {name}={values!r}")
    return values


def check_divides(name, value, total, what):
    """Raises a ValueError unless `value` (the argument `name`) divides `total`, described by `what`."""
    if total % value:
        raise ValueError(f"{name} must divide {what}. Received: {name}={value!r}")


def modulate(x, shift, scale):
    """x·(1 + scale) + shift, with scale and shift [N, C] broadcast over the middle axes of x [N, ..., C].

    The feature-wise affine modulation of FiLM (Perez et al. 2018), used as scale-shift norm in the
    U-Net (Nichol & Dhariwal 2021, §3) and as adaLN in DiT (Peebles & Xie 2023, §3.2).
    """
    expand = (slice(None),) + (None,) * (len(x.shape) - 2) + (slice(None),)
    return x * (1.0 + scale[expand]) + shift[expand]
