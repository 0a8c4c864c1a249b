#!/usr/bin/env bash
# Information planes on Fashion-MNIST with an MLP 784-1024-20-20-20-10: true vs random labels,
# tanh (fixed-edge binning) and ReLU (bin-size binning, as Saxe et al.). A 10k subset and 3 seeds
# keep it to a CPU afternoon; raise --subset, --epochs and --seeds for the full study.
set -euo pipefail
common=(--dataset fashion-mnist --subset 10000 --model mlp --widths 1024,20,20,20 --epochs 200
        --optimizer sgd --lr 0.01 --batch-size 128 --seeds 0-2 --eval-size 2000 --estimators binning,kde
        --captures 60 --no-progress)
for labels in 0.0 1.0; do
  rotelab infoplane "${common[@]}" --activation tanh --corrupt labels=$labels --out runs/ib-fm-tanh-$labels
  rotelab infoplane "${common[@]}" --activation relu --bin-size 0.5 --corrupt labels=$labels --out runs/ib-fm-relu-$labels
done
rotelab plot runs/ib-fm-tanh-0.0 runs/ib-fm-tanh-1.0
rotelab plot runs/ib-fm-relu-0.0 runs/ib-fm-relu-1.0
