"""The benchmark scripts still run: imports, flags, a seconds-long smoke of the timed ones, the run summary.

They time nothing here (a unit test is no place for a speed claim): each script runs in its own
process with tiny counts, so that a renamed library function or a broken import fails CI rather
than the next benchmark run. The PyTorch peer's faithfulness check runs only where torch is installed.
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
# Every script but the two that must not import TensorFlow, which are run on their own below.
TENSORFLOW_SCRIPTS = tuple(sorted(p.name for p in BENCHMARKS.glob("*.py")
                                  if p.name not in ("common.py", "summarize_run.py", "peers_torch.py")))


def run_python(args, *, timeout=300, **kwargs):
    """`python args...` from the repository root with benchmarks/ importable; the CompletedProcess."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(BENCHMARKS), os.environ.get("PYTHONPATH", "")]),
               TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout,
                          **kwargs)


def run_ok(args, **kwargs):
    """`run_python` of a command that must succeed (its stderr's tail shown when it does not)."""
    result = run_python(args, **kwargs)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def json_lines(stdout):
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_common_does_not_import_tensorflow():
    # The PyTorch peer's process uses the harness; TensorFlow there would inflate its peak RSS.
    code = ("import sys, common\n"
            "info = common.machine_info({'torch': 'x', 'torch_threads': 1, 'onednn': False})\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'torch')), "
            "info['auto_precision'], 'amx_bf16' in info)\n")
    result = run_python(["-c", code], timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    modules, policy, has_flag = result.stdout.split()[:-2], result.stdout.split()[-2], result.stdout.split()[-1]
    assert modules == ["[]"] and policy in ("float32", "mixed_bfloat16") and has_flag == "True", result.stdout


def test_every_tensorflow_script_imports_and_defines_its_flags():
    # One process (one TensorFlow import): each script's module body runs, then its flags are removed
    # so that the next script may define flags of the same names.
    code = (
        "import runpy, sys\nfrom absl import flags\nimport common\n"
        "baseline = set(flags.FLAGS)\n"
        f"for name in {TENSORFLOW_SCRIPTS!r}:\n"
        "    module = runpy.run_path('benchmarks/' + name, run_name='under_test')\n"
        "    defined = sorted(set(flags.FLAGS) - baseline)\n"
        "    print(name, callable(module.get('main')), len(defined))\n"
        "    for flag in defined:\n"
        "        delattr(flags.FLAGS, flag)\n"
    )
    result = run_ok(["-c", code], timeout=300)
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()}
    assert set(rows) == set(TENSORFLOW_SCRIPTS), result.stdout
    scripts = {name: values for name, values in rows.items() if name != "peers.py"}  # peers.py is a module
    assert all(has_main == "True" and int(count) > 0 for has_main, count in scripts.values()), rows


def test_train_throughput_smoke(tmp_path):
    markdown = tmp_path / "bench.md"
    result = run_ok(["benchmarks/train_throughput.py", "--network=seed_unet", "--batch_size=2", "--cache_batches=1",
                     "--warmup_steps=0", "--timed_steps=1", "--repeats=1", "--extra_repeats=0",
                     f"--markdown={markdown}"])
    summary = json_lines(result.stdout)[-1]
    assert summary["event"] == "summary" and summary["params"] == 2_020_353, summary
    assert summary["images_per_s"] > 0 and summary["precision"] == "float32", summary
    assert summary["machine"]["auto_precision"] in ("float32", "mixed_bfloat16"), summary["machine"]
    assert "| seed_unet | 2,020,353 | 2 | float32 |" in markdown.read_text(), markdown.read_text()


def test_sampling_smoke_in_bfloat16(tmp_path):
    result = run_ok(["benchmarks/sampling.py", "--sampler=dpmpp_2m", "--num_steps=2", "--batch_size=1",
                     "--modes=inprocess,eager", "--precision=mixed_bfloat16", "--repeats=1", "--extra_repeats=0",
                     "--markdown="])
    summary = json_lines(result.stdout)[-1]
    assert summary["precision"] == "mixed_bfloat16" and summary["inprocess_s"] > 0, summary
    # The eager loop draws the same samples as the compiled one, up to bf16 round-off.
    assert summary["eager_max_abs_diff"] < 0.5, summary


def test_sampler_accuracy_smoke(tmp_path):
    output = tmp_path / "accuracy.md"
    result = run_ok(["benchmarks/sampler_accuracy.py", "--toys=gaussian", "--nfe=3,10", "--samplers=ddim,heun",
                     "--spacings=logsnr", "--num_samples=64", "--num_stochastic_samples=64", "--json",
                     f"--output={output}"])
    cells = {(r["kind"], r["sampler"], r["nfe_budget"]): r for r in json_lines(result.stdout)}
    # NFE as they ran: Heun's 2·n − 1 fits 3 evaluations with 2 steps, 10 with 5 (9 evaluations).
    assert (cells["ode_error", "heun", 3]["steps"], cells["ode_error", "heun", 10]["nfe"]) == (2, 9), cells
    assert cells["ode_error", "ddim", 10]["error"] < cells["ode_error", "ddim", 3]["error"], cells
    assert {kind for kind, _, _ in cells} == {"ode_error", "w1"} and "| heun | logsnr |" in output.read_text()


