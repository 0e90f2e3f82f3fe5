"""The DDPM / improved-DDPM U-Net: residual blocks with FiLM time conditioning and self-attention."""

import keras
from keras import ops

from tfdiffusion.layers.embedding import TimestepEmbedding


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer. Received: {name}={value!r}")


def _check_groups(num_groups, channels, where):
    if channels % num_groups:
        raise ValueError(
            f"num_groups must divide the {channels} channels of {where}. Received: num_groups={num_groups!r}"
        )


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
        _check_positive_int("filters", filters)
        _check_positive_int("num_groups", num_groups)
        _check_groups(num_groups, filters, f"ResidualBlock(filters={filters})")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1). Received: dropout={dropout!r}")
        self.filters = filters
        self.num_groups = num_groups
        self.dropout = dropout
        policy = self.dtype_policy
        self.norm1 = keras.layers.GroupNormalization(num_groups, epsilon=1e-5, dtype=policy, name="norm1")
        self.conv1 = keras.layers.Conv2D(filters, 3, padding="same", dtype=policy, name="conv1")
        self.film = keras.layers.Dense(2 * filters, dtype=policy, name="film")
        self.norm2 = keras.layers.GroupNormalization(num_groups, epsilon=1e-5, dtype=policy, name="norm2")
        self.dropout_layer = keras.layers.Dropout(dropout, dtype=policy, name="dropout")
        self.conv2 = keras.layers.Conv2D(
            filters, 3, padding="same", kernel_initializer="zeros", dtype=policy, name="conv2"
        )
        self.skip = None  # a 1×1 convolution, created in build when the channels change

    def build(self, x_shape, embedding_shape):
        in_channels = x_shape[-1]
        _check_groups(self.num_groups, in_channels, f"the input of {self.name} (x_shape={tuple(x_shape)})")
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
        h = self.norm2(h) * (1.0 + scale[:, None, None, :]) + shift[:, None, None, :]
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
        _check_positive_int("channels", channels)
        _check_positive_int("num_heads", num_heads)
        _check_positive_int("num_groups", num_groups)
        if channels % num_heads:
            raise ValueError(f"num_heads must divide the {channels} channels of an attention block. "
                             f"Received: num_heads={num_heads!r}")
        _check_groups(num_groups, channels, f"AttentionBlock(channels={channels})")
        self.channels = channels
        self.num_heads = num_heads
        self.num_groups = num_groups
        policy = self.dtype_policy
        self.norm = keras.layers.GroupNormalization(num_groups, epsilon=1e-5, dtype=policy, name="norm")
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


