#!/usr/bin/env bash
# Networks that memorize random labels break at a lower weight noise than networks that learn true
# labels (Achille & Soatto 2018). MNIST-1D (generated locally), MLP 512-512, two seeds each; then
# the noise ramp on all four and its three-panel figure in $out/ramp/figures/noise_ramp.png.
set -euo pipefail
out=${1:-runs/noise-mnist1d}
for seed in 0 1; do
  for p in 0.0 1.0; do
    rotelab fit --dataset mnist1d --model mlp --widths 512,512 --corrupt labels=$p --lr 0.05 \
        --until-train-acc 1.0 --epochs 1000 --seed $seed --no-progress --out "$out/p$p-s$seed"
  done
done
rotelab noise "$out"/p0.0-s0 "$out"/p0.0-s1 "$out"/p1.0-s0 "$out"/p1.0-s1 \
    --alpha-start 1e-4 --alpha-factor 2 --every 3 --steps 16 --noise-samples 4 --no-progress --out "$out/ramp"
rotelab plot "$out/ramp"
