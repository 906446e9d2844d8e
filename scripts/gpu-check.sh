#!/usr/bin/env bash
# The GPU check (not run in CI: it needs an NVIDIA GPU). On a machine with
# one: builds coded-sidecar with CUDA (scripts/cuda-build.sh), trains a small
# CNN and ResNet-18 on Fashion-MNIST (on the CPU, a few seconds each), serves
# each from two workers, one on `--device cpu` and one on `--device cuda`,
# checks that the GPU's answers match the CPU's within 1e-3 (f32), and prints
# client-side latency (p50, one request at a time) and throughput at batch
# 1/8/64 for both. Put the table in docs/benchmarks.md.
#
#   scripts/gpu-check.sh [--dtype f32|f16|bf16]
#
# Env: CODED_GPU_CHECK_DIR (scratch, default a temp dir), CODED_DATA_DIR,
# CUDA_COMPUTE_CAP (defaults to the GPU's own, from nvidia-smi),
# CODED_GPU_CHECK_REQUESTS (timed requests per batch size, default 200).
set -euo pipefail
cd "$(dirname "$0")/.."

dtype=f32
while [ $# -gt 0 ]; do
  case "$1" in
    --dtype) dtype=$2; shift 2 ;;
    *) echo "usage: $0 [--dtype f32|f16|bf16]" >&2; exit 2 ;;
  esac
done
# f32 must agree to 1e-3; half precision carries ~3 significant digits.
case "$dtype" in f32) tol=1e-3 ;; f16|bf16) tol=5e-2 ;; *) echo "bad --dtype $dtype" >&2; exit 2 ;; esac

fail() { echo "gpu-check: FAILED: $*" >&2; exit 1; }
command -v nvidia-smi >/dev/null || fail "no nvidia-smi: this check needs an NVIDIA GPU and its driver"
gpu=$(nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader 2>/dev/null | head -1) ||
  fail "nvidia-smi finds no GPU"
[ -n "$gpu" ] || fail "nvidia-smi lists no GPU"
echo "gpu-check: $gpu"
cap=$(echo "$gpu" | awk -F', ' '{print $2}' | tr -d .)
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-$cap}

# The CUDA build; its libraries (not the link stub: the driver's libcuda is used).
scripts/cuda-build.sh --no-clippy --release
CUDA_DIR=${CARGO_TARGET_DIR:-$PWD/target}/release-cuda
export LD_LIBRARY_PATH="$CUDA_DIR/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
BIN=$CUDA_DIR/coded-sidecar
"$BIN" worker --help >/dev/null

WORK=${CODED_GPU_CHECK_DIR:-$(mktemp -d)}
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

for arch in cnn resnet18; do
  dir="$WORK/$arch"
  if [ ! -f "$dir/card.json" ]; then
    echo "gpu-check: training a small $arch (CPU) into $dir"
    "$BIN" train base --arch "$arch" --epochs 1 --limit 2000 --quiet --out "$dir" --device cpu
  fi
done

# Starts a worker, prints its URL once it serves.
start() { # arch device dtype log
  "$BIN" worker --model "$WORK/$1" --port 0 --device "$2" --dtype "$3" >"$4" 2>&1 &
  pids+=($!)
  for _ in $(seq 600); do
    url=$(grep -o 'http://[0-9.:]*' "$4" | head -1 || true)
    [ -n "$url" ] && { echo "$url"; return 0; }
    kill -0 "${pids[-1]}" 2>/dev/null || { cat "$4" >&2; return 1; }
    sleep 0.1
  done
  return 1
}

status=0
for arch in cnn resnet18; do
  cpu=$(start "$arch" cpu f32 "$WORK/$arch-cpu.log") || fail "the CPU worker for $arch did not start"
  gpu_url=$(start "$arch" cuda "$dtype" "$WORK/$arch-cuda.log") ||
    fail "the CUDA worker for $arch did not start (log above)"
  python3 - "$arch" "$cpu" "$gpu_url" "$dtype" "$tol" "${CODED_GPU_CHECK_REQUESTS:-200}" \
    "$WORK/$arch/card.json" <<'EOF' || status=1
import json, random, struct, sys, time, urllib.request

arch, cpu, gpu, dtype, tol, n, card = sys.argv[1:4] + [sys.argv[4], float(sys.argv[5]), int(sys.argv[6]), sys.argv[7]]
card = json.load(open(card))
name, INPUT, SHAPE = card["name"], card["input"]["name"], card["input"]["shape"]

def infer(url, rows, batch):
    """One request of `batch` rows as Triton's binary tensor extension."""
    data = struct.pack(f"<{len(rows)}f", *rows)
    header = json.dumps({"inputs": [{"name": INPUT, "shape": [batch] + SHAPE, "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(data)}}]}).encode()
    req = urllib.request.Request(f"{url}/v2/models/{name}/infer", data=header + data, method="POST",
                                 headers={"Inference-Header-Content-Length": str(len(header)),
                                          "Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(req) as r:
        return json.load(r)["outputs"][0]["data"]

row = 1
for d in SHAPE:
    row *= d
rng = random.Random(0)
worst = 0.0
for batch in (1, 8, 64):
    rows = [rng.random() for _ in range(batch * row)]
    a, b = infer(cpu, rows, batch), infer(gpu, rows, batch)
    worst = max(worst, max(abs(x - y) for x, y in zip(a, b)))
ok = worst <= tol
print(f"{arch}: max |cpu - cuda({dtype})| = {worst:.2e} (tolerance {tol:g}) {'OK' if ok else 'MISMATCH'}")
print(f"{'device':>10} {'batch':>5} {'p50 ms':>8} {'rows/s':>9}")
for label, url in (("cpu", cpu), (f"cuda {dtype}", gpu)):
    for batch in (1, 8, 64):
        rows = [rng.random() for _ in range(batch * row)]
        for _ in range(5):
            infer(url, rows, batch)  # warm-up
        lat = []
        start = time.perf_counter()
        for _ in range(n):
            t = time.perf_counter()
            infer(url, rows, batch)
            lat.append(time.perf_counter() - t)
        wall = time.perf_counter() - start
        lat.sort()
        print(f"{label:>10} {batch:>5} {lat[len(lat) // 2] * 1e3:>8.2f} {n * batch / wall:>9.0f}")
sys.exit(0 if ok else 1)
EOF
  cleanup
  pids=()
done
[ "$status" = 0 ] || fail "CUDA answers differ from the CPU's"
echo "gpu-check: passed (latency is client-side over loopback HTTP, one request at a time)"
