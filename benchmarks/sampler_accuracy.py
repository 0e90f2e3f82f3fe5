"""Sampler accuracy on analytic data: every (solver, spacing, NFE) against the exact probability-flow ODE.

    python benchmarks/sampler_accuracy.py                 # both toys, every solver and spacing: ~1 min here
    python benchmarks/sampler_accuracy.py --toys=gaussian --nfe=10,20 --samplers=dpmpp_2m

The data of `tfdiffusion.analytic.TOYS` (issue 14's Gaussian N(0.5, 0.2²) and a two-component
mixture), linear β, T = 1000, and the exact E[x_0 | x_t], E[ε | x_t] as the network, so that what
is measured is each sampler's discretisation error alone:

* deterministic samplers: mean |x_sampler − x_exact| over the 4096 normal quantiles as x_T, where
  x_exact is the float64 probability-flow ODE solution from the same x_T (closed form on the
  Gaussian, RK45 on the mixture);
* stochastic samplers (--stochastic): the Wasserstein-1 distance between --num_stochastic_samples
  samples and the data (sampling alone leaves ~0.5 std/√N).

NFE are counted as the sampler ran them (`analytic.CountingDenoiser`): at a budget of n a solver
runs the most steps whose evaluations are ≤ n; a cell whose count is below its column's shows it in
parentheses. Prints Markdown tables, the spacing with the lowest geometric-mean error per solver,
and (with --json) one JSON line per cell; --output also writes the Markdown to a file.
"""

import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

import common  # noqa: E402
from tfdiffusion import analytic, checkpoints, samplers, schedules  # noqa: E402
from tfdiffusion.diffusion import GaussianDiffusion  # noqa: E402

STOCHASTIC = {"ddpm": 0.0, "dpmpp_2m_sde": 1.0}  # sampler → η of its run (DDIM at η = 1 is DDPM's chain)

flags.DEFINE_list("toys", list(analytic.TOYS), f"Analytic cases, a subset of {tuple(analytic.TOYS)}.")
flags.DEFINE_list("nfe", ["5", "10", "15", "20", "30", "50"], "Budgets of network evaluations.")
flags.DEFINE_list("samplers", [s for s in samplers.SAMPLERS if s not in STOCHASTIC], "Deterministic samplers (η = 0).")
flags.DEFINE_list("spacings", list(samplers.SPACINGS), "Timestep spacings.")
flags.DEFINE_integer("timesteps", 1000, "T of the linear β schedule.", lower_bound=2)
flags.DEFINE_integer("num_samples", 4096, "x_T of the deterministic runs (normal quantiles).", lower_bound=1)
flags.DEFINE_bool("stochastic", True, f"Also the W1 table of the stochastic samplers {tuple(STOCHASTIC)}.")
flags.DEFINE_integer("num_stochastic_samples", 20_000, "Samples per stochastic run.", lower_bound=2)
flags.DEFINE_bool("json", False, "Print one JSON line per cell.")
flags.DEFINE_string("output", "", "Also write the Markdown to this file ('' for none).")
FLAGS = flags.FLAGS


