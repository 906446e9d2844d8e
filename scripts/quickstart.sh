#!/usr/bin/env bash
# Trains a quick base + parity pair and prints their accuracy table.
set -euo pipefail
cd "$(dirname "$0")/.."
run() { cargo run --quiet --release -p coded-sidecar -- "$@"; }
run train base --arch mlp --epochs 10
run train parity --base models/fashion-mlp --k 2 --encoder sum --epochs 20
run eval --base models/fashion-mlp --parity models/fashion-mlp-parity-k2-sum
