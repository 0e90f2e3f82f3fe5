"""The PyTorch peer: the JAX tutorial's U-Net and ε-MSE train step, timed like train_throughput.py.

    python benchmarks/peers_torch.py --precision=float32 --compile=0 --batch_size=64 \
        --warmup_steps=5 --timed_steps=30 --repeats=3
    python benchmarks/peers_torch.py --check_port   # forward pass vs tfdiffusion's SeedUNet, same weights

The port (the network and the train step below) is plain PyTorch with no tfdiffusion, TensorFlow or
Keras code, so that the comparison compares the frameworks; only the harness (flags, timing,
machine description, output) is `common.py`'s, shared with `train_throughput.py`. The network
is that of `peers.py` / `tfdiffusion.layers.SeedUNet`, asserted 2,020,353 parameters: sinusoidal
time features (64) → MLP 64→256→256→64 (ReLU); 3×3 conv 1→32; ConvBlocks 32→64 and 64→128, each
followed by a 2×2 max-pool; bottleneck ConvBlock 128→256; 2×2 stride-2 transposed convs 256→128
and 128→64, each followed by the skip concat and a ConvBlock back to 128 / 64; 1×1 conv → 1. A
ConvBlock is conv3×3 → SiLU → + SiLU(Linear(time)) → conv3×3 → SiLU. Keras' initialisation
(Glorot-uniform, zero biases); model and images in the channels-last memory format. The step is
`peers.PlainDiffusion`'s: linear β (1e-4 → 0.02, T = 400), x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, MSE to ε,
Adam (lr 1e-4, ε 1e-7 as Keras') on fp32 weights.

  --precision=bf16_autocast  `torch.autocast("cpu", dtype=torch.bfloat16)` around forward + loss (the
                             loss on the prediction cast to fp32); weights, gradients, Adam in fp32;
  --compile                  `torch.compile` (Inductor) of forward + loss; if compiling fails, the error
                             goes into the JSON (`compile_error`) and the run goes on eagerly;
  --adam_impl=foreach|fused  torch's multi-tensor or fused Adam instead of its CPU default.

Timed like `train_throughput.py`: the first step (`compile_s` = it minus one steady-state step),
`--warmup_steps` untimed steps, then timed sections of `--timed_steps` steps of this Python loop
(no per-section set-up). JSON lines in train_throughput.py's schema (network "pytorch_port") and
a row in the "Training throughput" table; the machine info has torch's versions and threads, and
TensorFlow is never imported (it would inflate the peak RSS) except by --check_port.

PyTorch is a benchmark-only dependency, not tfdiffusion's: `pip install torch`.
"""

import math
import os
import shutil
import sys
import tempfile

from absl import app, flags

import common

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError as error:  # depends on the environment
    raise SystemExit("benchmarks/peers_torch.py needs PyTorch, which tfdiffusion does not depend on. "
                     f"Install a CPU build first, e.g. `pip install torch`. ({error})") from error

TUTORIAL_PARAMS = 2_020_353
IMAGE_SHAPE = (28, 28, 1)  # H, W, C as in the Keras benchmarks; tensors here are N, C, H, W in channels-last memory
NUM_TIMESTEPS = 400
NETWORK_NAME = "pytorch_port"
PRECISIONS = ("float32", "bf16_autocast")
ADAM_IMPLS = ("default", "foreach", "fused")  # default: torch's choice (the per-tensor loop on CPU)

flags.DEFINE_enum("precision", "float32", PRECISIONS, "float32, or bf16 autocast around forward + loss.")
flags.DEFINE_bool("compile", False, "torch.compile forward + loss.")
flags.DEFINE_enum("compile_cache", "fresh", ("fresh", "shared"),
                  "With --compile: 'fresh' compiles into a new temporary Inductor cache (a cold compile, like "
                  "XLA's), 'shared' uses the usual one (TORCHINDUCTOR_CACHE_DIR).")
flags.DEFINE_integer("threads", 0, "torch.set_num_threads (0: the CPUs this process may use).", lower_bound=0)
flags.DEFINE_enum("adam_impl", "default", ADAM_IMPLS, "torch.optim.Adam's kernel (default: torch's choice).")
flags.DEFINE_integer("seed", 0, "Seed of the weights, the data and the draws.")
flags.DEFINE_bool("check_port", False, "Compare the forward pass with tfdiffusion's SeedUNet instead of timing.")
common.define_throughput_flags()
FLAGS = flags.FLAGS


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


