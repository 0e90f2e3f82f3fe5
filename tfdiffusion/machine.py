"""The machine a measurement ran on, and how much of it the measured code had.

A time measured on a shared machine means little without two facts: what the machine is (CPU
model, cores, the bfloat16 units that decide `mixed_precision="auto"`, framework versions) and
how busy the rest of the machine was meanwhile. `describe` gives the first as a flat JSON-ready
dict; `Timer` gives the second for a section of code: its wall time, this process's CPU time, and
the CPU time every other process took, other CPU = the machine's busy jiffies (/proc/stat, steal
included) / CLK_TCK − this process's user + system time (getrusage), as a fraction of wall time ×
CPUs. `RepeatPolicy` decides how often to repeat a measured section, `time_fit` times blocks of
steps inside one `model.fit`, `training_clock` stops one at a budget of training time, `summarize`
takes the median of the repeats over those the rest of the machine left alone, and
`training_throughput` and `paired_ratio` turn repeats into images/s and ratios (`noise_batches` is
the input that costs nothing). Linux only (/proc); elsewhere the other-CPU figures are None. No
TensorFlow is imported unless `describe` is asked for its versions (nor Keras but by `time_fit`,
`training_clock` and `noise_batches`).
"""

import dataclasses
import datetime
import os
import platform
import resource
import statistics
import time

from tfdiffusion import precision

# The flags that decide what bf16 costs here (see `tfdiffusion.precision`), and the vector ones beside them.
REPORTED_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "avx512_vnni")
CONTENTION_THRESHOLD = 0.15
THROTTLED_FRACTION = 0.75


def num_cores():
    """CPUs this process may run on (the affinity mask; what the thread pools use)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_model(cpuinfo_path=precision.CPUINFO_PATH):
    """The "model name" of the first processor in `cpuinfo_path` (else the platform's processor name)."""
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    except OSError:
        return platform.processor() or "unknown"


def tensorflow_versions():
    """TensorFlow's and Keras' versions, whether oneDNN is on, the GPUs (imports TensorFlow)."""
    import keras
    import tensorflow as tf
    from tensorflow.python.util import _pywrap_util_port

    return {"tensorflow": tf.__version__, "keras": keras.__version__, "onednn": bool(_pywrap_util_port.IsMklEnabled()),
            "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
            "gpus": len(tf.config.list_physical_devices("GPU"))}


def describe(framework=None):
    """Machine, versions, date and the "auto" precision here, as a flat dict.

    Args:
      framework: the facts of the framework that runs the measurement; None for TensorFlow's
        (`tensorflow_versions`, which imports it). Another framework's process passes its own, and
        "auto" then looks at the CPU only.
    """
    import numpy as np

    found = precision.cpu_flags()
    versions = tensorflow_versions() if framework is None else dict(framework)
    policy, reason = precision.resolve_precision("auto", accelerators=None if framework is None else [])
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "cpu_model": cpu_model(), "cores": num_cores(),
            "cpu_flags": [flag for flag in REPORTED_CPU_FLAGS if flag in found],
            "amx_bf16": "amx_bf16" in found, "avx512_bf16": "avx512_bf16" in found,
            "auto_precision": policy, "auto_precision_reason": reason,
            "python": platform.python_version(), "numpy": np.__version__, **versions, "hostname": platform.node()}


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
    ticks = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq + steal) / ticks, steal / ticks


def process_cpu_seconds():
    """User + system CPU-seconds of this process so far, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb():
    """Peak resident set size of this process so far, in MiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Timer:
    """Times the section of a `with` block: wall time, this process's CPU, the CPU other processes used.

    Args:
      threshold: the `other_cpu_fraction` above which the section counts as contended.

    Example:
      >>> with Timer() as timer:
      ...     work()
      >>> timer.record()  # {"wall_s": ..., "other_cpu_fraction": ..., "contended": ...}
    """

    def __init__(self, threshold=CONTENTION_THRESHOLD):
        # /proc/stat's aggregate line counts every online CPU, whatever this process's affinity.
        self.threshold, self.cores = threshold, os.cpu_count() or 1
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
        """The section as a JSON-ready dict (see `summarize`)."""
        fraction = self.other_cpu_fraction
        return {"wall_s": self.wall_s, "cpu_self_s": self.cpu_self_s, "cpu_other_s": self.cpu_other_s,
                "steal_s": self.steal_s,
                "self_cpu_utilisation": self.cpu_self_s / (self.wall_s * self.cores) if self.wall_s else None,
                "other_cpu_fraction": fraction, "contended": fraction is not None and fraction > self.threshold}


