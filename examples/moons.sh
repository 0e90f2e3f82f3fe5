#!/usr/bin/env bash
# The main job end to end, offline: train two moons, draw its figures, evaluate it, export it for TF Serving.
# Writes runs/moons/ (model.keras, samples.png, figures/, eval.json) and runs/serving/moons/<version>/.
# CONFIG=configs/moons.py:tiny trains 200 steps instead of 4,000 (tests/test_examples.py runs it so).
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${CONFIG:-configs/moons.py}
RUNS=${RUNS:-runs}

python tools/train.py --config="$CONFIG" --workdir="$RUNS/moons"
python tools/plot.py --workdir="$RUNS/moons"
python tools/evaluate.py --model="$RUNS/moons" --num_samples=2000 --output="$RUNS/moons/eval.json"
python tools/export.py --workdir="$RUNS/moons" --export_base="$RUNS/serving"
