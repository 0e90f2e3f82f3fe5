"""The Diffusion Transformer (DiT) of Peebles & Xie 2023, with adaLN-Zero conditioning."""

import keras
import numpy as np
from keras import ops

from tfdiffusion.layers.embedding import TimestepEmbedding
from tfdiffusion.layers.utils import check_divides, check_positive_int, modulate

POSITION_EMBEDDINGS = ("sincos", "learned")


def sincos_position_embedding_2d(dim, grid_height, grid_width):
    """The fixed 2-D sine-cosine table [grid_height·grid_width, dim] of MAE and DiT (NumPy).

    Half of the features encode the row, half the column; each half is the 1-D embedding
    [sin(p·ω), cos(p·ω)] with ω_i = 10000^(−i/(dim/4)), i < dim/4. Tokens are in row-major
    order (row 0: columns 0..W−1, then row 1, ...), the order of `ops.reshape` on [N, h, w, D].

    Args:
      dim: embedding size, a multiple of 4.
      grid_height: patches per column.
      grid_width: patches per row.

    Returns:
      float32 array [grid_height·grid_width, dim].
    """
    if dim % 4:
        raise ValueError(f"The 2-D sin-cos embedding needs a size divisible by 4. Received: dim={dim!r}")
    omega = 1.0 / 10000.0 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))
    rows, cols = np.meshgrid(np.arange(grid_height, dtype=np.float64), np.arange(grid_width, dtype=np.float64),
                             indexing="ij")

    def one_axis(positions):
        angles = positions.reshape(-1)[:, None] * omega[None, :]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    return np.concatenate([one_axis(rows), one_axis(cols)], axis=1).astype(np.float32)


def _layer_norm(dtype, name):
    """LayerNorm without affine parameters: adaLN supplies the scale and shift."""
    return keras.layers.LayerNormalization(epsilon=1e-6, center=False, scale=False, dtype=dtype, name=name)


@keras.saving.register_keras_serializable(package="tfdiffusion")
class DiTBlock(keras.layers.Layer):
    """A transformer block whose LayerNorms are modulated by the condition (adaLN-Zero).

    SiLU(c) → Dense(6·D) gives (shift, scale, gate) for the attention and for the MLP:
    x ← x + gate_a · Attention(LN(x)·(1 + scale_a) + shift_a), then
    x ← x + gate_m · MLP(LN(x)·(1 + scale_m) + shift_m), the MLP being
    Dense(mlp_ratio·D) → GELU (tanh approximation) → Dense(D). The LayerNorms have no affine
    parameters and the modulation Dense is zero-initialised, so every gate starts at 0 and
    a new block is the identity.

    Args:
      hidden_size: token width D.
      num_heads: attention heads; must divide hidden_size.
      mlp_ratio: MLP hidden width / hidden_size.

    Call arguments:
      x: float tensor [N, T, hidden_size].
      c: float tensor [N, hidden_size], the conditioning embedding.

    Returns:
      float tensor [N, T, hidden_size].

    Example:
      >>> DiTBlock(64, num_heads=4)(keras.ops.zeros((2, 49, 64)), keras.ops.zeros((2, 64)))  # (2, 49, 64)

    References:
      Peebles & Xie 2023, §3.2 (adaLN-Zero); Vaswani et al. 2017; Perez et al. 2018 (FiLM).
    """

    def __init__(self, hidden_size, num_heads=4, mlp_ratio=4.0, **kwargs):
        super().__init__(**kwargs)
        check_positive_int("hidden_size", hidden_size)
        check_positive_int("num_heads", num_heads)
        check_divides("num_heads", num_heads, hidden_size, f"hidden_size={hidden_size}")
        if not mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be > 0. Received: mlp_ratio={mlp_ratio!r}")

        # === Config ===
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio

        # === Layers ===
        policy = self.dtype_policy
        self.norm1 = _layer_norm(policy, "norm1")
        self.attention = keras.layers.MultiHeadAttention(
            num_heads, hidden_size // num_heads, dtype=policy, name="attention"
        )
        self.norm2 = _layer_norm(policy, "norm2")
        self.mlp_hidden = keras.layers.Dense(self.mlp_width, dtype=policy, name="mlp_hidden")
        self.mlp_output = keras.layers.Dense(hidden_size, dtype=policy, name="mlp_output")
        self.modulation = keras.layers.Dense(
            6 * hidden_size, kernel_initializer="zeros", dtype=policy, name="modulation"
        )

    @property
    def mlp_width(self):
        return int(round(self.hidden_size * self.mlp_ratio))

    def build(self, x_shape, c_shape):
        x_shape = tuple(x_shape)
        self.norm1.build(x_shape)
        self.attention.build(x_shape, x_shape)
        self.norm2.build(x_shape)
        self.mlp_hidden.build(x_shape)
        self.mlp_output.build(x_shape[:-1] + (self.mlp_width,))
        self.modulation.build(tuple(c_shape))
        self.built = True

    def call(self, x, c):
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = ops.split(self.modulation(ops.silu(c)), 6, axis=-1)
        h = modulate(self.norm1(x), shift_a, scale_a)
        x = x + gate_a[:, None, :] * self.attention(h, h)
        h = modulate(self.norm2(x), shift_m, scale_m)
        return x + gate_m[:, None, :] * self.mlp_output(ops.gelu(self.mlp_hidden(h), approximate=True))

    def compute_output_shape(self, x_shape, c_shape):
        return tuple(x_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"hidden_size": self.hidden_size, "num_heads": self.num_heads, "mlp_ratio": self.mlp_ratio})
        return config


