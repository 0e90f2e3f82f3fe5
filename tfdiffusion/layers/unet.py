"""The DDPM / improved-DDPM U-Net: residual blocks with FiLM time conditioning and self-attention."""

import warnings

import keras
from keras import ops

from tfdiffusion.layers.embedding import TimestepEmbedding
from tfdiffusion.layers.utils import check_divides, check_positive_int, check_positive_ints, modulate


def _group_norm(num_groups, dtype, name):
    return keras.layers.GroupNormalization(num_groups, epsilon=1e-5, dtype=dtype, name=name)


@keras.saving.register_keras_serializable(package="tfdiffusion")
class ResidualBlock(keras.layers.Layer):
    """GroupNorm → SiLU → conv3×3 → FiLM(embedding) → SiLU → dropout → conv3×3, plus a skip.

    The embedding goes through SiLU → Dense(2·filters), split into (scale, shift), and
    modulates the normalised features: h = GroupNorm(h)·(1 + scale) + shift. The skip is
    the identity when the channels match and a 1×1 convolution otherwise (created in
    `build`, where the input channels are known). The second 3×3 convolution is
    zero-initialised, so a new block is the identity map (or the 1×1 skip).

    Args:
      filters: output channels.
      num_groups: groups of both GroupNorms; must divide the input channels and `filters`.
      dropout: dropout rate before the second convolution.

    Call arguments:
      x: float tensor [N, H, W, C_in].
      embedding: float tensor [N, D], the time (+ class) embedding.
      training: whether dropout is active.

    Returns:
      float tensor [N, H, W, filters].

    Example:
      >>> block = ResidualBlock(64, num_groups=8)
      >>> y = block(keras.ops.zeros((2, 16, 16, 32)), keras.ops.zeros((2, 128)))  # (2, 16, 16, 64)

    References:
      He et al. 2016 (residual blocks); Ho et al. 2020, Appendix B; Nichol & Dhariwal 2021,
      §3 (scale-shift norm); Perez et al. 2018 (FiLM); Wu & He 2018 (GroupNorm).
    """

    def __init__(self, filters, num_groups=32, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        check_positive_int("filters", filters)
        check_positive_int("num_groups", num_groups)
        check_divides("num_groups", num_groups, filters, f"the {filters} channels of ResidualBlock(filters={filters})")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1). Received: dropout={dropout!r}")

        # === Config ===
        self.filters = filters
        self.num_groups = num_groups
        self.dropout = dropout

        # === Layers ===
        policy = self.dtype_policy
        self.norm1 = _group_norm(num_groups, policy, "norm1")
        self.conv1 = keras.layers.Conv2D(filters, 3, padding="same", dtype=policy, name="conv1")
        self.film = keras.layers.Dense(2 * filters, dtype=policy, name="film")
        self.norm2 = _group_norm(num_groups, policy, "norm2")
        self.dropout_layer = keras.layers.Dropout(dropout, dtype=policy, name="dropout")
        self.conv2 = keras.layers.Conv2D(
            filters, 3, padding="same", kernel_initializer="zeros", dtype=policy, name="conv2"
        )
        # A 1×1 convolution when the input channels differ from `filters`: created in build, where
        # they are known (the UNet's own architecture does not depend on its input's shape).
        self.skip = None

    def build(self, x_shape, embedding_shape):
        in_channels = x_shape[-1]
        check_divides("num_groups", self.num_groups, in_channels,
                      f"the {in_channels} channels of the input of {self.name} (x_shape={tuple(x_shape)})")
        out_shape = tuple(x_shape[:-1]) + (self.filters,)
        self.norm1.build(x_shape)
        self.conv1.build(x_shape)
        self.film.build(embedding_shape)
        self.norm2.build(out_shape)
        self.dropout_layer.build(out_shape)
        self.conv2.build(out_shape)
        if in_channels != self.filters:
            self.skip = keras.layers.Conv2D(self.filters, 1, dtype=self.dtype_policy, name="skip")
            self.skip.build(x_shape)
        self.built = True

    def call(self, x, embedding, training=None):
        h = self.conv1(ops.silu(self.norm1(x)))
        scale, shift = ops.split(self.film(ops.silu(embedding)), 2, axis=-1)
        h = modulate(self.norm2(h), shift, scale)
        h = self.conv2(self.dropout_layer(ops.silu(h), training=training))
        return h + (x if self.skip is None else self.skip(x))

    def compute_output_shape(self, x_shape, embedding_shape):
        return tuple(x_shape[:-1]) + (self.filters,)

    def get_config(self):
        config = super().get_config()
        config.update({"filters": self.filters, "num_groups": self.num_groups, "dropout": self.dropout})
        return config