class Runner:
    """One `tf.function` per (toy, sampler, spacing, η) with num_steps a tensor; returns (samples, NFE)."""

    def __init__(self, diffusion, toy, sampler, spacing, eta, x_T=None, num_samples=None):
        self.counted = analytic.CountingDenoiser(analytic.TOYS[toy].denoise_fn(diffusion))
        shape = (num_samples, 1) if x_T is None else x_T.shape
        x_T = None if x_T is None else tf.constant(x_T)
        self.run = tf.function(lambda num_steps: samplers.sample(
            self.counted, diffusion, shape, sampler=sampler, spacing=spacing, num_steps=num_steps, eta=eta, seed=11,
            x_T=x_T), autograph=False)

    def __call__(self, num_steps):
        x = self.run(tf.constant(num_steps)).numpy().astype(np.float64)
        return x, self.counted.take()

    def within(self, budget):
        """(samples, NFE, num_steps) at the most steps whose NFE ≤ budget, or None if one step exceeds it."""
        num_steps = budget
        x, nfe = self(num_steps)
        while nfe > budget and num_steps > 1:  # NFE grows with num_steps: scale down, then climb back
            num_steps = max(1, min(num_steps - 1, num_steps * budget // nfe))
            x, nfe = self(num_steps)
        if nfe > budget:
            return None
        while True:
            more, more_nfe = self(num_steps + 1)
            if more_nfe > budget:
                return x, nfe, num_steps
            x, nfe, num_steps = more, more_nfe, num_steps + 1


def fixed_x_T():
    """The deterministic runs' x_T: --num_samples normal quantiles, float32 [N, 1]."""
    return analytic.normal_quantiles(FLAGS.num_samples).astype(np.float32)[:, None]


def measure(diffusion, toy, sampler, spacing, budgets, *, stochastic):
    """{budget: (error, NFE, num_steps)} of one row; the error is |x − x_exact| or W1 (stochastic)."""
    data = analytic.TOYS[toy]
    if stochastic:
        runner = Runner(diffusion, toy, sampler, spacing, STOCHASTIC[sampler], num_samples=FLAGS.num_stochastic_samples)
    else:
        x_T = fixed_x_T()
        exact = data.ode_solution(x_T.astype(np.float64), diffusion.alphas_cumprod[-1])
        runner = Runner(diffusion, toy, sampler, spacing, 0.0, x_T=x_T)
    row = {}
    for budget in budgets:
        found = runner.within(budget)
        if found is not None:
            x, nfe, steps = found
            row[budget] = (data.wasserstein1(x) if stochastic else float(np.abs(x - exact).mean()), nfe, steps)
    return row


def cell(measured, budget):
    if budget not in measured:
        return "—"
    error, nfe, _ = measured[budget]
    return f"{error:.2g}" + ("" if nfe == budget else f" ({nfe})")


def table(rows, budgets):
    """Markdown: one row per (sampler, spacing), one column per NFE budget."""
    lines = ["| sampler | spacing | " + " | ".join(f"{b} NFE" for b in budgets) + " |",
             "|---|---|" + "---|" * len(budgets)]
    for (sampler, spacing), measured in rows.items():
        lines.append(f"| {sampler} | {spacing} | " + " | ".join(cell(measured, b) for b in budgets) + " |")
    return lines


def best_spacings(results, budgets):
    """Per sampler, the spacing with the lowest geometric-mean error over every toy and budget measured."""
    lines = ["| sampler | best spacing (geometric mean over toys × NFE) | geometric-mean error by spacing |",
             "|---|---|---|"]
    for sampler in FLAGS.samplers:
        scores = {}
        for spacing in FLAGS.spacings:
            errors = [results[toy][sampler, spacing][b][0] for toy in FLAGS.toys for b in budgets
                      if b in results[toy][sampler, spacing]]
            scores[spacing] = math.exp(np.mean(np.log(np.maximum(errors, 1e-12)))) if errors else math.inf
        ranked = sorted(scores, key=scores.get)
        lines.append(f"| {sampler} | {ranked[0]} | " + ", ".join(f"{s} {scores[s]:.2g}" for s in ranked) + " |")
    return lines


def best_per_budget(results, budgets):
    """Per toy and NFE budget: the best (sampler, spacing), and each sampler's best spacing."""
    lines = ["| toy | NFE | best | " + " | ".join(f"{s}: best spacing" for s in FLAGS.samplers) + " |",
             "|---|---|---|" + "---|" * len(FLAGS.samplers)]
    for toy, rows in results.items():
        for budget in budgets:
            errors = {key: row[budget][0] for key, row in rows.items() if budget in row}
            if not errors:
                continue
            best = min(errors, key=errors.get)
            per_sampler = []
            for sampler in FLAGS.samplers:
                mine = {spacing: e for (name, spacing), e in errors.items() if name == sampler}
                top = min(mine, key=mine.get) if mine else None
                per_sampler.append(f"{top} {mine[top]:.2g}" if top else "—")
            lines.append(f"| {toy} | {budget} | {best[0]}/{best[1]} {errors[best]:.2g} | "
                         + " | ".join(per_sampler) + " |")
    return lines


def _validate_lists():
    checks = {"toys": (FLAGS.toys, analytic.TOYS), "samplers": (FLAGS.samplers, samplers.SAMPLERS),
              "spacings": (FLAGS.spacings, samplers.SPACINGS)}
    for name, (values, allowed) in checks.items():
        unknown = [v for v in values if v not in allowed]
        if unknown or not values:
            raise app.UsageError(f"--{name} must be a non-empty subset of {tuple(allowed)}. Received: {name}={values}")
    if not all(n.isdigit() and int(n) >= 1 for n in FLAGS.nfe):
        raise app.UsageError(f"--nfe must be positive integers. Received: nfe={FLAGS.nfe}")


def main(argv):
    del argv
    _validate_lists()
    budgets = sorted({int(n) for n in FLAGS.nfe})
    diffusion = GaussianDiffusion(schedules.make_betas("linear", FLAGS.timesteps))
    lines = [f"Command: `{common.command_line()}`", "",
             f"Linear β, T = {FLAGS.timesteps}, exact denoiser; cells: mean |x − x_exact| over "
             f"{FLAGS.num_samples} x_T "
             "(normal quantiles) against the float64 probability-flow ODE solution; (n) = NFE used when below the "
             "column's budget."]
    results = {}
    for toy in FLAGS.toys:
        results[toy] = {(sampler, spacing): measure(diffusion, toy, sampler, spacing, budgets, stochastic=False)
                        for sampler in FLAGS.samplers for spacing in FLAGS.spacings}
        floor = analytic.TOYS[toy].final_step_error(fixed_x_T().astype(np.float64), diffusion.alphas_cumprod[-1],
                                                    diffusion.alphas_cumprod[0])
        lines += ["", f"### {toy}: {analytic.TOYS[toy]}", "",
                  f"Floor: an exact solve down to t = 0 followed by the x̂_0 step into the data errs by {floor:.2g}.",
                  ""] + table(results[toy], budgets)
    lines += ["", "### Best spacing per sampler", ""] + best_spacings(results, budgets)
    lines += ["", "### Best at each budget", ""] + best_per_budget(results, budgets)
    records = [dict(kind="ode_error", toy=toy, sampler=sampler, spacing=spacing, nfe_budget=b, error=e, nfe=n, steps=s)
               for toy, rows in results.items() for (sampler, spacing), row in rows.items()
               for b, (e, n, s) in row.items()]
    if FLAGS.stochastic:
        lines += ["", f"Stochastic samplers: W1 distance of {FLAGS.num_stochastic_samples} samples (seed 11) to the "
                  "data; sampling alone leaves ~0.5 std/√N."]
        for toy in FLAGS.toys:
            rows = {(sampler, spacing): measure(diffusion, toy, sampler, spacing, budgets, stochastic=True)
                    for sampler in STOCHASTIC if sampler in samplers.SAMPLERS for spacing in FLAGS.spacings}
            lines += ["", f"### {toy}, stochastic: W1 to the data", ""] + table(rows, budgets)
            records += [dict(kind="w1", toy=toy, sampler=sampler, spacing=spacing, nfe_budget=b, error=e, nfe=n,
                             steps=s)
                        for (sampler, spacing), row in rows.items() for b, (e, n, s) in row.items()]
    if FLAGS.json:
        for record in records:
            common.emit_json(record)
    text = "\n".join(lines) + "\n"
    print(text)
    if FLAGS.output:
        checkpoints.atomic_write_text(FLAGS.output, text)


if __name__ == "__main__":
    app.run(main)
