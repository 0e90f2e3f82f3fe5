"""The PyTorch peer: the JAX tutorial's U-Net and ε-MSE train step, timed like train_throughput.py.

    python benchmarks/peers_torch.py --precision=float32 --compile=0 --batch_size=64 \
        --warmup_steps=5 --timed_steps=30 --repeats=3

A plain PyTorch port (no tfdiffusion, TensorFlow or Keras code) of the network of `peers.py` /
`tfdiffusion.layers.SeedUNet`, asserted to have the same 2,020,353 parameters: sinusoidal time
features (64) → MLP 64→256→256→64 (ReLU); 3×3 conv 1→32; ConvBlocks 32→64 and 64→128, each
followed by a 2×2 max-pool; bottleneck ConvBlock 128→256; 2×2 stride-2 transposed convs 256→128
and 128→64, each followed by the skip concat and a ConvBlock back to 128 / 64; 1×1 conv → 1.
A ConvBlock is conv3×3 → SiLU → + SiLU(Linear(time)) → conv3×3 → SiLU. Weights are initialised
like Keras' defaults (Glorot-uniform, zero biases); model and images use the channels-last
memory format.

The train step is that of `peers.PlainDiffusion`: linear β schedule (1e-4 → 0.02, T = 400),
t and ε drawn per step, x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, MSE between ε and the prediction,
Adam (lr 1e-4, ε 1e-7 as Keras' default) on fp32 weights; `--adam_impl=foreach|fused` picks torch's
multi-tensor or fused kernel instead of its CPU default (a per-tensor loop).

  --precision=float32        everything in fp32;
  --precision=bf16_autocast  `torch.autocast("cpu", dtype=torch.bfloat16)` around forward + loss
                             (the loss itself is taken on the prediction cast to fp32); the
                             weights, gradients and Adam stay fp32;
  --compile=1                `torch.compile` of forward + loss (Inductor; the backward graph is
                             compiled by AOTAutograd on the first step). If compiling fails, the
                             error goes into the JSON (`compile_error`), the run falls back to
                             eager and says so in the table.

Measured like `train_throughput.py`, in one process: the first step (`first_call_s`; with
--compile=1 it includes compilation; `compile_s` = that minus one steady-state step);
`--warmup_steps` untimed steps; `--repeats` timed sections of `--timed_steps` steps each with
common.py's contention-aware `measure` (more, up to `--extra_repeats`, while fewer than
`--repeats` were uncontended) → images/s per section and the median over the uncontended ones;
the process's peak RSS at the end. torch's intra-op threads are set to the CPUs this process may
use (`--threads`). Data: `--cache_batches` distinct batches of uniform noise in [−1, 1] held in
memory, cycled.

Prints JSON lines in train_throughput.py's schema (network "pytorch_port"; one "repeat" record
per timed section, then the "summary" record with the machine info and the exact command) and
appends a row to the "Training throughput" table of --markdown (default docs/BENCHMARKS.md,
'' for none; the "XLA" column says "torch.compile" for --compile=1).

    python benchmarks/peers_torch.py --check_port=1

compares the forward pass with tfdiffusion's Keras `SeedUNet` (same weights copied over,
random inputs) and prints the largest difference instead of timing anything.

PyTorch is a benchmark-only dependency of this script, not of tfdiffusion: `pip install torch`.
"""

import argparse
import datetime
import math
import os
import platform
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  pylint: disable=wrong-import-position

try:
    import torch  # noqa: E402  pylint: disable=wrong-import-position
    import torch.nn.functional as F  # noqa: E402  pylint: disable=wrong-import-position
    from torch import nn  # noqa: E402  pylint: disable=wrong-import-position
except ImportError as error:  # pragma: no cover - depends on the environment
    raise SystemExit(
        "benchmarks/peers_torch.py needs PyTorch, which tfdiffusion does not depend on. "
        f"Install a CPU build first, e.g. `pip install torch`. ({error})"
    ) from error

TUTORIAL_PARAMS = 2_020_353
IMAGE_SHAPE = (28, 28, 1)  # H, W, C as in the Keras benchmarks; tensors here are N, C, H, W in channels-last memory
NUM_TIMESTEPS = 400
NETWORK_NAME = "pytorch_port"
PRECISIONS = ("float32", "bf16_autocast")
ADAM_IMPLS = ("default", "foreach", "fused")  # default: torch's choice (the per-tensor loop on CPU)