@keras.saving.register_keras_serializable(package="tfdiffusion")
class AttentionBlock(keras.layers.Layer):
    """x + MultiHeadAttention(GroupNorm(x)) with the H·W positions as tokens.

    Args:
      channels: channels C of the input (and output).
      num_heads: attention heads; must divide `channels` (each head has C / num_heads dims).
      num_groups: groups of the GroupNorm; must divide `channels`.

    Call arguments:
      x: float tensor [N, H, W, channels] with static H and W.

    Returns:
      float tensor [N, H, W, channels].

    Example:
      >>> AttentionBlock(64, num_heads=4, num_groups=8)(keras.ops.zeros((2, 7, 7, 64)))  # (2, 7, 7, 64)

    References:
      Vaswani et al. 2017; Wang et al. 2018 (non-local blocks); Ho et al. 2020, Appendix B.
    """

    def __init__(self, channels, num_heads=4, num_groups=32, **kwargs):
        super().__init__(**kwargs)
        check_positive_int("channels", channels)
        check_positive_int("num_heads", num_heads)
        check_positive_int("num_groups", num_groups)
        where = f"the {channels} channels of AttentionBlock(channels={channels})"
        check_divides("num_heads", num_heads, channels, where)
        check_divides("num_groups", num_groups, channels, where)

        # === Config ===
        self.channels = channels
        self.num_heads = num_heads
        self.num_groups = num_groups

        # === Layers ===
        policy = self.dtype_policy
        self.norm = _group_norm(num_groups, policy, "norm")
        self.attention = keras.layers.MultiHeadAttention(
            num_heads, channels // num_heads, dtype=policy, name="attention"
        )

    def build(self, x_shape):
        x_shape = tuple(x_shape)
        if len(x_shape) != 4 or x_shape[-1] != self.channels or x_shape[1] is None or x_shape[2] is None:
            raise ValueError(f"AttentionBlock(channels={self.channels}) needs x of shape [N, H, W, {self.channels}] "
                             f"with static H and W. Received: x_shape={x_shape}")
        self.norm.build(x_shape)
        tokens = (x_shape[0], x_shape[1] * x_shape[2], self.channels)
        self.attention.build(tokens, tokens)
        self.built = True

    def call(self, x):
        _, height, width, channels = x.shape
        h = ops.reshape(self.norm(x), (-1, height * width, channels))
        h = self.attention(h, h)
        return x + ops.reshape(h, (-1, height, width, channels))

    def compute_output_shape(self, x_shape):
        return tuple(x_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"channels": self.channels, "num_heads": self.num_heads, "num_groups": self.num_groups})
        return config


_DEFAULT_ATTENTION_LEVELS = (2,)


def _check_attention_levels(attention_levels, attention_resolutions, num_levels):
    """The attention levels as a tuple, or None with the deprecated `attention_resolutions` (found in build)."""
    if attention_resolutions is not None:
        warnings.warn(
            "UNet(attention_resolutions=...) is deprecated: pass attention_levels, the level indices "
            "(e.g. (2,) for attention at 7×7 on 28×28 with channel_mult=(1, 2, 2)).",
            DeprecationWarning,
            stacklevel=4,
        )
        if tuple(attention_levels) != _DEFAULT_ATTENTION_LEVELS:
            raise ValueError("Pass attention_levels or the deprecated attention_resolutions, not both. Received: "
                             f"attention_levels={attention_levels!r}, attention_resolutions={attention_resolutions!r}")
        check_positive_ints("attention_resolutions", attention_resolutions, min_length=0)
        return None
    attention_levels = tuple(attention_levels)
    if len(set(attention_levels)) < len(attention_levels) or not all(
        isinstance(i, int) and not isinstance(i, bool) and 0 <= i < num_levels for i in attention_levels
    ):
        raise ValueError(f"attention_levels must hold distinct level indices in [0, {num_levels}) "
                         f"(len(channel_mult)={num_levels}). Received: attention_levels={attention_levels!r}")
    return attention_levels


