"""Proof of the operations setup with a real Prometheus: kensa and Debian's Prometheus on
loopback, Prometheus loading deploy/prometheus/kensa-rules.yml, load from four stations over
native HTTP, the Open Inference Protocol over HTTP and over gRPC, then the questions an
operator asks, answered by Prometheus queries.

    .venv/bin/python scripts/ops_proof.py [--seconds 60]

Needs target/release/kensa (cargo build --release) or KENSA_BIN, and `prometheus` on PATH
(Debian package prometheus). Grafana is not in Debian or PyPI, so the dashboard is provisioned
in deploy/compose.yaml but not rendered here.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "models" / "demo"
STATIONS = [("aoi-01", "L1"), ("aoi-02", "L1"), ("aoi-03", "L2"), ("aoi-04", "L2")]

QUESTIONS = [
    ("requests/s by protocol", "sum by (protocol) (rate(kensa_requests_total[1m]))"),
    (
        "p99 inspection latency (s) by protocol",
        "kensa:inspection_latency_seconds:p99_5m",
    ),
    (
        "mean batch size",
        "sum(rate(kensa_batch_size_sum[1m])) / sum(rate(kensa_batch_size_count[1m]))",
    ),
    ("defect rate by station (15 min)", "kensa:defect_ratio:station_15m"),
    (
        "dispositions/s",
        'sum by (disposition) (rate(kensa_verdicts_total{disposition!="none"}[1m]))',
    ),
    (
        "errors/s by protocol and code",
        "sum by (protocol, code) (rate(kensa_errors_total[1m]))",
    ),
    ("drift PSI", "kensa_drift_psi"),
    ("alerts firing or pending", "ALERTS"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer 200 within {seconds:.0f} s")


def samples() -> list[tuple[bytes, str]]:
    found = []
    for line in (DEMO / "fixtures" / "samples.jsonl").read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            found.append(
                ((DEMO / "fixtures" / record["image"]).read_bytes(), record["note"])
            )
    return found


class Load:
    """Stations sending units until stopped, each over its own protocol."""

    def __init__(self, http: str, grpc: str) -> None:
        self.http, self.grpc = http, grpc
        self.stop = threading.Event()
        self.sent = 0
        self.lock = threading.Lock()

    def count(self) -> None:
        with self.lock:
            self.sent += 1

    def native(self, station: str, line: str) -> None:
        shots = samples()
        n = 0
        while not self.stop.is_set():
            image, note = random.choice(shots)
            body = json.dumps(
                {
                    "station_id": station,
                    "inspection_id": f"{station}-{n}",
                    "line": line,
                    "image": base64.b64encode(image).decode(),
                    "note": note,
                }
            ).encode()
            request = urllib.request.Request(
                f"http://{self.http}/v1/inspections",
                data=body,
                headers={"content-type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=60):
                self.count()
            n += 1

    def v2(self, station: str, over_grpc: bool) -> None:
        shots = samples()
        module: Any = grpcclient if over_grpc else httpclient
        client = module.InferenceServerClient(url=self.grpc if over_grpc else self.http)
        n = 0
        while not self.stop.is_set():
            batch = random.sample(shots, 4)
            inputs = []
            for name, values in (
                ("image", [s[0] for s in batch]),
                ("note", [s[1].encode() for s in batch]),
                ("station_id", [station.encode()] * len(batch)),
                (
                    "inspection_id",
                    [f"{station}-{n}-{i}".encode() for i in range(len(batch))],
                ),
            ):
                tensor = module.InferInput(name, [len(batch)], "BYTES")
                tensor.set_data_from_numpy(np.array(values, dtype=np.object_))
                inputs.append(tensor)
            client.infer("kensa-demo", inputs)
            for _ in batch:
                self.count()
            n += 1


def query(prometheus: str, expression: str) -> list[dict[str, Any]]:
    url = f"http://{prometheus}/api/v1/query?" + urllib.parse.urlencode(
        {"query": expression}
    )
    with urllib.request.urlopen(url, timeout=10) as response:
        answer: dict[str, Any] = json.load(response)
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=60.0, help="how long the load runs"
    )
    args = parser.parse_args()
    binary = Path(os.environ.get("KENSA_BIN", ROOT / "target" / "release" / "kensa"))
    prometheus_bin = shutil.which("prometheus")
    if prometheus_bin is None:
        raise SystemExit("prometheus is not on PATH (Debian package prometheus)")
    work = Path(tempfile.mkdtemp(prefix="kensa-ops-proof-"))
    http, grpc, web = free_port(), free_port(), free_port()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        processes.append(
            subprocess.Popen(
                [
                    str(binary),
                    "serve",
                    "--device=cpu",
                    f"--model-repository={DEMO}",
                    f"--data-dir={work / 'data'}",
                    "--http-host=127.0.0.1",
                    f"--http-port={http}",
                    "--grpc-host=127.0.0.1",
                    f"--grpc-port={grpc}",
                    "--drift-window=100",
                ],
                stderr=subprocess.DEVNULL,
            )
        )
        rules = ROOT / "deploy" / "prometheus" / "kensa-rules.yml"
        (work / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 2s\n  evaluation_interval: 5s\n"
            f"rule_files:\n  - {rules}\n"
            "scrape_configs:\n  - job_name: kensa\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{http}']\n"
        )
        processes.append(
            subprocess.Popen(
                [
                    prometheus_bin,
                    f"--config.file={work / 'prometheus.yml'}",
                    f"--storage.tsdb.path={work / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{web}",
                ],
                stderr=subprocess.DEVNULL,
            )
        )
        wait_for(f"http://127.0.0.1:{http}/readyz", 300)
        wait_for(f"http://127.0.0.1:{web}/-/ready", 60)
        load = Load(f"127.0.0.1:{http}", f"127.0.0.1:{grpc}")
        workers = [
            threading.Thread(target=load.native, args=STATIONS[0]),
            threading.Thread(target=load.native, args=STATIONS[1]),
            threading.Thread(target=load.v2, args=(STATIONS[2][0], False)),
            threading.Thread(target=load.v2, args=(STATIONS[3][0], True)),
        ]
        for worker in workers:
            worker.start()
        time.sleep(args.seconds)
        load.stop.set()
        for worker in workers:
            worker.join()
        time.sleep(6)
        print(
            f"kensa {binary}, Prometheus {prometheus_bin}; {load.sent} units in {args.seconds:.0f} s"
        )
        print(f"load average: {os.getloadavg()[0]:.2f}\n")
        for question, expression in QUESTIONS:
            print(f"{question}:  {expression}")
            for series in query(f"127.0.0.1:{web}", expression):
                labels = ",".join(
                    f"{k}={v}" for k, v in sorted(series["metric"].items())
                )
                print(f"    {{{labels}}}  {float(series['value'][1]):.4g}")
            print()
    finally:
        for process in reversed(processes):
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
