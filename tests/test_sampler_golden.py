"""Golden full-loop samples of every sampler on fixed tiny networks and seeds (issue 12, items 6 and 11).

Every case runs `DiffusionModel.generate` end to end (seeded x_T, the noise stream, the timestep
sequence, classifier-free guidance, the step coefficients, the x̂0/ε̂ conversions) on a network whose
weights are fixed numbers, not an initialiser's draw:

- `AffineDenoiser`: prediction = gain[t, y] · x + offset[t, y], the exact ε-, x0- or v-prediction
  of Gaussian data N(μ_y, s²) (per class y). It uses gathers, one multiply and one add, so it rounds
  the same on every host (checked here with oneDNN on and off), and its float64 twin is exact.
- `AffineDenoiser(mlp=True)`: the affine predictor plus a small MLP (MatMul + SiLU), a "real"
  network. Its kernels (and grappler's fusions of them with the sampler's arithmetic) may round
  differently on another CPU or with oneDNN off; its cases are compared bitwise only where the golden
  file was written (`_same_host`: TF version, oneDNN, CPU features, and the network's outputs on
  fixed inputs), and to float32 rounding elsewhere.

Golden files (tests/golden/):
- `samplers_pre_refactor.npz`: the samples of the code before issue 12's step-algebra change
  (commit c3b71ac; written once, never rewritten).
- `samplers.npz`: the samples of the current code. ε-prediction cases are bitwise equal to the
  pre-refactor file; x0- and v-prediction cases changed once, when the samplers stopped turning the
  network's x̂0 into ε̂ and back (`test_x0_and_v_are_closer_to_float64_than_before`). Issue 14 added
  cases (DPM-Solver++(3M), UniPC, Heun, SDE-DPM-Solver++(2M); every solver on the log-SNR, Karras and
  quadratic spacings; image-to-image and inpainting) and left every earlier case bitwise as it was.
  Session 10 added one DPM-Solver++(3M) case whose order the bound on h lowers (no earlier case
  changed: none of them takes a third-order step longer than 1 in λ).

`float64_reference` runs the same sampler in float64 NumPy on the float64 twin of the network with the
same seeded draws: every case must stay within float32 rounding of it, so a changed noise stream,
timestep sequence or coefficient fails here even if someone rewrites the golden files.

To rewrite `samplers.npz` after an intended change: `python tests/test_sampler_golden.py --write`.
"""

import math
import pathlib
import platform
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfdiffusion as tfd

T = 10
D = 3
N = 6
NUM_CLASSES = 2
LABELS = [0, 1, 1, 0, 1, 0]
MU = np.array([0.5, -0.3, 0.1])
CLASS_SHIFT = np.array([0.4, 0.2, -0.3])  # μ_y = μ + (y − ½) · shift; the null class has μ
S = np.array([0.2, 0.5, 0.3])
GOLDEN_DIR = pathlib.Path(__file__).resolve().parent / "golden"
GOLDEN = GOLDEN_DIR / "samplers.npz"
PRE_REFACTOR = GOLDEN_DIR / "samplers_pre_refactor.npz"
PREDICTION_TYPES = ("epsilon", "x0", "v")
SAMPLERS = [("ddpm", 0.0, "beta_tilde"), ("ddim", 0.0, "beta_tilde"), ("ddim", 0.5, "beta_tilde"),
            ("dpmpp_2m", 0.0, "beta_tilde")]


NEW_SAMPLERS = [("dpmpp_3m", 0.0, "beta_tilde"), ("unipc", 0.0, "beta_tilde"), ("heun", 0.0, "beta_tilde"),
                ("dpmpp_2m_sde", 0.0, "beta_tilde")]
INIT = np.linspace(-0.8, 0.9, N * D).reshape(N, D).astype(np.float32)  # the images the edit cases edit
KEEP = np.array([[1.0], [0.0], [1.0], [0.0], [0.0], [1.0]], np.float32)  # [N, 1]: rows kept by inpainting


def _case(kind, p, s, e, v, n, w, spacing="uniform", edit=None):
    """(case id, network kind, prediction type, sampler, eta, ddpm variance, num_steps, guidance, spacing, edit)."""
    suffix = ("" if spacing == "uniform" else f"/{spacing}") + ("" if edit is None else f"/{edit}")
    return (f"{kind}/{p}/{s}/eta{e}/{v}/n{n}/w{w}{suffix}", kind, p, s, e, v, n, w, spacing, edit)


