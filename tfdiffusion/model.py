"""`DiffusionModel`: a network, the fixed process, the training objective and sampling."""

import contextlib

import keras
import numpy as np
import tensorflow as tf

from tfdiffusion import data as data_lib
from tfdiffusion import precision
from tfdiffusion import samplers
from tfdiffusion.diffusion import PREDICTION_TYPES, GaussianDiffusion

LOSS_WEIGHTINGS = ("none", "min_snr")


def distilled_timesteps(num_timesteps, num_steps):
    """int64 [N + 1]: the grid of an N-step distilled sampler, g_k = ⌊kT/N + ½⌋ − 1 for k = 0..N.

    g_0 = −1 is the data (ᾱ_{−1} = 1) and g_N = T − 1; the sampler evaluates the network at
    g_N, …, g_1 and steps to the next lower point (the "trailing" spacing, N uniform steps of the
    discrete chain). Grids nest, g_k(N) = g_{2k}(2N), so the 2N-step teacher of progressive
    distillation passes through every point of its N-step student's grid with one point between
    each two (Salimans & Ho 2022, Algorithm 2: t' = t − ½/N, t'' = t − 1/N). Distinct for N ≤ T;
    rounding half up in integers, so that ties do not round two points onto one.
    """
    k = np.arange(num_steps + 1, dtype=np.int64)
    return (2 * num_timesteps * k + num_steps) // (2 * num_steps) - 1


def _respaced_diffusion(diffusion, timesteps):
    """The process whose timestep j is `timesteps[j]` of `diffusion` (its ᾱ', ᾱ'_{−1} = 1, made into β')."""
    alpha_bar = diffusion.alphas_cumprod[timesteps]
    return GaussianDiffusion(1.0 - alpha_bar / np.append(1.0, alpha_bar[:-1]))


def _replica_id():
    context = tf.distribute.get_replica_context()
    return 0 if context is None else context.replica_id_in_sync_group


def _num_replicas():
    return tf.distribute.get_strategy().num_replicas_in_sync


def guarded_train_step(model, compute_loss):
    """One optimizer step of `model` on the loss `compute_loss()`; returns the metrics' results.

    A non-finite loss must not reach the weights: its gradients are replaced by zeros (a conditional
    apply would break the all-reduce under tf.distribute), the step is counted in
    `model.nonfinite_tracker`, and `StopOnNonFiniteLoss` (or the training binary) stops with an error.
    `model` has `loss_tracker` and `nonfinite_tracker`, and `skipped_tracker` when its optimizer may
    be a `LossScaleOptimizer`.
    """
    with tf.GradientTape() as tape:
        loss = compute_loss()
        # Gradients are summed over replicas, so each replica contributes 1/R of the mean.
        scaled_loss = model.optimizer.scale_loss(loss / _num_replicas())
    gradients = tape.gradient(scaled_loss, model.trainable_variables)
    finite = tf.math.is_finite(loss)
    gradients = [tf.where(finite, g, tf.zeros_like(g)) for g in gradients]
    if isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer):
        overflow = tf.logical_not(tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in gradients]))
        model.skipped_tracker.update_state(tf.cast(overflow, tf.float32))
    model.optimizer.apply_gradients(zip(gradients, model.trainable_variables))
    model.nonfinite_tracker.update_state(1.0 - tf.cast(finite, tf.float32))
    model.loss_tracker.update_state(tf.where(finite, loss, 0.0))
    return {m.name: m.result() for m in model.metrics}