@keras.saving.register_keras_serializable(package="tfdiffusion")
class UNet(keras.Model):
    """The DDPM U-Net (Ho et al. 2020) with scale-shift norm, channels-last.

    conv3×3 → `base_channels`; then for each level i (resolution H/2^i) `num_res_blocks`
    ResidualBlocks of width base_channels·channel_mult[i], each followed by an
    AttentionBlock when i is in `attention_levels`, and a 3×3 stride-2 convolution to the
    next level; a middle ResidualBlock → AttentionBlock → ResidualBlock; then the levels
    back up, each with num_res_blocks + 1 ResidualBlocks (followed by attention on the same
    levels) whose input is concatenated with the matching down-path activation, and a
    nearest 2× up-sampling + conv3×3 between levels; GroupNorm → SiLU → conv3×3 →
    `output_channels`. The timestep goes through sinusoidal features of size
    `time_embedding_dim` and an MLP (one SiLU hidden layer); with `num_classes` a class
    embedding (row `num_classes` = null) is added; the result conditions every block.

    Every layer is created in `__init__`: the architecture depends on the arguments only,
    and `build` only creates the weights for the input's shape.

    The last convolution of every ResidualBlock and the output convolution are
    zero-initialised (as in the DDPM and improved-DDPM code), so a new network outputs 0 and
    each block starts as its skip connection; the first step trains only the output
    convolution, after which every layer receives gradients.

    Args:
      base_channels: width of the first level.
      channel_mult: width multiplier of each level, top to bottom; its length is the number
        of levels, so H and W must be divisible by 2^(len(channel_mult) − 1).
      num_res_blocks: ResidualBlocks per level on the way down (one more on the way up).
      attention_levels: indices into `channel_mult` (0 = the full resolution) of the levels
        at which self-attention follows each ResidualBlock: (2,) for attention at 7×7 on
        28×28 inputs with three levels, (1,) for 16×16 on 32×32. The middle always has
        attention.
      dropout: dropout rate in the ResidualBlocks.
      num_groups: GroupNorm groups; must divide base_channels·m for every m in channel_mult.
      num_heads: attention heads; must divide the width of the middle and of every level with
        attention.
      time_embedding_dim: size of the time embedding (default 4·base_channels).
      output_channels: channels of the prediction; equal to the input's for ε, x_0 or v.
      num_classes: number of classes for a class-conditional network, or None.
      **kwargs: arguments of `keras.Model` (`name`, `dtype`, ...). Deprecated:
        `attention_resolutions`, the spatial sizes with attention (e.g. (7,)); it replaces
        `attention_levels`, which are then found from the input height when the network is
        built. Configs written before `attention_levels` load through it.

    Call arguments:
      x: float tensor [N, H, W, C] with static H and W.
      t: integer tensor [N], 0-based timesteps.
      labels: optional integer tensor [N] in [0, num_classes] (num_classes = null).
      training: whether dropout is active.

    Returns:
      float tensor [N, H, W, output_channels].

    Example:
      >>> net = UNet(base_channels=32, channel_mult=(1, 2, 2), attention_levels=(2,))
      >>> eps = net(keras.ops.zeros((2, 28, 28, 1)), keras.ops.array([0, 999]))  # (2, 28, 28, 1)

    References:
      Ronneberger et al. 2015; Ho et al. 2020, Appendix B; Nichol & Dhariwal 2021;
      Dhariwal & Nichol 2021, §3.
    """

    def __init__(
        self,
        base_channels=64,
        channel_mult=(1, 2, 2),
        num_res_blocks=2,
        attention_levels=_DEFAULT_ATTENTION_LEVELS,
        dropout=0.0,
        num_groups=8,
        num_heads=4,
        time_embedding_dim=None,
        output_channels=1,
        num_classes=None,
        **kwargs,
    ):
        attention_resolutions = kwargs.pop("attention_resolutions", None)  # deprecated
        super().__init__(**kwargs)
        check_positive_int("base_channels", base_channels)
        channel_mult = check_positive_ints("channel_mult", channel_mult)
        check_positive_int("num_res_blocks", num_res_blocks)
        attention_levels = _check_attention_levels(attention_levels, attention_resolutions, len(channel_mult))
        check_positive_int("output_channels", output_channels)
        if time_embedding_dim is not None:
            check_positive_int("time_embedding_dim", time_embedding_dim)
        # dropout, num_groups and num_heads are checked by the blocks.

        # === Config ===
        self.base_channels = base_channels
        self.channel_mult = channel_mult
        self.num_res_blocks = num_res_blocks
        self.attention_levels = attention_levels  # None until build with attention_resolutions
        self.dropout = dropout
        self.num_groups = num_groups
        self.num_heads = num_heads
        self.time_embedding_dim = time_embedding_dim
        self.output_channels = output_channels
        self.num_classes = num_classes
        self._attention_resolutions = attention_resolutions

        # === Layers ===
        self._create_layers()

    @property
    def embedding_dim(self):
        return self.time_embedding_dim or 4 * self.base_channels

    @property
    def downsampling_factor(self):
        return 2 ** (len(self.channel_mult) - 1)

    def _residual_block(self, filters, name):
        return ResidualBlock(filters, self.num_groups, self.dropout, dtype=self.dtype_policy, name=name)

    def _create_layers(self):
        """Creates every sublayer from the config (with the deprecated `attention_resolutions`, the attention
        blocks wait for `build`, which knows the input height)."""
        policy = self.dtype_policy
        widths = [self.base_channels * m for m in self.channel_mult]
        self.time_embedding = TimestepEmbedding(
            self.embedding_dim, self.embedding_dim, 1, activation="silu", num_classes=self.num_classes, dtype=policy,
            name="time_embedding",
        )
        self.input_conv = keras.layers.Conv2D(self.base_channels, 3, padding="same", dtype=policy, name="input_conv")
        self.down_blocks = [
            [self._residual_block(c, f"down_{i}_block_{j}") for j in range(self.num_res_blocks)]
            for i, c in enumerate(widths)
        ]
        self.down_samplers = [
            keras.layers.Conv2D(c, 3, strides=2, padding="same", dtype=policy, name=f"down_sample_{i}")
            for i, c in enumerate(widths[:-1])
        ]
        self.middle_block1 = self._residual_block(widths[-1], "middle_block_1")
        self.middle_attention = AttentionBlock(widths[-1], self.num_heads, self.num_groups, dtype=policy,
                                               name="middle_attention")
        self.middle_block2 = self._residual_block(widths[-1], "middle_block_2")
        self.up_blocks = [
            [self._residual_block(widths[i], f"up_{i}_block_{j}") for j in range(self.num_res_blocks + 1)]
            for i in reversed(range(len(widths)))
        ]
        self.up_sample_layers = [
            keras.layers.UpSampling2D(2, interpolation="nearest", dtype=policy, name=f"up_sample_{i}")
            for i in reversed(range(1, len(widths)))
        ]
        self.up_convs = [
            keras.layers.Conv2D(widths[i], 3, padding="same", dtype=policy, name=f"up_conv_{i}")
            for i in reversed(range(1, len(widths)))
        ]
        self.output_norm = _group_norm(self.num_groups, policy, "output_norm")
        self.output_conv = keras.layers.Conv2D(
            self.output_channels, 3, padding="same", kernel_initializer="zeros", dtype=policy, name="output_conv"
        )
        # The attention after block j of level i, keyed "down_i_j" / "up_i_j", in the order of the
        # forward pass (which is also the order of their weights in a saved file).
        self.attention_blocks = {}
        if self.attention_levels is not None:
            self._create_attention_blocks()

    def _create_attention_blocks(self):
        levels = len(self.channel_mult)
        keys = [(i, f"down_{i}_{j}") for i in range(levels) for j in range(self.num_res_blocks)]
        keys += [(i, f"up_{i}_{j}") for i in reversed(range(levels)) for j in range(self.num_res_blocks + 1)]
        for i, key in keys:
            if i in self.attention_levels:
                self.attention_blocks[key] = AttentionBlock(
                    self.base_channels * self.channel_mult[i], self.num_heads, self.num_groups,
                    dtype=self.dtype_policy, name=f"{key}_attention",
                )

    def build(self, x_shape, t_shape=None, labels_shape=None):
        x_shape = tuple(x_shape)
        if len(x_shape) != 4:
            raise ValueError(f"UNet needs x of shape [N, H, W, C]. Received: x_shape={x_shape}")
        batch, height, width, _ = x_shape
        factor = self.downsampling_factor
        if height is None or width is None or height % factor or width % factor:
            raise ValueError(
                f"UNet with {len(self.channel_mult)} levels needs static H and W divisible by {factor}. "
                f"Received: x_shape={x_shape}"
            )
        if self.attention_levels is None:  # the deprecated attention_resolutions
            self.attention_levels = tuple(
                i for i in range(len(self.channel_mult)) if height // 2**i in self._attention_resolutions
            )
            self._attention_resolutions = None
            self._create_attention_blocks()
        self.time_embedding.build((batch,))
        embed_shape = (batch, self.embedding_dim)
        self.input_conv.build(x_shape)
        shape = (batch, height, width, self.base_channels)
        skip_shapes = [shape]
        for i, blocks in enumerate(self.down_blocks):
            for j, block in enumerate(blocks):
                block.build(shape, embed_shape)
                shape = block.compute_output_shape(shape, embed_shape)
                if f"down_{i}_{j}" in self.attention_blocks:
                    self.attention_blocks[f"down_{i}_{j}"].build(shape)
                skip_shapes.append(shape)
            if i < len(self.down_samplers):
                self.down_samplers[i].build(shape)
                shape = self.down_samplers[i].compute_output_shape(shape)
                skip_shapes.append(shape)
        self.middle_block1.build(shape, embed_shape)
        self.middle_attention.build(shape)
        self.middle_block2.build(shape, embed_shape)
        levels = len(self.channel_mult)
        for k, blocks in enumerate(self.up_blocks):
            i = levels - 1 - k
            for j, block in enumerate(blocks):
                skip = skip_shapes.pop()
                shape = tuple(shape[:-1]) + (shape[-1] + skip[-1],)
                block.build(shape, embed_shape)
                shape = block.compute_output_shape(shape, embed_shape)
                if f"up_{i}_{j}" in self.attention_blocks:
                    self.attention_blocks[f"up_{i}_{j}"].build(shape)
            if k < len(self.up_convs):
                self.up_sample_layers[k].build(shape)
                shape = self.up_sample_layers[k].compute_output_shape(shape)
                self.up_convs[k].build(shape)
                shape = self.up_convs[k].compute_output_shape(shape)
        self.output_norm.build(shape)
        self.output_conv.build(shape)
        self.built = True

    def call(self, x, t, labels=None, training=None):
        embedding = self.time_embedding(t, labels)
        h = self.input_conv(x)
        skips = [h]
        for i, blocks in enumerate(self.down_blocks):
            for j, block in enumerate(blocks):
                h = block(h, embedding, training=training)
                if f"down_{i}_{j}" in self.attention_blocks:
                    h = self.attention_blocks[f"down_{i}_{j}"](h)
                skips.append(h)
            if i < len(self.down_samplers):
                h = self.down_samplers[i](h)
                skips.append(h)
        h = self.middle_block1(h, embedding, training=training)
        h = self.middle_attention(h)
        h = self.middle_block2(h, embedding, training=training)
        levels = len(self.channel_mult)
        for k, blocks in enumerate(self.up_blocks):
            i = levels - 1 - k
            for j, block in enumerate(blocks):
                h = block(ops.concatenate([h, skips.pop()], axis=-1), embedding, training=training)
                if f"up_{i}_{j}" in self.attention_blocks:
                    h = self.attention_blocks[f"up_{i}_{j}"](h)
            if k < len(self.up_convs):
                h = self.up_convs[k](self.up_sample_layers[k](h))
        return self.output_conv(ops.silu(self.output_norm(h)))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "base_channels": self.base_channels,
                "channel_mult": list(self.channel_mult),
                "num_res_blocks": self.num_res_blocks,
                "dropout": self.dropout,
                "num_groups": self.num_groups,
                "num_heads": self.num_heads,
                "time_embedding_dim": self.time_embedding_dim,
                "output_channels": self.output_channels,
                "num_classes": self.num_classes,
            }
        )
        if self.attention_levels is None:  # given the deprecated attention_resolutions and not built yet
            config["attention_resolutions"] = list(self._attention_resolutions)
        else:
            config["attention_levels"] = list(self.attention_levels)
        return config
