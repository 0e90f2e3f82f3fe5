"""Adam whose weight EMA warms up, so that short runs sample from trained weights."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="tfdiffusion")
class AdamEMAWarmup(keras.optimizers.Adam):
    """`keras.optimizers.Adam` with the EMA momentum min(ema_momentum, (1 + n)/(10 + n)) at update n.

    Keras' EMA uses a fixed momentum from the first step: with 0.999, the average after
    1,000 steps still holds 37% of the random initial weights and samples are noise. The
    warm-up of `tf.train.ExponentialMovingAverage(num_updates=n)` lets the average follow
    the weights early and reach `ema_momentum` after about 10/(1 − ema_momentum) steps.

    Args:
      **kwargs: those of `keras.optimizers.Adam` (`use_ema`, `ema_momentum`, …).

    Example:
      >>> optimizer = AdamEMAWarmup(1e-4, use_ema=True, ema_momentum=0.9999)

    References:
      Ho et al. 2020, Appendix B (EMA 0.9999); TensorFlow's ExponentialMovingAverage.
    """

    def _update_model_variables_moving_average(self, trainable_variables):
        if not self.use_ema:
            return
        n = ops.cast(self.iterations, "float32")
        # The first update (n = 0) copies the weights, as Keras' own EMA does.
        momentum = ops.where(n > 0, ops.minimum(self.ema_momentum, (1.0 + n) / (10.0 + n)), 0.0)
        for variable, average in zip(trainable_variables, self._model_variables_moving_average):
            if average is not None:
                m = ops.cast(momentum, variable.dtype)
                average.assign(m * average + (1.0 - m) * variable)