def _pre_issue14_cases():
    """The cases of the pre-refactor file: uniform spacing, the first three samplers."""
    cases = []
    for prediction_type in PREDICTION_TYPES:
        for sampler, eta, variance in SAMPLERS:
            for n in (1, 3, T):
                cases.append(_case("affine", prediction_type, sampler, eta, variance, n, None))
            for n in (3, T):
                for guidance in (None, 2.0):
                    cases.append(_case("affine_cond", prediction_type, sampler, eta, variance, n, guidance))
            cases.append(_case("mlp", prediction_type, sampler, eta, variance, 4, None))
        cases.append(_case("affine", prediction_type, "ddpm", 0.0, "beta", T, None))
    return cases


def _issue14_cases():
    """The new solvers as the old ones are covered, every solver on every other spacing, and edits."""
    cases = []
    for prediction_type in PREDICTION_TYPES:
        for sampler, eta, variance in NEW_SAMPLERS:
            for n in (1, 3, T):
                cases.append(_case("affine", prediction_type, sampler, eta, variance, n, None))
            cases.append(_case("affine_cond", prediction_type, sampler, eta, variance, T, 2.0))
            cases.append(_case("mlp", prediction_type, sampler, eta, variance, 4, None))
        for sampler, eta, variance in SAMPLERS + NEW_SAMPLERS:
            for spacing in ("logsnr", "karras", "quadratic"):
                cases.append(_case("affine", prediction_type, sampler, eta, variance, 4, None, spacing))
    for sampler, eta, variance in SAMPLERS + NEW_SAMPLERS:
        cases.append(_case("affine", "epsilon", sampler, eta, variance, 5, None, "logsnr", "img2img"))
        cases.append(_case("affine_cond", "epsilon", sampler, eta, variance, 4, 2.0, "karras", "inpaint"))
    # session 10: 3M's third step of 5 on this grid is 1.12 long in λ, so `dpmpp_3m_order` lowers it to 2
    cases.append(_case("affine", "epsilon", "dpmpp_3m", 0.0, "beta_tilde", 5, None, "logsnr"))
    return cases


PRE_ISSUE14_CASES = _pre_issue14_cases()
CASES = PRE_ISSUE14_CASES + _issue14_cases()
SEEDS = {case[0]: 100 + i for i, case in enumerate(CASES)}