@keras.saving.register_keras_serializable(package="tfdiffusion")
class DiffusionModel(keras.Model):
    """A denoising diffusion model trained with `fit` and sampled with `generate`.

    `train_step` draws t ~ U{0, …, T−1} and ε ~ N(0, I), forms x_t = q_sample(x_0, t, ε)
    and minimises the weighted MSE between the network output and its target (ε, x_0 or
    v) — for ε with no weighting, the simplified objective ‖ε − ε_θ(x_t, t)‖² of Ho et al.
    2020, eq. 14. Every draw is stateless, seeded by (noise_seed, optimizer step), so a
    resumed run draws the same t and ε as an uninterrupted one, and a run split over
    replicas or workers the same as a single device.

    Args:
      network: a Keras model called as `network(x_t, t, labels)` whose output has the
        shape of x_t (e.g. `layers.SeedUNet()`); class-conditional if it has a
        `num_classes` attribute that is not None (the null class is `num_classes`).
      diffusion: the fixed process, a `GaussianDiffusion` (or its config dict).
      prediction_type: what the network predicts: "epsilon", "x0" or "v".
      loss_weighting: "none", or "min_snr" (Hang et al. 2023, γ = `min_snr_gamma`).
      min_snr_gamma: γ of min-SNR weighting.
      label_dropout: probability of replacing a label by the null class in training
        (classifier-free guidance).
      data_range: (low, high) of the data that [−1, 1] stands for; `generate` clips to
        [−1, 1] and maps there. None returns the model space unchanged (toys).
      noise_seed: seed of the training draws.
      distilled_steps: None, or N for a student of progressive distillation
        (`tfdiffusion.distillation`): it samples in exactly N steps on `distilled_timesteps(T, N)`,
        with DDIM (η = 0) by default, and `generate` refuses another `num_steps`. The samplers run on
        `sampling_diffusion`: `diffusion` itself, or its N grid timesteps as a process of N steps.

    Call arguments:
      x_t: float tensor [N, ...] of noisy data.
      t: int tensor [N] (default zeros).
      labels: optional int tensor [N].

    Returns:
      The network's prediction, float32.

    Example:
      >>> diffusion = GaussianDiffusion(schedules.make_betas("linear", 400))
      >>> model = DiffusionModel(layers.SeedUNet(), diffusion)
      >>> model.compile(optimizer=keras.optimizers.Adam(1e-4))
      >>> model.fit(images_in_minus1_1, epochs=1)
      >>> images = model.generate(num_samples=16, seed=0)

    References:
      Ho et al. 2020; Salimans & Ho 2022 (v); Hang et al. 2023 (min-SNR);
      Ho & Salimans 2022 (classifier-free guidance).
    """

    def __init__(
        self,
        network,
        diffusion,
        prediction_type="epsilon",
        loss_weighting="none",
        min_snr_gamma=5.0,
        label_dropout=0.0,
        data_range=(0.0, 1.0),
        noise_seed=0,
        distilled_steps=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(diffusion, dict):
            diffusion = GaussianDiffusion.from_config(diffusion)
        if not isinstance(diffusion, GaussianDiffusion):
            raise ValueError(f"diffusion must be a GaussianDiffusion. Received: diffusion={diffusion!r}")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}. Received: prediction_type={prediction_type!r}")
        if loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"loss_weighting must be one of {LOSS_WEIGHTINGS}. Received: loss_weighting={loss_weighting!r}")
        if not 0.0 <= label_dropout < 1.0:
            raise ValueError(f"label_dropout must be in [0, 1). Received: label_dropout={label_dropout!r}")
        if data_range is not None and not (len(data_range) == 2 and data_range[0] < data_range[1]):
            raise ValueError(f"data_range must be None or (low, high) with low < high. Received: data_range={data_range!r}")
        self.network = network
        self.diffusion = diffusion
        self.prediction_type = prediction_type
        self.loss_weighting = loss_weighting
        self.min_snr_gamma = min_snr_gamma
        self.label_dropout = label_dropout
        self.data_range = None if data_range is None else tuple(float(v) for v in data_range)
        self.noise_seed = noise_seed
        if distilled_steps is not None and (isinstance(distilled_steps, bool) or not isinstance(
                distilled_steps, (int, np.integer)) or not 1 <= distilled_steps <= diffusion.num_timesteps):
            raise ValueError(f"distilled_steps must be None or an integer in [1, {diffusion.num_timesteps}]. "
                             f"Received: distilled_steps={distilled_steps!r}")
        self.distilled_steps = None if distilled_steps is None else int(distilled_steps)
        # A distilled model samples on its grid: the process respaced there, whose every step is one of the grid.
        self._grid = None if distilled_steps is None else distilled_timesteps(diffusion.num_timesteps,
                                                                              self.distilled_steps)[1:]
        self.sampling_diffusion = diffusion if self._grid is None else _respaced_diffusion(diffusion, self._grid)
        self.num_classes = getattr(network, "num_classes", None)
        self.data_shape = None
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.nonfinite_tracker = keras.metrics.Sum(name="nonfinite_steps")
        # Under mixed_float16 the loss-scale optimizer skips steps whose scaled gradients
        # overflow; they are counted here so that a run cannot stall unnoticed.
        self.skipped_tracker = keras.metrics.Sum(name="loss_scale_skipped_steps")
        # Compiled samplers, cached per request kind; kept out of Keras/TF tracking so that
        # the model still saves and exports after `generate` has run.
        object.__setattr__(self, "_sample_functions", {})

    # -- Keras plumbing --------------------------------------------------------------------
    def build(self, x_t_shape, t_shape=None, labels_shape=None):
        x_t_shape = tuple(x_t_shape)
        batch = x_t_shape[0]
        if not self.network.built:  # a network restored by load_model is built already
            self.network.build(x_t_shape, (batch,), None if self.num_classes is None else (batch,))
        self.data_shape = x_t_shape[1:]
        self.built = True

    def call(self, x_t, t=None, labels=None, training=False):
        if t is None:
            t = tf.zeros(tf.shape(x_t)[:1], tf.int32)
        if self.num_classes is None:
            return tf.cast(self.network(x_t, t, training=training), tf.float32)
        return tf.cast(self.network(x_t, t, labels, training=training), tf.float32)

    @property
    def metrics(self):
        return [self.loss_tracker, self.nonfinite_tracker, self.skipped_tracker]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "network": keras.saving.serialize_keras_object(self.network),
                "diffusion": self.diffusion.get_config(),
                "prediction_type": self.prediction_type,
                "loss_weighting": self.loss_weighting,
                "min_snr_gamma": self.min_snr_gamma,
                "label_dropout": self.label_dropout,
                "data_range": None if self.data_range is None else list(self.data_range),
                "noise_seed": self.noise_seed,
                "distilled_steps": self.distilled_steps,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["network"] = keras.saving.deserialize_keras_object(config["network"])
        return cls(**config)

    def inference_model(self, mixed_precision="auto"):
        """(model, policy, reason): this model, or a copy computing where it pays (`with_dtype_policy`).

        Args:
          mixed_precision: "auto" (bfloat16 on an AMX CPU, an Ampere-or-newer GPU or a TPU, else
            float32; see `tfdiffusion.precision`) or an explicit Keras policy name.

        Returns:
          The model to sample with (self when it already computes under the chosen policy), the
          policy name and the reason for it.
        """
        policy, reason = precision.resolve_precision(mixed_precision)
        if policy == self.network.dtype_policy.name:
            return self, policy, reason
        return self.with_dtype_policy(policy), policy, reason

    def with_dtype_policy(self, dtype_policy):
        """A copy for inference whose network computes under `dtype_policy` (e.g. "mixed_bfloat16").

        The copy shares nothing with this model: its float32 weights are copied, its outputs are
        cast to float32 and the sampler's coefficient arithmetic stays in float32/float64.
        """
        if self.data_shape is None:
            raise ValueError("The model is not built: train it or call it on data before copying it.")
        policy = keras.dtype_policies.get(dtype_policy)
        if policy.variable_dtype != "float32":
            raise ValueError(f"dtype_policy must keep float32 variables, e.g. 'mixed_bfloat16'. "
                             f"Received: dtype_policy={dtype_policy!r}")
        network_config = keras.saving.serialize_keras_object(self.network)
        network_config["config"]["dtype"] = policy.name
        config = self.get_config()
        config["network"] = network_config
        copy = type(self).from_config(config)
        batch = (1,) + tuple(self.data_shape)
        copy(tf.zeros(batch), tf.zeros((1,), tf.int32), None if self.num_classes is None else tf.zeros((1,), tf.int32))
        copy.network.set_weights(self.network.get_weights())
        return copy

    # -- the objective -----------------------------------------------------------------------
    def denoise(self, x_t, t, labels=None, guidance_scale=None):
        """(x̂_0, ε̂) at (x_t, t) from one network call, formed directly by the prediction type.

        With `guidance_scale` w (and a class-conditional network) the conditional and unconditional
        predictions come from one batched call and are combined as (1 + w) p(c) − w p(∅) before the
        conversion (`samplers.classifier_free_guidance`): the same combination of x̂_0 and of ε̂.
        This is the `denoise_fn` the samplers consume.
        """
        predict = samplers.classifier_free_guidance(lambda x, t_, y: self(x, t_, y), guidance_scale, self.num_classes)
        return self.diffusion.x0_and_eps(x_t, t, predict(x_t, t, labels), self.prediction_type)

    def predict_eps(self, x_t, t, labels=None):
        """ε̂(x_t, t) from the network, whatever its prediction type (the `denoise` export signature)."""
        return self.denoise(x_t, t, labels)[1]

    def target(self, x0, t, noise):
        """The regression target of the prediction type for x_t = q_sample(x0, t, noise)."""
        if self.prediction_type == "x0":
            return x0
        if self.prediction_type == "v":
            return self.diffusion.get_v(x0, t, noise)
        return noise

    def loss_weight(self, t):
        """Per-example weight; min-SNR-γ expressed for the prediction type (Hang et al. 2023, §3.4)."""
        if self.loss_weighting == "none":
            return tf.ones(tf.shape(t), tf.float32)
        snr = self.diffusion.alphas_cumprod / (1.0 - self.diffusion.alphas_cumprod)
        clipped = np.minimum(snr, self.min_snr_gamma)
        weight = {"epsilon": clipped / snr, "x0": clipped, "v": clipped / (snr + 1.0)}[self.prediction_type]
        return tf.gather(tf.constant(weight, tf.float32), t)

    def _unpack(self, data):
        if isinstance(data, dict):
            return data["image"], data.get("label")
        if isinstance(data, (tuple, list)):
            return data[0], (data[1] if len(data) > 1 else None)
        return data, None

    def _training_draws(self, x0, labels, step):
        """t, ε and the label-dropout mask, all stateless functions of (noise_seed, step).

        The draws are made for the global batch (local batch × replicas) and each replica
        takes its own rows, so an example gets the same t and ε however the batch is split
        across replicas or workers (`tf.distribute` hands replica r the r-th slice).
        """
        seed = tf.stack([tf.cast(self.noise_seed, tf.int64), tf.cast(step, tf.int64)])
        t_seed, noise_seed, drop_seed = (tf.random.experimental.stateless_fold_in(seed, i) for i in range(3))
        batch = tf.shape(x0)[0]
        rows = tf.range(batch) + batch * _replica_id()
        global_shape = tf.concat([[batch * _num_replicas()], tf.shape(x0)[1:]], 0)
        T = self.diffusion.num_timesteps
        t = tf.gather(tf.random.stateless_uniform(global_shape[:1], t_seed, minval=0, maxval=T, dtype=tf.int32), rows)
        noise = tf.gather(tf.random.stateless_normal(global_shape, noise_seed, dtype=x0.dtype), rows)
        if self.num_classes is None or labels is None:
            return t, noise, None
        return t, noise, self.drop_labels(labels, drop_seed, global_shape[:1], rows)

    def drop_labels(self, labels, seed, global_batch, rows=None):
        """`labels` with each replaced by the null class with probability `label_dropout` (classifier-free
        guidance training, Ho & Salimans 2022); the uniforms are drawn from `seed` for `global_batch` examples
        and `rows` of them taken (all when None)."""
        labels = tf.cast(labels, tf.int32)
        if self.label_dropout == 0:
            return labels
        uniforms = tf.random.stateless_uniform(global_batch, seed)
        if rows is not None:
            uniforms = tf.gather(uniforms, rows)
        return tf.where(uniforms < self.label_dropout, self.num_classes, labels)

    def compute_diffusion_loss(self, x0, labels, step, training=False):
        """The weighted MSE of one batch (the loss `fit` reports)."""
        x0 = tf.cast(x0, tf.float32)
        t, noise, labels = self._training_draws(x0, labels, step)
        x_t = self.diffusion.q_sample(x0, t, noise)
        prediction = self(x_t, t, labels, training=training)
        squared_error = tf.square(self.target(x0, t, noise) - prediction)
        per_example = tf.reduce_mean(tf.reshape(squared_error, [tf.shape(x0)[0], -1]), axis=1)
        return tf.reduce_mean(self.loss_weight(t) * per_example)

    def fit(self, x=None, *args, **kwargs):
        """`keras.Model.fit`; a `tf.data.Dataset` is taken in its own order (its pipeline shuffles, or not).

        Keras' default `shuffle=True` does nothing for a Dataset but warn; it is turned off for one.
        For image models the first batch is checked to lie in the model space [−1, 1].
        """
        if isinstance(x, tf.data.Dataset):
            kwargs.setdefault("shuffle", False)
        self.check_first_batch(x)
        return super().fit(x, *args, **kwargs)

    def check_first_batch(self, x):
        """Raises ValueError when the first batch of `x` (a Dataset or an array) leaves [−1, 1].

        Names the observed min and max; pixels left in 0–255 would otherwise train without error.
        Only image models are checked (`data_range` set): a toy's model space is unbounded.
        """
        if self.data_range is None:
            return
        if isinstance(x, tf.data.Dataset):
            x = next(iter(x.take(1)), None)
        if x is None:
            return
        x0, _ = self._unpack(x)
        data_lib.check_in_model_space(tf.convert_to_tensor(x0))

    def train_step(self, data):
        x0, labels = self._unpack(data)
        return guarded_train_step(self, lambda: self.compute_diffusion_loss(x0, labels, self.optimizer.iterations,
                                                                            training=True))

    def test_step(self, data):
        x0, labels = self._unpack(data)
        # Evaluation draws are seeded by a constant step so that validation losses compare.
        loss = self.compute_diffusion_loss(x0, labels, tf.constant(-1, tf.int64))
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}

    # -- sampling --------------------------------------------------------------------------------
    def sample_model_space(self, num_samples, *, seed=0, sampler=None, num_steps=None, eta=0.0, labels=None,
                           guidance_scale=None, trajectory_every=None, ddpm_variance="beta_tilde", clip_denoised=False,
                           spacing=samplers.DEFAULT_SPACING, init_images=None, strength=None, mask=None, jumps=None):
        """The reverse process on `denoise` in model space; tensors in, tensors out, not validated.

        Arguments are those of `generate` (Python values or tensors; `sampler` and `spacing` may be
        string tensors in a graph), with `init_images` in model space. `generate` checks a Python
        request and the exported signatures assert on theirs before calling this. Called eagerly it
        runs the same compiled graph as `generate`.
        """
        if self.data_shape is None:
            raise ValueError("The model is not built: train it or call it on data before sampling.")
        sampler, num_steps = self.default_request(sampler, num_steps)
        guidance_scale = guidance_scale if self.num_classes is not None else None
        if tf.executing_eagerly():
            function = self._sampling_function(
                (sampler, spacing, trajectory_every, labels is not None, guidance_scale is not None, ddpm_variance,
                 clip_denoised, init_images is not None, mask is not None, jumps), data_space=False)
            return function(*_request_tensors(num_samples, seed, num_steps, eta, labels, guidance_scale, init_images,
                                              strength, mask))
        if guidance_scale is not None:  # an input of the graph like the driver's, see `samplers.opaque`
            guidance_scale = samplers.opaque(guidance_scale, tf.float32)
        shape = tf.concat([tf.reshape(tf.cast(num_samples, tf.int32), [1]), tf.constant(self.data_shape, tf.int32)], 0)
        return samplers.reverse_process(
            self._sampling_denoiser(guidance_scale), self.sampling_diffusion, shape, seed=seed, num_steps=num_steps,
            sampler=sampler, spacing=spacing, eta=eta, labels=labels, ddpm_variance=ddpm_variance,
            clip_denoised=clip_denoised, trajectory_every=trajectory_every, init_images=init_images, strength=strength,
            mask=mask, jumps=jumps)

    def sample_data_space(self, num_samples, *, init_images=None, strength=None, mask=None, **request):
        """`sample_model_space` mapped to data space, in a graph (the body of `generate` and of the export).

        `init_images` are in data space; the samples keep them exactly where `mask` is 1, and
        everywhere when strength rounds to no step (round(strength·T) = 0): those pixels are the
        given values themselves, not their round trip through model space.
        """
        model_init = None if init_images is None else self.from_data_space(init_images)
        out = self.sample_model_space(num_samples, init_images=model_init, strength=strength, mask=mask, **request)
        samples = self.to_data_space(out if request.get("trajectory_every") is None else out[0])
        if init_images is not None:
            kept = samplers.edit_start_timestep(1.0 if strength is None else strength,
                                                self.sampling_diffusion.num_timesteps) < 0
            if mask is not None:
                kept = tf.logical_or(kept, mask >= 0.5)
            samples = tf.where(kept, tf.cast(init_images, samples.dtype), samples)
        return samples if request.get("trajectory_every") is None else (samples, out[1])

    def default_request(self, sampler=None, num_steps=None):
        """(sampler, num_steps) with None filled in: DDIM in N steps for a model distilled to N, else DDPM in T."""
        if sampler is None:
            sampler = "ddpm" if self.distilled_steps is None else "ddim"
        if num_steps is None:
            num_steps = self.sampling_diffusion.num_timesteps
        return sampler, num_steps

    def _sampling_denoiser(self, guidance_scale):
        """`denoise` at the timesteps of `sampling_diffusion`: index j of a distilled model's is its grid's g_{j+1}."""
        if self._grid is None:
            return lambda x, t, y: self.denoise(x, t, y, guidance_scale)
        grid = tf.constant(self._grid, tf.int32)
        return lambda x, t, y: self.denoise(x, tf.gather(grid, t), y, guidance_scale)

    def _sampling_function(self, kind, data_space):
        """The compiled sampler of one kind of request, cached (tensor arguments do not retrace).

        kind: (sampler, spacing, trajectory_every, conditional, guided, ddpm_variance, clip_denoised,
        editing, inpainting, jumps).
        """
        key = kind + (data_space,)
        if key not in self._sample_functions:
            sampler, spacing, trajectory_every, _, _, ddpm_variance, clip_denoised, _, _, jumps = kind

            def run(num_samples, seed, num_steps, eta, labels, guidance_scale, init_images, strength, mask):
                request = dict(seed=seed, sampler=sampler, spacing=spacing, num_steps=num_steps, eta=eta, labels=labels,
                               guidance_scale=guidance_scale, trajectory_every=trajectory_every,
                               ddpm_variance=ddpm_variance, clip_denoised=clip_denoised, init_images=init_images,
                               strength=strength, mask=mask, jumps=jumps)
                sample = self.sample_data_space if data_space else self.sample_model_space
                return sample(num_samples, **request)

            self._sample_functions[key] = tf.function(run, reduce_retracing=True, autograph=False)
        return self._sample_functions[key]

    def to_data_space(self, x):
        """[−1, 1] model space → `data_range` (clipped); identity when data_range is None."""
        if self.data_range is None:
            return x
        low, high = self.data_range
        return low + (tf.clip_by_value(x, -1.0, 1.0) + 1.0) * (0.5 * (high - low))

    def from_data_space(self, x):
        """`data_range` → [−1, 1] model space (not clipped); identity when data_range is None."""
        if self.data_range is None:
            return x
        low, high = self.data_range
        return (tf.cast(x, tf.float32) - low) * (2.0 / (high - low)) - 1.0

    def generate(self, num_samples, seed=0, sampler=None, num_steps=None, eta=0.0, labels=None,
                 guidance_scale=None, trajectory_every=None, ddpm_variance="beta_tilde",
                 spacing=samplers.DEFAULT_SPACING, init_images=None, strength=None, mask=None, jumps=None):
        """Draws `num_samples` samples in data space as a NumPy array (one compiled graph), or edits images.

        Args are those of `samplers.sample` (a None `sampler` and `num_steps` are `default_request`'s:
        DDPM in T steps, or DDIM in N for a model distilled to N), plus `guidance_scale`, the classifier-free guidance
        weight w (None or 0: plain conditional; ignored by an unconditional model). With
        `trajectory_every=k` returns `(samples, trajectory)`, the trajectory in model space
        [frames, N, ...].

        Editing (one of strength and mask at least):
          init_images: [num_samples, *data_shape] in data space (e.g. [0, 1] pixels).
          strength: image-to-image (SDEdit) strength in [0, 1]: 0 returns init_images exactly, 1
            starts from (almost) pure noise; default 1 with a mask.
          mask: [num_samples, *data_shape[:-1], 1] (or the images' shape), 1 where init_images is kept
            (exactly) and 0 where it is generated (inpainting).
          jumps: (jump_length, resamples): RePaint's resampling of an inpainting (`samplers.sample`).

        Raises:
          ValueError: an invalid request, naming the argument and its value.
        """
        sampler, num_steps = self.default_request(sampler, num_steps)
        request = dict(sampler=sampler, num_steps=num_steps, eta=eta, guidance_scale=guidance_scale,
                       trajectory_every=trajectory_every, ddpm_variance=ddpm_variance, spacing=spacing, strength=strength)
        labels, init_images, mask = self._validate_request(num_samples, request, labels, init_images, mask, jumps)
        spacing = samplers.resolve_spacing(sampler, spacing)  # "auto" and its grid named share one graph
        guidance_scale = guidance_scale if self.num_classes is not None else None
        if init_images is not None and strength is None:
            strength = 1.0
        function = self._sampling_function(
            (sampler, spacing, trajectory_every, labels is not None, guidance_scale is not None, ddpm_variance, False,
             init_images is not None, mask is not None, None if jumps is None else tuple(int(v) for v in jumps)),
            data_space=True)
        out = function(*_request_tensors(num_samples, seed, num_steps, eta, labels, guidance_scale, init_images,
                                         strength, mask))
        if trajectory_every is None:
            return out.numpy()
        return out[0].numpy(), out[1].numpy()

    def _validate_request(self, num_samples, request, labels, init_images, mask, jumps=None):
        """`generate`'s checks (ValueError naming the argument).

        Returns:
          (labels as int32 NumPy or None, init_images and mask as float32 NumPy or None).
        """
        if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
            raise ValueError(f"num_samples must be an integer >= 1. Received: num_samples={num_samples!r}")
        if self.data_shape is None:
            raise ValueError("The model is not built: train it or call it on data before sampling.")
        if self.distilled_steps is not None and request["num_steps"] != self.distilled_steps:
            raise ValueError(f"This model was distilled to sample in num_steps={self.distilled_steps} steps on its "
                             f"grid, and in no other number. Received: num_steps={request['num_steps']!r}")
        samplers.validate_request(self.sampling_diffusion.num_timesteps, **request)
        samplers.validate_edit((num_samples,) + tuple(self.data_shape), init_images, request["strength"], mask)
        samplers.validate_jumps(jumps, mask, request["sampler"], request["trajectory_every"])
        if init_images is not None:
            init_images = np.asarray(init_images, np.float32)
            mask = None if mask is None else np.asarray(mask, np.float32)
        if labels is None:
            return None, init_images, mask
        labels = np.asarray(labels, np.int32).reshape(-1)
        if self.num_classes is None:
            raise ValueError(f"labels given to an unconditional model. Received: labels={labels.tolist()}")
        if labels.size != num_samples or labels.min() < 0 or labels.max() > self.num_classes:
            raise ValueError(
                f"labels must hold num_samples={num_samples} values in [0, {self.num_classes}]. "
                f"Received: labels={labels.tolist()}"
            )
        return labels, init_images, mask

    # -- EMA -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def ema_weights(self):
        """Swaps the optimizer's EMA weights in for the duration of the block (no-op without EMA)."""
        optimizer = getattr(self, "optimizer", None)
        averages = getattr(optimizer, "_model_variables_moving_average", None) if optimizer is not None else None
        if not averages or not getattr(optimizer, "use_ema", False):
            yield
            return
        variables = self.trainable_variables
        saved = [v.numpy() for v in variables]
        for variable, average in zip(variables, averages):
            variable.assign(average)
        try:
            yield
        finally:
            for variable, value in zip(variables, saved):
                variable.assign(value)


def _request_tensors(num_samples, seed, num_steps, eta, labels, guidance_scale, init_images=None, strength=None,
                     mask=None):
    """A request as the arguments of a `_sampling_function` (tensors, so that they do not retrace)."""
    optional = ((labels, tf.int32), (guidance_scale, tf.float32), (init_images, tf.float32), (strength, tf.float32),
                (mask, tf.float32))
    return (tf.constant(num_samples, tf.int32), tf.constant(seed, tf.int64), tf.constant(num_steps, tf.int32),
            tf.constant(eta, tf.float32), *(None if value is None else tf.constant(value, dtype)
                                             for value, dtype in optional))
