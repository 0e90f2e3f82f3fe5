#!/usr/bin/env bash
# MNIST end to end: train the U-Net (6,000 steps, about 50 minutes on 2 CPU cores), train the classifier
# whose features FID/KID use, evaluate 10,000 DPM-Solver++ samples, export the model for TF Serving.
# MNIST comes from --config.data.idx_dir / $TFDIFFUSION_MNIST_DIR (IDX files) or TFDS (one download).
# Writes runs/mnist/, runs/classifier/ and runs/serving/mnist/<version>/.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs}

python tools/train.py --config=configs/mnist.py --workdir="$RUNS/mnist"
python tools/plot.py --workdir="$RUNS/mnist"
python tools/train_classifier.py --workdir="$RUNS/classifier" --dataset=mnist
python tools/evaluate.py --model="$RUNS/mnist" --classifier="$RUNS/classifier/classifier.keras" \
    --num_samples=10000 --sampler=dpmpp_2m --num_steps=20 --output="$RUNS/mnist/eval/dpmpp20.json"
python tools/export.py --workdir="$RUNS/mnist" --export_base="$RUNS/serving"
