"""The benchmarks' harness: flags, machine description, contention-aware timing, JSON and Markdown output.

Every timed section also records the CPU *other* processes used meanwhile (the machine is shared):
other CPU = busy jiffies of the machine (/proc/stat, steal included) / CLK_TCK − this process's
user + system time (getrusage), and other_cpu_fraction = other CPU / (wall time × CPUs). A section
above --contention_threshold is `contended`; `summarize` takes the median over the uncontended ones.
No TensorFlow is imported here (the PyTorch peer's process uses this module too).
"""

import datetime
import fcntl
import json
import os
import platform
import re
import resource
import shlex
import statistics
import subprocess
import sys
import time

from absl import flags

from tfdiffusion import precision

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MARKDOWN = os.path.join(REPO_ROOT, "docs", "BENCHMARKS.md")
DEFAULT_CONTENTION_THRESHOLD = 0.15
THROTTLED_FRACTION = 0.75
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# The flags that decide what bf16 costs here (see `tfdiffusion.precision`), and the vector ones beside them.
REPORTED_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "avx512_vnni")
FLAGS = flags.FLAGS


def define_markdown_flag():
    flags.DEFINE_string("markdown", DEFAULT_MARKDOWN, "Results file to append a row to ('' for none); /tmp for smoke runs.")