# -- the network ------------------------------------------------------------------------------
class ConvBlock(nn.Module):
    """conv3×3 → SiLU → + SiLU(Linear(time)) → conv3×3 → SiLU."""

    def __init__(self, in_channels, out_channels, time_dim):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_dense = nn.Linear(time_dim, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)

    def forward(self, x, time):
        h = F.silu(self.conv1(x))
        h = h + F.silu(self.time_dense(time))[:, :, None, None]
        return F.silu(self.conv2(h))


class TutorialUNet(nn.Module):
    """The tutorial's U-Net: (x [N, C, H, W], t [N] int) → ε̂ [N, C, H, W]."""

    def __init__(self, image_channels=1, channels=(64, 128, 256), initial_channels=32, time_dim=64, mlp_width=256,
                 max_period=10_000.0):
        super().__init__()
        half = time_dim // 2
        frequencies = torch.exp(torch.arange(half, dtype=torch.float32) * (-math.log(max_period) / (half - 1)))
        self.register_buffer("frequencies", frequencies, persistent=False)
        self.time_mlp = nn.Sequential(
            nn.Linear(time_dim, mlp_width), nn.ReLU(),
            nn.Linear(mlp_width, mlp_width), nn.ReLU(),
            nn.Linear(mlp_width, time_dim),
        )
        self.initial_conv = nn.Conv2d(image_channels, initial_channels, 3, padding=1)
        self.down_blocks = nn.ModuleList()
        width = initial_channels
        for filters in channels[:-1]:
            self.down_blocks.append(ConvBlock(width, filters, time_dim))
            width = filters
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = ConvBlock(width, channels[-1], time_dim)
        width = channels[-1]
        self.up_samplers = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for filters in channels[-2::-1]:
            self.up_samplers.append(nn.ConvTranspose2d(width, filters, 2, stride=2))
            self.up_blocks.append(ConvBlock(2 * filters, filters, time_dim))  # upsampled ⧺ skip
            width = filters
        self.final_conv = nn.Conv2d(width, image_channels, 1)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        """Keras' defaults: Glorot-uniform kernels, zero biases (torch's fan rules give the same bounds)."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x, t):
        angles = t.to(torch.float32)[:, None] * self.frequencies[None, :]
        time = self.time_mlp(torch.cat([torch.sin(angles), torch.cos(angles)], dim=1))
        h = self.initial_conv(x)
        skips = []
        for block in self.down_blocks:
            h = block(h, time)
            skips.append(h)
            h = self.pool(h)
        h = self.bottleneck(h, time)
        for up_sampler, block, skip in zip(self.up_samplers, self.up_blocks, reversed(skips)):
            h = block(torch.cat([up_sampler(h), skip], dim=1), time)
        return self.final_conv(h)


def count_params(module):
    return sum(p.numel() for p in module.parameters())


def build_network():
    """The port in channels-last memory format; raises unless it has the tutorial's parameter count."""
    network = TutorialUNet(image_channels=IMAGE_SHAPE[-1])
    count = count_params(network)
    if count != TUTORIAL_PARAMS:  # not `assert`: it must hold under python -O too
        raise AssertionError(f"PyTorch port has {count} parameters, expected {TUTORIAL_PARAMS}")
    return network.to(memory_format=torch.channels_last)


