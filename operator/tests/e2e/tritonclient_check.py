"""Stock tritonclient[http] against a frontend and a model worker of a
CodedInferenceService on the real node: the same queries through both, with
Triton's binary tensors. Every answer the frontend did not rebuild must equal
the worker's, value for value.

    python tritonclient_check.py FRONTEND_HOST:PORT WORKER_HOST:PORT MODEL [N]

Prints one JSON line: {"queries": N, "equal": ..., "reconstructed": ...}.
"""

import json
import sys

import numpy as np
import tritonclient.http as httpclient


def answer(client, model, meta, data):
    inp = httpclient.InferInput(meta["inputs"][0]["name"], list(data.shape), "FP32")
    inp.set_data_from_numpy(data, binary_data=True)
    out = httpclient.InferRequestedOutput(meta["outputs"][0]["name"], binary_data=True)
    result = client.infer(model, [inp], outputs=[out])
    params = result.get_response().get("parameters", {}) or {}
    return result.as_numpy(meta["outputs"][0]["name"]), bool(params.get("reconstructed", False))


def main():
    frontend_url, worker_url, model = sys.argv[1:4]
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 16
    rng = np.random.default_rng(7)
    with httpclient.InferenceServerClient(frontend_url) as frontend, httpclient.InferenceServerClient(
        worker_url
    ) as worker:
        assert frontend.is_server_ready(), "frontend not ready"
        assert worker.is_model_ready(model), "worker model not ready"
        meta = frontend.get_model_metadata(model)
        shape = [d for d in meta["inputs"][0]["shape"] if d != -1]
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
    print(json.dumps({"queries": n, "equal": equal, "reconstructed": reconstructed}))


if __name__ == "__main__":
    main()
