#!/usr/bin/env bash
# Regenerates docs/accuracy.md and docs/accuracy.png: trains the base models
# and every parity model of the table with the papers' recipe, evaluates each
# pair on the 10,000 test images, and writes the tables.
#
#   scripts/accuracy.sh                 # full run (tens of minutes on 2 cores)
#   BASE_EPOCHS=2 PARITY_EPOCHS=2 scripts/accuracy.sh   # smoke run
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_EPOCHS=${BASE_EPOCHS:-30}
CNN_EPOCHS=${CNN_EPOCHS:-10}
PARITY_EPOCHS=${PARITY_EPOCHS:-100}
CNN_PARITY_EPOCHS=${CNN_PARITY_EPOCHS:-30}
OUT=${OUT:-target/accuracy}
SEED=${SEED:-0}
mkdir -p "$OUT"

cargo build --quiet --release -p coded-sidecar
bin=target/release/coded-sidecar
machine="$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"

rows=()
# Runs a command, records it and its wall time for the table.
timed() {
  local start end
  start=$(date +%s)
  "$@" >&2
  end=$(date +%s)
  echo $((end - start))
}

train_base() { # arch epochs
  local dir="$OUT/fashion-$1"
  local cmd="coded-sidecar train base --arch $1 --epochs $2 --seed $SEED --out $dir"
  echo "== $cmd" >&2
  t=$(timed $bin train base --arch "$1" --epochs "$2" --seed "$SEED" --out "$dir" --quiet)
  echo "| base $1 | \`$cmd\` | $2 | $t s |" >> "$OUT/commands.md"
}

pair() { # arch k encoder epochs
  local base="$OUT/fashion-$1" par="$OUT/fashion-$1-parity-k$2-$3"
  local cmd="coded-sidecar train parity --base $base --k $2 --encoder $3 --epochs $4 --seed $SEED --out $par"
  echo "== $cmd" >&2
  t=$(timed $bin train parity --base "$base" --k "$2" --encoder "$3" --epochs "$4" --seed "$SEED" --out "$par" --quiet)
  $bin eval --base "$base" --parity "$par" --json "$par/eval.json"
  echo "| parity $1 k=$2 $3 | \`$cmd\` | $4 | $t s |" >> "$OUT/commands.md"
  rows+=("$par/eval.json")
}

: > "$OUT/commands.md"
train_base mlp "$BASE_EPOCHS"
train_base cnn "$CNN_EPOCHS"
pair mlp 2 sum "$PARITY_EPOCHS"
pair mlp 3 sum "$PARITY_EPOCHS"
pair mlp 4 sum "$PARITY_EPOCHS"
pair mlp 2 concat "$PARITY_EPOCHS"
pair mlp 4 concat "$PARITY_EPOCHS"
pair cnn 2 sum "$CNN_PARITY_EPOCHS"

$bin plot accuracy --out docs/accuracy.png --markdown "$OUT/results.md" "${rows[@]}"
{
  sed -n '1,/^<!-- results -->$/p' docs/accuracy.md
  echo
  echo "Measured $(date -u +%Y-%m-%d) on: $machine. Test set: 10,000 images; coding groups drawn with seed 0."
  echo
  cat "$OUT/results.md"
  echo
  echo "| run | command | epochs | wall time |"
  echo "| --- | --- | --- | --- |"
  cat "$OUT/commands.md"
  echo
  sed -n '/^<!-- end results -->$/,$p' docs/accuracy.md
} > "$OUT/accuracy.md"
mv "$OUT/accuracy.md" docs/accuracy.md
echo "wrote docs/accuracy.md and docs/accuracy.png"
