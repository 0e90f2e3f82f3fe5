r"""Draws a grid of samples from a fixed-step TFLite sampler (`tools/export.py --format=tflite`).

    python tools/sample_tflite.py --model=DIR/model.tflite --output=grid.png [--seed=0] [--noise=FILE.npz] \
        [--kernels=reference]

Runs the model in the TFLite interpreter (ai_edge_litert if installed, else tf.lite) with NumPy,
TensorFlow and Pillow only: tfdiffusion is not imported. The model takes its noise as inputs (TFLite
has no stateless random op): drawn from --seed as `DiffusionModel.generate` draws it (x_T from the seed
pair [seed, 0], the k-th of the S step draws from [seed, k + 1]) the grid shows `generate`'s samples;
--noise gives x_T (and step_noise) instead. Prints the interpreter's time; bad input: one line, exit 1.
"""

import argparse
import math
import os
import sys
import time
import warnings

import numpy as np
from PIL import Image

warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")  # it points to ai_edge_litert


# --kernels: the interpreter's op resolver. "default" is TFLite's own choice (optimised builtin kernels with
# the XNNPACK delegate); on the trained MNIST student they differ from TensorFlow's by up to 7.9e-4, with or
# without XNNPACK, while the reference kernels stay within 2.9e-5 (docs/BENCHMARKS.md, issue 15).
KERNELS = {"default": "AUTO", "reference": "BUILTIN_REF"}


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def quiet_tensorflow():
    """TensorFlow, loaded with its native start-up notices (oneDNN, CUDA) sent to /dev/null."""
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        import tensorflow as tf

        tf.config.list_physical_devices()  # the first device query logs cuInit's failure without a GPU
    finally:
        os.dup2(saved, 2)
        for descriptor in (saved, null):
            os.close(descriptor)
    return tf


def model_inputs(args, limits, shape):
    """The sampler's inputs: noise from --noise or drawn from --seed, labels and guidance_scale if conditional."""
    seeds = list(range(1, int(limits["num_noise_draws"]) + 1))
    if args.noise:
        try:
            with np.load(args.noise) as arrays:
                inputs = {name: arrays[name].astype(np.float32) for name in arrays.files}
        except (OSError, ValueError) as error:
            fail(f"cannot read the noise ({' '.join(str(error).split())}). Received: --noise={args.noise}")
        expected = {"x_T": tuple(shape), **({"step_noise": (len(seeds),) + tuple(shape)} if seeds else {})}
        if {k: v.shape for k, v in inputs.items()} != expected:
            fail(f"--noise must hold arrays of shapes {expected}. Received: --noise={args.noise}")
    else:
        tf = quiet_tensorflow()
        draws = [tf.random.stateless_normal(shape, tf.constant([args.seed, k], tf.int64)).numpy() for k in [0] + seeds]
        inputs = {"x_T": draws[0], **({"step_noise": np.stack(draws[1:])} if seeds else {})}
    num_classes = int(limits["num_classes"])
    if num_classes:
        labels = np.arange(shape[0]) % num_classes if args.labels is None else np.array(
            [int(v) if v.strip().isdigit() else -1 for v in args.labels.split(",")])
        if labels.shape != (shape[0],) or labels.min() < 0 or labels.max() > num_classes:
            fail(f"--labels must hold {shape[0]} labels in [0, {num_classes}]. Received: --labels={args.labels}")
        inputs.update(labels=labels.astype(np.int32), guidance_scale=np.float32(args.guidance_scale))
    return inputs


def image_grid(samples, data_range):
    """[N, H, W, C] samples in `data_range` as one uint8 image, ceil(√N) columns filled row by row."""
    n, h, w, c = samples.shape
    rows, columns = math.ceil(n / math.ceil(math.sqrt(n))), math.ceil(math.sqrt(n))
    tiles = np.concatenate([samples, np.full((rows * columns - n, h, w, c), data_range[0], samples.dtype)])
    pixels = np.round(np.clip((tiles - data_range[0]) / (data_range[1] - data_range[0]), 0.0, 1.0) * 255.0)
    grid = pixels.astype(np.uint8).reshape(rows, columns, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, -1, c)
    return Image.fromarray(grid[..., 0] if c == 1 else grid)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.error = fail  # one line and exit status 1, as tfdiffusion's binaries
    parser.add_argument("--model", required=True, help="model.tflite written by tools/export.py --format=tflite")
    parser.add_argument("--output", required=True, help="PNG file to write the grid of samples to")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise (as DiffusionModel.generate's)")
    parser.add_argument("--noise", help=".npz with x_T [B, ...] and step_noise [S, B, ...] to use instead of --seed")
    parser.add_argument("--labels", help="comma-separated class labels, one per sample (conditional models)")
    parser.add_argument("--guidance_scale", type=float, default=0.0, help="classifier-free guidance weight w")
    parser.add_argument("--num_threads", type=int, default=None, help="interpreter threads (default: its own)")
    parser.add_argument("--kernels", choices=KERNELS, default="default",
                        help="TFLite's optimised kernels, or its reference kernels: slower, and round as "
                             "TensorFlow does (within 1e-4 of the fixed SavedModel on the trained MNIST network)")
    args = parser.parse_args()
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError:
        lite = quiet_tensorflow().lite
        Interpreter, OpResolverType = lite.Interpreter, lite.experimental.OpResolverType
    resolver = getattr(OpResolverType, KERNELS[args.kernels])
    try:
        interpreter = Interpreter(model_path=args.model, num_threads=args.num_threads,
                                  experimental_op_resolver_type=resolver)
    except (ValueError, RuntimeError, OSError) as error:
        fail(f"cannot load the model ({' '.join(str(error).split())}). Received: --model={args.model}")
    if set(interpreter.get_signature_list()) != {"sample_from_noise", "limits"}:
        fail(f"not a fixed-step sampler (tools/export.py --format=tflite). Received: --model={args.model}")
    limits = interpreter.get_signature_runner("limits")()
    data_shape = [int(d) for d in np.atleast_1d(limits["data_shape"])]
    if len(data_shape) != 3 or not np.all(np.isfinite(limits["data_range"])):
        fail(f"a PNG grid needs image samples [H, W, C] with a data range. Received: --model={args.model} "
             f"(samples of shape {data_shape})")
    shape = [int(limits["batch_size"])] + data_shape
    inputs = model_inputs(args, limits, shape)
    sampler, start = interpreter.get_signature_runner("sample_from_noise"), time.perf_counter()
    samples = sampler(**inputs)["samples"]
    seconds = time.perf_counter() - start
    image_grid(samples, [float(v) for v in limits["data_range"]]).save(args.output)
    print(f"{shape[0]} samples ({np.asarray(limits['sampler']).item().decode()}, {int(limits['num_steps'])} steps) in "
          f"{seconds:.3f} s (TFLite interpreter, {args.kernels} kernels); grid written to {args.output}")


if __name__ == "__main__":
    main()
