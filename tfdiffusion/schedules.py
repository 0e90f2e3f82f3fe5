"""Variance schedules β_1..β_T as float64 NumPy arrays.

Every schedule is built through one function, `make_betas(name, num_timesteps, **kwargs)`.
Index i of the returned array holds β for the 0-based timestep t = i (the tutorial's
convention; the papers write β_{t+1}).

| name         | source                                                                 |
|--------------|------------------------------------------------------------------------|
| "linear"     | Ho et al. 2020, §4: 1e-4 → 0.02 over T=1000, rescaled by 1000/T so that |
|              | shorter chains keep the same total noise (T=400: 2.5e-4 → 0.05).       |
| "cosine"     | Nichol & Dhariwal 2021, eq. 17, s=0.008, β clipped at 0.999.           |
| "polynomial" | the two-moons guide: β grows like t^power so that it changes little    |
|              | near t=0 (T=10 works for 2-D toys).                                   |
| "sigmoid"    | Xu et al. 2022 (GeoDiff): β follows a sigmoid from β_start to β_end,   |
|              | with the same 1000/T rescaling as "linear".                           |
"""

import numpy as np

SCHEDULE_NAMES = ("linear", "cosine", "polynomial", "sigmoid")


def linear_betas(num_timesteps, beta_start=1e-4, beta_end=0.02):
    """DDPM's linear schedule, rescaled by 1000/T (Ho et al. 2020)."""
    scale = 1000.0 / num_timesteps
    return np.linspace(scale * beta_start, scale * beta_end, num_timesteps, dtype=np.float64)


def cosine_betas(num_timesteps, s=0.008, max_beta=0.999):
    """ᾱ(t) = f(t)/f(0), f(t) = cos²(π/2 · (t/T + s)/(1 + s)) (Nichol & Dhariwal 2021, eq. 17)."""
    steps = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    f = np.cos((steps + s) / (1.0 + s) * np.pi / 2.0) ** 2
    alphas_cumprod = f / f[0]
    betas = 1.0 - alphas_cumprod[1:] / alphas_cumprod[:-1]
    return np.clip(betas, 0.0, max_beta)


def polynomial_betas(num_timesteps, power=2.0, beta_start=0.01, beta_end=0.9):
    """β_t = β_start + (β_end − β_start)·((t+1)/T)^power: small steps near the data.

    The defaults suit T=10 on the two-moons toy: ᾱ_T ≈ 2e-3.
    """
    fraction = np.arange(1, num_timesteps + 1, dtype=np.float64) / num_timesteps
    return beta_start + (beta_end - beta_start) * fraction**power


def sigmoid_betas(num_timesteps, beta_start=1e-4, beta_end=0.02, sharpness=6.0):
    """β follows σ(x), x ∈ [−sharpness, sharpness], between the rescaled endpoints."""
    scale = 1000.0 / num_timesteps
    x = np.linspace(-sharpness, sharpness, num_timesteps, dtype=np.float64)
    sigmoid = 1.0 / (1.0 + np.exp(-x))
    return scale * (beta_start + (beta_end - beta_start) * sigmoid)


_BUILDERS = {
    "linear": linear_betas,
    "cosine": cosine_betas,
    "polynomial": polynomial_betas,
    "sigmoid": sigmoid_betas,
}


def validate_betas(betas):
    """Returns `betas` as float64 after checking it is 1-D and inside (0, 1)."""
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or betas.size < 1:
        raise ValueError(f"betas must be a non-empty 1-D array. Received: shape={betas.shape}")
    bad = np.flatnonzero(~((betas > 0.0) & (betas < 1.0)))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"Every β must lie in (0, 1). Received: betas[{i}]={float(betas[i])!r} "
            f"({bad.size} of {betas.size} values outside)"
        )
    return betas


def make_betas(name, num_timesteps, **kwargs):
    """Builds the β schedule `name` with `num_timesteps` steps.

    Args:
      name: one of `SCHEDULE_NAMES`.
      num_timesteps: T, an integer >= 1.
      **kwargs: the schedule's own parameters (see the functions above).

    Returns:
      float64 array of shape [T], every value in (0, 1).

    Raises:
      ValueError: unknown name, T < 1, unknown parameter, or a β outside (0, 1).
    """
    if name not in _BUILDERS:
        raise ValueError(f"Unknown schedule. Expected one of {SCHEDULE_NAMES}. Received: name={name!r}")
    if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, (int, np.integer)) or num_timesteps < 1:
        raise ValueError(f"num_timesteps must be an integer >= 1. Received: num_timesteps={num_timesteps!r}")
    try:
        betas = _BUILDERS[name](int(num_timesteps), **kwargs)
    except TypeError as error:
        raise ValueError(f"Bad parameters for schedule {name!r}: {error}. Received: {kwargs}") from None
    return validate_betas(betas)