# -- the harness --------------------------------------------------------------------------------
def torch_info(threads):
    """The framework facts of `common.machine_info` for this process."""
    return {"torch": torch.__version__, "torch_threads": threads, "torch_interop_threads": torch.get_num_interop_threads(),
            "torch_cpu_capability": getattr(torch.backends.cpu, "get_cpu_capability", lambda: None)(),
            "onednn": bool(torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled),
            "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0}


def _short_error(error, limit=2000):
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= limit else text[:limit] + " …"


def first_step(trainer, train):
    """(Timer of the first step, its loss, the compile error or None); falls back to eager if compiling fails."""
    try:
        with common.Timer(FLAGS.contention_threshold) as first:
            return first, train(1), None
    except Exception as error:  # pylint: disable=broad-except
        if not FLAGS.compile:
            raise
        print(f"torch.compile failed, going on eagerly: {_short_error(error)}", file=sys.stderr, flush=True)
        trainer.use_eager()
        with common.Timer(FLAGS.contention_threshold) as first:
            return first, train(1), _short_error(error)


def run():
    threads = FLAGS.threads or common.num_cores()
    torch.set_num_threads(threads)
    torch.manual_seed(FLAGS.seed)
    info, command = common.machine_info(torch_info(threads)), common.command_line()
    network = build_network()
    trainer = Trainer(network, FLAGS.precision, compile_network=FLAGS.compile, learning_rate=FLAGS.learning_rate,
                      adam_impl=FLAGS.adam_impl, seed=FLAGS.seed)
    batches = make_batches(FLAGS.batch_size, FLAGS.cache_batches, FLAGS.seed)
    rss_after_build_mb, position = common.peak_rss_mb(), [0]

    def train(steps):
        loss = float("nan")
        for _ in range(steps):
            loss = trainer.step(batches[position[0] % len(batches)])
            position[0] += 1
        return float(loss)

    first, first_loss, compile_error = first_step(trainer, train)
    train(FLAGS.warmup_steps)
    base = {"benchmark": "train_throughput", "network": NETWORK_NAME, "batch_size": FLAGS.batch_size,
            "precision": FLAGS.precision, "jit_compile": False, "steps_per_execution": 1,
            "timed_steps": FLAGS.timed_steps, "params": count_params(network), "rss_after_build_mb": rss_after_build_mb,
            "framework": "pytorch", "torch_compile": FLAGS.compile and compile_error is None, "channels_last": True,
            "adam_impl": FLAGS.adam_impl}
    if FLAGS.compile:
        base.update(torch_compile_requested=True, compile_cache=FLAGS.compile_cache)
    if compile_error:
        base["compile_error"] = compile_error
    runs = common.measure(lambda: {"loss": train(FLAGS.timed_steps)})
    record = common.throughput_summary(base, runs, first, first_loss, first_call_steps=1,
                                       warmup_steps=FLAGS.warmup_steps, command=command, info=info)
    compiler = ("torch.compile" if record["torch_compile"] else "torch.compile failed, eager") if FLAGS.compile else False
    common.append_throughput_row(record, compiler=compiler)


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


def check_port():
    """Same weights, same inputs: the port's ε̂ against tfdiffusion's SeedUNet (imports TensorFlow)."""
    import numpy as np  # pylint: disable=import-outside-toplevel

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras  # pylint: disable=import-outside-toplevel

    from tfdiffusion import layers  # pylint: disable=import-outside-toplevel

    torch.set_num_threads(FLAGS.threads or common.num_cores())
    rng = np.random.default_rng(FLAGS.seed)
    x = rng.uniform(-1.0, 1.0, (4,) + IMAGE_SHAPE).astype(np.float32)
    t = np.array([0, 1, 199, 399], dtype=np.int32)
    keras_net = layers.SeedUNet(output_channels=IMAGE_SHAPE[-1])
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


def main(argv):
    del argv
    if FLAGS.check_port:
        check_port()
        return
    cache_dir = None
    if FLAGS.compile and FLAGS.compile_cache == "fresh":
        cache_dir = tempfile.mkdtemp(prefix="peers_torch_inductor_")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir  # read by Inductor when it first compiles
    try:
        run()
    finally:
        if cache_dir:
            shutil.rmtree(cache_dir, ignore_errors=True)


if __name__ == "__main__":
    app.run(main)
