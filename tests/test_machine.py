"""tfdiffusion.machine: the machine description, the other-CPU accounting of `Timer`, and `summarize`."""

import os
import subprocess
import sys
import time

import pytest

from tfdiffusion import machine


def test_cpu_model_reads_the_model_name(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU @ 2.0GHz\nflags\t\t: avx2 amx_bf16\n")
    assert machine.cpu_model(str(cpuinfo)) == "Test CPU @ 2.0GHz"


def test_describe_for_another_framework_imports_no_tensorflow():
    code = ("import sys\nfrom tfdiffusion import machine\n"
            "info = machine.describe({'torch': 'x', 'onednn': False})\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')), info['torch'], "
            "info['auto_precision'], info['cores'] >= 1)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.split() == ["[]", "x", result.stdout.split()[2], "True"], result.stdout
    assert result.stdout.split()[2] in ("float32", "mixed_bfloat16")


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="other-CPU accounting reads /proc/stat")
def test_timer_counts_the_cpu_another_process_burns():
    # While this process sleeps, a child spins for ~1.5 s: at least a core-second (less whatever the
    # scheduler gives others) is other CPU, and this process's own CPU stays near zero.
    child = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 1.5\nwhile time.time() < end: pass"])
    try:
        time.sleep(0.2)  # the interpreter's start-up is over
        with machine.Timer(threshold=0.05) as timer:
            time.sleep(1.0)
    finally:
        child.wait()
    record = timer.record()
    assert 0.95 <= record["wall_s"] < 2.0
    assert record["cpu_self_s"] < 0.2, record
    assert record["cpu_other_s"] >= 0.5, record
    assert record["other_cpu_fraction"] == pytest.approx(record["cpu_other_s"] / (record["wall_s"] * timer.cores))
    assert record["contended"] is True


def test_timer_counts_this_process_cpu():
    # getrusage against the CPU-time clock: the same CPU-seconds from two sources, whatever the load.
    with machine.Timer() as timer:
        start = time.process_time()
        while time.process_time() - start < 0.3:
            pass
        used = time.process_time() - start
    assert timer.cpu_self_s == pytest.approx(used, abs=0.05) and timer.wall_s >= used * 0.9, timer.record()


def _run(wall_s, contended=False, utilisation=0.9, fraction=0.01):
    return {"wall_s": wall_s, "contended": contended, "self_cpu_utilisation": utilisation,
            "other_cpu_fraction": fraction}


def test_summarize_takes_the_median_over_uncontended_unthrottled_runs():
    runs = [_run(1.0), _run(2.0), _run(3.0), _run(10.0, contended=True, fraction=0.5), _run(9.0, utilisation=0.3)]
    summary = machine.summarize(runs)
    assert (summary["median_wall_s"], summary["min_wall_s"], summary["max_wall_s"]) == (2.0, 1.0, 3.0)
    assert (summary["num_runs"], summary["num_uncontended"], summary["contended"]) == (5, 3, False)
    assert [run["throttled"] for run in runs] == [False, False, False, False, True]


def test_summarize_falls_back_to_every_run_when_all_were_contended():
    summary = machine.summarize([_run(4.0, contended=True, fraction=0.4), _run(6.0, contended=True, fraction=0.6)])
    assert summary["median_wall_s"] == 5.0 and summary["contended"] is True
    assert summary["median_other_cpu_fraction"] == pytest.approx(0.5)


def test_repeat_policy_stops_at_the_uncontended_repeats_or_the_cap():
    policy = machine.RepeatPolicy(repeats=2, extra_repeats=2)
    clean, busy = {"contended": False}, {"contended": True}
    assert not policy.enough([clean]) and policy.enough([clean, clean])
    assert not policy.enough([busy, clean, busy]) and policy.enough([busy, clean, busy, clean])
    assert policy.enough([busy] * 4) and not policy.enough([busy] * 3)


def test_repeat_policy_measure_records_each_repeat():
    calls = []
    runs = machine.RepeatPolicy(repeats=3, extra_repeats=0).measure(lambda: calls.append(1) or {"index": len(calls)})
    assert [run["index"] for run in runs] == [1, 2, 3]
    assert all(run["wall_s"] >= 0.0 and "other_cpu_fraction" in run for run in runs)


def test_time_fit_times_blocks_of_steps_inside_one_fit():
    import keras
    import numpy as np
    import tensorflow as tf

    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer="sgd", loss="mse", steps_per_execution=2)
    x = np.ones((8, 2), np.float32)
    dataset = tf.data.Dataset.from_tensor_slices((x, x[:, :1])).batch(4).repeat()
    first, first_loss, runs = machine.time_fit(model, dataset, machine.RepeatPolicy(repeats=2, extra_repeats=0),
                                               warmup_steps=2, timed_steps=4, steps_per_execution=2)
    assert first.wall_s > 0 and np.isfinite(first_loss)
    assert len(runs) == 2 and all(run["execution_s_min"] <= run["execution_s_median"] <= run["execution_s_max"]
                                  for run in runs)
    # first call: 2 steps; then 2 warm-up steps and 2 blocks of 4: the optimizer counts every step.
    assert int(model.optimizer.iterations.numpy()) == 2 + 2 + 2 * 4


