#!/usr/bin/env bash
# The information plane of Shwartz-Ziv & Tishby's 12-bit task, true vs random labels, 10 seeds.
# Pass the path to var_u.mat as the first argument, or nothing for the generated 12-bit task.
set -euo pipefail
data=()
[ $# -ge 1 ] && data=(--data-file "$1")
common=(--dataset tishby "${data[@]}" --model tishby --activation tanh --epochs 8000 --optimizer adam
        --lr 4e-4 --batch-size 512 --seeds 0-9 --estimators binning,kde --no-progress)
rotelab infoplane "${common[@]}" --corrupt labels=0.0 --out runs/ib-true
rotelab infoplane "${common[@]}" --corrupt labels=1.0 --out runs/ib-rand
rotelab plot runs/ib-true runs/ib-rand