def define_timing_flags(*, extra_repeats=2):
    """--markdown and the flags of every timed benchmark: repeats and how contention is handled."""
    define_markdown_flag()
    flags.DEFINE_integer("repeats", 3, "Timed repeats.", lower_bound=1)
    flags.DEFINE_integer("extra_repeats", extra_repeats,
                         "Further repeats allowed while fewer than --repeats were uncontended.", lower_bound=0)
    flags.DEFINE_float("contention_threshold", DEFAULT_CONTENTION_THRESHOLD,
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


# -- machine and versions ---------------------------------------------------------------------
def num_cores():
    """CPUs this process may run on (the affinity mask; what the thread pools use)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _stat_cpus():
    """CPUs counted in /proc/stat's aggregate line (the denominator of other_cpu_fraction)."""
    try:
        with open("/proc/stat", encoding="utf-8") as f:
            return sum(1 for line in f if re.match(r"cpu\d+ ", line)) or num_cores()
    except OSError:
        return num_cores()


def _cpu_model():
    try:
        with open(precision.CPUINFO_PATH, encoding="utf-8") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    except OSError:
        return platform.processor() or "unknown"


def _git_revision():
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        revision, dirty = git("rev-parse", "--short", "HEAD"), git("status", "--porcelain", "--untracked-files=no")
        return (revision + ("+dirty" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def _tensorflow_info():
    import keras  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from tensorflow.python.util import _pywrap_util_port  # pylint: disable=import-outside-toplevel

    return {"tensorflow": tf.__version__, "keras": keras.__version__, "onednn": bool(_pywrap_util_port.IsMklEnabled()),
            "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
            "gpus": len(tf.config.list_physical_devices("GPU"))}


def machine_info(framework=None):
    """Machine, versions, date and tfdiffusion's "auto" precision here, as a flat dict (JSON-ready).

    `framework`: None records TensorFlow's versions (imports it); the PyTorch peer passes its own
    facts instead, and "auto" then looks at the CPU only.
    """
    import numpy as np  # pylint: disable=import-outside-toplevel

    found = precision.cpu_flags()
    extra = _tensorflow_info() if framework is None else dict(framework)
    policy, reason = precision.resolve_precision("auto", accelerators=None if framework is None else [])
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "cpu_model": _cpu_model(), "cores": num_cores(),
            "cpu_flags": [flag for flag in REPORTED_CPU_FLAGS if flag in found],
            "amx_bf16": "amx_bf16" in found, "avx512_bf16": "avx512_bf16" in found,
            "auto_precision": policy, "auto_precision_reason": reason,
            "python": platform.python_version(), "numpy": np.__version__, **extra,
            "git": _git_revision(), "hostname": platform.node()}


def short_environment(info):
    """One cell summarising the environment of a row (the file header has the details)."""
    versions = (f"PyTorch {info['torch']}, {info['torch_threads']} threads" if "torch" in info
                else f"TF {info['tensorflow']}, Keras {info['keras']}")
    return (f"{versions}, {info['cores']} cores, oneDNN {'on' if info['onednn'] else 'off'}"
            + (f", git {info['git']}" if info.get("git") else ""))


def row_date(info):
    return info["date"][:16].replace("T", " ")


# -- CPU accounting and timing ----------------------------------------------------------------
def machine_busy_seconds():
    """(busy, steal) CPU-seconds of the whole machine since boot (None, None without /proc/stat).

    busy = user + nice + system + irq + softirq + steal (guest time is already in user).
    """
    try:
        with open("/proc/stat", encoding="utf-8") as f:
            fields = f.readline().split()
    except OSError:
        return None, None
    if not fields or fields[0] != "cpu":
        return None, None
    user, nice, system, _idle, _iowait, irq, softirq, steal = ([int(v) for v in fields[1:]] + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS, steal / CLOCK_TICKS


def process_cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb():
    """Peak resident set size of this process so far, in MiB (ru_maxrss is KiB on Linux)."""
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / (1024.0 * 1024.0) if sys.platform == "darwin" else maxrss / 1024.0


class Timer:
    """Times a section: wall time, this process's CPU, the CPU other processes used."""

    def __init__(self, threshold=DEFAULT_CONTENTION_THRESHOLD):
        self.threshold, self.cores = threshold, _stat_cpus()
        self.wall_s = self.cpu_self_s = self.cpu_other_s = self.steal_s = None

    def __enter__(self):
        self._busy0, self._steal0 = machine_busy_seconds()
        self._self0, self._wall0 = process_cpu_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc_info):
        self.wall_s = time.perf_counter() - self._wall0
        self.cpu_self_s = process_cpu_seconds() - self._self0
        busy1, steal1 = machine_busy_seconds()
        if busy1 is not None and self._busy0 is not None:
            # Jiffies tick at 1/CLK_TCK per CPU, so tiny negative values are rounding noise.
            self.cpu_other_s = max(0.0, (busy1 - self._busy0) - self.cpu_self_s)
            self.steal_s = steal1 - self._steal0
        return False

    @property
    def other_cpu_fraction(self):
        return None if self.cpu_other_s is None or not self.wall_s else self.cpu_other_s / (self.wall_s * self.cores)

    def record(self):
        fraction = self.other_cpu_fraction
        return {"wall_s": self.wall_s, "cpu_self_s": self.cpu_self_s, "cpu_other_s": self.cpu_other_s,
                "steal_s": self.steal_s,
                "self_cpu_utilisation": self.cpu_self_s / (self.wall_s * self.cores) if self.wall_s else None,
                "other_cpu_fraction": fraction, "contended": fraction is not None and fraction > self.threshold}


def timed_section():
    """A `Timer`, after waiting (up to --max_wait_idle_s, in 1-s windows) for others to use ≤ the threshold."""
    deadline = time.monotonic() + FLAGS.max_wait_idle_s
    while time.monotonic() < deadline:
        with Timer() as window:
            time.sleep(1.0)
        if window.other_cpu_fraction is None or window.other_cpu_fraction <= FLAGS.contention_threshold:
            break
    return Timer(FLAGS.contention_threshold)


def summarize(runs, value_key="wall_s"):
    """Median, min and max of `value_key` over the uncontended `Timer.record()`s (all if none is).

    A run whose process got far less CPU than the best run of the same work was capped (host
    throttling shows as neither other processes nor steal): it counts as contended too.
    """
    best = max((run.get("self_cpu_utilisation") or 0.0 for run in runs), default=0.0)
    for run in runs:
        run["throttled"] = bool(best and run.get("self_cpu_utilisation")
                                and run["self_cpu_utilisation"] < THROTTLED_FRACTION * best)
    clean = [run for run in runs if not run["contended"] and not run["throttled"]]
    values = [run[value_key] for run in clean or runs]
    fractions = [run["other_cpu_fraction"] for run in clean or runs if run["other_cpu_fraction"] is not None]
    return {"median_" + value_key: statistics.median(values) if values else None,
            "min_" + value_key: min(values, default=None), "max_" + value_key: max(values, default=None),
            "contended": not clean, "num_runs": len(runs), "num_uncontended": len(clean),
            "median_other_cpu_fraction": statistics.median(fractions) if fractions else None}


def enough_runs(runs, repeats, extra_repeats):
    """Whether `repeats` runs were uncontended, or `repeats + extra_repeats` runs were made."""
    clean = sum(not run["contended"] for run in runs)
    return len(runs) >= repeats and (clean >= repeats or len(runs) >= repeats + extra_repeats)


def measure(fn):
    """Times `fn()` (returning a dict for the record) until `enough_runs` under the timing flags."""
    runs = []
    while not enough_runs(runs, FLAGS.repeats, FLAGS.extra_repeats):
        with timed_section() as timer:
            extra = fn()
        runs.append({**timer.record(), **extra})
    return runs


# -- output -----------------------------------------------------------------------------------
def json_line(record):
    return json.dumps(record, default=lambda value: value.tolist() if hasattr(value, "tolist") else str(value))


def emit_json(record):
    print(json_line(record), flush=True)


def command_line(argv=None):
    """The command that reproduces this run (with the environment variables that matter)."""
    argv = sys.argv if argv is None else argv
    script = os.path.relpath(os.path.abspath(argv[0]), REPO_ROOT) if argv and argv[0].endswith(".py") else argv[0]
    env = [f"{name}={shlex.quote(os.environ[name])}"
           for name in ("TF_ENABLE_ONEDNN_OPTS", "CUDA_VISIBLE_DEVICES", "TFDIFFUSION_PRECISION") if name in os.environ]
    return " ".join(env + ["python", shlex.quote(script)] + [shlex.quote(a) for a in argv[1:]])


def format_value(value, digits=3):
    """A compact table cell: floats to `digits` significant figures, None empty, bools yes/no."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "nan" if value != value else f"{value:.0f}" if abs(value) >= 10**digits else f"{value:.{digits}g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _markdown_header(info):
    versions = ", ".join(f"{name} {info[key]}" for name, key in (("Python", "python"), ("TensorFlow", "tensorflow"),
                         ("Keras", "keras"), ("PyTorch", "torch"), ("NumPy", "numpy")) if key in info)
    return "\n".join([
        "# Benchmarks", "", "Rows appended by the scripts of `benchmarks/` (see its README.md), each with its date,",
        "environment and command; medians over the uncontended repeats (*contended*: another process used",
        "> 15% of the machine in every repeat).", "", "File created on this machine:", "",
        f"- machine: {info['cpu_model']}, {info['cores']} cores, flags: {', '.join(info['cpu_flags']) or 'n/a'}",
        f"- versions: {versions}; oneDNN {'on' if info['onednn'] else 'off'}",
        f"- date: {info['date']}" + (f", git {info['git']}" if info.get("git") else "")])


def _insert_row(lines, title, head, line):
    """`lines` with `line` added to the last table of section `title`, under a new `head` if its columns differ."""
    if title not in lines:
        while lines and lines[-1] == "":
            lines.pop()
        return lines + ["", title, ""] + head + [line]
    start = lines.index(title)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    table = [i for i in range(start + 1, end) if lines[i].lstrip().startswith("|")]
    if table:
        first = end = table[-1] + 1
        while first - 1 > start and lines[first - 1].lstrip().startswith("|"):
            first -= 1
        if lines[first].strip() == head[0]:
            return lines[:end] + [line] + lines[end:]
    else:
        while end - 1 > start and lines[end - 1] == "":
            end -= 1
    return lines[:end] + [""] + head + [line] + lines[end:]


def append_markdown_row(table_name, row, command, info, path=None):
    """Appends `row` (column → value) and a `command` cell to the table `## table_name` of --markdown ('' for none).

    A missing file starts with a header (machine, versions, date); a row with other columns starts
    a new table below the section's last one. Concurrent writers are serialised by a file lock.
    """
    path = FLAGS.markdown if path is None else path
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    cells = [format_value(value) for value in row.values()] + ["`" + command.replace("`", "'").replace("|", "\\|") + "`"]
    head = ["| " + " | ".join(list(row) + ["command"]) + " |", "|" + "---|" * len(cells)]
    with open(path, "a+", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        lines = (f.read() or _markdown_header(info) + "\n").split("\n")
        lines = _insert_row(lines[:-1] if lines[-1] == "" else lines, f"## {table_name}", head,
                            "| " + " | ".join(cells) + " |")
        f.truncate(0)
        f.write("\n".join(lines) + "\n")


# -- training throughput: train_throughput.py and peers_torch.py ------------------------------------
def throughput_summary(base, runs, first, first_loss, *, first_call_steps, warmup_steps, command, info):
    """Emits one JSON line per timed repeat and returns the summary record (emitted too).

    `runs`: `Timer.record()`s of `base["timed_steps"]` steps of `base["batch_size"]` images (their
    `loss` the last step's); `first`: the Timer of the first call (`first_call_steps` steps, compile
    included).
    """
    images = base["timed_steps"] * base["batch_size"]
    for index, run in enumerate(runs):
        run["images_per_s"] = images / run["wall_s"]
        run["images_per_cpu_s"] = images / run["cpu_self_s"] if run["cpu_self_s"] else None
        emit_json({**base, "event": "repeat", "repeat": index, **run})
    rates, per_cpu = summarize(runs, "images_per_s"), summarize(runs, "images_per_cpu_s")
    step_s = base["batch_size"] / rates["median_images_per_s"]
    record = {
        **base, "event": "summary", "warmup_steps": warmup_steps, "repeats": FLAGS.repeats,
        "first_call_s": first.wall_s, "first_call_other_cpu_fraction": first.other_cpu_fraction,
        "compile_s": max(0.0, first.wall_s - first_call_steps * step_s),
        "images_per_s": rates["median_images_per_s"], "images_per_s_min": rates["min_images_per_s"],
        "images_per_s_max": rates["max_images_per_s"], "images_per_cpu_s": per_cpu["median_images_per_cpu_s"],
        "step_ms": 1000.0 * step_s, "peak_rss_mb": peak_rss_mb(), "other_cpu_fraction": rates["median_other_cpu_fraction"],
        "max_other_cpu_fraction": max((r["other_cpu_fraction"] or 0.0) for r in runs),
        "contended": rates["contended"], "num_runs": rates["num_runs"], "num_uncontended": rates["num_uncontended"],
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


# -- sample quality: time_to_quality.py ---------------------------------------------------------------------
def sample_quality(model, extractor, reference, *, num_samples, batch_size, seed, **request):
    """(samples, {fid, kid_mean, confident_fraction, sampling_seconds}) of `num_samples` samples drawn by
    `tfdiffusion.evaluation`'s protocol (batch i with `batch_seed(seed, i)`; `request`: `ModelSampler`'s)."""
    from tfdiffusion import evaluation  # pylint: disable=import-outside-toplevel  (imports TensorFlow)

    start = time.perf_counter()
    samples = evaluation.draw_samples(evaluation.ModelSampler(model, **request), num_samples, batch_size=batch_size,
                                      seed=seed)
    seconds = time.perf_counter() - start
    report = evaluation.image_report(samples, extractor, reference, seed=seed)
    return samples, {"fid": report["fid"], "kid_mean": report["kid_mean"],
                     "confident_fraction": report["confident_fraction"], "sampling_seconds": seconds}
