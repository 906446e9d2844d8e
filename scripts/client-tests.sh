#!/usr/bin/env bash
# Stock clients (tritonclient[http] and tritonclient[grpc] from PyPI, and curl) against a real
# worker serving a freshly trained candle model, then against the coding
# frontend that `coded-sidecar local` starts, all on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${CODED_VENV:-$HOME/.cache/coded-serving/venv}
if ! "$venv/bin/python" -c 'import tritonclient.http, tritonclient.grpc, pytest, numpy' 2>/dev/null; then
  echo "--- installing tritonclient[http,grpc], pytest, numpy into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet 'tritonclient[http,grpc]' pytest numpy
fi

cargo build --quiet -p coded-sidecar
bin=target/debug/coded-sidecar
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() {
  for _ in $(seq 600); do
    curl -fsS "http://127.0.0.1:$1/v2/health/ready" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "server on port $1 never became ready" >&2
  return 1
}
# curl, unchanged: one JSON request.
curl_infer() {
  python3 -c 'import json; print(json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.5] * 784}]}))' \
    | curl -fsS -X POST "http://127.0.0.1:$1/v2/models/fashion-mlp/infer" -H 'content-type: application/json' -d @- \
    | python3 -c 'import json,sys; r=json.load(sys.stdin); assert r["outputs"][0]["shape"]==[1,10], r; print("curl: ok", r["outputs"][0]["shape"], r.get("parameters", {}))'
}

echo "--- a worker"
CODED_THREADS=1 $bin train base --arch mlp --epochs 1 --limit 2000 --quiet --out "$work/model"
port=$(free_port)
grpc_port=$(free_port)
$bin worker --model "$work/model" --model-name fashion-mlp --port "$port" --grpc-port "$grpc_port" > "$work/worker.log" 2>&1 &
pids+=($!)
wait_ready "$port"
curl_infer "$port"
CODED_TEST_URL="127.0.0.1:$port" CODED_TEST_GRPC_URL="127.0.0.1:$grpc_port" CODED_TEST_MODEL=fashion-mlp \
  "$venv/bin/python" -m pytest -q sidecar/tests/python

echo "--- the coding frontend of coded-sidecar local"
port=$(free_port)
grpc_port=$(free_port)
$bin local --base-epochs 1 --parity-epochs 1 --cache-dir "$work/cache" --port "$port" --grpc-port "$grpc_port" > "$work/local.log" 2>&1 &
local_pid=$!
pids+=("$local_pid")
wait_ready "$port" || { cat "$work/local.log"; exit 1; }
curl_infer "$port"
CODED_TEST_URL="127.0.0.1:$port" CODED_TEST_GRPC_URL="127.0.0.1:$grpc_port" CODED_TEST_MODEL=fashion-mlp \
  CODED_TEST_FRONTEND=1 "$venv/bin/python" -m pytest -q sidecar/tests/python
# SIGTERM stops local and every child it started.
children=$(pgrep -P "$local_pid" | tr '\n' ' ')
kill -TERM "$local_pid"
wait "$local_pid"
for c in $children; do
  if kill -0 "$c" 2>/dev/null; then echo "child $c of local still runs after SIGTERM" >&2; exit 1; fi
done
echo "local: stopped with its $(wc -w <<<"$children") children"