def _timed(wall_s, attempt=0, contended=False):
    return {"wall_s": wall_s, "cpu_self_s": wall_s, "self_cpu_utilisation": 0.5, "other_cpu_fraction": 0.0,
            "contended": contended, "attempt": attempt}


def test_measure_each_rotates_the_order_and_numbers_the_attempts():
    order, policy = [], machine.RepeatPolicy(repeats=3, extra_repeats=0)
    runs = policy.measure_each({name: (lambda name=name: order.append(name) or {}) for name in "abc"})
    assert order == list("abcbcacab")  # each attempt starts one call further along
    assert [r["attempt"] for r in runs["b"]] == [0, 1, 2]


def test_paired_ratio_prefers_uncontended_pairs():
    mine = [_timed(2.0, 0), _timed(9.0, 1, contended=True), _timed(3.0, 2)]
    reference = [_timed(1.0, 0), _timed(1.0, 1), _timed(1.0, 2)]
    assert machine.paired_ratio(mine, reference) == (2.5, False)  # median of 2 and 3; attempt 1 left out
    assert machine.paired_ratio(mine[1:2], reference) == (9.0, True)


def test_training_throughput_is_images_over_seconds():
    class First:
        wall_s, other_cpu_fraction = 5.0, 0.0

    runs = [_timed(2.0), _timed(4.0), _timed(1.0)]
    fields = machine.training_throughput(runs, First(), batch_size=4, timed_steps=10, first_call_steps=1)
    assert [r["images_per_s"] for r in runs] == [20.0, 10.0, 40.0]
    assert fields["images_per_s"] == 20.0 and fields["step_ms"] == 200.0  # 4 images at 20 images/s
    assert fields["compile_s"] == 4.8 and (fields["images_per_s_min"], fields["images_per_s_max"]) == (10.0, 40.0)


def test_training_clock_stops_at_the_budget_and_marks_the_last_step():
    import keras
    import numpy as np

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.zeros((8, 2), np.float32)
    for budget_s, expected_steps in ((0.0, 1), (1e9, 4)):
        marks = []
        clock = machine.training_clock(budget_s, 1e9,
                                       lambda s, m, logs: marks.append((s, int(m.optimizer.iterations.numpy()))))
        model.optimizer.iterations.assign(0)
        model.fit(x, x[:, :1], batch_size=2, epochs=1, verbose=0, callbacks=[clock])
        # Budget 0: one step, marked at 0 s; no budget reached: one mark, at fit's end.
        assert [step for _, step in marks] == [expected_steps] and marks[0][0] <= budget_s


def test_noise_batches_cycle_through_cached_uniform_noise():
    import numpy as np

    batches = iter(machine.noise_batches((3, 3, 1), batch_size=2, num_batches=2, seed=0))
    first, second, third = (np.asarray(next(batches)) for _ in range(3))
    assert first.shape == (2, 3, 3, 1) and first.dtype == np.float32
    assert -1.0 <= min(first.min(), second.min()) and max(first.max(), second.max()) <= 1.0
    assert np.array_equal(first, third) and not np.array_equal(first, second)  # two cached batches, cycled