def summarize(runs, value_key="wall_s"):
    """Median, min and max of `value_key` over the uncontended `Timer.record()`s of one piece of work (all if none is).

    A run whose process got far less CPU than the best run (< `THROTTLED_FRACTION` of it) was
    capped, by host throttling that shows as neither other processes nor steal: it is marked
    `throttled` and counts as contended too.
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


@dataclasses.dataclass(frozen=True)
class RepeatPolicy:
    """How often one piece of work is timed on a shared machine.

    Args:
      repeats: the uncontended repeats wanted.
      extra_repeats: further repeats allowed while fewer than `repeats` were uncontended.
      threshold: the `other_cpu_fraction` above which a repeat counts as contended.
      max_wait_idle_s: before each repeat, wait up to this long for a quiet machine.
    """

    repeats: int = 3
    extra_repeats: int = 2
    threshold: float = CONTENTION_THRESHOLD
    max_wait_idle_s: float = 0.0

    def timer(self):
        """A `Timer`, after waiting (up to `max_wait_idle_s`, in 1-s windows) for others to use ≤ the threshold."""
        deadline = time.monotonic() + self.max_wait_idle_s
        while time.monotonic() < deadline:
            with Timer() as window:
                time.sleep(1.0)
            if window.other_cpu_fraction is None or window.other_cpu_fraction <= self.threshold:
                break
        return Timer(self.threshold)

    def enough(self, runs):
        """Whether `repeats` runs were uncontended, or `repeats + extra_repeats` runs were made."""
        clean = sum(not run["contended"] for run in runs)
        return len(runs) >= self.repeats and (clean >= self.repeats or len(runs) >= self.repeats + self.extra_repeats)

    def measure_each(self, calls):
        """{name: `Timer.record()`s of `calls[name]()`, each with its `attempt`}, rotating the order every attempt.

        Every attempt runs each call not yet `enough`, starting one further along than the last, so
        that the machine drifting (turbo, a neighbour) falls on every call alike (see `paired_ratio`).
        """
        runs, names, attempt = {name: [] for name in calls}, list(calls), 0
        while not all(self.enough(runs[name]) for name in names):
            shift = attempt % len(names)
            for name in names[shift:] + names[:shift]:
                if attempt >= self.repeats and self.enough(runs[name]):
                    continue
                with self.timer() as timer:
                    extra = calls[name]()
                runs[name].append({**timer.record(), **extra, "attempt": attempt})
            attempt += 1
        return runs

    def measure(self, fn):
        """`Timer.record()`s of `fn()` (returning a dict for the record), repeated until `enough`."""
        runs = []
        while not self.enough(runs):
            with self.timer() as timer:
                extra = fn()
            runs.append({**timer.record(), **extra})
        return runs


def time_fit(model, dataset, policy, *, warmup_steps, timed_steps, steps_per_execution=1):
    """(Timer of the first `fit` call, its loss, the timed blocks' records) of a compiled Keras `model`.

    The first call runs one execution (tracing and compiling included); one more `fit` runs
    `warmup_steps` untimed steps, then blocks of `timed_steps` steps (multiples of
    `steps_per_execution`) until `policy.enough`. The blocks run inside one `fit` because every
    `fit` call has about a second of set-up that a training run pays once. Imports Keras.
    """
    import keras

    def fit(steps, callbacks=()):
        history = model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False, callbacks=callbacks)
        return float(history.history["loss"][-1])

    class TimedBlocks(keras.callbacks.Callback):
        """Records a block's Timer, last loss and median, min and max time of one execution."""

        def __init__(self):
            super().__init__()
            self.runs, self.executions, self.timer, self.times, self.start = [], 0, None, [], None

        def on_train_batch_begin(self, batch, logs=None):
            if self.timer is None and self.executions * steps_per_execution >= warmup_steps:
                self.timer, self.times = policy.timer().__enter__(), []
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.executions += 1
            if self.timer is None:
                return
            self.times.append(time.perf_counter() - self.start)
            if len(self.times) * steps_per_execution == timed_steps:
                self.timer.__exit__(None, None, None)
                self.runs.append({**self.timer.record(), "loss": float(logs["loss"]),
                                  "execution_s_median": statistics.median(self.times),
                                  "execution_s_min": min(self.times), "execution_s_max": max(self.times)})
                self.timer, self.model.stop_training = None, policy.enough(self.runs)

    with Timer(policy.threshold) as first:
        first_loss = fit(steps_per_execution)
    timed = TimedBlocks()
    fit(warmup_steps + (policy.repeats + policy.extra_repeats) * timed_steps, [timed])
    return first, first_loss, timed.runs


def noise_batches(shape, batch_size, num_batches, seed=0):
    """An endless `tf.data.Dataset` cycling through `num_batches` batches of uniform noise in [−1, 1] of `shape`.

    What a throughput measurement feeds a model: the batches are cached in memory up front, so that
    the timed steps never wait for input. Imports TensorFlow.
    """
    import numpy as np
    import tensorflow as tf

    images = np.random.default_rng(seed).uniform(-1.0, 1.0, (num_batches * batch_size,) + tuple(shape))
    cached = tf.data.Dataset.from_tensor_slices(images.astype(np.float32)).batch(batch_size, drop_remainder=True)
    cached = cached.cache()
    for _ in cached:  # one pass fills the cache, so timed epochs never read the slices
        pass
    return cached.repeat().prefetch(tf.data.AUTOTUNE)


def training_throughput(runs, first, *, batch_size, timed_steps, first_call_steps):
    """The images/s of timed training blocks: each run's rates (added to it) and the summary's fields.

    Args:
      runs: `Timer.record()`s of `timed_steps` steps of `batch_size` images each.
      first: the `Timer` of the first call, `first_call_steps` steps with tracing and compiling:
        compile time = its wall time − `first_call_steps` median steps.
    """
    images = timed_steps * batch_size
    for run in runs:
        run["images_per_s"] = images / run["wall_s"]
        run["images_per_cpu_s"] = images / run["cpu_self_s"] if run["cpu_self_s"] else None
    rates, per_cpu = summarize(runs, "images_per_s"), summarize(runs, "images_per_cpu_s")
    step_s = batch_size / rates["median_images_per_s"]
    return {"first_call_s": first.wall_s, "first_call_other_cpu_fraction": first.other_cpu_fraction,
            "compile_s": max(0.0, first.wall_s - first_call_steps * step_s),
            "images_per_s": rates["median_images_per_s"], "images_per_s_min": rates["min_images_per_s"],
            "images_per_s_max": rates["max_images_per_s"],
            "images_per_cpu_s": per_cpu["median_images_per_cpu_s"], "step_ms": 1000.0 * step_s,
            "peak_rss_mb": peak_rss_mb(), "other_cpu_fraction": rates["median_other_cpu_fraction"],
            "max_other_cpu_fraction": max((r["other_cpu_fraction"] or 0.0) for r in runs),
            "contended": rates["contended"], "num_runs": rates["num_runs"], "num_uncontended": rates["num_uncontended"]}


def paired_ratio(runs, reference):
    """(median of `runs`' wall time / `reference`'s over the attempts both made, whether only contended pairs were).

    Both are `RepeatPolicy.measure_each` records; the per-attempt ratio is robust to the machine
    drifting between attempts, which a ratio of medians is not.
    """
    pairs = [(r, p) for r in runs for p in reference if r["attempt"] == p["attempt"]]
    clean = [(r, p) for r, p in pairs if not (r["contended"] or p["contended"])]
    return statistics.median(r["wall_s"] / p["wall_s"] for r, p in clean or pairs), not clean


def training_clock(budget_s, every_s, on_mark):
    """A Keras callback: stops `fit` after `budget_s` seconds of training, calling `on_mark` every `every_s`.

    `on_mark(seconds, model, logs)` gets the training seconds so far (at most `budget_s`); the time it
    takes (a snapshot of the weights, say) is off the clock. `fit` ending before the budget (its step
    count reached) calls it once more unless the last mark was at that step. Imports Keras.
    """
    import keras

    class TrainingClock(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.start, self.paused, self.next_mark, self.marked_step = time.perf_counter(), 0.0, every_s, None

        def mark(self, elapsed, logs):
            pause = time.perf_counter()
            on_mark(min(elapsed, budget_s), self.model, logs or {})
            self.marked_step = int(self.model.optimizer.iterations.numpy())
            self.paused += time.perf_counter() - pause

        def on_train_batch_end(self, batch, logs=None):
            elapsed = time.perf_counter() - self.start - self.paused
            if elapsed >= self.next_mark or elapsed >= budget_s:
                self.mark(elapsed, logs)
                self.next_mark += every_s
                self.model.stop_training = elapsed >= budget_s

        def on_train_end(self, logs=None):
            if self.marked_step != int(self.model.optimizer.iterations.numpy()):
                self.mark(time.perf_counter() - self.start - self.paused, logs)

    return TrainingClock()
