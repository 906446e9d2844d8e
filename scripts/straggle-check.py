#!/usr/bin/env python3
"""A persistently slow instance stops getting queries, and gets them back once fast: checked against `coded-sidecar local --straggle`.

Usage: coded-sidecar local --straggle --port 18000 &   # prints model-1's URL
       scripts/straggle-check.py http://127.0.0.1:18000 http://127.0.0.1:<model-1 port>

Sends sequential one-row queries to the frontend and prints, over time, how
many came back rebuilt, the straggler gauge of model 1 and the calls model 1
got; then lifts model 1's delay (`/admin/delay`) and times how long until
the gauge reads 0 and calls reach it again. Standard library only.
"""
import json, sys, time, urllib.request
front, slow = sys.argv[1], sys.argv[2]
body = json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.5] * 784}]}).encode()
def infer():
    r = urllib.request.urlopen(urllib.request.Request(f"{front}/v2/models/fashion-mlp/infer", body, {"Content-Type": "application/json"}))
    return json.load(r).get("parameters", {}).get("reconstructed", False)
def metric(url, name, label=""):
    text = urllib.request.urlopen(f"{url}/metrics").read().decode()
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(name) and label in l)
def run(seconds):
    n = r = 0; t = time.time()
    while time.time() - t < seconds:
        n += 1; r += infer()
    return n, r
gauge = lambda: metric(front, "coded_frontend_instance_straggler{", slow)
calls = lambda: metric(slow, "coded_worker_requests_total")
n, r = run(2.0); print(f"first 2 s: {r} of {n} sequential queries rebuilt; gauge {gauge()}")
c0 = calls(); n, r = run(5.0); print(f"next 5 s: {r} of {n} rebuilt ({100*r/max(n,1):.2f}%); gauge {gauge()}; model-1 got {calls()-c0:.0f} calls, {metric(front,'coded_frontend_sampled_calls_total'):.0f} sampled copies sent so far")
time.sleep(3); n, r = run(1.0); print(f"after a 3 s pause, 1 s: {r} of {n} rebuilt; gauge {gauge()}")
urllib.request.urlopen(urllib.request.Request(f"{slow}/admin/delay", json.dumps({"delay_ms": 0}).encode())).read()
t = time.time(); c0 = calls()
while gauge() > 0:
    run(0.05)
    if time.time() - t > 30: sys.exit("never restored")
dt = time.time() - t; c1 = calls(); n, r = run(1.0)
print(f"delay lifted: gauge 0 after {dt:.2f} s; then 1 s: {r} of {n} rebuilt, model-1 got {calls()-c1:.0f} of them")
