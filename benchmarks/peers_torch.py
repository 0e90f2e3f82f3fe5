"""The PyTorch peer: the JAX tutorial's U-Net and ε-MSE train step, timed like train_throughput.py.

    python benchmarks/peers_torch.py --precision=bf16_autocast --compile=0 --batch_size=64 --timed_steps=30

The port (network and train step) is plain PyTorch, no tfdiffusion, TensorFlow or Keras, so that
the comparison compares frameworks; only the harness is `common.py`'s. The network and step are
`peers.py`'s (2,020,353 parameters, Keras' init, channels-last; linear β, T = 400, ε-MSE, Adam 1e-4
with ε = 1e-7). bf16_autocast: `torch.autocast("cpu", dtype=torch.bfloat16)` around forward + loss.
`--compile`: `torch.compile`, falling back to eager with `compile_error` in the JSON. A benchmark-only
dependency (`pip install torch`); tests/test_benchmarks.py checks the port against `SeedUNet`.
"""

import math
import os
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
flags.DEFINE_enum("compile_cache", "fresh", ("fresh", "shared"), "With --compile: a new temporary Inductor "
                  "cache (a cold compile, like XLA's) or the usual one (TORCHINDUCTOR_CACHE_DIR).")
flags.DEFINE_integer("threads", 0, "torch.set_num_threads (0: the CPUs this process may use).", lower_bound=0)
flags.DEFINE_enum("adam_impl", "default", ADAM_IMPLS, "torch.optim.Adam's kernel (default: torch's choice).")
flags.DEFINE_integer("seed", 0, "Seed of the weights, the data and the draws.")
common.define_throughput_flags()
flags.adopt_module_key_flags(common)  # --help lists the shared flags too
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
        self.network = network
        self.precision = precision
        self.num_timesteps = num_timesteps
        betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.sqrt_alphas_cumprod = alphas_cumprod.sqrt().float()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - alphas_cumprod).sqrt().float()
        options = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[adam_impl]
        self.optimizer = torch.optim.Adam(network.parameters(), lr=learning_rate, eps=1e-7, **options)
        self.generator = torch.Generator().manual_seed(seed)
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
        self.forward_loss = self._forward_loss

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


def first_step(trainer, train):
    """(Timer of the first step, its loss, the compile error or None); falls back to eager if compiling fails."""
    try:
        with common.Timer(FLAGS.contention_threshold) as first:
            return first, train(1), None
    except Exception as error:  # pylint: disable=broad-except  (Inductor raises many kinds)
        if not FLAGS.compile:
            raise
        message = f"{type(error).__name__}: {error}"[:2000]
        print(f"torch.compile failed, going on eagerly: {message}", file=sys.stderr, flush=True)
        trainer.use_eager()
        with common.Timer(FLAGS.contention_threshold) as first:
            return first, train(1), message


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


def main(argv):
    del argv
    with tempfile.TemporaryDirectory(prefix="peers_torch_inductor_") as cache_dir:
        if FLAGS.compile and FLAGS.compile_cache == "fresh":
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir  # read by Inductor when it first compiles
        run()


if __name__ == "__main__":
    app.run(main)
