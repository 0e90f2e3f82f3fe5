"""Sampler accuracy on analytic data: every (solver, spacing, NFE) against the exact probability-flow ODE.

    python benchmarks/sampler_accuracy.py                 # both toys, every solver and spacing: ~1 min here

The exact denoiser of `tfdiffusion.analytic.TOYS` is the network, so each cell is a sampler's
discretisation error alone (mean |x − x_exact|, or W1 to the data for the stochastic samplers); NFE
counted as they ran. See README.md ("Sampler accuracy").
"""

import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
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


def fixed_x_T():
    """The deterministic runs' x_T: --num_samples normal quantiles, float32 [N, 1]."""
    return analytic.normal_quantiles(FLAGS.num_samples).astype(np.float32)[:, None]


def measure(diffusion, toy, sampler, spacing, budgets, *, stochastic):
    """{budget: (error, NFE, num_steps)} of one row; the error is |x − x_exact| or W1 (stochastic)."""
    run = analytic.SamplerRun(analytic.TOYS[toy], diffusion, sampler, spacing, STOCHASTIC[sampler] if stochastic else 0.0,
                              x_T=None if stochastic else fixed_x_T(), num_samples=FLAGS.num_stochastic_samples)
    found = {budget: run.error_within(budget, seed=11) for budget in budgets}
    return {budget: f for budget, f in found.items() if f is not None}


def table(rows, budgets):
    """Markdown: one row per (sampler, spacing), one column per NFE budget; (n) = NFE used when below it."""
    cell = lambda m, b: "—" if b not in m else f"{m[b][0]:.2g}" + ("" if m[b][1] == b else f" ({m[b][1]})")  # noqa
    return (["| sampler | spacing | " + " | ".join(f"{b} NFE" for b in budgets) + " |", "|---|---|" + "---|" * len(budgets)]
            + [f"| {sampler} | {spacing} | " + " | ".join(cell(m, b) for b in budgets) + " |"
               for (sampler, spacing), m in rows.items()])


def geometric_mean(errors):
    return math.exp(np.mean(np.log(np.maximum(errors, 1e-12)))) if errors else math.inf


def best_tables(results, budgets):
    """Per sampler the spacing of lowest geometric-mean error (toys × NFE); per toy and NFE the best of each."""
    lines = ["| sampler | best spacing (geometric mean over toys × NFE) | geometric-mean error by spacing |", "|---|---|---|"]
    for sampler in FLAGS.samplers:
        scores = {spacing: geometric_mean([results[toy][sampler, spacing][b][0] for toy in FLAGS.toys for b in budgets
                                           if b in results[toy][sampler, spacing]]) for spacing in FLAGS.spacings}
        ranked = sorted(scores, key=scores.get)
        lines.append(f"| {sampler} | {ranked[0]} | " + ", ".join(f"{s} {scores[s]:.2g}" for s in ranked) + " |")
    lines += ["", "### Best at each budget", "",
              "| toy | NFE | best | " + " | ".join(f"{s}: best spacing" for s in FLAGS.samplers) + " |",
              "|---|---|---|" + "---|" * len(FLAGS.samplers)]
    for toy, rows in results.items():
        for budget in budgets:
            errors = {key: row[budget][0] for key, row in rows.items() if budget in row}
            if errors:
                best, cells = min(errors, key=errors.get), []
                for sampler in FLAGS.samplers:
                    mine = {spacing: e for (name, spacing), e in errors.items() if name == sampler}
                    top = min(mine, key=mine.get) if mine else None
                    cells.append(f"{top} {mine[top]:.2g}" if top else "—")
                lines.append(f"| {toy} | {budget} | {best[0]}/{best[1]} {errors[best]:.2g} | " + " | ".join(cells) + " |")
    return lines


def main(argv):
    del argv
    for name, allowed in {"toys": analytic.TOYS, "samplers": samplers.SAMPLERS, "spacings": samplers.SPACINGS}.items():
        if not FLAGS[name].value or set(FLAGS[name].value) - set(allowed):
            raise app.UsageError(f"--{name} must be a non-empty subset of {tuple(allowed)}. "
                                 f"Received: {name}={FLAGS[name].value}")
    if not all(n.isdigit() and int(n) >= 1 for n in FLAGS.nfe):
        raise app.UsageError(f"--nfe must be positive integers. Received: nfe={FLAGS.nfe}")
    budgets = sorted({int(n) for n in FLAGS.nfe})
    diffusion = GaussianDiffusion(schedules.make_betas("linear", FLAGS.timesteps))
    lines = [f"Command: `{common.command_line()}`", "",
             f"Linear β, T = {FLAGS.timesteps}, exact denoiser; cells: mean |x − x_exact| over {FLAGS.num_samples} x_T "
             "(normal quantiles) against the float64 probability-flow ODE solution; (n) = NFE used when below the "
             "column's budget."]
    results, records = {}, []
    for toy in FLAGS.toys:
        results[toy] = {(sampler, spacing): measure(diffusion, toy, sampler, spacing, budgets, stochastic=False)
                        for sampler in FLAGS.samplers for spacing in FLAGS.spacings}
        floor = analytic.TOYS[toy].final_step_error(fixed_x_T().astype(np.float64), diffusion.alphas_cumprod[-1],
                                                    diffusion.alphas_cumprod[0])
        lines += ["", f"### {toy}: {analytic.TOYS[toy]}", "",
                  f"Floor: an exact solve down to t = 0 followed by the x̂_0 step into the data errs by {floor:.2g}.",
                  ""] + table(results[toy], budgets)
        records += [("ode_error", toy, key, row) for key, row in results[toy].items()]
    lines += ["", "### Best spacing per sampler", ""] + best_tables(results, budgets)
    if FLAGS.stochastic:
        lines += ["", f"Stochastic samplers: W1 distance of {FLAGS.num_stochastic_samples} samples (seed 11) to the "
                  "data; sampling alone leaves ~0.5 std/√N."]
        for toy in FLAGS.toys:
            rows = {(sampler, spacing): measure(diffusion, toy, sampler, spacing, budgets, stochastic=True)
                    for sampler in STOCHASTIC if sampler in samplers.SAMPLERS for spacing in FLAGS.spacings}
            lines += ["", f"### {toy}, stochastic: W1 to the data", ""] + table(rows, budgets)
            records += [("w1", toy, key, row) for key, row in rows.items()]
    for kind, toy, (sampler, spacing), row in records if FLAGS.json else ():
        for b, (e, n, s) in row.items():
            common.emit_json(dict(kind=kind, toy=toy, sampler=sampler, spacing=spacing, nfe_budget=b, error=e, nfe=n, steps=s))
    text = "\n".join(lines) + "\n"
    print(text)
    if FLAGS.output:
        checkpoints.atomic_write_text(FLAGS.output, text)


if __name__ == "__main__":
    app.run(main)
