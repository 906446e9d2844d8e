"""Stock tritonclient[http] against a running v2 server (worker or frontend).

Run a server, then point the tests at it:

    cargo run -p coded-sidecar --example linear_worker -- --port 8123 &
    CODED_TEST_URL=127.0.0.1:8123 python -m pytest sidecar/tests/python

CODED_TEST_MODEL names the model (default: the only one the server's
metadata lists as "linear"); the tests read input/output names and shapes
from the model metadata, so they run unchanged against a real model.
"""

import os

import numpy as np
import pytest

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

URL = os.environ.get("CODED_TEST_URL", "")
MODEL = os.environ.get("CODED_TEST_MODEL", "linear")
# Set when URL is a coding frontend: answers carry parameters.reconstructed.
FRONTEND = os.environ.get("CODED_TEST_FRONTEND") == "1"

pytestmark = pytest.mark.skipif(
    not URL, reason="set CODED_TEST_URL=host:port of a running v2 server"
)


@pytest.fixture(scope="module")
def client():
    url = URL.removeprefix("http://").rstrip("/")
    with httpclient.InferenceServerClient(url=url) as c:
        yield c


@pytest.fixture(scope="module")
def meta(client):
    m = client.get_model_metadata(MODEL)
    inp, out = m["inputs"][0], m["outputs"][0]
    return {
        "input": inp["name"],
        "input_shape": [d for d in inp["shape"] if d != -1],
        "output": out["name"],
        "output_shape": [d for d in out["shape"] if d != -1],
    }


def rows(meta, n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random([n] + meta["input_shape"], dtype=np.float32)


def infer(client, meta, data, binary_in=True, binary_out=True, outputs=True, **kw):
    inp = httpclient.InferInput(meta["input"], list(data.shape), "FP32")
    inp.set_data_from_numpy(data, binary_data=binary_in)
    requested = (
        [httpclient.InferRequestedOutput(meta["output"], binary_data=binary_out)]
        if outputs
        else None
    )
    # Comparisons below need real answers; through a frontend a rebuilt one
    # (rare with nothing failing) is asked again.
    for _ in range(5):
        result = client.infer(MODEL, [inp], outputs=requested, **kw)
        params = result.get_response().get("parameters", {})
        if not params.get("reconstructed"):
            break
    return result.as_numpy(meta["output"])


def test_health_and_metadata(client, meta):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL)
    server = client.get_server_metadata()
    assert "binary_tensor_data" in server["extensions"]
    assert meta["input_shape"] and meta["output_shape"]


def test_frontend_marks_reconstructed_answers(client, meta):
    if not FRONTEND:
        pytest.skip("only a coding frontend marks answers")
    inp = httpclient.InferInput(meta["input"], [3] + meta["input_shape"], "FP32")
    inp.set_data_from_numpy(rows(meta, 3, seed=5))
    response = client.infer(MODEL, [inp]).get_response()
    assert isinstance(response["parameters"]["reconstructed"], bool)


def test_binary_and_json_tensors_agree(client, meta):
    data = rows(meta, 8, seed=1)
    reference = infer(client, meta, data)
    assert reference.shape == tuple([8] + meta["output_shape"])
    assert reference.dtype == np.float32
    for binary_in, binary_out in [(False, False), (True, False), (False, True)]:
        got = infer(client, meta, data, binary_in=binary_in, binary_out=binary_out)
        np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-5)
    # No outputs listed: tritonclient asks for binary_data_output.
    got = infer(client, meta, data, outputs=False)
    np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-5)


def test_rows_are_independent_of_batching(client, meta):
    data = rows(meta, 5, seed=2)
    batched = infer(client, meta, data)
    for i in range(5):
        single = infer(client, meta, data[i : i + 1])
        np.testing.assert_allclose(single[0], batched[i], rtol=1e-4, atol=1e-5)


def test_compressed_requests(client, meta):
    data = rows(meta, 3, seed=3)
    reference = infer(client, meta, data)
    for algorithm in ["gzip", "deflate"]:
        got = infer(client, meta, data, request_compression_algorithm=algorithm)
        np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-5)


def test_linear_model_values(client, meta):
    if MODEL != "linear":
        pytest.skip("only the linear fake model has known outputs")
    data = rows(meta, 4, seed=4)
    w = np.array(
        [[(o + 1) - i / 4 for i in range(data.shape[1])] for o in range(meta["output_shape"][0])],
        dtype=np.float32,
    )
    np.testing.assert_allclose(infer(client, meta, data), data @ w.T, rtol=1e-5, atol=1e-5)


def test_errors_are_reported(client, meta):
    wrong = np.zeros([2, meta["input_shape"][0] + 1], dtype=np.float32)
    with pytest.raises(InferenceServerException) as e:
        infer(client, meta, wrong)
    assert e.value.status() == "400"
    assert "shape" in e.value.message()

    inp = httpclient.InferInput(meta["input"], [1] + meta["input_shape"], "FP32")
    inp.set_data_from_numpy(rows(meta, 1))
    with pytest.raises(InferenceServerException) as e:
        client.infer("no-such-model", [inp])
    assert e.value.status() == "404"
    assert "unknown model" in e.value.message()