# -- the train step ---------------------------------------------------------------------------
class Trainer:
    """ε-prediction DDPM training of `network` on the linear schedule, Adam on fp32 weights."""

    def __init__(self, network, precision="float32", compile_network=False, learning_rate=1e-4, adam_impl="default",
                 num_timesteps=NUM_TIMESTEPS, beta_start=1e-4, beta_end=0.02, seed=0):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}. Received: precision={precision!r}")
        self.network = network
        self.precision = precision
        self.num_timesteps = num_timesteps
        betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.sqrt_alphas_cumprod = alphas_cumprod.sqrt().float()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - alphas_cumprod).sqrt().float()
        if adam_impl not in ADAM_IMPLS:
            raise ValueError(f"adam_impl must be one of {ADAM_IMPLS}. Received: adam_impl={adam_impl!r}")
        options = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[adam_impl]
        self.optimizer = torch.optim.Adam(network.parameters(), lr=learning_rate, eps=1e-7, **options)
        self.generator = torch.Generator().manual_seed(seed)
        self.eager_forward_loss = self._forward_loss
        self.forward_loss = torch.compile(self._forward_loss) if compile_network else self._forward_loss

    def _forward_loss(self, x_t, t, noise):
        if self.precision == "bf16_autocast":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                prediction = self.network(x_t, t)
                return F.mse_loss(prediction.float(), noise)
        return F.mse_loss(self.network(x_t, t), noise)

    def use_eager(self):
        """Drops the compiled forward (after a compile error) and goes on eagerly."""
        torch._dynamo.reset()  # pylint: disable=protected-access
        self.forward_loss = self.eager_forward_loss

    def step(self, x0):
        batch = x0.shape[0]
        t = torch.randint(0, self.num_timesteps, (batch,), generator=self.generator)
        noise = torch.randn(x0.shape, generator=self.generator).contiguous(memory_format=torch.channels_last)
        x_t = (self.sqrt_alphas_cumprod[t].view(-1, 1, 1, 1) * x0
               + self.sqrt_one_minus_alphas_cumprod[t].view(-1, 1, 1, 1) * noise)
        loss = self.forward_loss(x_t, t, noise)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()


def make_batches(batch_size, cache_batches, seed=0):
    """`cache_batches` distinct batches of uniform noise in [−1, 1], N×C×H×W in channels-last memory."""
    generator = torch.Generator().manual_seed(seed)
    height, width, channels = IMAGE_SHAPE
    return [
        (torch.rand((batch_size, channels, height, width), generator=generator) * 2.0 - 1.0)
        .contiguous(memory_format=torch.channels_last)
        for _ in range(cache_batches)
    ]


# -- machine info -----------------------------------------------------------------------------
def machine_info(threads):
    """Like common.machine_info, without importing TensorFlow (which would inflate the peak RSS)."""
    import numpy as np  # pylint: disable=import-outside-toplevel

    model, flags = common._cpuinfo()  # pylint: disable=protected-access
    interesting = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "avx512_vnni")
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except AttributeError:
        capability = None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpu_model": model,
        "cores": common.num_cores(),
        "cpu_flags": [flag for flag in interesting if flag in flags],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "torch_threads": threads,
        "torch_interop_threads": torch.get_num_interop_threads(),
        "torch_cpu_capability": capability,
        "onednn": bool(torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled),
        "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "git": common._git_revision(),  # pylint: disable=protected-access
        "hostname": platform.node(),
    }


def short_environment(info):
    return (f"PyTorch {info['torch']}, {info['cores']} cores, {info['torch_threads']} threads, "
            f"oneDNN {'on' if info['onednn'] else 'off'}" + (f", git {info['git']}" if info.get("git") else ""))


def _ensure_markdown_header(path, info):
    """Creates a missing results file with common.py's header (TF versions included when importable)."""
    if os.path.exists(os.path.abspath(path)):
        return
    try:
        header_info = common.machine_info()  # imports TensorFlow: only after all measurements
    except ImportError:
        header_info = {**info, "tensorflow": "not installed", "keras": "not installed"}
    common.ensure_markdown(path, header_info)


