#!/usr/bin/env bash
# Catastrophic forgetting after memorization (the forget protocol) on Fashion-MNIST:
# stage 1 fits random labels on the train part and true labels on the val part; stage 2 trains on
# the train part alone and watches what happens to the val part.
# A 12k-example subset keeps it to minutes on a laptop CPU; drop --subset for the full-size study.
set -euo pipefail
out=${1:-runs/forget-fmnist}
rotelab forget --dataset fashion-mnist --subset 12000 --val-size 2000 --model mlp --widths 512 \
    --train-corrupt labels=1.0 --val-corrupt labels=0.0 --until-fit 1.0 --epochs1 300 --epochs2 200 \
    --lr 0.01 --save-epochs 50,100 --out "$out" "${@:2}"
rotelab plot "$out"
rotelab examples "$out"
