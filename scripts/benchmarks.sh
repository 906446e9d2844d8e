#!/usr/bin/env bash
# Regenerates the measured parts of docs/benchmarks.md: every data-plane
# benchmark, each into docs/bench/<name>.md (the exact command, when, the
# machine, the tables) with its figures beside it. About 30 minutes; with
# --quick about 4 (a check that everything runs, not numbers for the docs:
# it writes to target/bench/docs instead). Names after the flags rerun only
# those sections, e.g. `scripts/benchmarks.sh overhead stragglers-sigstop`.
# Run it on an otherwise idle machine: anything else running shows in the
# numbers.
#
# Needs: dataset-fashion-mnist (models are trained once and cached),
# prometheus (the --prometheus configuration), root (--mode network).
set -euo pipefail
cd "$(dirname "$0")/.."

quick=()
out=docs/bench
if [ "${1:-}" = "--quick" ]; then
  quick=(--quick)
  out=target/bench/docs
  shift
fi
only=("$@")
names="overhead stragglers-delay stragglers-delay-k stragglers-sigstop stragglers-network"
for n in "${only[@]}"; do
  case " $names " in
    *" $n "*) ;;
    *) echo "unknown section '$n'; the sections are: $names" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"

cargo build --release --locked -p coded-sidecar
bin=target/release/coded-sidecar
machine="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //') × $(nproc), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"

# section NAME TITLE ARGS...: runs `coded-sidecar ARGS...` into $out/NAME.md.
section() {
  local name=$1 title=$2
  shift 2
  if [ ${#only[@]} -gt 0 ] && [[ " ${only[*]} " != *" $name "* ]]; then
    return 0
  fi
  echo "--- $title: coded-sidecar $*" >&2
  {
    echo "# $title"
    echo
    echo '```sh'
    echo "target/release/coded-sidecar $*"
    echo '```'
    echo
    echo "Run $(date -u +%Y-%m-%dT%H:%MZ) on $machine (load average $(cut -d' ' -f1-3 /proc/loadavg) at the start)."
    echo
    "$bin" "$@"
    for png in "$out/$name"/*.png; do
      if [ -e "$png" ]; then
        printf '\n![%s](%s/%s)\n' "$(basename "$png" .png)" "$name" "$(basename "$png")"
      fi
    done
  } > "$out/$name.md.partial"
  mv "$out/$name.md.partial" "$out/$name.md"
}

section overhead "Frontend cost with nothing straggling" \
  bench overhead --out "$out/overhead.json" ${quick:+--requests 500 --seconds 2}
section stragglers-delay "Tail latency under injected delays (+50 ms in 5% of 500 ms windows), k = 2, three loads" \
  bench stragglers "${quick[@]}" --mode delay --k 2 --rates 150,300,450 --prometheus \
  --out "$out/stragglers-delay.json" --plots "$out/stragglers-delay"
section stragglers-delay-k "Tail latency under injected delays (+50 ms in 5% of 500 ms windows), k = 2, 3, 4" \
  bench stragglers "${quick[@]}" --mode delay --k 2,3,4 --rates 300 \
  --out "$out/stragglers-delay-k.json" --plots "$out/stragglers-delay-k"
section stragglers-sigstop "Tail latency under SIGSTOP pauses (5% of 500 ms windows), k = 2, 3, 4" \
  bench stragglers "${quick[@]}" --mode sigstop --k 2,3,4 \
  --out "$out/stragglers-sigstop.json" --plots "$out/stragglers-sigstop"
if [ "$(id -u)" = 0 ]; then
  section stragglers-network "Tail latency under network interference (tbf-limited veth, background transfers)" \
    bench stragglers "${quick[@]}" --mode network --k 2 \
    --out "$out/stragglers-network.json" --plots "$out/stragglers-network"
else
  echo "--- skipping --mode network: it needs root" >&2
fi
echo "written: $out/*.md and the figures beside them" >&2