SAMPLER_QUALITY_SETUP = """
import pathlib, sys
sys.path.insert(0, 'tests')
import test_evaluation
from tfdiffusion import evaluation

root = pathlib.Path(sys.argv[1])
idx_dir = test_evaluation.write_idx_digits(root / 'idx')
(root / 'run').mkdir()
test_evaluation.tiny_image_model(str(root / 'run' / 'model.keras'))
print(evaluation.train_classifier(str(root / 'classifier'), 'mnist', idx_dir=str(idx_dir), epochs=1, batch_size=32,
                                  verbose=0)['classifier'])
"""


def test_sampler_quality_smoke(tmp_path):
    # An untrained tiny model (T = 20) and a one-epoch classifier of IDX bands: the plumbing, not the numbers.
    setup = run_ok(["-c", SAMPLER_QUALITY_SETUP, str(tmp_path)])
    report = tmp_path / "quality.md"
    result = run_ok(["benchmarks/sampler_quality.py", "--mode=fid,inpaint,img2img", f"--workdir={tmp_path / 'run'}",
                     f"--classifier={setup.stdout.split()[-1]}", f"--idx_dir={tmp_path / 'idx'}",
                     "--samplers=ddim,heun", "--spacings=uniform", "--nfe=3", "--reference=ddpm:4",
                     "--num_samples=8", "--batch_size=8", "--edit_sampler=ddpm:2:uniform", "--num_images=4",
                     "--strengths=0,1", "--jumps=1,2", f"--report={report}", f"--figure_dir={tmp_path / 'figures'}"])
    rows = json_lines(result.stdout)
    inpaint = [row for row in rows if row.get("mode") == "inpaint"]
    assert [row["jumps"] for row in inpaint] == [[1, 2]] and 0 <= inpaint[0]["completion_reads_as_original"] <= 1
    fid = {row["sampler"]: row for row in rows if "fid" in row}
    assert {s: (r["num_steps"], r["nfe"]) for s, r in fid.items()} == {"ddpm": (4, 4), "ddim": (3, 3), "heun": (2, 3)}
    img2img = {row["strength"]: row for row in rows if row.get("mode") == "img2img"}
    assert img2img[0.0]["mean_abs_change"] < 1e-6 < img2img[1.0]["mean_abs_change"], img2img  # strength 0 keeps the image
    assert "## Inpainting: `" in report.read_text() and all(np.isfinite(r["fid"]) for r in fid.values())
    for name, panels in (("fid_vs_nfe.png", None), ("inpainting.png", (3, 4)), ("img2img.png", (4, 2))):
        pixels = np.asarray(Image.open(tmp_path / "figures" / name).convert("L"), np.float32)
        assert pixels.std() > 1.0, name  # a drawn picture, not a blank canvas
        if panels:  # rows × columns of 28-pixel digits (plus the title)
            assert pixels.shape[0] >= 28 * panels[0] and pixels.shape[1] >= 28 * panels[1], (name, pixels.shape)

    # A later run adds a solver to the first run's rows: the reference is not drawn again, the figure has all.
    earlier = tmp_path / "earlier.jsonl"
    earlier.write_text(result.stdout)
    shared_flags = [f"--workdir={tmp_path / 'run'}", f"--classifier={setup.stdout.split()[-1]}",
                    f"--idx_dir={tmp_path / 'idx'}", "--mode=fid", "--samplers=dpmpp_3m", "--spacings=uniform",
                    "--nfe=3", "--reference=ddpm:4", "--batch_size=8", f"--earlier_rows={earlier}",
                    f"--figure_dir={tmp_path / 'again'}"]
    again = json_lines(run_ok(["benchmarks/sampler_quality.py", "--num_samples=8", *shared_flags]).stdout)
    assert [(row["sampler"], row["nfe"]) for row in again if "fid" in row] == [("dpmpp_3m", 3)]
    assert set(again[-1]["best_spacings"]) == {"ddim", "heun", "dpmpp_3m"}
    assert (tmp_path / "again" / "fid_vs_nfe.png").is_file()
    mismatched = run_python(["benchmarks/sampler_quality.py", "--num_samples=16", *shared_flags])
    assert mismatched.returncode == 1 and "Received: num_samples=16" in mismatched.stderr, mismatched.stderr[-2000:]
    missing = run_python(["benchmarks/sampler_quality.py", *shared_flags, f"--earlier_rows={tmp_path / 'none.jsonl'}"])
    assert missing.returncode == 1 and f"Received: earlier_rows={tmp_path / 'none.jsonl'}" in missing.stderr, missing.stderr