# sum, first and last value of a few cases' samples, printed with 6 significant digits (an anchor
# that does not depend on the .npz files).
SUMMARY = {
    'affine/epsilon/ddim/eta0.0/beta_tilde/n1/wNone': (1.80424, 0.500029, 0.0999172),
    'affine/epsilon/ddim/eta0.5/beta_tilde/n1/wNone': (1.80129, 0.500008, 0.0998747),
    'affine/epsilon/ddpm/eta0.0/beta/n10/wNone': (4.61212, 0.289446, 0.117815),
    'affine/epsilon/ddpm/eta0.0/beta_tilde/n1/wNone': (1.79858, 0.500315, 0.0998322),
    'affine/epsilon/dpmpp_2m/eta0.0/beta_tilde/n1/wNone': (1.79564, 0.500193, 0.0994558),
    'affine/v/ddim/eta0.0/beta_tilde/n1/wNone': (1.80504, 0.499981, 0.100099),
    'affine/v/ddim/eta0.5/beta_tilde/n1/wNone': (1.79933, 0.499871, 0.0999573),
    'affine/v/ddpm/eta0.0/beta/n10/wNone': (2.09469, 0.263636, 0.339076),
    'affine/v/ddpm/eta0.0/beta_tilde/n1/wNone': (1.80152, 0.499847, 0.100391),
    'affine/v/dpmpp_2m/eta0.0/beta_tilde/n1/wNone': (1.79534, 0.499729, 0.0996641),
    'affine/x0/ddim/eta0.0/beta_tilde/n1/wNone': (1.79888, 0.500118, 0.100022),
    'affine/x0/ddim/eta0.5/beta_tilde/n1/wNone': (1.80135, 0.500116, 0.100929),
    'affine/x0/ddpm/eta0.0/beta/n10/wNone': (2.32017, 0.774574, 0.155625),
    'affine/x0/ddpm/eta0.0/beta_tilde/n1/wNone': (1.80316, 0.499843, 0.100209),
    'affine/x0/dpmpp_2m/eta0.0/beta_tilde/n1/wNone': (1.80295, 0.50019, 0.0999089),
    'affine_cond/epsilon/ddim/eta0.0/beta_tilde/n10/w2.0': (0.407598, 0.066586, 0.649036),
    'affine_cond/epsilon/ddim/eta0.5/beta_tilde/n10/w2.0': (2.32544, 0.0840346, 0.754752),
    'affine_cond/epsilon/ddpm/eta0.0/beta_tilde/n10/w2.0': (-0.0631198, -0.0857915, 0.716458),
    'affine_cond/epsilon/dpmpp_2m/eta0.0/beta_tilde/n10/w2.0': (0.400225, -0.0686574, 0.489434),
    'affine_cond/v/ddim/eta0.0/beta_tilde/n10/w2.0': (2.52298, -0.166273, 0.708656),
    'affine_cond/v/ddim/eta0.5/beta_tilde/n10/w2.0': (3.11921, -0.16934, 0.639318),
    'affine_cond/v/ddpm/eta0.0/beta_tilde/n10/w2.0': (1.21664, -0.26473, 0.558814),
    'affine_cond/v/dpmpp_2m/eta0.0/beta_tilde/n10/w2.0': (-1.08707, -0.354829, 0.0764594),
    'affine_cond/x0/ddim/eta0.0/beta_tilde/n10/w2.0': (-0.285725, -0.0608547, 0.431352),
    'affine_cond/x0/ddim/eta0.5/beta_tilde/n10/w2.0': (-0.762653, -0.100239, 0.353722),
    'affine_cond/x0/ddpm/eta0.0/beta_tilde/n10/w2.0': (2.55348, -0.00765422, 0.418728),
    'affine_cond/x0/dpmpp_2m/eta0.0/beta_tilde/n10/w2.0': (3.32475, 0.124186, 0.669783),
    # issue 14: the new solvers, the other spacings, and edits (rows 0 and 5 of the inpainting are kept)
    'affine/epsilon/dpmpp_3m/eta0.0/beta_tilde/n10/wNone': (-2.93375, 0.655518, 0.0344333),
    'affine/epsilon/unipc/eta0.0/beta_tilde/n10/wNone': (2.48025, 0.553819, 0.0717622),
    'affine/epsilon/heun/eta0.0/beta_tilde/n10/wNone': (2.18, 0.586814, 0.712143),
    'affine/epsilon/dpmpp_2m_sde/eta0.0/beta_tilde/n10/wNone': (2.17262, 0.582554, -0.282459),
    'affine/epsilon/dpmpp_2m/eta0.0/beta_tilde/n4/wNone/logsnr': (1.34018, 0.731357, 0.226533),
    'affine/epsilon/dpmpp_2m/eta0.0/beta_tilde/n4/wNone/karras': (1.95952, 0.412813, 0.165686),
    'affine/epsilon/dpmpp_2m/eta0.0/beta_tilde/n4/wNone/quadratic': (0.237651, 0.431324, 0.127403),
    'affine/epsilon/unipc/eta0.0/beta_tilde/n5/wNone/logsnr/img2img': (2.26526, 0.374455, -0.342303),
    'affine_cond/epsilon/ddpm/eta0.0/beta_tilde/n4/w2.0/karras/inpaint': (2.08827, -0.8, 0.9),
    'affine_cond/epsilon/heun/eta0.0/beta_tilde/n4/w2.0/karras/inpaint': (1.18135, -0.8, 0.9),
    'affine/epsilon/dpmpp_3m/eta0.0/beta_tilde/n5/wNone/logsnr': (0.746054, 0.59082, 0.0923269),
}


# -- the networks ------------------------------------------------------------------------------------
def _alpha_bar():
    return np.cumprod(1.0 - tfd.schedules.make_betas("cosine", T))


