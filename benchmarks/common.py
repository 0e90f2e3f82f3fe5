"""The benchmarks' harness: flags, contention-aware repeats, JSON and Markdown output.

Timing and the machine description are `tfdiffusion.machine`'s (a timed section also records the
CPU other processes used meanwhile, and `summarize` takes the median over the uncontended repeats),
the Markdown rows `tfdiffusion.results`'. No TensorFlow is imported here (the PyTorch peer's process
uses this module too).
"""

import os

from absl import flags

from tfdiffusion import machine, results
from tfdiffusion.machine import Timer, num_cores, peak_rss_mb, summarize  # noqa: F401  (the scripts use these)
from tfdiffusion.results import format_value, json_line, row_date, short_environment  # noqa: F401  (as above)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS


def define_classifier_flag():
    """--classifier, refused at flag parsing unless it names an existing file; returns the flag holder."""
    holder = flags.DEFINE_string("classifier", None, "classifier.keras from tools/train_classifier.py.")
    flags.register_validator("classifier", lambda path: path is None or os.path.isfile(path),
                             "--classifier must be an existing file (classifier.keras)")
    return holder


def define_markdown_flag():
    flags.DEFINE_string("markdown", os.path.join(REPO_ROOT, "docs", "BENCHMARKS.md"),
                        "Results file to append a row to ('' for none); /tmp for smoke runs.")


def define_timing_flags(*, extra_repeats=2):
    """--markdown and the flags of every timed benchmark: repeats and how contention is handled."""
    define_markdown_flag()
    flags.DEFINE_integer("repeats", 3, "Timed repeats.", lower_bound=1)
    flags.DEFINE_integer("extra_repeats", extra_repeats,
                         "Further repeats allowed while fewer than --repeats were uncontended.", lower_bound=0)
    flags.DEFINE_float("contention_threshold", machine.CONTENTION_THRESHOLD,
                       "other_cpu_fraction above which a timed section counts as contended.")
    flags.DEFINE_float("max_wait_idle_s", 0.0, "Before each timed section, wait up to this long for a quiet machine.")


def define_throughput_flags():
    """The flags shared by the training benchmarks (tfdiffusion, the Keras port, the PyTorch port)."""
    define_timing_flags()
    flags.DEFINE_integer("batch_size", 64, "Images per step.", lower_bound=1)
    flags.DEFINE_integer("warmup_steps", 5, "Untimed steps before the timed repeats.", lower_bound=0)
    flags.DEFINE_integer("timed_steps", 20, "Steps per timed repeat.", lower_bound=1)
    flags.DEFINE_integer("cache_batches", 8, "Distinct batches of uniform noise held in memory.", lower_bound=1)
    flags.DEFINE_float("learning_rate", 1e-4, "Adam's learning rate.")


# -- contention-aware repeats ------------------------------------------------------------------
def repeat_policy():
    """The `machine.RepeatPolicy` of the timing flags."""
    return machine.RepeatPolicy(FLAGS.repeats, FLAGS.extra_repeats, FLAGS.contention_threshold, FLAGS.max_wait_idle_s)


def measure(fn):
    """`repeat_policy().measure(fn)`: `fn()`'s records, repeated as the timing flags say."""
    return repeat_policy().measure(fn)


# -- machine, command and output -------------------------------------------------------------
def machine_info(framework=None):
    """`machine.describe(framework)` and this checkout's git revision."""
    return {**machine.describe(framework), "git": results.git_revision(REPO_ROOT)}


def command_line(argv=None):
    """The command that reproduces this run from the repository root."""
    return results.command_line(REPO_ROOT, argv)


def emit_json(record):
    print(results.json_line(record), flush=True)


def append_markdown_row(table_name, row, command, info):
    """`results.append_row` to the section `table_name` of --markdown ('' for none)."""
    if FLAGS.markdown:
        results.append_row(FLAGS.markdown, table_name, row, command, info)


# -- training throughput: train_throughput.py and peers_torch.py ------------------------------------
def throughput_summary(base, runs, first, first_loss, *, first_call_steps, warmup_steps, command, info):
    """Emits one JSON line per timed repeat and returns the summary record (emitted too).

    `runs`: `Timer.record()`s of `base["timed_steps"]` steps of `base["batch_size"]` images (their
    `loss` the last step's); `first`: the Timer of the first call (`first_call_steps` steps, compile
    included).
    """
    fields = machine.training_throughput(runs, first, batch_size=base["batch_size"], timed_steps=base["timed_steps"],
                                         first_call_steps=first_call_steps)
    for index, run in enumerate(runs):
        emit_json({**base, "event": "repeat", "repeat": index, **run})
    record = {**base, "event": "summary", "warmup_steps": warmup_steps, "repeats": FLAGS.repeats, **fields,
              "contention_threshold": FLAGS.contention_threshold, "first_loss": first_loss,
              "final_loss": runs[-1].get("loss"), "command": command, "machine": info}
    emit_json(record)
    return record


def append_throughput_row(record, *, compiler):
    """Appends a `throughput_summary` record to the "Training throughput" table of --markdown."""
    used = record["num_runs"] if record["contended"] else record["num_uncontended"]
    row = {"date": row_date(record["machine"]), "network": record["network"], "params": f"{record['params']:,}",
           "batch": record["batch_size"], "precision": record["precision"], "XLA": compiler,
           "steps/exec": record["steps_per_execution"], "compile s": record["compile_s"],
           "images/s (median)": record["images_per_s"],
           "min–max": f"{format_value(record['images_per_s_min'])}–{format_value(record['images_per_s_max'])}",
           "peak RSS MiB": record["peak_rss_mb"], "other CPU": record["other_cpu_fraction"],
           "runs used": f"{used}/{record['num_runs']}", "contended": record["contended"],
           "environment": short_environment(record["machine"])}
    append_markdown_row("Training throughput", row, record["command"], record["machine"])