def test_time_to_quality_refuses_bad_final_seeds_before_training(tmp_path):
    classifier = tmp_path / "classifier.keras"
    classifier.write_bytes(b"")  # exists: only the seeds are wrong
    result = run_python(["benchmarks/time_to_quality.py", "--recipe=default", f"--classifier={classifier}",
                         "--final_seeds=0,a"])
    assert result.returncode == 1 and "--final_seeds=['0', 'a']: --final_seeds must be integers" in result.stderr, \
        result.stderr[-2000:]


@pytest.mark.parametrize("script,other_flags", [("time_to_quality.py", ["--recipe=default"]),
                                                ("sampler_quality.py", ["--workdir=."])])
def test_a_missing_classifier_is_one_line_naming_it(tmp_path, script, other_flags):
    missing = tmp_path / "none.keras"
    result = run_python([f"benchmarks/{script}", *other_flags, f"--classifier={missing}"])
    assert result.returncode == 1 and f"--classifier={missing}: --classifier must be an existing file" in result.stderr
    assert "Traceback" not in result.stderr, result.stderr[-2000:]


@pytest.mark.slow  # two tiny trainings and five FIDs in three processes, about a minute
def test_time_to_quality_smoke(tmp_path):
    setup = run_ok(["-c", SAMPLER_QUALITY_SETUP, str(tmp_path)])
    outputs = {recipe: tmp_path / f"{recipe}.jsonl" for recipe in ("tutorial", "default")}
    for recipe, output in outputs.items():
        run_ok(["benchmarks/time_to_quality.py", f"--recipe={recipe}", "--config=configs/mnist.py:tiny",
                f"--config.data.idx_dir={tmp_path / 'idx'}", "--minutes=1", "--snapshot_minutes=1",
                f"--classifier={setup.stdout.split()[-1]}", "--num_samples=8", "--batch_size=8",
                "--final_num_samples=16", "--final_seeds=0,1", f"--output={output}"], timeout=600)
    records = {recipe: [json.loads(line) for line in output.read_text().splitlines()] for recipe, output in outputs.items()}
    for recipe, (header, *points, final) in records.items():
        # the tiny config's 4 steps end before the minute: one snapshot, scored at N = 8 and at N = 16 twice
        assert header["event"] == "training" and [p["step"] for p in points] == [4] == [final["step"]], recipe
        assert (final["event"], final["num_samples"], final["seeds"]) == ("final", 16, [0, 1])
        assert final["fids"][0] != final["fids"][1] and final["fid"] == pytest.approx(np.mean(final["fids"]))
    assert records["tutorial"][0]["config"]["optimizer"]["learning_rate"] == 1e-4  # the tutorial's recipe
    compared = run_ok(["benchmarks/time_to_quality.py", f"--compare={outputs['tutorial']},{outputs['default']}",
                       f"--figure={tmp_path / 'ttq.png'}", f"--markdown={tmp_path / 'bench.md'}"])
    summary = json_lines(compared.stdout)[-1]
    assert summary["fid_ratio_default_over_tutorial"] == pytest.approx(
        records["default"][-1]["fid"] / records["tutorial"][-1]["fid"])
    assert "| 16, [0, 1] |" in (tmp_path / "bench.md").read_text() and (tmp_path / "ttq.png").stat().st_size > 0


def _summary(benchmark, **fields):
    machine = {"date": "2026-11-30T00:00:00Z", "cpu_model": "test CPU", "cores": 2, "cpu_flags": ["amx_bf16"],
               "amx_bf16": True, "avx512_bf16": True, "auto_precision": "mixed_bfloat16",
               "auto_precision_reason": "auto: a CPU with AMX (amx_bf16)", "python": "3", "numpy": "2",
               "tensorflow": "2", "keras": "3", "onednn": True}
    return {"event": "summary", "benchmark": benchmark, "batch_size": 64, "steps_per_execution": 1,
            "jit_compile": False, "contended": False, "peak_rss_mb": 900.0, "machine": machine, **fields}