def affine_tables(prediction_type, conditional):
    """gain, offset [T, classes, D] (float32) of the exact predictor for Gaussian data N(μ_y, s²)."""
    ab = _alpha_bar()[:, None, None]
    classes = NUM_CLASSES + 1 if conditional else 1
    mu = np.stack([MU + (y - 0.5) * CLASS_SHIFT if conditional and y < NUM_CLASSES else MU for y in range(classes)])
    var = ab * S**2 + 1.0 - ab  # the variance of q(x_t)
    eps_gain, eps_offset = np.sqrt(1 - ab) / var, -np.sqrt(1 - ab) * np.sqrt(ab) * mu / var
    x0_gain, x0_offset = np.sqrt(ab) * S**2 / var, mu - ab * S**2 * mu / var
    gains = {"epsilon": eps_gain, "x0": x0_gain, "v": np.sqrt(ab) * eps_gain - np.sqrt(1 - ab) * x0_gain}
    offsets = {"epsilon": eps_offset, "x0": x0_offset, "v": np.sqrt(ab) * eps_offset - np.sqrt(1 - ab) * x0_offset}
    shape = (T, classes, D)
    return (np.broadcast_to(gains[prediction_type], shape).astype(np.float32),
            np.broadcast_to(offsets[prediction_type], shape).astype(np.float32))


def mlp_weights(width=16):
    rng = np.random.default_rng(7)
    return {"w1": rng.normal(0, 0.5, (D, width)), "b1": rng.normal(0, 0.1, width), "time": rng.normal(0, 0.5, (T, width)),
            "w2": rng.normal(0, 0.3, (width, D)), "b2": rng.normal(0, 0.1, D)}


class AffineDenoiser(keras.Model):
    """prediction = gain[t, y] · x + offset[t, y] (+ 0.1 · MLP(x, t) with `mlp`); fixed weights."""

    def __init__(self, prediction_type, num_classes=None, mlp=False, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.tables = affine_tables(prediction_type, num_classes is not None)
        self.mlp = mlp_weights() if mlp else None

    def build(self, x_shape, t_shape=None, labels_shape=None):
        def constant(name, value):
            weight = self.add_weight(name=name, shape=value.shape, initializer="zeros", trainable=False)
            weight.assign(value.astype(np.float32))
            return weight

        gain, offset = self.tables
        self.gain, self.offset = constant("gain", gain.reshape(-1, D)), constant("offset", offset.reshape(-1, D))
        if self.mlp is not None:
            self.w1, self.b1, self.time, self.w2, self.b2 = (constant(k, v) for k, v in self.mlp.items())
        self.built = True

    def call(self, x, t, labels=None):
        rows = tf.cast(t, tf.int32)
        if self.num_classes is not None:
            labels = tf.fill(tf.shape(rows), self.num_classes) if labels is None else tf.cast(labels, tf.int32)
            rows = rows * (self.num_classes + 1) + labels
        out = tf.gather(self.gain, rows) * x + tf.gather(self.offset, rows)
        if self.mlp is not None:
            hidden = tf.nn.silu(tf.matmul(x, self.w1) + self.b1 + tf.gather(self.time, tf.cast(t, tf.int32)))
            out = out + 0.1 * (tf.matmul(hidden, self.w2) + self.b2)
        return out


def network64(kind, prediction_type, x, t, labels):
    """The float64 twin of the network: the same float32 weights, float64 arithmetic."""
    gain, offset = (np.asarray(a, np.float64) for a in affine_tables(prediction_type, kind == "affine_cond"))
    y = np.zeros(len(x), int) if labels is None else np.asarray(labels)
    out = gain[t, y] * x + offset[t, y]
    if kind == "mlp":
        w = {k: np.asarray(v.astype(np.float32), np.float64) for k, v in mlp_weights().items()}
        pre = x @ w["w1"] + w["b1"] + w["time"][t]
        out = out + 0.1 * ((pre / (1.0 + np.exp(-pre))) @ w["w2"] + w["b2"])
    return out


def make_model(kind, prediction_type):
    network = AffineDenoiser(prediction_type, NUM_CLASSES if kind == "affine_cond" else None, mlp=kind == "mlp")
    diffusion = tfd.GaussianDiffusion(tfd.schedules.make_betas("cosine", T))
    model = tfd.DiffusionModel(network, diffusion, prediction_type=prediction_type, data_range=None)
    model(tf.zeros((1, D)))
    return model


# -- running the cases ----------------------------------------------------------------------------------
def run_case(models, case):
    case_id, kind, prediction_type, sampler, eta, variance, n, guidance, spacing, edit = case
    labels = LABELS if kind == "affine_cond" else None
    edits = {None: {}, "img2img": dict(init_images=INIT, strength=0.7),
             "inpaint": dict(init_images=INIT, mask=KEEP, strength=0.8)}[edit]
    return models[kind, prediction_type].generate(N, seed=SEEDS[case_id], sampler=sampler, num_steps=n, eta=eta,
                                                  labels=labels, guidance_scale=guidance, ddpm_variance=variance,
                                                  spacing=spacing, **edits)


def run_all():
    models = {(kind, p): make_model(kind, p) for kind in ("affine", "affine_cond", "mlp") for p in PREDICTION_TYPES}
    return {case[0]: run_case(models, case) for case in CASES}, models


PROBE_X = np.linspace(-2.0, 2.0, 4 * D, dtype=np.float32).reshape(4, D)
PROBE_T = np.array([0, 3, 7, T - 1], np.int32)


def host_fingerprint():
    """What decides how a MatMul network rounds: TF version, oneDNN, machine and CPU features."""
    try:
        from tensorflow.python.util import _pywrap_util_port  # pylint: disable=import-outside-toplevel
        onednn = _pywrap_util_port.IsMklEnabled()
    except ImportError:
        onednn = None
    try:
        flags = next(line for line in open("/proc/cpuinfo", encoding="utf-8") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        flags = []
    features = sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "sse4")))
    return f"tf={tf.__version__} onednn={onednn} machine={platform.machine()} cpu={','.join(features)}"


