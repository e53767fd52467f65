#!/usr/bin/env bash
# Rebuild every bundled model of erasure/assets from scratch, in dependency order:
#   world-classifier -> mini-clip (its text tower is mini-sd's text encoder)
#   -> mini-sd VAE -> mini-sd UNet -> measurement written into mini-sd's model card.
# About 50 minutes of training on 2 CPU cores, plus about 5 minutes of measurement.
# Every step is seeded; pass THREADS=1 when other jobs share the CPU (faster then).
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS="${THREADS:-2}"
SEED="${SEED:-0}"

python scripts/train_world_classifier.py --seed "$SEED" --threads "$THREADS"
python scripts/train_mini_clip.py --seed "$SEED" --threads "$THREADS"
python scripts/train_mini_sd.py --stage vae --seed "$SEED" --threads "$THREADS"
python scripts/train_mini_sd.py --stage unet --seed "$SEED" --threads "$THREADS"
python scripts/measure_mini_sd.py --threads "$THREADS"
du -sh erasure/assets
