#!/usr/bin/env bash
# The commands that made the pretrained models shipped in ddpm_keras/pretrained/ (CPU, float32).
# Each run is resumable (add --resume after an interruption); the two ran side by side on a 2-core CPU.
# Then `python examples/ship_pretrained.py RUNS_DIR` writes their EMA networks as package presets.
set -euo pipefail
RUNS=${1:-checkpoints}
ddpm-keras train --preset synthetic_flowers32 --dataset synthetic --seed 0 --out "$RUNS/synthetic_flowers32" &
ddpm-keras train --preset synthetic_flowers32_cond --dataset synthetic --class-conditional --seed 0 \
    --out "$RUNS/synthetic_flowers32_cond" &
wait