@keras.saving.register_keras_serializable(package="tfdiffusion")
class DiT(keras.Model):
    """Diffusion Transformer: patches → transformer blocks with adaLN-Zero → patches.

    Conv2D(hidden_size, kernel = stride = patch_size) cuts the image into
    (H/p)·(W/p) tokens, to which a position embedding is added (the fixed 2-D sine-cosine
    table, or a learned one initialised N(0, 0.02²)). The condition c is the time
    embedding (sinusoidal features of size hidden_size → Dense → SiLU → Dense), plus a
    class embedding (row `num_classes` = null) when class-conditional. `depth` DiTBlocks
    follow, then a final adaLN layer (LayerNorm modulated by SiLU(c) → Dense(2·D)) and a
    linear layer to p²·output_channels per token, which are put back in place
    (unpatchify). As in the paper the modulation Dense layers and the final linear layer
    are zero-initialised, so a new network outputs 0 and every block is the identity;
    the other Dense layers use Glorot-uniform initialisation.

    Args:
      patch_size: p; H and W must be divisible by it (e.g. 4 or 7 on 28×28, 2 or 4 on 32×32).
      hidden_size: token width D (a multiple of 4 with the sin-cos embedding).
      depth: number of DiTBlocks.
      num_heads: attention heads; must divide hidden_size.
      mlp_ratio: MLP hidden width / hidden_size.
      output_channels: channels of the prediction; equal to the input's for ε, x_0 or v.
      num_classes: number of classes for a class-conditional network, or None.
      position_embedding: "sincos" (fixed) or "learned".

    Call arguments:
      x: float tensor [N, H, W, C] with static H and W.
      t: integer tensor [N], 0-based timesteps.
      labels: optional integer tensor [N] in [0, num_classes] (num_classes = null).

    Returns:
      float tensor [N, H, W, output_channels].

    Example:
      >>> net = DiT(patch_size=4, hidden_size=64, depth=2, num_heads=4)
      >>> eps = net(keras.ops.zeros((2, 28, 28, 1)), keras.ops.array([0, 999]))  # (2, 28, 28, 1)

    References:
      Peebles & Xie 2023 (DiT, adaLN-Zero); Dosovitskiy et al. 2021 (ViT patches);
      He et al. 2022 (MAE, the 2-D sin-cos table).
    """

    def __init__(
        self,
        patch_size=4,
        hidden_size=128,
        depth=6,
        num_heads=4,
        mlp_ratio=4.0,
        output_channels=1,
        num_classes=None,
        position_embedding="sincos",
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_positive_int("patch_size", patch_size)
        check_positive_int("hidden_size", hidden_size)
        check_positive_int("depth", depth)
        check_positive_int("output_channels", output_channels)
        # num_heads and mlp_ratio are checked by the DiTBlocks (depth >= 1).
        if position_embedding not in POSITION_EMBEDDINGS:
            raise ValueError(f"position_embedding must be one of {POSITION_EMBEDDINGS}. "
                             f"Received: position_embedding={position_embedding!r}")
        if position_embedding == "sincos" and hidden_size % 4:
            raise ValueError("The sin-cos position embedding needs hidden_size divisible by 4. "
                             f"Received: hidden_size={hidden_size!r}")

        # === Config ===
        self.patch_size = patch_size
        self.hidden_size = hidden_size
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.output_channels = output_channels
        self.num_classes = num_classes
        self.position_embedding = position_embedding

        # === Layers ===
        policy = self.dtype_policy
        self.patch_embedding = keras.layers.Conv2D(
            hidden_size, patch_size, strides=patch_size, dtype=policy, name="patch_embedding"
        )
        self.time_embedding = TimestepEmbedding(
            hidden_size, hidden_size, 1, activation="silu", num_classes=num_classes, dtype=policy,
            name="time_embedding",
        )
        self.blocks = [
            DiTBlock(hidden_size, num_heads, mlp_ratio, dtype=policy, name=f"block_{i}") for i in range(depth)
        ]
        self.final_norm = _layer_norm(policy, "final_norm")
        self.final_modulation = keras.layers.Dense(
            2 * hidden_size, kernel_initializer="zeros", dtype=policy, name="final_modulation"
        )
        self.final_linear = keras.layers.Dense(
            patch_size * patch_size * output_channels, kernel_initializer="zeros", dtype=policy, name="final_linear"
        )
        # The learned position table: a weight of shape [(H/p)·(W/p), hidden_size], made in build.
        self.position_table = None

    def build(self, x_shape, t_shape=None, labels_shape=None):
        x_shape = tuple(x_shape)
        p = self.patch_size
        if len(x_shape) != 4 or x_shape[1] is None or x_shape[2] is None or x_shape[1] % p or x_shape[2] % p:
            raise ValueError(
                f"DiT(patch_size={p}) needs x of shape [N, H, W, C] with static H and W divisible by {p}. "
                f"Received: x_shape={x_shape}"
            )
        batch = x_shape[0]
        num_tokens = (x_shape[1] // p) * (x_shape[2] // p)
        self.patch_embedding.build(x_shape)
        self.time_embedding.build((batch,))
        if self.position_embedding == "learned":
            self.position_table = self.add_weight(
                shape=(num_tokens, self.hidden_size),
                initializer=keras.initializers.RandomNormal(stddev=0.02),
                name="position_table",
            )
        tokens_shape = (batch, num_tokens, self.hidden_size)
        c_shape = (batch, self.hidden_size)
        for block in self.blocks:
            block.build(tokens_shape, c_shape)
        self.final_norm.build(tokens_shape)
        self.final_modulation.build(c_shape)
        self.final_linear.build(tokens_shape)
        self.built = True

    def _positions(self, grid_h, grid_w):
        if self.position_embedding == "learned":
            return ops.cast(self.position_table, self.compute_dtype)
        table = sincos_position_embedding_2d(self.hidden_size, grid_h, grid_w)
        return ops.convert_to_tensor(table, dtype=self.compute_dtype)

    def call(self, x, t, labels=None):
        p, channels = self.patch_size, self.output_channels
        grid_h, grid_w = x.shape[1] // p, x.shape[2] // p
        h = ops.reshape(self.patch_embedding(x), (-1, grid_h * grid_w, self.hidden_size))
        h = h + self._positions(grid_h, grid_w)[None]
        c = self.time_embedding(t, labels)
        for block in self.blocks:
            h = block(h, c)
        shift, scale = ops.split(self.final_modulation(ops.silu(c)), 2, axis=-1)
        h = self.final_linear(modulate(self.final_norm(h), shift, scale))  # [N, h·w, p·p·C]
        h = ops.reshape(h, (-1, grid_h, grid_w, p, p, channels))
        h = ops.transpose(h, (0, 1, 3, 2, 4, 5))  # [N, h, p, w, p, C]
        return ops.reshape(h, (-1, grid_h * p, grid_w * p, channels))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "patch_size": self.patch_size,
                "hidden_size": self.hidden_size,
                "depth": self.depth,
                "num_heads": self.num_heads,
                "mlp_ratio": self.mlp_ratio,
                "output_channels": self.output_channels,
                "num_classes": self.num_classes,
                "position_embedding": self.position_embedding,
            }
        )
        return config
