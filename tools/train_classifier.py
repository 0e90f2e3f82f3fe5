"""Trains the small CNN whose features and logits evaluation uses (`tfdiffusion.evaluation.train_classifier`).

    python tools/train_classifier.py --workdir=runs/classifier [--dataset=mnist] [--epochs=2]
    # a labelled folder: one subfolder per class (sorted names are the labels), 10% held out for the test
    python tools/train_classifier.py --workdir=runs/flowers_classifier --data_path=data/flowers --image_size=64
    # any TFDS dataset with a class label (its cache or a download), e.g. without a test split:
    python tools/train_classifier.py --workdir=runs/flowers_classifier --dataset=oxford_flowers102 \
        --split=train --test_split=validation --image_size=64

The array sets (mnist, fashion_mnist, cifar10) come from the original IDX files (--idx_dir, default
`tfdiffusion.data.default_mnist_dir()` for mnist) or TFDS; a folder (--data_path, images below one
subfolder per class) is held out by --test_fraction unless --test_path names a test folder with the
same classes. Images are resized (shorter side, centre crop) to --image_size and converted to
--channels (0: as stored). The training pixels are uint8 — quantised exactly as
`evaluation.FeatureExtractor` quantises generated images. Writes `<workdir>/classifier.keras`
(temporary file + rename) and `<workdir>/classifier.json` (test accuracy, class names, epochs,
seconds). Exit status 1 with one line naming the flag and the value on bad input.

The classifier's features are the FID embedding for MNIST-like data (`tools/evaluate.py
--features=classifier`); for any data its logits give the requested-class accuracy of a
class-conditional model (`tools/evaluate.py --classifier=...`).

Measured on the shared 2-core CPU here, before the data went through `data.training_data`: MNIST,
2 epochs of batch 128: 340 s of training (with other jobs running; 2m16s CPU time), test accuracy 0.9899.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags, logging  # noqa: E402

from tfdiffusion import cli  # noqa: E402  (imports no TensorFlow)

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for classifier.keras and classifier.json.")
_DATASET = flags.DEFINE_string("dataset", "mnist", "mnist, fashion_mnist, cifar10, folder (with --data_path) or a "
                               "TFDS name.")
_DATA_PATH = flags.DEFINE_string("data_path", None, "A folder of images in one subfolder per class.")
_TEST_PATH = flags.DEFINE_string("test_path", None, "A test folder with the same classes (default: hold out).")
_TEST_FRACTION = flags.DEFINE_float("test_fraction", 0.1, "The fraction of a folder held out for the test.")
_SPLIT = flags.DEFINE_string("split", "train", "Training split of the IDX/TFDS dataset (any TFDS split string).")
_TEST_SPLIT = flags.DEFINE_string("test_split", "test", "Test split of the IDX/TFDS dataset.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 0, "Resize (shorter side, centre crop) to S×S; 0: as stored.")
_CHANNELS = flags.DEFINE_integer("channels", 0, "1 or 3 to convert the images to; 0: as stored.")
_IDX_DIR = flags.DEFINE_string("idx_dir", None, "Directory of the IDX files (default: the local MNIST copy for "
                               "mnist; TFDS for the others).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory.")
_EPOCHS = flags.DEFINE_integer("epochs", 2, "Training epochs.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Batch size.")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the initialisation, dropout and data order.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    del argv  # cli.run refuses positional arguments, and ends a ValueError with one line and exit status 1
    from tfdiffusion import evaluation  # (imports TensorFlow: after the flags are parsed)

    summary = evaluation.train_classifier(
        _WORKDIR.value, _DATASET.value, data_path=_DATA_PATH.value, test_path=_TEST_PATH.value,
        split=_SPLIT.value, test_split=_TEST_SPLIT.value, test_fraction=_TEST_FRACTION.value,
        idx_dir=_IDX_DIR.value, data_dir=_DATA_DIR.value, image_size=_IMAGE_SIZE.value, channels=_CHANNELS.value,
        epochs=_EPOCHS.value, batch_size=_BATCH_SIZE.value, learning_rate=_LEARNING_RATE.value, seed=_SEED.value)
    logging.info("Done: %s", summary)
    print(f"test accuracy {summary['test_accuracy']:.4f} after {summary['epochs']} epochs "
          f"({summary['train_seconds']:.0f} s); saved {summary['classifier']}")
    return 0


if __name__ == "__main__":
    cli.run(main, output_dirs=("workdir",))
