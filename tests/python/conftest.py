"""Starts the real `kensa serve` binary on free ports with the shipped demo model, once per session.

The binary is target/debug/kensa (scripts/test.sh builds it with `cargo test` first); `cargo build`
here keeps it current when the tests run on their own. KENSA_BIN names another binary.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "models" / "demo"
MODEL = "kensa-demo"


@dataclass
class Sample:
    """One of the demo model's fixture samples."""

    name: str
    image: bytes
    note: str


@dataclass
class Kensa:
    """A running server: where its ports are, and its log so far."""

    http: str
    grpc: str
    process: subprocess.Popen[str]
    log: list[str] = field(default_factory=list)

    def native(self, sample: Sample, inspection_id: str) -> dict[str, Any]:
        """The native API's verdict for a sample (POST /v1/inspections, JSON)."""
        body = json.dumps(
            {
                "station_id": "pytest",
                "inspection_id": inspection_id,
                "image": base64.b64encode(sample.image).decode(),
                "note": sample.note,
            }
        ).encode()
        request = urllib.request.Request(
            f"http://{self.http}/v1/inspections",
            data=body,
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            verdict: dict[str, Any] = json.load(response)
        return verdict


def samples() -> list[Sample]:
    """The fixture samples shipped with the demo model."""
    found = []
    for line in (DEMO / "fixtures" / "samples.jsonl").read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            image = (DEMO / "fixtures" / record["image"]).read_bytes()
            found.append(Sample(record["image"], image, record.get("note", "")))
    return found


def labels() -> list[str]:
    """Label names in the manifest's order (the order of the `probabilities` tensor)."""
    manifest = json.loads((DEMO / "manifest.json").read_text())
    return [label["name"] for label in manifest["labels"]]


def _binary() -> Path:
    if "KENSA_BIN" in os.environ:
        return Path(os.environ["KENSA_BIN"])
    subprocess.run(["cargo", "build", "--quiet", "--bin", "kensa"], cwd=ROOT, check=True)
    return ROOT / "target" / "debug" / "kensa"


def _wait_ready(http: str, process: subprocess.Popen[str], log: list[str]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("kensa exited:\n" + "\n".join(log))
        try:
            with urllib.request.urlopen(f"http://{http}/readyz", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.1)
    raise RuntimeError("kensa did not become ready:\n" + "\n".join(log))


@contextmanager
def start_kensa(data: Path, extra: list[str] | None = None) -> Iterator[Kensa]:
    """A `kensa serve` on ports the OS picks, with the demo model and `extra` flags."""
    process = subprocess.Popen(
        [
            str(_binary()),
            "--log-format=json",
            "serve",
            "--http-host=127.0.0.1",
            "--http-port=0",
            "--grpc-host=127.0.0.1",
            "--grpc-port=0",
            "--device=cpu",
            "--warmup-batches=1",
            f"--model-repository={DEMO}",
            f"--data-dir={data}",
            *(extra or []),
        ],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    log: list[str] = []
    addresses: dict[str, str] = {}
    found = threading.Event()

    def read_log() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            log.append(line.rstrip())
            try:
                fields = json.loads(line).get("fields", {})
            except json.JSONDecodeError:
                continue
            for key in ("http_addr", "grpc_addr"):
                if key in fields:
                    addresses[key] = fields[key]
            if len(addresses) == 2:
                found.set()

    threading.Thread(target=read_log, daemon=True).start()
    try:
        if not found.wait(timeout=60):
            raise RuntimeError("kensa did not report its ports:\n" + "\n".join(log))
        server = Kensa(addresses["http_addr"], addresses["grpc_addr"], process, log)
        _wait_ready(server.http, process, log)
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def kensa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kensa]:
    """One server for the whole session, on ports the OS picked."""
    with start_kensa(tmp_path_factory.mktemp("kensa-data")) as server:
        yield server
