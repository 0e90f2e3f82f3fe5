"""The small CNN trained by `evaluation.train_classifier`: its "features" layer is the FID/KID embedding for
MNIST-like data, its logits judge which class a sample shows (any labelled image set)."""

import keras

FEATURES_LAYER = "features"
LOGITS_LAYER = "logits"
MIN_IMAGE_SIZE = 12


def build_classifier(input_shape=(28, 28, 1), num_classes=10, *, dropout=0.3, batch_norm=False, name="classifier"):
    """A small CNN (made for 28×28 grey images) whose "features" layer is the FID embedding.

    pixels [0, 255] → Rescaling(1/255) → conv32 → conv64 → maxpool → conv128 → maxpool →
    flatten → dropout → dense128 ReLU ("features") → dropout → dense `num_classes` ("logits").
    All convolutions are 3×3 "valid" with ReLU (optionally followed by batch norm). A
    functional model of built-in layers, so a saved `classifier.keras` loads without
    tfdiffusion. Larger or colour images work too (the flattened map grows with H×W: 64×64
    RGB gives a 2.8M-weight features layer).

    Args:
      input_shape: (H, W, C) of the images, H and W at least 12 (the smallest the three
        valid convolutions and two poolings leave a pixel of).
      num_classes: classes of the logits layer.
      dropout: dropout rate before the features and logits layers (0 disables it).
      batch_norm: add BatchNormalization after each convolution.
      name: the model's name.

    Returns:
      A functional `keras.Model` taking float pixel values in [0, 255] and returning logits.
    """
    if len(input_shape) != 3 or min(input_shape[:2]) < MIN_IMAGE_SIZE:
        raise ValueError(f"build_classifier takes images (H, W, C) with H, W >= {MIN_IMAGE_SIZE}. "
                         f"Received: input_shape={tuple(input_shape)}")
    layers = keras.layers
    inputs = keras.Input(shape=tuple(input_shape), name="pixels")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    for i, (filters, pool) in enumerate(((32, False), (64, True), (128, True))):
        x = layers.Conv2D(filters, 3, activation="relu", name=f"conv{i + 1}")(x)
        if batch_norm:
            x = layers.BatchNormalization(name=f"bn{i + 1}")(x)
        if pool:
            x = layers.MaxPooling2D(2, name=f"pool{i + 1}")(x)
    x = layers.Flatten(name="flatten")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout1")(x)
    features = layers.Dense(128, activation="relu", name=FEATURES_LAYER)(x)
    x = layers.Dropout(dropout, name="dropout2")(features) if dropout else features
    logits = layers.Dense(num_classes, name=LOGITS_LAYER)(x)
    return keras.Model(inputs, logits, name=name)
