"""Protocol extensions with stock tritonclient[http] and tritonclient[grpc]:
server metadata listing what is served, the repository index, request ids
echoed, and the schedule policy's `timeout` and `priority` parameters.

    CODED_TEST_URL=127.0.0.1:8000 CODED_TEST_GRPC_URL=127.0.0.1:8001 \\
      python -m pytest sidecar/tests/python/test_extensions.py
"""

import os

import numpy as np
import pytest

grpcclient = pytest.importorskip("tritonclient.grpc")
httpclient = pytest.importorskip("tritonclient.http")

URL = os.environ.get("CODED_TEST_URL", "")
GRPC_URL = os.environ.get("CODED_TEST_GRPC_URL", "")
MODEL = os.environ.get("CODED_TEST_MODEL", "linear")

pytestmark = pytest.mark.skipif(
    not (URL and GRPC_URL),
    reason="set CODED_TEST_URL and CODED_TEST_GRPC_URL=host:port of a running v2 server",
)


@pytest.fixture(scope="module")
def grpc():
    with grpcclient.InferenceServerClient(url=GRPC_URL) as c:
        yield c


@pytest.fixture(scope="module")
def http():
    with httpclient.InferenceServerClient(url=URL.removeprefix("http://").rstrip("/")) as c:
        yield c


@pytest.fixture(scope="module")
def meta(http):
    m = http.get_model_metadata(MODEL)
    inp, out = m["inputs"][0], m["outputs"][0]
    return inp["name"], [int(d) for d in inp["shape"] if int(d) != -1], out["name"]


def test_server_metadata_lists_the_extensions_served(http, grpc):
    for extensions in (
        http.get_server_metadata()["extensions"],
        grpc.get_server_metadata(as_json=True)["extensions"],
    ):
        assert {"binary_tensor_data", "model_repository", "schedule_policy"} <= set(extensions)


def test_repository_index(http, grpc):
    for index in (
        http.get_model_repository_index(),
        grpc.get_model_repository_index(as_json=True)["models"],
    ):
        assert [(m["name"], m["state"]) for m in index] == [(MODEL, "READY")]
        assert index[0]["version"]


def test_request_ids_are_echoed_with_timeout_and_priority(http, grpc, meta):
    name, shape, out = meta
    data = np.full([2] + shape, 0.25, np.float32)
    x = httpclient.InferInput(name, list(data.shape), "FP32")
    x.set_data_from_numpy(data)
    for binary in (True, False):
        x.set_data_from_numpy(data, binary_data=binary)
        r = http.infer(MODEL, [x], request_id="h-7", priority=1, timeout=60_000_000)
        assert r.get_response()["id"] == "h-7"
        assert r.as_numpy(out).shape[0] == 2
    g = grpcclient.InferInput(name, list(data.shape), "FP32")
    g.set_data_from_numpy(data)
    r = grpc.infer(MODEL, [g], request_id="g-9", priority=2, timeout=60_000_000)
    assert r.get_response().id == "g-9"
    assert r.as_numpy(out).shape[0] == 2


def test_inference_statistics(http, grpc, meta):
    name, shape, _ = meta
    data = np.full([3] + shape, 0.5, np.float32)
    x = httpclient.InferInput(name, list(data.shape), "FP32")
    x.set_data_from_numpy(data)
    before = http.get_inference_statistics(MODEL)["model_stats"][0]
    http.infer(MODEL, [x])
    after = http.get_inference_statistics(MODEL)["model_stats"][0]
    assert after["name"] == MODEL
    assert int(after["inference_count"]) >= int(before["inference_count"]) + 3
    success = after["inference_stats"]["success"]
    assert int(success["count"]) > int(before["inference_stats"]["success"]["count"])
    assert int(success["ns"]) > 0
    assert int(after["last_inference"]) > 0
    # gRPC's view of the same counters, in its message shape.
    g = grpc.get_inference_statistics(MODEL, as_json=True)["model_stats"][0]
    assert g["name"] == MODEL
    assert int(g["inference_count"]) >= int(after["inference_count"])
    assert set(g["inference_stats"]) >= {"success", "compute_infer"}
    # Every model (the one), and an unknown one.
    assert [m["name"] for m in http.get_inference_statistics()["model_stats"]] == [MODEL]
    with pytest.raises(Exception):
        http.get_inference_statistics("no-such-model")
