"""Stock tritonclient[grpc] against a running server's gRPC port (worker or
frontend), its answers compared with tritonclient[http] on the same server.

    CODED_TEST_URL=127.0.0.1:8000 CODED_TEST_GRPC_URL=127.0.0.1:8001 \\
      python -m pytest sidecar/tests/python

CODED_TEST_MODEL and CODED_TEST_FRONTEND as in test_tritonclient.py. The
server runs with the default limits (4096 rows per request, 64 MiB
messages).
"""

import os

import numpy as np
import pytest

grpcclient = pytest.importorskip("tritonclient.grpc")
httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

URL = os.environ.get("CODED_TEST_URL", "")
GRPC_URL = os.environ.get("CODED_TEST_GRPC_URL", "")
MODEL = os.environ.get("CODED_TEST_MODEL", "linear")
FRONTEND = os.environ.get("CODED_TEST_FRONTEND") == "1"
MAX_ROWS = 4096
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

pytestmark = pytest.mark.skipif(
    not (URL and GRPC_URL),
    reason="set CODED_TEST_URL and CODED_TEST_GRPC_URL=host:port of a running v2 server",
)


@pytest.fixture(scope="module")
def client():
    with grpcclient.InferenceServerClient(url=GRPC_URL) as c:
        yield c


@pytest.fixture(scope="module")
def http():
    with httpclient.InferenceServerClient(url=URL.removeprefix("http://").rstrip("/")) as c:
        yield c


@pytest.fixture(scope="module")
def meta(client):
    m = client.get_model_metadata(MODEL, as_json=True)
    inp, out = m["inputs"][0], m["outputs"][0]
    return {
        "input": inp["name"],
        "input_shape": [int(d) for d in inp["shape"] if int(d) != -1],
        "output": out["name"],
        "output_shape": [int(d) for d in out["shape"] if int(d) != -1],
    }


def rows(meta, n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random([n] + meta["input_shape"], dtype=np.float32)


def infer(client, meta, data, **kw):
    """The output for `data`; through a frontend a rebuilt answer (rare with
    nothing failing) is asked again, so that comparisons see real ones."""
    inp = grpcclient.InferInput(meta["input"], list(data.shape), "FP32")
    inp.set_data_from_numpy(data)
    outputs = [grpcclient.InferRequestedOutput(meta["output"])]
    for _ in range(5):
        result = client.infer(MODEL, [inp], outputs=outputs, **kw)
        params = result.get_response().parameters
        if "reconstructed" not in params or not params["reconstructed"].bool_param:
            break
    return result.as_numpy(meta["output"])


def http_infer(http, meta, data):
    inp = httpclient.InferInput(meta["input"], list(data.shape), "FP32")
    inp.set_data_from_numpy(data)
    for _ in range(5):
        result = http.infer(MODEL, [inp])
        if not result.get_response().get("parameters", {}).get("reconstructed"):
            break
    return result.as_numpy(meta["output"])


def test_health_and_metadata(client, http, meta):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert not client.is_model_ready("no-such-model")
    server = client.get_server_metadata(as_json=True)
    assert server["name"] == "coded-sidecar"
    assert "binary_tensor_data" in server["extensions"]
    over_http = http.get_model_metadata(MODEL)
    assert meta["input"] == over_http["inputs"][0]["name"]
    assert meta["output_shape"] == [d for d in over_http["outputs"][0]["shape"] if d != -1]


def test_answers_equal_http(client, http, meta):
    data = rows(meta, 8, seed=1)
    got = infer(client, meta, data)
    assert got.shape == tuple([8] + meta["output_shape"])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, http_infer(http, meta, data), rtol=1e-5, atol=1e-5)
    # No outputs listed: every output comes back.
    inp = grpcclient.InferInput(meta["input"], list(data.shape), "FP32")
    inp.set_data_from_numpy(data)
    result = client.infer(MODEL, [inp], request_id="r-7")
    assert result.get_response().id == "r-7"
    np.testing.assert_allclose(result.as_numpy(meta["output"]), got, rtol=1e-5, atol=1e-5)


def test_rows_are_independent_of_batching(client, meta):
    data = rows(meta, 4, seed=2)
    batched = infer(client, meta, data)
    for i in range(4):
        single = infer(client, meta, data[i : i + 1])
        np.testing.assert_allclose(single[0], batched[i], rtol=1e-4, atol=1e-5)


def test_compressed_requests(client, meta):
    data = rows(meta, 3, seed=3)
    reference = infer(client, meta, data)
    for algorithm in ["gzip", "deflate"]:
        got = infer(client, meta, data, compression_algorithm=algorithm)
        np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-5)


def test_frontend_marks_reconstructed_answers(client, meta):
    if not FRONTEND:
        pytest.skip("only a coding frontend marks answers")
    inp = grpcclient.InferInput(meta["input"], [3] + meta["input_shape"], "FP32")
    inp.set_data_from_numpy(rows(meta, 3, seed=5))
    params = client.infer(MODEL, [inp]).get_response().parameters
    assert params["reconstructed"].WhichOneof("parameter_choice") == "bool_param"


def status_of(call):
    with pytest.raises(InferenceServerException) as e:
        call()
    return e.value.status(), e.value.message()


def test_errors_get_grpc_codes(client, meta):
    wrong = np.zeros([2, meta["input_shape"][0] + 1], dtype=np.float32)
    status, message = status_of(lambda: infer(client, meta, wrong))
    assert status == "StatusCode.INVALID_ARGUMENT"
    assert "shape" in message

    inp = grpcclient.InferInput(meta["input"], [1] + meta["input_shape"], "FP32")
    inp.set_data_from_numpy(rows(meta, 1))
    status, message = status_of(lambda: client.infer("no-such-model", [inp]))
    assert status == "StatusCode.NOT_FOUND"
    assert "unknown model" in message
    status, message = status_of(lambda: client.get_model_metadata("no-such-model"))
    assert status == "StatusCode.NOT_FOUND"


def test_limits_are_resource_exhausted(client, meta):
    too_many = np.zeros([MAX_ROWS + 1] + meta["input_shape"], dtype=np.float32)
    status, message = status_of(lambda: infer(client, meta, too_many))
    assert status == "StatusCode.RESOURCE_EXHAUSTED"
    assert "--max-rows-per-request" in message

    row_bytes = 4 * int(np.prod(meta["input_shape"]))
    oversized = np.zeros(
        [MAX_MESSAGE_BYTES // row_bytes + 1] + meta["input_shape"], dtype=np.float32
    )
    status, message = status_of(lambda: infer(client, meta, oversized))
    assert status == "StatusCode.RESOURCE_EXHAUSTED"
    assert str(MAX_MESSAGE_BYTES) in message
    # Still serving.
    assert infer(client, meta, rows(meta, 1)).shape == tuple([1] + meta["output_shape"])