def test_summarize_run_forms_the_ratios_and_targets(tmp_path):
    records = [
        _summary("train_throughput", network="seed_unet", precision="float32", images_per_s=120.0),
        _summary("train_throughput", network="plain_keras_port", precision="float32", images_per_s=100.0),
        _summary("train_throughput", network="seed_unet", precision="mixed_bfloat16", images_per_s=300.0),
        _summary("train_throughput", network="pytorch_port", precision="bf16_autocast", torch_compile=False,
                 images_per_s=250.0),
        *[_summary("sampling", batch_size=16, sampler="dpmpp_2m", num_steps=20, precision=precision,
                   inprocess_s=seconds, inprocess_contended=False) for precision, seconds in
          (("float32", 1.0), ("mixed_bfloat16", 0.6))],
    ]
    jsonl = tmp_path / "run.jsonl"
    jsonl.write_text("not json\n" + "".join(json.dumps(r) + "\n" for r in records))
    result = run_ok(["benchmarks/summarize_run.py", f"--jsonl={jsonl}", f"--markdown={tmp_path / 'bench.md'}"],
                    timeout=60)
    metrics = {r["metric"]: r for r in json_lines(result.stdout)}
    assert metrics["seed_unet / plain_keras_port (float32)"]["value"] == pytest.approx(1.2)
    assert metrics["seed_unet / plain_keras_port (float32)"]["met"] is True
    bf16 = metrics["seed_unet mixed_bfloat16 / fastest pytorch_port bf16_autocast (eager)"]
    assert bf16["value"] == pytest.approx(1.2) and bf16["target"] == ">= 1.15" and bf16["met"] is True
    assert metrics["sampling mixed_bfloat16 / float32 in-process time (dpmpp_2m 20)"]["value"] == pytest.approx(0.6)
    assert metrics['tfdiffusion mixed_precision="auto" here']["value"].startswith("mixed_bfloat16 (auto: a CPU with AMX")
    assert "## Run summary" in (tmp_path / "bench.md").read_text()


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="PyTorch is installed")
def test_pytorch_peer_without_torch_says_how_to_install_it():
    result = run_python(["benchmarks/peers_torch.py", "--help"], timeout=60)
    assert result.returncode == 1 and "pip install torch" in result.stderr, result.stderr[-2000:]


PORT_CHECK = """
import numpy as np, torch
import peers_torch
from tfdiffusion import layers

keras_net, network = layers.SeedUNet(output_channels=1), peers_torch.build_network()
x = np.random.default_rng(0).uniform(-1.0, 1.0, (4, 28, 28, 1)).astype(np.float32)
t = np.array([0, 1, 199, 399], np.int32)
expected = np.asarray(keras_net(x, t))
with torch.no_grad():  # Keras kernels HWIO (transposed convs HWOI) and IO -> torch OIHW (IOHW) and OI
    def copy(keras_layer, torch_layer):
        kernel = keras_layer.kernel.numpy()
        kernel = kernel.T if kernel.ndim == 2 else kernel.transpose(3, 2, 0, 1)
        torch_layer.weight.copy_(torch.from_numpy(kernel.copy()))
        torch_layer.bias.copy_(torch.from_numpy(keras_layer.bias.numpy()))
    embedding = keras_net.time_embedding
    pairs = list(zip([*embedding.hidden_layers, embedding.output_layer],
                     [m for m in network.time_mlp if isinstance(m, torch.nn.Linear)], strict=True))
    pairs += [(keras_net.initial_conv, network.initial_conv), (keras_net.final_conv, network.final_conv)]
    pairs += list(zip(keras_net.up_samplers, network.up_samplers, strict=True))
    for keras_block, torch_block in zip([*keras_net.down_blocks, keras_net.bottleneck, *keras_net.up_blocks],
                                        [*network.down_blocks, network.bottleneck, *network.up_blocks], strict=True):
        pairs += [(getattr(keras_block, n), getattr(torch_block, n)) for n in ("conv1", "time_dense", "conv2")]
    for keras_layer, torch_layer in pairs:
        copy(keras_layer, torch_layer)
    x_torch = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    got = network(x_torch, torch.from_numpy(t).long()).permute(0, 2, 3, 1).numpy()
print(keras_net.count_params(), peers_torch.count_params(network), float(np.max(np.abs(got - expected))),
      float(np.max(np.abs(expected))))
"""


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch is not installed")
def test_pytorch_port_computes_the_seed_unet():
    # Same weights, same inputs: the independent port must be the network it is compared with.
    result = run_ok(["-c", PORT_CHECK], timeout=300)
    keras_params, torch_params, max_abs_diff, max_abs_output = result.stdout.split()[-4:]
    assert int(keras_params) == int(torch_params) == 2_020_353
    assert float(max_abs_diff) <= 1e-4 * max(1.0, float(max_abs_output)), result.stdout


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch is not installed")
def test_pytorch_peer_smoke(tmp_path):
    result = run_ok(["benchmarks/peers_torch.py", "--precision=bf16_autocast", "--batch_size=2", "--cache_batches=1",
                     "--warmup_steps=1", "--timed_steps=2", "--repeats=1", "--extra_repeats=0", "--markdown="],
                    timeout=120)
    summary = json_lines(result.stdout)[-1]
    assert summary["network"] == "pytorch_port" and summary["params"] == 2_020_353, summary
    assert "torch" in summary["machine"] and "tensorflow" not in summary["machine"], summary["machine"]