def network_probe(model):
    """The network's raw outputs on fixed inputs, through a graph as in the samplers' loop."""
    labels = tf.constant([0, 1, 2, 1], tf.int32) if model.num_classes is not None else None
    return tf.function(lambda: model(tf.constant(PROBE_X), tf.constant(PROBE_T), labels))().numpy()


# -- the float64 reference ------------------------------------------------------------------------------
def _x0_and_eps64(prediction_type, x, prediction, ab):
    if prediction_type == "epsilon":
        return (x - math.sqrt(1 - ab) * prediction) / math.sqrt(ab), prediction
    if prediction_type == "x0":
        return prediction, (x - math.sqrt(ab) * prediction) / math.sqrt(1 - ab)
    return math.sqrt(ab) * x - math.sqrt(1 - ab) * prediction, math.sqrt(1 - ab) * x + math.sqrt(ab) * prediction


def timesteps64(spacing, n, top):
    """The spacing's timesteps written independently of `samplers.timestep_sequence`: NumPy targets mapped to
    t by np.interp, rounded, then (a loop from t = 0 up) clipped to leave room and moved up past collisions."""
    alpha_bar = _alpha_bar()
    lam = 0.5 * np.log(alpha_bar / (1.0 - alpha_bar))
    if spacing == "uniform":
        return np.round(np.linspace(top, 0, n)).astype(int)
    if spacing == "quadratic":
        fractional = top * np.linspace(1.0, 0.0, n) ** 2
    else:
        if spacing == "logsnr":
            targets = np.linspace(lam[top], lam[0], n)
        else:  # Karras et al. 2022, eq. 5, ρ = 7, σ = e^{−λ}
            targets = -7.0 * np.log(np.linspace(np.exp(-lam[top]) ** (1 / 7), np.exp(-lam[0]) ** (1 / 7), n))
        fractional = np.interp(targets, lam[::-1], np.arange(T, dtype=np.float64)[::-1])
    rounded, t = np.round(fractional).astype(int), np.zeros(n, int)
    for i in reversed(range(n)):
        t[i] = min(max(rounded[i], n - 1 - i), top - i)
        if i < n - 1:
            t[i] = max(t[i], t[i + 1] + 1)
    return t


def _lam(a):
    return 0.5 * math.log(a / (1.0 - a))


def _heun64(x, x0, eps, a_t, a_p, memory):
    """Karras et al. 2022, Algorithm 1, in x̄ = x/√ᾱ and σ = √((1 − ᾱ)/ᾱ): Euler, then the trapezoid."""
    sigma = lambda a: math.sqrt((1 - a) / a)  # noqa: E731
    if memory.get("correcting"):
        x_bar, d, a_s = memory.pop("start")
        memory["correcting"] = False
        return math.sqrt(a_t) * (x_bar + (sigma(a_t) - sigma(a_s)) * (d + eps) / 2)
    if a_p >= 1.0:
        return x0
    memory.update(correcting=True, start=(x / math.sqrt(a_t), eps, a_t))
    return math.sqrt(a_p) * (x / math.sqrt(a_t) + (sigma(a_p) - sigma(a_t)) * eps)


