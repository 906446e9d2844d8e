#!/usr/bin/env bash
# Regenerates docs/accuracy.md and docs/accuracy.png: trains the base models
# and every parity model of the table with the papers' recipe, evaluates each
# pair on the 10,000 test images, and writes the tables.
#
#   scripts/accuracy.sh                 # full run (tens of minutes on 2 cores)
#   BASE_EPOCHS=2 PARITY_EPOCHS=2 scripts/accuracy.sh   # smoke run
#   CNN=0 ...                          # without the CNN rows (the slow part)
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_EPOCHS=${BASE_EPOCHS:-30}
CNN_EPOCHS=${CNN_EPOCHS:-10}
PARITY_EPOCHS=${PARITY_EPOCHS:-100}
CNN_PARITY_EPOCHS=${CNN_PARITY_EPOCHS:-30}
OUT=${OUT:-target/accuracy}
SEED=${SEED:-0}
# One compute thread per process: with 2 cores, candle's thread pool costs
# more than it gains on these small models (measured 19,400 images/s for
# MLP base training with 1 thread vs 6,300 with 2 on a loaded machine).
export CODED_THREADS=${CODED_THREADS:-1}
# REUSE=1 keeps models already trained in $OUT (their card has the wall time).
REUSE=${REUSE:-0}
CNN=${CNN:-1}
mkdir -p "$OUT"

[ "${NO_BUILD:-0}" = 1 ] || cargo build --quiet --release -p coded-sidecar
bin=${BIN:-target/release/coded-sidecar}
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

# A field of a saved card's training record (rounded when numeric).
card_field() {
  python3 -c 'import json,sys; v=json.load(open(sys.argv[1]+"/card.json"))["training"][sys.argv[2]]; print(round(v) if isinstance(v,float) else v)' "$1" "$2"
}

train_base() { # arch epochs
  local dir="$OUT/fashion-$1"
  local cmd="coded-sidecar train base --arch $1 --epochs $2 --seed $SEED --out $dir"
  echo "== $cmd" >&2
  if [ "$REUSE" = 1 ] && [ -f "$dir/card.json" ]; then
    t=$(card_field "$dir" wall_seconds)
    cmd="coded-sidecar train base --arch $1 --epochs $(card_field "$dir" epochs) --seed $SEED --out $dir"
    set -- "$1" "$(card_field "$dir" epochs)"
  else
    t=$(timed $bin train base --arch "$1" --epochs "$2" --seed "$SEED" --out "$dir" --quiet)
  fi
  echo "| base $1 | \`$cmd\` | $2 | $t s |" >> "$OUT/commands.md"
}

pair() { # arch k encoder epochs
  local base="$OUT/fashion-$1" par="$OUT/fashion-$1-parity-k$2-$3"
  local cmd="coded-sidecar train parity --base $base --k $2 --encoder $3 --epochs $4 --seed $SEED --out $par"
  echo "== $cmd" >&2
  if [ "$REUSE" = 1 ] && [ -f "$par/card.json" ]; then
    t=$(card_field "$par" wall_seconds)
    cmd="coded-sidecar train parity --base $base --k $2 --encoder $3 --epochs $(card_field "$par" epochs) --seed $SEED --out $par"
    set -- "$1" "$2" "$3" "$(card_field "$par" epochs)"
  else
    t=$(timed $bin train parity --base "$base" --k "$2" --encoder "$3" --epochs "$4" --seed "$SEED" --out "$par" --quiet)
  fi
  $bin eval --base "$base" --parity "$par" --json "$par/eval.json"
  echo "| parity $1 k=$2 $3 | \`$cmd\` | $4 | $t s |" >> "$OUT/commands.md"
  rows+=("$par/eval.json")
}

# r = 2: parity models 0 and 1 of the code, scored under every pattern of
# one and of two losses.
pair_r2() { # arch k encoder epochs
  local base="$OUT/fashion-$1" par="$OUT/fashion-$1-parity-k$2-$3-r2"
  local cmd="coded-sidecar train parity --base $base --k $2 --r 2 --encoder $3 --epochs $4 --seed $SEED --out $par"
  echo "== $cmd" >&2
  if [ "$REUSE" = 1 ] && [ -f "$par/1/card.json" ]; then
    t=$(( $(card_field "$par/0" wall_seconds) + $(card_field "$par/1" wall_seconds) ))
  else
    t=$(timed $bin train parity --base "$base" --k "$2" --r 2 --encoder "$3" --epochs "$4" --seed "$SEED" --out "$par" --quiet)
  fi
  $bin eval --base "$base" --parity "$par/0,$par/1" --json "$par/eval.json"
  echo "| parity $1 k=$2 $3 r=2 | \`$cmd\` | $4 | $t s |" >> "$OUT/commands.md"
  rows+=("$par/eval.json")
}

: > "$OUT/commands.md"
train_base mlp "$BASE_EPOCHS"
[ "$CNN" = 1 ] && train_base cnn "$CNN_EPOCHS"
pair mlp 2 sum "$PARITY_EPOCHS"
pair mlp 3 sum "$PARITY_EPOCHS"
pair mlp 4 sum "$PARITY_EPOCHS"
pair mlp 2 concat "$PARITY_EPOCHS"
pair mlp 4 concat "$PARITY_EPOCHS"
pair_r2 mlp 2 sum "$PARITY_EPOCHS"
[ "$CNN" = 1 ] && pair cnn 2 sum "$CNN_PARITY_EPOCHS"
# The training-free Berrut code: nothing to train; every answer decoded.
$bin eval --base "$OUT/fashion-mlp" --code berrut --json "$OUT/berrut.json" > "$OUT/berrut.txt"

$bin plot accuracy --out docs/accuracy.png --markdown "$OUT/results.md" "${rows[@]}"
{
  sed -n '1,/^<!-- results -->$/p' docs/accuracy.md
  echo
  echo "Measured $(date -u +%Y-%m-%d) on: $machine. Test set: 10,000 images; coding groups drawn with seed 0."
  echo
  cat "$OUT/results.md"
  echo
  echo "Berrut code (training-free, \`eval --code berrut\`; every answer of a group is decoded and scored, lost or not):"
  echo
  grep '^|' "$OUT/berrut.txt"
  echo
  echo "| run | command | epochs | wall time |"
  echo "| --- | --- | --- | --- |"
  cat "$OUT/commands.md"
  echo
  sed -n '/^<!-- end results -->$/,$p' docs/accuracy.md
} > "$OUT/accuracy.md"
mv "$OUT/accuracy.md" docs/accuracy.md
echo "wrote docs/accuracy.md and docs/accuracy.png"
