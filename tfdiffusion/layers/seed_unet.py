"""The JAX tutorial's small U-Net, channels-last."""

import keras
from keras import ops

from tfdiffusion.layers.embedding import TimestepEmbedding
from tfdiffusion.layers.utils import check_positive_int, check_positive_ints


@keras.saving.register_keras_serializable(package="tfdiffusion")
class ConvBlock(keras.layers.Layer):
    """conv3×3 → SiLU → + SiLU(Dense(time)) → conv3×3 → SiLU.

    Args:
      filters: output channels of both convolutions.
      kernel_size: convolution window (the tutorial uses 3, "same" padding).

    Call arguments:
      x: float tensor [N, H, W, C_in].
      time_embedding: float tensor [N, D].

    Returns:
      float tensor [N, H, W, filters].

    Example:
      >>> block = ConvBlock(64)
      >>> y = block(keras.ops.zeros((2, 28, 28, 32)), keras.ops.zeros((2, 64)))

    References:
      The JAX/Equinox DDPM tutorial's `ConvBlock`.
    """

    def __init__(self, filters, kernel_size=3, **kwargs):
        super().__init__(**kwargs)
        check_positive_int("filters", filters)

        # === Config ===
        self.filters = filters
        self.kernel_size = kernel_size

        # === Layers ===
        policy = self.dtype_policy
        self.conv1 = keras.layers.Conv2D(filters, kernel_size, padding="same", dtype=policy, name="conv1")
        self.time_dense = keras.layers.Dense(filters, dtype=policy, name="time_dense")
        self.conv2 = keras.layers.Conv2D(filters, kernel_size, padding="same", dtype=policy, name="conv2")

    def build(self, x_shape, time_embedding_shape):
        self.conv1.build(x_shape)
        self.time_dense.build(time_embedding_shape)
        self.conv2.build(tuple(x_shape[:-1]) + (self.filters,))
        self.built = True

    def call(self, x, time_embedding):
        h = ops.silu(self.conv1(x))
        h = h + ops.silu(self.time_dense(time_embedding))[:, None, None, :]
        return ops.silu(self.conv2(h))

    def compute_output_shape(self, x_shape, time_embedding_shape):
        return tuple(x_shape[:-1]) + (self.filters,)

    def get_config(self):
        config = super().get_config()
        config.update({"filters": self.filters, "kernel_size": self.kernel_size})
        return config