def _step64(sampler, x, x0, eps, a_t, a_p, noise, i, n, memory, eta, variance):
    """One loop iteration of `sampler` in float64, from the papers (memory: the multistep solvers' history)."""
    sigma_ratio = math.sqrt((1 - a_p) / (1 - a_t))
    if sampler == "ddpm":  # Ho et al. 2020, eq. 11 and §3.2
        alpha, beta = a_t / a_p, 1 - a_t / a_p
        sigma2 = beta * (1 - a_p) / (1 - a_t) if variance == "beta_tilde" else beta
        return (x - beta / math.sqrt(1 - a_t) * eps) / math.sqrt(alpha) + math.sqrt(sigma2) * noise
    if sampler == "ddim":  # Song et al. 2020, eqs. 12 and 16
        sigma = eta * math.sqrt((1 - a_p) / (1 - a_t) * (1 - a_t / a_p))
        return math.sqrt(a_p) * x0 + math.sqrt(max(1 - a_p - sigma**2, 0.0)) * eps + sigma * noise
    if sampler == "heun":
        return _heun64(x, x0, eps, a_t, a_p, memory)
    history = memory.setdefault("history", [])  # (x̂_0, λ) of the previous points, newest first
    lam_t = _lam(a_t)
    if sampler == "unipc":
        x = _unic64(x, x0, a_t, memory, history)
    if a_p >= 1.0:  # into the data
        return x0
    h = _lam(a_p) - lam_t
    order = min({"dpmpp_2m": 2, "dpmpp_2m_sde": 2, "dpmpp_3m": 3, "unipc": 2}[sampler], i + 1,
                n - i if sampler in ("dpmpp_3m", "unipc") else 2)
    if sampler == "dpmpp_3m" and h > 1.0:  # order 3 only on steps up to 1 long in λ
        order = min(order, 2)
    r = [(lam_t - lam) / h for _, lam in history]  # r_k: how many h back each previous point lies
    m = [x0] + [value for value, _ in history]
    phi_1 = math.expm1(-h)
    if sampler in ("dpmpp_2m", "dpmpp_2m_sde"):  # Lu et al. 2022b, Algorithm 2 and its SDE variant
        D = x0 if order == 1 else (1 + 1 / (2 * r[0])) * x0 - 1 / (2 * r[0]) * m[1]
        out = (sigma_ratio * x - math.sqrt(a_p) * phi_1 * D if sampler == "dpmpp_2m" else
               sigma_ratio * math.exp(-h) * x + math.sqrt(a_p) * (1 - math.exp(-2 * h)) * D
               + math.sqrt(1 - a_p) * math.sqrt(1 - math.exp(-2 * h)) * noise)
    elif sampler == "dpmpp_3m":  # eq. 8's integral of the Newton interpolant of the last `order` x̂_0
        phi_2, out = phi_1 / h + 1, sigma_ratio * x - math.sqrt(a_p) * phi_1 * x0
        phi_3 = phi_2 / h - 0.5
        if order == 2:
            out = out + math.sqrt(a_p) * phi_2 * (m[0] - m[1]) / r[0]
        elif order == 3:
            r_1, r_2 = r[0], r[1] - r[0]
            d_0, d_1 = (m[0] - m[1]) / r_1, (m[1] - m[2]) / r_2
            D_1, D_2 = d_0 + r_1 / (r_1 + r_2) * (d_0 - d_1), (d_0 - d_1) / (r_1 + r_2)
            out = out + math.sqrt(a_p) * (phi_2 * D_1 - 2 * phi_3 * D_2)
    else:  # UniP-2, B(h) = e^{−h} − 1 (Zhao et al. 2023), from the corrected point
        out = sigma_ratio * x - math.sqrt(a_p) * phi_1 * x0
        if order == 2:
            out = out - math.sqrt(a_p) * phi_1 * 0.5 * (m[1] - m[0]) / (-r[0])
    history.insert(0, (x0, lam_t))
    del history[2:]
    return out


