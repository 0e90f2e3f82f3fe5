"""Shared helpers of the benchmarks: machine info, contention-aware timing, reporting.

The machines these benchmarks run on are shared, so every timed section also records how
much CPU *other* processes used while it ran:

    other CPU = (busy jiffies of the whole machine from /proc/stat) / CLK_TCK
                − (CPU time of this process, user + system, all threads, from getrusage)
    other_cpu_fraction = other CPU / (wall time × cores)

A section whose `other_cpu_fraction` exceeds a threshold (default 0.15, i.e. another
process used more than 15% of the machine) is flagged `contended`. `summarize` takes the
median over the uncontended repeats; if every repeat was contended it takes the median of
all of them and says so with `"contended": true`. Steal time (CPU the hypervisor gave to
other guests) counts as other CPU.

    from common import Timer, measure
    with Timer() as timer:
        work()
    timer.record()   # {"wall_s": ..., "cpu_self_s": ..., "other_cpu_fraction": ..., "contended": ...}

    summary = measure(work, repeats=3)   # summary["median_wall_s"], summary["contended"], summary["runs"]
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

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MARKDOWN = os.path.join(REPO_ROOT, "docs", "BENCHMARKS.md")
DEFAULT_CONTENTION_THRESHOLD = 0.15
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# -- machine and versions ---------------------------------------------------------------------
def _cpuinfo():
    model, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model == "unknown":
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        model = platform.processor() or "unknown"
    return model, flags


def num_cores():
    """CPUs this process may run on (the affinity mask; what TF's thread pools use)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _stat_cpus():
    """CPUs counted in /proc/stat's aggregate line (the denominator of other_cpu_fraction)."""
    try:
        with open("/proc/stat", encoding="utf-8") as f:
            return sum(1 for line in f if re.match(r"cpu\d+ ", line)) or num_cores()
    except OSError:
        return num_cores()


def _git_revision():
    try:
        revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                  text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (revision + ("+dirty" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def onednn_enabled():
    """Whether TensorFlow's oneDNN kernels are on (TF_ENABLE_ONEDNN_OPTS; default on for x86 Linux)."""
    try:
        from tensorflow.python.util import _pywrap_util_port  # pylint: disable=import-outside-toplevel

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1") not in ("0", "false", "False")


def machine_info():
    """Machine, versions and date of this run, as a flat dict (JSON-ready)."""
    import keras  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    model, flags = _cpuinfo()
    interesting = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "avx512_vnni")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpu_model": model,
        "cores": num_cores(),
        "cpu_flags": [flag for flag in interesting if flag in flags],
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "onednn": onednn_enabled(),
        "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "gpus": len(tf.config.list_physical_devices("GPU")),
        "git": _git_revision(),
        "hostname": platform.node(),
    }


def short_environment(info):
    """One cell summarising the environment of a row (the file header has the details)."""
    return (f"TF {info['tensorflow']}, Keras {info['keras']}, {info['cores']} cores, "
            f"oneDNN {'on' if info['onednn'] else 'off'}" + (f", git {info['git']}" if info.get("git") else ""))


# -- CPU accounting ---------------------------------------------------------------------------
def machine_busy_seconds():
    """(busy, steal) CPU-seconds of the whole machine since boot, from /proc/stat.

    busy = user + nice + system + irq + softirq + steal (guest time is already in user);
    idle and iowait are not busy. Returns (None, None) where /proc/stat is unavailable.
    """
    try:
        with open("/proc/stat", encoding="utf-8") as f:
            fields = f.readline().split()
    except OSError:
        return None, None
    if not fields or fields[0] != "cpu":
        return None, None
    values = [int(v) for v in fields[1:]] + [0] * 8
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    busy = user + nice + system + irq + softirq + steal
    return busy / CLOCK_TICKS, steal / CLOCK_TICKS


def process_cpu_seconds():
    """User + system CPU time of this process (every thread), in seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb():
    """Peak resident set size of this process so far, in MB (ru_maxrss is KB on Linux)."""
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / (1024.0 * 1024.0) if sys.platform == "darwin" else maxrss / 1024.0


class Timer:
    """Times a section: wall time, this process's CPU, the CPU other processes used.

    Args:
      threshold: `other_cpu_fraction` above which the section counts as contended.
      cores: CPUs of the machine for the fraction's denominator (default: those in /proc/stat).
    """

    def __init__(self, threshold=DEFAULT_CONTENTION_THRESHOLD, cores=None):
        self.threshold = threshold
        self.cores = cores or _stat_cpus()
        self.wall_s = self.cpu_self_s = self.cpu_other_s = self.steal_s = None

    def __enter__(self):
        self._busy0, self._steal0 = machine_busy_seconds()
        self._self0 = process_cpu_seconds()
        self._wall0 = time.perf_counter()
        return self

    def __exit__(self, *exc_info):
        self.wall_s = time.perf_counter() - self._wall0
        self.cpu_self_s = process_cpu_seconds() - self._self0
        busy1, steal1 = machine_busy_seconds()
        if busy1 is None or self._busy0 is None:
            self.cpu_other_s = self.steal_s = None
        else:
            # Jiffies tick at 1/CLK_TCK per CPU, so tiny negative values are rounding noise.
            self.cpu_other_s = max(0.0, (busy1 - self._busy0) - self.cpu_self_s)
            self.steal_s = steal1 - self._steal0
        return False

    @property
    def other_cpu_fraction(self):
        if self.cpu_other_s is None or not self.wall_s:
            return None
        return self.cpu_other_s / (self.wall_s * self.cores)

    @property
    def contended(self):
        fraction = self.other_cpu_fraction
        return fraction is not None and fraction > self.threshold

    def record(self):
        fraction = self.other_cpu_fraction
        return {
            "wall_s": self.wall_s,
            "cpu_self_s": self.cpu_self_s,
            "cpu_other_s": self.cpu_other_s,
            "steal_s": self.steal_s,
            "self_cpu_utilisation": self.cpu_self_s / (self.wall_s * self.cores) if self.wall_s else None,
            "other_cpu_fraction": fraction,
            "contended": self.contended,
        }


def wait_for_quiet(max_wait_s, threshold=DEFAULT_CONTENTION_THRESHOLD, window_s=1.0):
    """Waits (at most `max_wait_s`) until other processes use ≤ `threshold` of the machine.

    Call between timed sections while this process is idle. Returns the last measured
    fraction (None when max_wait_s <= 0 or /proc/stat is unavailable).
    """
    if max_wait_s <= 0:
        return None
    deadline = time.monotonic() + max_wait_s
    fraction = None
    while True:
        with Timer(threshold) as timer:
            time.sleep(window_s)
        fraction = timer.other_cpu_fraction
        if fraction is None or fraction <= threshold or time.monotonic() >= deadline:
            return fraction


THROTTLED_FRACTION = 0.75


def summarize(runs, value_key="wall_s"):
    """Median of `value_key` over the uncontended runs (all runs if every one was contended).

    Args:
      runs: records of `Timer.record()` (any extra keys are kept).

    Returns:
      dict with median, min and max of the used runs, `contended` (True when the median
      had to include contended runs), the counts, and the runs themselves.
    """
    # A repeat whose process got far less CPU than the best repeat of the same work was capped
    # (host throttling shows as neither other processes nor steal): it counts as contended.
    utilisations = [run.get("self_cpu_utilisation") for run in runs if run.get("self_cpu_utilisation")]
    best = max(utilisations, default=None)
    for run in runs:
        run["throttled"] = bool(best and run.get("self_cpu_utilisation") and
                                run["self_cpu_utilisation"] < THROTTLED_FRACTION * best)
    clean = [run for run in runs if not run["contended"] and not run["throttled"]]
    used = clean if clean else list(runs)
    values = [run[value_key] for run in used]
    fractions = [run["other_cpu_fraction"] for run in used if run["other_cpu_fraction"] is not None]
    return {
        "median_" + value_key: statistics.median(values) if values else None,
        "min_" + value_key: min(values) if values else None,
        "max_" + value_key: max(values) if values else None,
        "contended": not clean,
        "num_runs": len(runs),
        "num_uncontended": len(clean),
        "median_other_cpu_fraction": statistics.median(fractions) if fractions else None,
        "runs": list(runs),
    }


def enough_runs(runs, repeats, extra_repeats):
    """Whether `repeats` runs were uncontended, or `repeats + extra_repeats` runs were made."""
    clean = sum(not run["contended"] for run in runs)
    return len(runs) >= repeats and (clean >= repeats or len(runs) >= repeats + extra_repeats)


def measure(fn, repeats=3, *, threshold=DEFAULT_CONTENTION_THRESHOLD, extra_repeats=0, max_wait_idle_s=0.0):
    """Times `fn()` `repeats` times and summarises (see `summarize`).

    When fewer than `repeats` runs were uncontended, up to `extra_repeats` more are made.
    Before each run, waits up to `max_wait_idle_s` for the machine to be quiet. If `fn`
    returns a dict, its items are added to the run's record.
    """
    runs = []
    while not enough_runs(runs, repeats, extra_repeats):
        wait_for_quiet(max_wait_idle_s, threshold)
        with Timer(threshold) as timer:
            extra = fn()
        record = timer.record()
        if isinstance(extra, dict):
            record.update(extra)
        runs.append(record)
    return summarize(runs)


# -- output -----------------------------------------------------------------------------------
def _json_default(value):
    try:
        import numpy as np  # pylint: disable=import-outside-toplevel

        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    except ImportError:
        pass
    return str(value)


def emit_json(record):
    """Prints `record` as one JSON line on stdout."""
    print(json.dumps(record, default=_json_default), flush=True)


def command_line(argv=None):
    """The command that reproduces this run (with the environment variables that matter)."""
    argv = sys.argv if argv is None else argv
    script = os.path.relpath(os.path.abspath(argv[0]), REPO_ROOT) if argv and argv[0].endswith(".py") else argv[0]
    env = [f"{name}={shlex.quote(os.environ[name])}" for name in ("TF_ENABLE_ONEDNN_OPTS", "CUDA_VISIBLE_DEVICES")
           if name in os.environ]
    return " ".join(env + ["python", shlex.quote(script)] + [shlex.quote(a) for a in argv[1:]])


def format_value(value, digits=3):
    """A compact table cell: floats to `digits` significant figures, None empty, bools yes/no."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value:  # NaN
            return "nan"
        if abs(value) >= 10 ** digits:
            return f"{value:.0f}"
        return f"{value:.{digits}g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _markdown_header(info):
    return "\n".join(
        [
            "# Benchmarks",
            "",
            "Rows are appended by `benchmarks/train_throughput.py` and `benchmarks/sampling.py`",
            "(see `benchmarks/README.md`; the whole suite is `bash benchmarks/run_all.sh`). Each row carries its",
            "own date, environment and the exact command; figures are medians over the uncontended repeats",
            "(another process using > 15% of the machine during a timed section marks it contended; a",
            "median that had to include contended repeats is marked *contended*).",
            "",
            "File created on this machine:",
            "",
            f"- machine: {info['cpu_model']}, {info['cores']} cores, flags: {', '.join(info['cpu_flags']) or 'n/a'}",
            f"- versions: Python {info['python']}, TensorFlow {info['tensorflow']}, Keras {info['keras']}, "
            f"NumPy {info['numpy']}; oneDNN {'on' if info['onednn'] else 'off'}",
            f"- date: {info['date']}" + (f", git {info['git']}" if info.get("git") else ""),
        ]
    )


def ensure_markdown(path=DEFAULT_MARKDOWN, info=None):
    """Creates the results file with its header if it does not exist; returns its path."""
    path = os.path.abspath(path)
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            if f.tell() == 0:
                f.write(_markdown_header(info or machine_info()) + "\n")
    return path


def _is_table_line(line):
    return line.lstrip().startswith("|")


def append_markdown_row(table_name, row, command, path=DEFAULT_MARKDOWN, info=None):
    """Appends `row` (an ordered dict: column → value) to the table `## table_name` in `path`.

    The file is created with a header (machine, versions, date) when missing; the section and
    its table are created when missing; a `command` column is added to every row. If the
    section's last table has other columns, a new table is started below it. Concurrent
    writers are serialised with an exclusive lock on the file.
    """
    path = ensure_markdown(path, info)
    columns = list(row) + ["command"]
    cells = [format_value(row[c]) for c in row] + ["`" + command.replace("`", "'").replace("|", "\\|") + "`"]
    header = "| " + " | ".join(columns) + " |"
    separator = "|" + "|".join("---" for _ in columns) + "|"
    line = "| " + " | ".join(cells) + " |"
    with open(path, "r+", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        lines = f.read().split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        title = f"## {table_name}"
        try:
            start = lines.index(title)
        except ValueError:
            while lines and lines[-1] == "":
                lines.pop()
            lines += ["", title, "", header, separator, line]
        else:
            end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
            table_lines = [i for i in range(start + 1, end) if _is_table_line(lines[i])]
            if table_lines:
                last = table_lines[-1]
                first = last
                while first - 1 > start and _is_table_line(lines[first - 1]):
                    first -= 1
                if lines[first].strip() == header:
                    lines.insert(last + 1, line)
                else:
                    lines[last + 1:last + 1] = ["", header, separator, line]
            else:
                insert_at = end
                while insert_at - 1 > start and lines[insert_at - 1] == "":
                    insert_at -= 1
                lines[insert_at:insert_at] = ["", header, separator, line]
        f.seek(0)
        f.write("\n".join(lines) + "\n")
        f.truncate()
    return path


def load_config(path):
    """The ConfigDict of a config file, as `--config=path[:variant]` gives it to tools/train.py."""
    from absl import flags  # pylint: disable=import-outside-toplevel
    from ml_collections import config_flags  # pylint: disable=import-outside-toplevel

    holder = flags.FlagValues()
    config = config_flags.DEFINE_config_file("config", flag_values=holder)
    holder(["benchmark", f"--config={path}"])
    return config.value


def throughput_summary(base, runs, first, first_loss, *, batch_size, timed_steps, first_call_steps,
                       warmup_steps, repeats, contention_threshold, rss_after_build_mb, command, info):
    """Emits one JSON line per timed training repeat and returns the summary record (emitted too).

    `runs` are the `Timer.record()`s of repeats of `timed_steps` steps of `batch_size` images;
    `first` the Timer of the first call (`first_call_steps` steps, compile included).
    """
    for index, run_record in enumerate(runs):
        run_record["images_per_s"] = timed_steps * batch_size / run_record["wall_s"]
        run_record["images_per_cpu_s"] = (timed_steps * batch_size / run_record["cpu_self_s"]
                                          if run_record["cpu_self_s"] else None)
        emit_json({**base, "event": "repeat", "repeat": index, "timed_steps": timed_steps, **run_record})
    rates = summarize(runs, "images_per_s")
    per_cpu = summarize(runs, "images_per_cpu_s")
    step_s = batch_size / rates["median_images_per_s"]
    record = {
        **base,
        "event": "summary",
        "warmup_steps": warmup_steps,
        "timed_steps": timed_steps,
        "repeats": repeats,
        "first_call_s": first.wall_s,
        "first_call_other_cpu_fraction": first.other_cpu_fraction,
        "compile_s": max(0.0, first.wall_s - first_call_steps * step_s),
        "images_per_s": rates["median_images_per_s"],
        "images_per_s_min": rates["min_images_per_s"],
        "images_per_s_max": rates["max_images_per_s"],
        "images_per_cpu_s": per_cpu["median_images_per_cpu_s"],
        "step_ms": 1000.0 * step_s,
        "peak_rss_mb": peak_rss_mb(),
        "rss_after_build_mb": rss_after_build_mb,
        "other_cpu_fraction": rates["median_other_cpu_fraction"],
        "max_other_cpu_fraction": max((r["other_cpu_fraction"] or 0.0) for r in runs),
        "contended": rates["contended"],
        "num_runs": rates["num_runs"],
        "num_uncontended": rates["num_uncontended"],
        "contention_threshold": contention_threshold,
        "first_loss": first_loss,
        "final_loss": runs[-1].get("loss"),
        "command": command,
        "machine": info,
    }
    emit_json(record)
    return record


def throughput_row(record, *, compiler, environment):
    """The "Training throughput" table row of a `throughput_summary` record."""
    return {
        "date": record["machine"]["date"][:16].replace("T", " "),
        "network": record["network"],
        "params": f"{record['params']:,}",
        "batch": record["batch_size"],
        "precision": record["precision"],
        "XLA": compiler,
        "steps/exec": record["steps_per_execution"],
        "compile s": record["compile_s"],
        "images/s (median)": record["images_per_s"],
        "min–max": f"{format_value(record['images_per_s_min'])}–{format_value(record['images_per_s_max'])}",
        "peak RSS MiB": record["peak_rss_mb"],
        "other CPU": record["other_cpu_fraction"],
        "runs used": f"{record['num_uncontended'] if not record['contended'] else record['num_runs']}"
                     f"/{record['num_runs']}",
        "contended": record["contended"],
        "environment": environment,
    }