@keras.saving.register_keras_serializable(package="tfdiffusion")
class SeedUNet(keras.Model):
    """The JAX tutorial's U-Net, 2,020,353 parameters on 28×28×1 with the defaults.

    initial conv 1→32; ConvBlock 32→64, max-pool, ConvBlock 64→128, max-pool; bottleneck
    ConvBlock 128→256; ConvTranspose 256→128 (2×2, stride 2), concat skip, ConvBlock
    256→128; ConvTranspose 128→64, concat skip, ConvBlock 128→64; 1×1 conv → C channels.
    The time embedding (sinusoidal, size 64) goes through an MLP (width 256, depth 2)
    and feeds every ConvBlock. `channels` generalises the depth: one ConvBlock and one
    2× down-sampling per entry but the last, which is the bottleneck.

    Args:
      channels: ConvBlock widths from the top resolution down to the bottleneck.
      initial_channels: output width of the first 3×3 convolution.
      time_embedding_dim: size of the sinusoidal time features and of the MLP output.
      time_mlp_width: hidden width of the time MLP (default 4 × time_embedding_dim).
      time_mlp_depth: hidden layers of the time MLP.
      output_channels: channels of the prediction; equal to the input's for ε, x_0 or v.
      num_classes: number of classes for a class-conditional network (a class embedding
        with an extra "null" row is added to the time embedding), or None.

    Call arguments:
      x: float tensor [N, H, W, C]; H and W divisible by 2^(len(channels) − 1).
      t: integer tensor [N], 0-based timesteps.
      labels: optional integer tensor [N] in [0, num_classes] (num_classes = null).

    Returns:
      float tensor [N, H, W, output_channels].

    Example:
      >>> net = SeedUNet()
      >>> eps = net(keras.ops.zeros((2, 28, 28, 1)), keras.ops.array([0, 399]))
      >>> net.count_params()
      2020353

    References:
      Ronneberger et al. 2015 (U-Net); Ho et al. 2020; the JAX/Equinox DDPM tutorial.
    """

    def __init__(
        self,
        channels=(64, 128, 256),
        initial_channels=32,
        time_embedding_dim=64,
        time_mlp_width=256,
        time_mlp_depth=2,
        output_channels=1,
        num_classes=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        channels = check_positive_ints("channels", channels, min_length=2)
        check_positive_int("initial_channels", initial_channels)
        check_positive_int("output_channels", output_channels)

        # === Config ===
        self.channels = channels
        self.initial_channels = initial_channels
        self.time_embedding_dim = time_embedding_dim
        self.time_mlp_width = time_mlp_width
        self.time_mlp_depth = time_mlp_depth
        self.output_channels = output_channels
        self.num_classes = num_classes

        # === Layers ===
        policy = self.dtype_policy
        self.time_embedding = TimestepEmbedding(
            time_embedding_dim, time_mlp_width, time_mlp_depth, num_classes=num_classes, dtype=policy,
            name="time_embedding",
        )
        self.initial_conv = keras.layers.Conv2D(initial_channels, 3, padding="same", dtype=policy, name="initial_conv")
        self.down_blocks = [ConvBlock(c, dtype=policy, name=f"down_{i}") for i, c in enumerate(channels[:-1])]
        self.pool = keras.layers.MaxPooling2D(2, dtype=policy, name="pool")
        self.bottleneck = ConvBlock(channels[-1], dtype=policy, name="bottleneck")
        skip_channels = channels[-2::-1]
        self.up_samplers = [
            keras.layers.Conv2DTranspose(c, 2, strides=2, dtype=policy, name=f"up_sample_{i}")
            for i, c in enumerate(skip_channels)
        ]
        self.up_blocks = [ConvBlock(c, dtype=policy, name=f"up_{i}") for i, c in enumerate(skip_channels)]
        self.final_conv = keras.layers.Conv2D(output_channels, 1, dtype=policy, name="final_conv")

    @property
    def downsampling_factor(self):
        return 2 ** (len(self.channels) - 1)

    def build(self, x_shape, t_shape=None, labels_shape=None):
        batch, height, width, _ = x_shape
        factor = self.downsampling_factor
        if (height is not None and height % factor) or (width is not None and width % factor):
            raise ValueError(
                f"SeedUNet with {len(self.channels) - 1} down-samplings needs H and W divisible by {factor}. "
                f"Received: x_shape={tuple(x_shape)}"
            )
        self.time_embedding.build((batch,))
        embed_shape = (batch, self.time_embedding_dim)
        self.initial_conv.build(x_shape)
        shape = (batch, height, width, self.initial_channels)
        skip_shapes = []
        for block in self.down_blocks:
            block.build(shape, embed_shape)
            shape = block.compute_output_shape(shape, embed_shape)
            skip_shapes.append(shape)
            shape = self.pool.compute_output_shape(shape)
        self.bottleneck.build(shape, embed_shape)
        shape = self.bottleneck.compute_output_shape(shape, embed_shape)
        for up_sampler, block, skip_shape in zip(self.up_samplers, self.up_blocks, reversed(skip_shapes)):
            up_sampler.build(shape)
            shape = up_sampler.compute_output_shape(shape)
            shape = tuple(shape[:-1]) + (shape[-1] + skip_shape[-1],)
            block.build(shape, embed_shape)
            shape = block.compute_output_shape(shape, embed_shape)
        self.final_conv.build(shape)
        self.built = True

    def call(self, x, t, labels=None):
        time = self.time_embedding(t, labels)
        h = self.initial_conv(x)
        skips = []
        for block in self.down_blocks:
            h = block(h, time)
            skips.append(h)
            h = self.pool(h)
        h = self.bottleneck(h, time)
        for up_sampler, block, skip in zip(self.up_samplers, self.up_blocks, reversed(skips)):
            h = ops.concatenate([up_sampler(h), skip], axis=-1)
            h = block(h, time)
        return self.final_conv(h)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "channels": list(self.channels),
                "initial_channels": self.initial_channels,
                "time_embedding_dim": self.time_embedding_dim,
                "time_mlp_width": self.time_mlp_width,
                "time_mlp_depth": self.time_mlp_depth,
                "output_channels": self.output_channels,
                "num_classes": self.num_classes,
            }
        )
        return config
