#!/usr/bin/env bash
# Stock Python clients (tritonclient[http] from PyPI) against a real worker
# serving a freshly trained candle model on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${CODED_VENV:-$HOME/.cache/coded-serving/venv}
if ! "$venv/bin/python" -c 'import tritonclient.http, pytest, numpy' 2>/dev/null; then
  echo "--- installing tritonclient[http], pytest, numpy into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet 'tritonclient[http]' pytest numpy
fi

cargo build --quiet -p coded-sidecar
bin=target/debug/coded-sidecar
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

CODED_THREADS=1 $bin train base --arch mlp --epochs 1 --limit 2000 --quiet --out "$work/model"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
$bin worker --model "$work/model" --model-name fashion-mlp --port "$port" > "$work/worker.log" 2>&1 &
pid=$!
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$port/v2/health/ready" >/dev/null 2>&1 && break
  sleep 0.1
done
# curl, unchanged: one JSON request.
curl -fsS -X POST "http://127.0.0.1:$port/v2/models/fashion-mlp/infer" \
  -H 'content-type: application/json' \
  -d "{\"inputs\":[{\"name\":\"input\",\"shape\":[1,1,28,28],\"datatype\":\"FP32\",\"data\":[$(python3 -c 'print(",".join(["0.5"]*784))')]}]}" \
  | python3 -c 'import json,sys; r=json.load(sys.stdin); assert r["outputs"][0]["shape"]==[1,10], r; print("curl: ok", r["outputs"][0]["shape"])'
CODED_TEST_URL="127.0.0.1:$port" CODED_TEST_MODEL=fashion-mlp "$venv/bin/python" -m pytest -q sidecar/tests/python