# -- the benchmark ----------------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--precision", choices=PRECISIONS, default="float32")
    parser.add_argument("--compile", type=int, choices=(0, 1), default=0, help="torch.compile forward + loss")
    parser.add_argument("--compile_cache", choices=("fresh", "shared"), default="fresh",
                        help="with --compile=1: 'fresh' compiles into a new temporary Inductor cache (a cold "
                             "compile, like XLA's), 'shared' uses the usual one (TORCHINDUCTOR_CACHE_DIR)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch.set_num_threads (0: the CPUs this process may use)")
    parser.add_argument("--warmup_steps", type=int, default=5)
    parser.add_argument("--timed_steps", type=int, default=20, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--extra_repeats", type=int, default=2,
                        help="further repeats allowed while fewer than --repeats were uncontended")
    parser.add_argument("--contention_threshold", type=float, default=common.DEFAULT_CONTENTION_THRESHOLD)
    parser.add_argument("--max_wait_idle_s", type=float, default=0.0,
                        help="before each repeat, wait up to this long for the machine to be quiet")
    parser.add_argument("--cache_batches", type=int, default=8, help="distinct batches held in memory")
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--adam_impl", choices=ADAM_IMPLS, default="default",
                        help="torch.optim.Adam's kernel (default: torch's choice, a per-tensor loop on CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check_port", type=int, choices=(0, 1), default=0,
                        help="compare the forward pass with tfdiffusion's Keras SeedUNet instead of timing")
    parser.add_argument("--markdown", default=common.DEFAULT_MARKDOWN,
                        help="results file to append a row to ('' for none); use /tmp for smoke tests")
    args = parser.parse_args(argv)
    for name in ("batch_size", "timed_steps", "repeats", "cache_batches"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1. Received: {getattr(args, name)}")
    if args.warmup_steps < 0 or args.extra_repeats < 0 or args.threads < 0:
        parser.error("--warmup_steps, --extra_repeats and --threads must be >= 0")
    return args


def _short_error(error, limit=2000):
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= limit else text[:limit] + " …"


def run(args):
    cache_dir = None
    if args.compile and args.compile_cache == "fresh":
        cache_dir = tempfile.mkdtemp(prefix="peers_torch_inductor_")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir  # read by Inductor when it first compiles
    try:
        return _run(args)
    finally:
        if cache_dir:
            shutil.rmtree(cache_dir, ignore_errors=True)


def _run(args):
    threads = args.threads or common.num_cores()
    torch.set_num_threads(threads)
    torch.manual_seed(args.seed)
    info = machine_info(threads)
    command = common.command_line()

    network = build_network()
    params = count_params(network)
    trainer = Trainer(network, args.precision, compile_network=bool(args.compile), learning_rate=args.learning_rate,
                      adam_impl=args.adam_impl, seed=args.seed)
    batches = make_batches(args.batch_size, args.cache_batches, args.seed)
    rss_before_training = common.peak_rss_mb()
    position = [0]

    def train(steps):
        loss = None
        for _ in range(steps):
            loss = trainer.step(batches[position[0] % len(batches)])
            position[0] += 1
        return float(loss)

    compile_error = None
    try:
        with common.Timer(args.contention_threshold) as first:
            first_loss = train(1)
    except Exception as error:  # pylint: disable=broad-except
        if not args.compile:
            raise
        compile_error = _short_error(error)
        print(f"torch.compile failed, going on eagerly: {compile_error}", file=sys.stderr, flush=True)
        trainer.use_eager()
        with common.Timer(args.contention_threshold) as first:
            first_loss = train(1)
    compiled = bool(args.compile) and compile_error is None
    if args.warmup_steps:
        train(args.warmup_steps)

    base = {"benchmark": "train_throughput", "network": NETWORK_NAME, "batch_size": args.batch_size,
            "precision": args.precision, "jit_compile": False, "steps_per_execution": 1, "params": params,
            "framework": "pytorch", "torch_compile": compiled, "channels_last": True, "adam_impl": args.adam_impl}
    if args.compile:
        base["torch_compile_requested"] = True
        base["compile_cache"] = args.compile_cache
    if compile_error:
        base["compile_error"] = compile_error

    def timed():
        return {"loss": train(args.timed_steps)}

    summary = common.measure(timed, args.repeats, threshold=args.contention_threshold,
                             extra_repeats=args.extra_repeats, max_wait_idle_s=args.max_wait_idle_s)
    record = common.throughput_summary(
        base, summary["runs"], first, first_loss, batch_size=args.batch_size, timed_steps=args.timed_steps,
        first_call_steps=1, warmup_steps=args.warmup_steps, repeats=args.repeats,
        contention_threshold=args.contention_threshold, rss_after_build_mb=rss_before_training, command=command,
        info=info)
    if args.markdown:
        _ensure_markdown_header(args.markdown, info)
        if compiled:
            compiler = "torch.compile"
        elif args.compile:
            compiler = "torch.compile failed, eager"
        else:
            compiler = False
        row = common.throughput_row(record, compiler=compiler, environment=short_environment(info))
        common.append_markdown_row("Training throughput", row, command, path=args.markdown, info=info)
    return record


# -- faithfulness check against the Keras SeedUNet --------------------------------------------
@torch.no_grad()
def copy_keras_weights(keras_net, network):
    """Copies tfdiffusion's SeedUNet weights into the port (Keras HWIO / IO layouts → torch OIHW / OI)."""

    def conv(keras_layer, torch_layer):  # Conv2D kernel [kh, kw, in, out] → [out, in, kh, kw]
        torch_layer.weight.copy_(torch.from_numpy(keras_layer.kernel.numpy().transpose(3, 2, 0, 1).copy()))
        torch_layer.bias.copy_(torch.from_numpy(keras_layer.bias.numpy()))

    def conv_transpose(keras_layer, torch_layer):  # Conv2DTranspose kernel [kh, kw, out, in] → [in, out, kh, kw]
        torch_layer.weight.copy_(torch.from_numpy(keras_layer.kernel.numpy().transpose(3, 2, 0, 1).copy()))
        torch_layer.bias.copy_(torch.from_numpy(keras_layer.bias.numpy()))

    def dense(keras_layer, torch_layer):  # Dense kernel [in, out] → Linear weight [out, in]
        torch_layer.weight.copy_(torch.from_numpy(keras_layer.kernel.numpy().T.copy()))
        torch_layer.bias.copy_(torch.from_numpy(keras_layer.bias.numpy()))

    def block(keras_block, torch_block):
        conv(keras_block.conv1, torch_block.conv1)
        dense(keras_block.time_dense, torch_block.time_dense)
        conv(keras_block.conv2, torch_block.conv2)

    embedding = keras_net.time_embedding
    linears = [m for m in network.time_mlp if isinstance(m, nn.Linear)]
    for keras_layer, torch_layer in zip(list(embedding.hidden_layers) + [embedding.output_layer], linears, strict=True):
        dense(keras_layer, torch_layer)
    conv(keras_net.initial_conv, network.initial_conv)
    for keras_block, torch_block in zip(keras_net.down_blocks, network.down_blocks, strict=True):
        block(keras_block, torch_block)
    block(keras_net.bottleneck, network.bottleneck)
    for keras_layer, torch_layer in zip(keras_net.up_samplers, network.up_samplers, strict=True):
        conv_transpose(keras_layer, torch_layer)
    for keras_block, torch_block in zip(keras_net.up_blocks, network.up_blocks, strict=True):
        block(keras_block, torch_block)
    conv(keras_net.final_conv, network.final_conv)


def check_port(args):
    """Same weights, same inputs: the port's ε̂ against tfdiffusion's SeedUNet (imports TensorFlow)."""
    import numpy as np  # pylint: disable=import-outside-toplevel

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras  # pylint: disable=import-outside-toplevel

    import tfdiffusion as tfd  # pylint: disable=import-outside-toplevel

    torch.set_num_threads(args.threads or common.num_cores())
    rng = np.random.default_rng(args.seed)
    x = rng.uniform(-1.0, 1.0, (4,) + IMAGE_SHAPE).astype(np.float32)
    t = np.array([0, 1, 199, 399], dtype=np.int32)
    keras_net = tfd.layers.SeedUNet(output_channels=IMAGE_SHAPE[-1])
    expected = keras.ops.convert_to_numpy(keras_net(x, t))
    network = build_network()
    copy_keras_weights(keras_net, network)
    with torch.no_grad():
        x_torch = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
        got = network(x_torch, torch.from_numpy(t).long()).permute(0, 2, 3, 1).numpy()
    max_abs_diff = float(np.max(np.abs(got - expected)))
    record = {"benchmark": "port_check", "network": NETWORK_NAME, "event": "port_check",
              "params": count_params(network), "keras_params": keras_net.count_params(),
              "max_abs_diff": max_abs_diff, "max_abs_output": float(np.max(np.abs(expected))),
              "ok": (max_abs_diff <= 1e-4 * max(1.0, float(np.max(np.abs(expected))))
                     and count_params(network) == keras_net.count_params())}
    common.emit_json(record)
    if not record["ok"]:
        raise SystemExit(1)
    return record


def main(argv=None):
    args = parse_args(argv)
    if args.check_port:
        check_port(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
