#!/usr/bin/env python3
"""How long a worker's health check and /metrics take while a big batch runs.

Usage: coded-sidecar train base --arch resnet18 --epochs 1 --limit 256 --out /tmp/r18
       coded-sidecar worker --model /tmp/r18 --port 18100 &
       scripts/health-during-batch.py http://127.0.0.1:18100 fashion-resnet18 64

Sends one request of ROWS rows (28×28 images, all 0.5) three times and,
while each runs, asks /v2/health/ready and /metrics every 10 ms; prints the
batch time and the slowest health + /metrics answer. Standard library only.
"""
import json, sys, threading, time, urllib.request

url, model, rows = sys.argv[1], sys.argv[2], int(sys.argv[3])
body = json.dumps({"inputs": [{"name": "input", "shape": [rows, 1, 28, 28], "datatype": "FP32", "data": [0.5] * (784 * rows)}]}).encode()
for attempt in range(3):
    done = threading.Event()
    took = {}

    def infer():
        t = time.time()
        request = urllib.request.Request(f"{url}/v2/models/{model}/infer", body, {"Content-Type": "application/json"})
        urllib.request.urlopen(request).read()
        took["batch"] = time.time() - t
        done.set()

    threading.Thread(target=infer).start()
    time.sleep(0.05)
    lat = []
    while not done.is_set():
        t = time.time()
        urllib.request.urlopen(f"{url}/v2/health/ready").read()
        urllib.request.urlopen(f"{url}/metrics").read()
        lat.append(time.time() - t)
        time.sleep(0.01)
    print(f"batch {attempt} of {rows} rows took {took['batch'] * 1e3:.0f} ms; "
          f"health + /metrics answered {len(lat)} times meanwhile, slowest {max(lat) * 1e3:.1f} ms")
