#!/usr/bin/env bash
# Where the coding frontend's CPU time goes under load: runs `bench
# overhead`, and while its 32 clients drive the coding frontend (k = 2)
# records that process with `perf` (DWARF call graphs), then prints the
# busiest functions (self time) and the share of a few groups of them.
#
# Needs: perf (Debian: linux-perf), the release binary's debug info (the
# release profile keeps line tables), dataset-fashion-mnist or cached models.
# Usage: scripts/profile-frontend.sh [seconds, default 5]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-5}
command -v perf >/dev/null || { echo "needs perf (apt-get install linux-perf)" >&2; exit 1; }

cargo build --release --locked -p coded-sidecar
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
target/release/coded-sidecar bench overhead --requests 500 --seconds $((seconds + 4)) \
  --out "$work/overhead.json" > "$work/overhead.md" 2> "$work/overhead.err" &
bench=$!
# The throughput phase of the coding frontend (k = 2) on one I/O thread.
until grep -q "throughput of frontend (k = 2): " "$work/overhead.err" 2>/dev/null; do
  kill -0 $bench 2>/dev/null || { cat "$work/overhead.err" >&2; exit 1; }
  sleep 0.2
done
sleep 1
# The first frontend started is the coding one (then forwarding, then 2 threads).
pid=$(pgrep -o -f "coded-sidecar frontend .*--dispatch coded")
perf record -q -F 1999 --call-graph dwarf,16384 -p "$pid" -o "$work/perf.data" -- sleep "$seconds" 2>/dev/null
wait $bench
perf report -i "$work/perf.data" --no-children --sort sym --stdio -g none 2>/dev/null \
  | grep '%' | head -25 > "$work/self.txt"
perf report -i "$work/perf.data" --children --sort sym --stdio -g none 2>/dev/null \
  | grep '%' > "$work/children.txt"
echo "## Busiest functions (self time), frontend pid $pid, ${seconds} s under 32 clients"
echo
echo '```'
cat "$work/self.txt"
echo '```'
echo
echo "## Inclusive time of some parts"
echo
# share PATTERN: the largest inclusive share of a symbol matching PATTERN.
share() {
  grep -E "$1" "$work/children.txt" | awk '{print $1}' | sort -rn | head -1
}
printf '| part | share of samples |\n| --- | ---: |\n'
printf '| system calls (kernel: TCP on loopback, futex, epoll) | %s |\n' "$(share '\] entry_SYSCALL_64_after_hwframe$')"
printf '| calls to workers (`Instance::infer`: encode, send, receive, decode) | %s |\n' "$(share 'coded_sidecar::frontend::instance::Instance::infer')"
printf '| serving requests (`http::server::infer`: parse, answer) | %s |\n' "$(share 'coded_sidecar::http::server::infer')"
printf '| coding (`encode`, candle sum) | %s |\n' "$(share 'candle_core::cpu_backend::utils::Map1::map|Encoder>::encode')"
alloc=$(perf report -i "$work/perf.data" --no-children --sort sym --stdio -g none 2>/dev/null \
  | grep -E '\] (_int_malloc|_int_free|malloc|cfree@GLIBC_2\.2\.5|malloc_consolidate|unlink_chunk\.constprop\.0|realloc|_int_realloc)$' \
  | awk '{s += $1} END {printf "%.1f%%", s}')
printf '| memory allocation (malloc, free: self time) | %s |\n' "$alloc"
echo
echo "bench overhead, same run:"
echo
cat "$work/overhead.md"
