"""Real Triton clients (tritonclient from PyPI) against kensa's Open Inference Protocol endpoints.

Health, metadata and inference over HTTP (binary tensor extension and plain JSON) and gRPC; every
answer must equal the native API's verdict for the same image and note.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import MODEL, Kensa, Sample, labels, samples

OUTPUTS = ["label", "confidence", "probabilities", "attention", "inspection_id"]
MODES = ["http-binary", "http-json", "grpc"]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def infer(kensa: Kensa, mode: str, batch: list[Sample]) -> dict[str, np.ndarray]:
    """Sends `batch` as one request (shape [N]) the way `mode` says; returns every output."""
    images = np.array([s.image for s in batch], dtype=np.object_)
    notes = np.array([s.note.encode() for s in batch], dtype=np.object_)
    # One inspection id per unit: kensa's verdict store refuses an id reused for another image.
    ids = np.array([f"{mode}-{s.name}".encode() for s in batch], dtype=np.object_)
    if mode == "grpc":
        grpc = grpcclient.InferenceServerClient(url=kensa.grpc)
        inputs = [
            grpcclient.InferInput("image", [len(batch)], "BYTES"),
            grpcclient.InferInput("note", [len(batch)], "BYTES"),
            grpcclient.InferInput("inspection_id", [len(batch)], "BYTES"),
        ]
        for tensor, data in zip(inputs, (images, notes, ids), strict=True):
            tensor.set_data_from_numpy(data)
        result = grpc.infer(MODEL, inputs)
        return {name: result.as_numpy(name) for name in OUTPUTS}
    binary = mode == "http-binary"
    if not binary:
        # JSON cannot carry raw bytes: kensa reads JSON image elements as base64.
        images = np.array([base64.b64encode(s.image) for s in batch], dtype=np.object_)
    http = httpclient.InferenceServerClient(url=kensa.http)
    inputs = [
        httpclient.InferInput("image", [len(batch)], "BYTES"),
        httpclient.InferInput("note", [len(batch)], "BYTES"),
        httpclient.InferInput("inspection_id", [len(batch)], "BYTES"),
    ]
    for tensor, data in zip(inputs, (images, notes, ids), strict=True):
        tensor.set_data_from_numpy(data, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput(name, binary_data=binary) for name in OUTPUTS]
    result = http.infer(MODEL, inputs, outputs=outputs, request_id=f"{mode}-request")
    assert result.get_response()["id"] == f"{mode}-request"
    return {name: result.as_numpy(name) for name in OUTPUTS}


def assert_matches_native(kensa: Kensa, mode: str, batch: list[Sample]) -> None:
    outputs = infer(kensa, mode, batch)
    names = labels()
    assert outputs["probabilities"].shape == (len(batch), len(names))
    assert outputs["attention"].shape[0] == len(batch)
    for i, sample in enumerate(batch):
        verdict = kensa.native(sample, f"native-{sample.name}")
        assert _text(outputs["label"][i]) == verdict["label"], sample.name
        assert _text(outputs["inspection_id"][i]) == f"{mode}-{sample.name}"
        assert outputs["confidence"][i] == pytest.approx(verdict["confidence"], abs=1e-6)
        expected = [verdict["probabilities"][name] for name in names]
        np.testing.assert_allclose(outputs["probabilities"][i], expected, atol=1e-6)
        np.testing.assert_allclose(
            outputs["attention"][i].reshape(-1), verdict["attention"]["values"], atol=1e-6
        )


def test_http_health_and_metadata(kensa: Kensa) -> None:
    client = httpclient.InferenceServerClient(url=kensa.http)
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert not client.is_model_ready("no-such-model")
    assert client.get_server_metadata()["name"] == "kensa"
    metadata = client.get_model_metadata(MODEL)
    assert [t["name"] for t in metadata["inputs"]] == [
        "image",
        "note",
        "station_id",
        "inspection_id",
    ]
    assert [t["name"] for t in metadata["outputs"]] == [*OUTPUTS, "disposition"]
    assert metadata["outputs"][2]["shape"] == [-1, len(labels())]


def test_grpc_health_and_metadata(kensa: Kensa) -> None:
    client = grpcclient.InferenceServerClient(url=kensa.grpc)
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert "binary_tensor_data" in client.get_server_metadata().extensions
    metadata = client.get_model_metadata(MODEL, model_version="1")
    assert [t.name for t in metadata.inputs] == ["image", "note", "station_id", "inspection_id"]
    datatypes = ["BYTES", "FP32", "FP32", "FP32", "BYTES", "BYTES"]
    assert [t.datatype for t in metadata.outputs] == datatypes


@pytest.mark.parametrize("mode", MODES)
def test_one_image_equals_the_native_verdict(kensa: Kensa, mode: str) -> None:
    for sample in samples()[:4]:
        assert_matches_native(kensa, mode, [sample])


@pytest.mark.parametrize("mode", MODES)
def test_a_batch_equals_the_native_verdicts(kensa: Kensa, mode: str) -> None:
    assert_matches_native(kensa, mode, samples()[:6])


def test_default_http_request_gets_binary_outputs(kensa: Kensa) -> None:
    """With no outputs named, tritonclient asks for every output in binary."""
    sample = samples()[0]
    client = httpclient.InferenceServerClient(url=kensa.http)
    image = httpclient.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([sample.image], dtype=np.object_))
    note = httpclient.InferInput("note", [1], "BYTES")
    note.set_data_from_numpy(np.array([sample.note.encode()], dtype=np.object_))
    result = client.infer(MODEL, [image, note])
    outputs = result.get_response()["outputs"]
    assert all("binary_data_size" in o["parameters"] for o in outputs)
    assert _text(result.as_numpy("label")[0]) == kensa.native(sample, "default")["label"]


@pytest.mark.parametrize("mode", ["http", "grpc"])
def test_errors_come_back_in_the_protocol_format(kensa: Kensa, mode: str) -> None:
    module: Any = httpclient if mode == "http" else grpcclient
    client = module.InferenceServerClient(url=kensa.http if mode == "http" else kensa.grpc)
    image = module.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([b"not an image"], dtype=np.object_))
    note = module.InferInput("note", [1], "BYTES")
    note.set_data_from_numpy(np.array([b"n"], dtype=np.object_))
    with pytest.raises(InferenceServerException, match="could not be decoded"):
        client.infer(MODEL, [image, note])
    wrong = module.InferInput("picture", [1], "BYTES")
    wrong.set_data_from_numpy(np.array([b"x"], dtype=np.object_))
    with pytest.raises(InferenceServerException, match="unknown input"):
        client.infer(MODEL, [wrong, note])
    with pytest.raises(InferenceServerException, match="no-such-model"):
        client.infer("no-such-model", [note])


def test_http_model_management(kensa: Kensa) -> None:
    """Model configuration, statistics and the repository index as tritonclient reads them."""
    client = httpclient.InferenceServerClient(url=kensa.http)
    config = client.get_model_config(MODEL)
    assert config["name"] == MODEL
    assert config["max_batch_size"] >= 1
    assert "max_queue_delay_microseconds" in config["dynamic_batching"]
    inputs = {t["name"]: t for t in config["input"]}
    assert inputs["image"]["data_type"] == "TYPE_STRING"
    assert not inputs["image"]["optional"] and inputs["note"]["optional"]
    outputs = {t["name"]: t for t in config["output"]}
    assert outputs["probabilities"] == {
        "name": "probabilities",
        "data_type": "TYPE_FP32",
        "dims": [len(labels())],
    }

    before = client.get_inference_statistics(MODEL)["model_stats"][0]
    kensa.native(samples()[0], "stats-http")
    after = client.get_inference_statistics(MODEL)["model_stats"][0]
    assert after["inference_stats"]["success"]["count"] == (
        before["inference_stats"]["success"]["count"] + 1
    )
    assert after["inference_stats"]["queue"]["ns"] >= before["inference_stats"]["queue"]["ns"]
    assert after["inference_stats"]["compute_infer"]["ns"] > 0
    assert after["execution_count"] >= 1 and after["last_inference"] > 0

    index = client.get_model_repository_index()
    assert {"name": MODEL, "version": "1", "state": "READY", "reason": ""} in index
    with pytest.raises(InferenceServerException, match="repository"):
        client.unload_model(MODEL)
    client.load_model(MODEL)
    assert client.is_model_ready(MODEL)


def test_grpc_model_management(kensa: Kensa) -> None:
    client = grpcclient.InferenceServerClient(url=kensa.grpc)
    config = client.get_model_config(MODEL).config
    assert config.name == MODEL and config.max_batch_size >= 1
    assert [t.name for t in config.input] == ["image", "note", "station_id", "inspection_id"]
    assert [t.optional for t in config.input] == [False, True, True, True]
    assert list(config.output[2].dims) == [len(labels())]

    before = client.get_inference_statistics(MODEL).model_stats[0]
    kensa.native(samples()[1], "stats-grpc")
    after = client.get_inference_statistics(MODEL).model_stats[0]
    assert after.inference_stats.success.count == before.inference_stats.success.count + 1
    assert after.inference_stats.compute_infer.ns > 0

    index = client.get_model_repository_index().models
    assert [(m.name, m.version, m.state) for m in index] == [(MODEL, "1", "READY")]
    with pytest.raises(InferenceServerException, match="repository"):
        client.unload_model(MODEL)
    client.load_model(MODEL)