def _unic64(x, x0, a_t, memory, history):
    """UniC (Zhao et al. 2023, Algorithm 1, bh2) of the point x, from the previous corrected point."""
    if not history:
        memory["corrected"] = (x, a_t)
        return x
    x_base, a_base = memory["corrected"]
    lam_base, m_0 = history[0][1], history[0][0]
    h = _lam(a_t) - lam_base
    phi = math.expm1(-h)
    g_1 = phi / -h - 1
    g_2 = g_1 / -h - 0.5
    if len(history) == 1:
        correction = 0.5 * (x0 - m_0)
    else:
        r = (history[1][1] - lam_base) / h
        rho = np.linalg.solve([[1.0, 1.0], [r, 1.0]], [g_1 / phi, 2 * g_2 / phi])
        correction = rho[0] * (history[1][0] - m_0) / r + rho[1] * (x0 - m_0)
    corrected = (math.sqrt((1 - a_t) / (1 - a_base)) * x_base - math.sqrt(a_t) * phi * m_0
                 - math.sqrt(a_t) * phi * correction)
    memory["corrected"] = (corrected, a_t)
    return corrected


def float64_reference(case):
    """The case's sampler in float64 NumPy on the float64 network, with the same seeded draws."""
    case_id, kind, prediction_type, sampler, eta, variance, n, guidance, spacing, edit = case
    seed, alpha_bar = SEEDS[case_id], _alpha_bar()
    labels = np.array(LABELS) if kind == "affine_cond" else None
    ab = lambda t: 1.0 if t < 0 else alpha_bar[t]  # noqa: E731
    epsilon = tf.random.stateless_normal((N, D), [seed, 0]).numpy().astype(np.float64)
    x, top = epsilon, T - 1
    if edit is not None:  # SDEdit (Meng et al. 2022): start from q(x_{t_s} | x_0) with the seed's ε
        top = int(np.round({"img2img": 0.7, "inpaint": 0.8}[edit] * T)) - 1
        x, n = math.sqrt(ab(top)) * INIT + math.sqrt(1 - ab(top)) * epsilon, min(n, top + 1)
    taus = timesteps64(spacing, n, top)
    if sampler == "heun":
        taus = np.concatenate([taus[:1], np.repeat(taus[1:], 2)])
    memory, stochastic = {}, sampler in ("ddpm", "ddim", "dpmpp_2m_sde")
    for i, (t, t_prev) in enumerate(zip(taus, list(taus[1:]) + [-1])):
        a_t, a_p = ab(t), ab(t_prev)
        prediction = network64(kind, prediction_type, x, np.full(N, t), labels)
        if guidance is not None:  # Ho & Salimans 2022, eq. 6, on the network's prediction
            unconditional = network64(kind, prediction_type, x, np.full(N, t), np.full(N, NUM_CLASSES))
            prediction = (1 + guidance) * prediction - guidance * unconditional
        x0, eps = _x0_and_eps64(prediction_type, x, prediction, a_t)
        noise = tf.random.stateless_normal((N, D), [seed, i + 1]).numpy().astype(np.float64) if stochastic else 0.0
        noise = noise if t_prev >= 0 else 0.0
        x = _step64(sampler, x, x0, eps, a_t, a_p, noise, i, len(taus), memory, eta, variance)
        if edit == "inpaint":  # RePaint's replacement, with the step's draw (or ε for the ODE solvers)
            known = math.sqrt(a_p) * INIT + math.sqrt(1 - a_p) * (noise if stochastic else epsilon)
            x = np.where(KEEP > 0.5, known, x)
    return x


# -- tests -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def current():
    samples, models = run_all()
    probes = {f"probe/{kind}/{p}": network_probe(model) for (kind, p), model in models.items()}
    return samples, probes


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN) as new, np.load(PRE_REFACTOR) as old:
        return {k: new[k] for k in new.files}, {k: old[k] for k in old.files}


def _same_host(probes, stored, case):
    """Whether the case's network rounds here as where `stored` was written (always for the affine one)."""
    key = f"probe/{case[1]}/{case[2]}"
    if not np.array_equal(probes[key], stored[key]):
        return False
    return case[1] != "mlp" or str(stored["fingerprint"]) == host_fingerprint()


def _assert_golden(samples, stored, probes, case):
    if _same_host(probes, stored, case):
        np.testing.assert_array_equal(samples[case[0]], stored[case[0]], err_msg=case[0])
    else:  # another CPU's kernels: nothing to say about the sampler beyond rounding
        np.testing.assert_allclose(samples[case[0]], stored[case[0]], rtol=0, atol=1e-5, err_msg=case[0])


def test_golden_files_hold_every_case(golden):
    new, old = golden
    for case in CASES:
        assert case[0] in new and (case[0] in old) == (case in PRE_ISSUE14_CASES), case[0]
        assert new[case[0]].shape == (N, D) and new[case[0]].dtype == np.float32


