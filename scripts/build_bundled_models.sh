#!/usr/bin/env bash
# Rebuild every bundled model of erasure/assets from scratch, in dependency order:
#   world-classifier -> mini-clip text tower (LiT against the classifier; it is mini-sd's
#   text encoder) -> mini-sd VAE -> mini-sd UNet, with mini-clip's vision tower trained
#   beside it on the other core -> measurement written into mini-sd's model card.
# Every step is seeded. One thread per process: on 2 shared cores two single-threaded
# jobs side by side beat one two-threaded job (thread oversubscription costs more).
# Measured on this 2-core CPU: world classifier 6 min, mini-clip 35 min (beside mini-sd),
# mini-sd VAE 6 min and UNet about 50 min (5,500 steps), measurement 4 min: about 70 min of wall time.
set -euo pipefail
cd "$(dirname "$0")/.."
SEED="${SEED:-0}"
T=1

python scripts/train_world_classifier.py --seed "$SEED" --threads "$T"
python scripts/train_mini_clip.py --phase text --seed "$SEED" --threads "$T" &
python scripts/train_mini_sd.py --stage vae --seed "$SEED" --threads "$T"
wait
python scripts/train_mini_clip.py --phase vision --seed "$SEED" --threads "$T" &
python scripts/train_mini_sd.py --stage unet --seed "$SEED" --threads "$T"
wait
python scripts/measure_mini_sd.py --threads 2
du -sh erasure/assets
