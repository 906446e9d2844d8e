"""Stock tritonclient against a frontend and a model worker of a
CodedInferenceService on the real node, over HTTP and over gRPC: the same
queries through both, with Triton's binary tensors (gRPC: raw contents).
Every answer the frontend did not rebuild must equal the worker's, value for
value, on each protocol.

    python tritonclient_check.py FRONTEND_HTTP FRONTEND_GRPC WORKER_HTTP WORKER_GRPC MODEL [N]

Each address is HOST:PORT. Prints one JSON line:
{"http": {"queries": N, "equal": ..., "reconstructed": ...}, "grpc": {...}}.
"""

import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient


def answer_http(client, model, meta, data):
    inp = httpclient.InferInput(meta["inputs"][0]["name"], list(data.shape), "FP32")
    inp.set_data_from_numpy(data, binary_data=True)
    out = httpclient.InferRequestedOutput(meta["outputs"][0]["name"], binary_data=True)
    result = client.infer(model, [inp], outputs=[out])
    params = result.get_response().get("parameters", {}) or {}
    return result.as_numpy(meta["outputs"][0]["name"]), bool(params.get("reconstructed", False))


def answer_grpc(client, model, meta, data):
    inp = grpcclient.InferInput(meta["inputs"][0]["name"], list(data.shape), "FP32")
    inp.set_data_from_numpy(data)
    out = grpcclient.InferRequestedOutput(meta["outputs"][0]["name"])
    result = client.infer(model, [inp], outputs=[out])
    params = result.get_response().parameters
    rebuilt = "reconstructed" in params and params["reconstructed"].bool_param
    return result.as_numpy(meta["outputs"][0]["name"]), rebuilt


def compare(frontend, worker, answer, model, meta, n, seed):
    """Sends n queries to both; every answer not rebuilt must be the worker's."""
    rng = np.random.default_rng(seed)
    # gRPC's JSON metadata spells dimensions as strings.
    shape = [int(d) for d in meta["inputs"][0]["shape"] if int(d) != -1]
    equal = reconstructed = 0
    for i in range(n):
        data = rng.random([1] + shape, dtype=np.float32)
        got, rebuilt = answer(frontend, model, meta, data)
        want, _ = answer(worker, model, meta, data)
        assert got.shape == want.shape, (got.shape, want.shape)
        if rebuilt:
            reconstructed += 1
            continue
        if not np.array_equal(got, want):
            raise SystemExit(f"query {i}: frontend {got.tolist()} != worker {want.tolist()}")
        equal += 1
    return {"queries": n, "equal": equal, "reconstructed": reconstructed}


def main():
    frontend_http, frontend_grpc, worker_http, worker_grpc, model = sys.argv[1:6]
    n = int(sys.argv[6]) if len(sys.argv) > 6 else 16
    report = {}
    with httpclient.InferenceServerClient(frontend_http) as frontend, httpclient.InferenceServerClient(
        worker_http
    ) as worker:
        assert frontend.is_server_ready(), "frontend not ready (HTTP)"
        assert worker.is_model_ready(model), "worker model not ready (HTTP)"
        http_meta = frontend.get_model_metadata(model)
        report["http"] = compare(frontend, worker, answer_http, model, http_meta, n, 7)
    with grpcclient.InferenceServerClient(frontend_grpc) as frontend, grpcclient.InferenceServerClient(
        worker_grpc
    ) as worker:
        assert frontend.is_server_ready(), "frontend not ready (gRPC)"
        assert worker.is_model_ready(model), "worker model not ready (gRPC)"
        meta = frontend.get_model_metadata(model, as_json=True)
        # The same model over both protocols.
        for key in ("inputs", "outputs"):
            shapes = [[int(d) for d in t["shape"]] for t in meta[key]]
            want = [[int(d) for d in t["shape"]] for t in http_meta[key]]
            assert shapes == want, (key, shapes, want)
        report["grpc"] = compare(frontend, worker, answer_grpc, model, meta, n, 8)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
