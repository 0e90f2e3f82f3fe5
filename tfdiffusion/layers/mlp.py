"""A small MLP noise predictor for 1-D and 2-D toy data."""

import keras
from keras import ops

from tfdiffusion.layers.embedding import TimestepEmbedding
from tfdiffusion.layers.utils import check_positive_int


@keras.saving.register_keras_serializable(package="tfdiffusion")
class MLPDenoiser(keras.Model):
    """ε_θ(x_t, t) for vectors: h ← SiLU(W_i h + U_i e(t)) for each hidden layer.

    The timestep enters every hidden layer through its sinusoidal embedding e(t), not a
    one-hot code, so the same network works for any T.

    Args:
      data_dim: size D of the data vectors (1 for the 1-D mixture, 2 for two moons).
      hidden_units: width of each hidden layer.
      num_hidden_layers: number of hidden layers.
      time_embedding_dim: size of the time embedding.
      num_classes: classes for a class-conditional model, or None.

    Call arguments:
      x: float tensor [N, data_dim].
      t: integer tensor [N].
      labels: optional integer tensor [N] in [0, num_classes].

    Returns:
      float tensor [N, data_dim].

    Example:
      >>> MLPDenoiser(2)(keras.ops.zeros((8, 2)), keras.ops.zeros((8,), "int32"))

    References:
      The two-moons guide's `NoisePredictor`; the textbook's 1-D toy.
    """

    def __init__(
        self, data_dim, hidden_units=128, num_hidden_layers=3, time_embedding_dim=32, num_classes=None, **kwargs
    ):
        super().__init__(**kwargs)
        check_positive_int("data_dim", data_dim)
        check_positive_int("hidden_units", hidden_units)
        check_positive_int("num_hidden_layers", num_hidden_layers)

        # === Config ===
        self.data_dim = data_dim
        self.hidden_units = hidden_units
        self.num_hidden_layers = num_hidden_layers
        self.time_embedding_dim = time_embedding_dim
        self.num_classes = num_classes

        # === Layers ===
        policy = self.dtype_policy
        self.time_embedding = TimestepEmbedding(
            time_embedding_dim, 4 * time_embedding_dim, 1, activation="silu", num_classes=num_classes,
            dtype=policy, name="time_embedding",
        )
        self.hidden_layers = [
            keras.layers.Dense(hidden_units, dtype=policy, name=f"hidden_{i}") for i in range(num_hidden_layers)
        ]
        self.time_projections = [
            keras.layers.Dense(hidden_units, dtype=policy, name=f"time_projection_{i}")
            for i in range(num_hidden_layers)
        ]
        self.output_layer = keras.layers.Dense(data_dim, dtype=policy, name="output")

    def build(self, x_shape, t_shape=None, labels_shape=None):
        if x_shape[-1] != self.data_dim:
            raise ValueError(f"MLPDenoiser(data_dim={self.data_dim}) needs x of shape [N, {self.data_dim}]. "
                             f"Received: x_shape={tuple(x_shape)}")
        batch = x_shape[0]
        self.time_embedding.build((batch,))
        features = self.data_dim
        for layer, projection in zip(self.hidden_layers, self.time_projections):
            layer.build((batch, features))
            projection.build((batch, self.time_embedding_dim))
            features = self.hidden_units
        self.output_layer.build((batch, features))
        self.built = True

    def call(self, x, t, labels=None):
        time = self.time_embedding(t, labels)
        h = x
        for layer, projection in zip(self.hidden_layers, self.time_projections):
            h = ops.silu(layer(h) + projection(time))
        return self.output_layer(h)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "data_dim": self.data_dim,
                "hidden_units": self.hidden_units,
                "num_hidden_layers": self.num_hidden_layers,
                "time_embedding_dim": self.time_embedding_dim,
                "num_classes": self.num_classes,
            }
        )
        return config