@keras.saving.register_keras_serializable(package="tfdiffusion")
class UNet(keras.Model):
    """The DDPM U-Net (Ho et al. 2020) with scale-shift norm, channels-last.

    conv3×3 → `base_channels`; then for each level i (resolution H/2^i) `num_res_blocks`
    ResidualBlocks of width base_channels·channel_mult[i], each followed by an
    AttentionBlock when the level's spatial size is in `attention_resolutions`, and a
    3×3 stride-2 convolution to the next level; a middle ResidualBlock → AttentionBlock →
    ResidualBlock; then the levels back up, each with num_res_blocks + 1 ResidualBlocks
    whose input is concatenated with the matching down-path activation, and a nearest
    2× up-sampling + conv3×3 between levels; GroupNorm → SiLU → conv3×3 →
    `output_channels`. The timestep goes through sinusoidal features of size
    `time_embedding_dim` and an MLP (one SiLU hidden layer); with `num_classes` a class
    embedding (row `num_classes` = null) is added; the result conditions every block.

    The last convolution of every ResidualBlock and the output convolution are
    zero-initialised (as in the DDPM and improved-DDPM code), so a new network outputs 0 and
    each block starts as its skip connection; the first step trains only the output
    convolution, after which every layer receives gradients.

    Args:
      base_channels: width of the first level.
      channel_mult: width multiplier of each level, top to bottom; its length is the number
        of levels, so H and W must be divisible by 2^(len(channel_mult) − 1).
      num_res_blocks: ResidualBlocks per level on the way down (one more on the way up).
      attention_resolutions: spatial sizes (height of the feature map, e.g. (7,) on
        28×28 inputs with three levels, (16,) or (8,) on 32×32) at which self-attention
        follows each ResidualBlock. The attention layers are created in `build`, when the
        input size is known.
      dropout: dropout rate in the ResidualBlocks.
      num_groups: GroupNorm groups; must divide base_channels·m for every m in channel_mult.
      num_heads: attention heads; must divide the width of every level with attention.
      time_embedding_dim: size of the time embedding (default 4·base_channels).
      output_channels: channels of the prediction; equal to the input's for ε, x_0 or v.
      num_classes: number of classes for a class-conditional network, or None.

    Call arguments:
      x: float tensor [N, H, W, C].
      t: integer tensor [N], 0-based timesteps.
      labels: optional integer tensor [N] in [0, num_classes] (num_classes = null).
      training: whether dropout is active.

    Returns:
      float tensor [N, H, W, output_channels].

    Example:
      >>> net = UNet(base_channels=32, channel_mult=(1, 2, 2), attention_resolutions=(7,))
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
        attention_resolutions=(7,),
        dropout=0.0,
        num_groups=8,
        num_heads=4,
        time_embedding_dim=None,
        output_channels=1,
        num_classes=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_positive_int("base_channels", base_channels)
        channel_mult = tuple(channel_mult)
        if not channel_mult or not all(isinstance(m, int) and not isinstance(m, bool) and m > 0 for m in channel_mult):
            raise ValueError(f"channel_mult must hold positive integers. Received: channel_mult={channel_mult!r}")
        _check_positive_int("num_res_blocks", num_res_blocks)
        attention_resolutions = tuple(attention_resolutions)
        if not all(isinstance(r, int) and not isinstance(r, bool) and r > 0 for r in attention_resolutions):
            raise ValueError(
                "attention_resolutions must hold positive integers (spatial sizes). "
                f"Received: attention_resolutions={attention_resolutions!r}"
            )
        _check_positive_int("num_groups", num_groups)
        for m in channel_mult:
            _check_groups(num_groups, base_channels * m, f"a level of width base_channels·{m}")
        _check_positive_int("num_heads", num_heads)
        _check_positive_int("output_channels", output_channels)
        if time_embedding_dim is not None:
            _check_positive_int("time_embedding_dim", time_embedding_dim)
        self.base_channels = base_channels
        self.channel_mult = channel_mult
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = attention_resolutions
        self.dropout = dropout
        self.num_groups = num_groups
        self.num_heads = num_heads
        self.time_embedding_dim = time_embedding_dim
        self.output_channels = output_channels
        self.num_classes = num_classes
        policy = self.dtype_policy
        embed_dim = self.embedding_dim
        self.time_embedding = TimestepEmbedding(
            embed_dim, embed_dim, 1, activation="silu", num_classes=num_classes, dtype=policy, name="time_embedding"
        )
        self.input_conv = keras.layers.Conv2D(base_channels, 3, padding="same", dtype=policy, name="input_conv")

        def block(filters, name):
            return ResidualBlock(filters, num_groups, dropout, dtype=policy, name=name)

        levels = len(channel_mult)
        self.down_blocks = [
            [block(base_channels * m, f"down_{i}_block_{j}") for j in range(num_res_blocks)]
            for i, m in enumerate(channel_mult)
        ]
        self.down_samplers = [
            keras.layers.Conv2D(base_channels * m, 3, strides=2, padding="same", dtype=policy, name=f"down_sample_{i}")
            for i, m in enumerate(channel_mult[:-1])
        ]
        width = base_channels * channel_mult[-1]
        self.middle_block1 = block(width, "middle_block_1")
        self.middle_attention = AttentionBlock(width, num_heads, num_groups, dtype=policy, name="middle_attention")
        self.middle_block2 = block(width, "middle_block_2")
        self.up_blocks = [
            [block(base_channels * channel_mult[i], f"up_{i}_block_{j}") for j in range(num_res_blocks + 1)]
            for i in reversed(range(levels))
        ]
        self.up_sample_layers = [
            keras.layers.UpSampling2D(2, interpolation="nearest", dtype=policy, name=f"up_sample_{i}")
            for i in reversed(range(1, levels))
        ]
        self.up_convs = [
            keras.layers.Conv2D(base_channels * channel_mult[i], 3, padding="same", dtype=policy, name=f"up_conv_{i}")
            for i in reversed(range(1, levels))
        ]
        self.output_norm = keras.layers.GroupNormalization(num_groups, epsilon=1e-5, dtype=policy, name="output_norm")
        self.output_conv = keras.layers.Conv2D(
            output_channels, 3, padding="same", kernel_initializer="zeros", dtype=policy, name="output_conv"
        )
        # Attention after block j of level i, keyed "down_i_j" / "up_i_j"; filled in build.
        self.attention_blocks = {}

    @property
    def embedding_dim(self):
        return self.time_embedding_dim or 4 * self.base_channels

    @property
    def downsampling_factor(self):
        return 2 ** (len(self.channel_mult) - 1)

    def _attention(self, key, shape):
        """Creates and builds the AttentionBlock at `key` if this resolution has attention."""
        if shape[1] not in self.attention_resolutions:
            return
        layer = AttentionBlock(
            shape[-1], self.num_heads, self.num_groups, dtype=self.dtype_policy, name=f"{key}_attention"
        )
        layer.build(shape)
        self.attention_blocks[key] = layer

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
        self.time_embedding.build((batch,), None if labels_shape is None else (batch,))
        embed_shape = (batch, self.embedding_dim)
        self.input_conv.build(x_shape)
        shape = (batch, height, width, self.base_channels)
        skip_shapes = [shape]
        for i, blocks in enumerate(self.down_blocks):
            for j, block in enumerate(blocks):
                block.build(shape, embed_shape)
                shape = block.compute_output_shape(shape, embed_shape)
                self._attention(f"down_{i}_{j}", shape)
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
                self._attention(f"up_{i}_{j}", shape)
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
                "attention_resolutions": list(self.attention_resolutions),
                "dropout": self.dropout,
                "num_groups": self.num_groups,
                "num_heads": self.num_heads,
                "time_embedding_dim": self.time_embedding_dim,
                "output_channels": self.output_channels,
                "num_classes": self.num_classes,
            }
        )
        return config