def test_epsilon_prediction_is_bitwise_the_golden_and_pre_refactor_samples(current, golden):
    samples, probes = current
    new, old = golden
    for case in CASES:
        if case[2] == "epsilon":
            _assert_golden(samples, new, probes, case)
            if case in PRE_ISSUE14_CASES:  # issue 14 (spacings, solvers, editing) left these bitwise
                _assert_golden(samples, old, probes, case)
                np.testing.assert_array_equal(new[case[0]], old[case[0]], err_msg=case[0])


def test_x0_and_v_prediction_are_bitwise_the_golden_samples(current, golden):
    samples, probes = current
    new, _ = golden
    for case in CASES:
        if case[2] != "epsilon":
            _assert_golden(samples, new, probes, case)


def _errors_against_float64(samples, old, probes):
    """{sampler: [(case, |old − reference|_max, |new − reference|_max)]} over the x0- and v-cases."""
    errors = {}
    for case in PRE_ISSUE14_CASES:
        if case[2] == "epsilon" or not _same_host(probes, old, case):
            continue
        reference = float64_reference(case)
        errors.setdefault(case[3], []).append(
            (case[0], np.abs(old[case[0]] - reference).max(), np.abs(samples[case[0]] - reference).max()))
    return errors


def test_x0_and_v_are_closer_to_float64_than_before(current, golden):
    """Issue 12, item 6: the samplers no longer turn an x0/v network's x̂_0 into ε̂ and back.

    DDIM and DPM-Solver++ use x̂_0 as the network gives it: every case is closer to the float64
    reference, by one to three orders of magnitude (the round trip amplified float32 rounding by
    up to 1/√ᾱ_{T−1} ≈ 200). DDPM's mean stays eq. 11 on ε̂ (so that ε-networks keep their samples
    bitwise); its step into the data now returns x̂_0 itself, and no case got worse by more than
    float32 noise.
    """
    samples, probes = current
    _, old = golden
    errors = _errors_against_float64(samples, old, probes)
    report = "\n".join(f"{case}: old {o:.2e} new {n:.2e}" for rows in errors.values() for case, o, n in rows)
    for sampler, rows in errors.items():
        old_errors, new_errors = (np.array([row[k] for row in rows]) for k in (1, 2))
        assert new_errors.mean() < 0.5 * old_errors.mean(), (sampler, report)
        if sampler == "ddpm":
            assert np.all(new_errors <= old_errors + 5e-7), report
        else:
            assert np.all(new_errors < old_errors) and new_errors.max() < 1e-6, report
    assert sum(len(rows) for rows in errors.values()) >= 2 * len([c for c in PRE_ISSUE14_CASES
                                                                  if c[2] == "x0" and c[1] != "mlp"])


def test_every_case_follows_the_float64_reference(current):
    """Independent of the golden files: the seeded draws, timesteps and coefficients of every case."""
    samples, _ = current
    for case in CASES:
        reference = float64_reference(case)
        error = np.abs(samples[case[0]] - reference).max()
        assert error < 1e-4 * max(1.0, np.abs(reference).max()), (case[0], error)


def test_summary_numbers(current):
    samples, _ = current
    for case_id, (total, first, last) in SUMMARY.items():
        x = samples[case_id]
        assert float(x.sum(dtype=np.float64)) == pytest.approx(total, rel=1e-5, abs=1e-5), case_id
        assert float(x.flat[0]) == pytest.approx(first, rel=1e-5, abs=1e-6), case_id
        assert float(x.flat[-1]) == pytest.approx(last, rel=1e-5, abs=1e-6), case_id


def write_golden(path):
    samples, models = run_all()
    probes = {f"probe/{kind}/{p}": network_probe(model) for (kind, p), model in models.items()}
    GOLDEN_DIR.mkdir(exist_ok=True)
    np.savez_compressed(path, **samples, **probes, fingerprint=np.array(host_fingerprint()))
    for case_id in sorted(samples):
        x = samples[case_id]
        print(f"    {case_id!r}: ({x.sum(dtype=np.float64):.6g}, {x.flat[0]:.6g}, {x.flat[-1]:.6g}),")


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write_golden(GOLDEN)
    else:
        sys.exit("usage: python tests/test_sampler_golden.py --write")
