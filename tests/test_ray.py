"""Sweeps on a Ray cluster, for real: a head and two worker nodes started here on 127.0.0.1, the workers naming two
fake GPU types (`accelerator_type:FAKE-A`, `FAKE-B`) and one fake GPU each, so the per-type cells, the placement and
the folders sent back are all exercised; then a worker node killed in the middle of a cell, and a resumed sweep."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import ROOT, cli_env, read_json, write_jsonl

from llmopt.sweeps.cells import group_alive

pytest.importorskip("ray", reason="Ray is not installed: pip install 'llmopt[ray]'")

FAULTS = ROOT / "tests" / "fault_strategies.py"
RAY = Path(sys.executable).with_name("ray")
START_TIMEOUT_S = 90


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalCluster:
    """A Ray head and worker nodes, each `ray start --block` in a session of its own, so a node can be killed whole."""

    temp: Path
    port: int = field(default_factory=free_port)
    nodes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _start(self, name: str, args: list[str]) -> None:
        log = self.temp / f"{name}.log"
        env = {**cli_env(), "RAY_USAGE_STATS_ENABLED": "0"}
        cmd = [str(RAY), "start", "--block", "--node-ip-address", "127.0.0.1", "--disable-usage-stats",
               "--object-store-memory", str(100 * 2**20), "--dashboard-agent-listen-port", str(free_port()), *args]  # fmt: skip
        with open(log, "wb") as out:
            self.nodes[name] = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while b"Ray runtime started" not in log.read_bytes():
            assert self.nodes[name].poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)

    def start_head(self) -> None:
        self._start("head", ["--head", "--port", str(self.port), "--num-cpus", "0", "--num-gpus", "0",
                             "--temp-dir", str(self.temp / "ray"), "--include-dashboard", "false",
                             "--ray-client-server-port", str(free_port())])  # fmt: skip

    def start_worker(self, gpu_type: str) -> None:
        resources = json.dumps({f"accelerator_type:{gpu_type}": 1})
        self._start(gpu_type, ["--address", self.address, "--num-cpus", "1", "--num-gpus", "1", "--resources", resources])

    def kill(self, name: str) -> None:
        """The node dies at once, as a machine that loses power: SIGKILL to its whole process group."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.nodes[name].pid, signal.SIGKILL)
        self.nodes[name].wait()

    def stop(self) -> None:
        """A test cluster holds nothing to save: every node is killed, and waited for until none of it is left."""
        for name in reversed(list(self.nodes)):
            self.kill(name)
        deadline = time.monotonic() + 30
        while any(group_alive(p.pid) for p in self.nodes.values()) and time.monotonic() < deadline:
            time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    # A short folder: Ray's socket paths live under it and a Unix socket path is at most 107 bytes.
    temp = Path(tempfile.mkdtemp(prefix="llr", dir="/tmp"))
    ray_cluster = LocalCluster(temp)
    try:
        ray_cluster.start_head()
        ray_cluster.start_worker("FAKE-A")
        ray_cluster.start_worker("FAKE-B")
        yield ray_cluster
    finally:
        ray_cluster.stop()
        shutil.rmtree(temp, ignore_errors=True)


def sweep(*args: str | Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llmopt.sweep", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=cli_env(), timeout=timeout)  # fmt: skip


def test_a_ray_sweep_runs_every_gpu_type_and_sends_the_folders_back(cluster: LocalCluster, tmp_path: Path):
    spec = tmp_path / "exp.yaml"
    spec.write_text("""
name: two-types
hardware: [FAKE-A, FAKE-B]
price_per_hour: {FAKE-A: 1.0, FAKE-B: 2.5}
model: tiny
dataset: sample
generation: {max_new_tokens: 12, limit: 6}
cells:
  - strategy: default
  - strategy: lead
""")
    out = tmp_path / "out"
    result = sweep(spec, "--executor", "ray", "--ray-address", cluster.address, "--out", out)
    assert result.returncode == 0, result.stderr
    cells = ["default@FAKE-A", "default@FAKE-B", "lead@FAKE-A", "lead@FAKE-B"]
    for cell in cells:
        for name in ("summary.json", "records.jsonl", "env.json", "config.json", "stderr.log"):
            assert (out / cell / name).is_file(), (cell, name)
        assert read_json(out / cell / "summary.json")["status"] == "ok"
        assert read_json(out / cell / "env.json")["cuda_device_order"] == "PCI_BUS_ID", "Ray's GPU ids are NVML's"
        assert len((out / cell / "records.jsonl").read_text().splitlines()) == 6
    log = {e["cell"]: e for e in map(json.loads, (out / "sweep_log.jsonl").read_text().splitlines())}
    assert set(log) == set(cells)
    assert log["default@FAKE-A"]["node"] != log["default@FAKE-B"]["node"]  # each type on its own node
    assert log["default@FAKE-A"]["node"] == log["lead@FAKE-A"]["node"]
    assert all(e["executor"] == "ray" and e["gpus"] for e in log.values())  # Ray gave each cell its GPU
    report = (out / "report.md").read_text()
    assert "## GPU types side by side" in report
    assert "FAKE-A $1/h, FAKE-B $2.5/h" in report
    side = report.split("## GPU types side by side")[1].split("##")[0]
    row = next(line for line in side.splitlines() if line.startswith("| default |"))
    speeds = {t: read_json(out / f"default@{t}" / "summary.json") for t in ("FAKE-A", "FAKE-B")}
    for t, price in (("FAKE-A", 1.0), ("FAKE-B", 2.5)):
        cost = price * 1e6 / (3600 * speeds[t]["output_tokens_per_s"])
        assert f"${cost:.3g}" in row, (t, row)


def _cell_process(cell: str) -> int | None:
    """The pid of the `llmopt.run` of a cell, found by its --out folder among this machine's processes."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            args = cmdline.read_bytes().split(b"\0")
            if b"llmopt.run" in args and any(a.endswith(cell.encode()) for a in args):
                return int(cmdline.parent.name)
    return None


def _out_folder(pid: int) -> Path:
    args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return Path(args[args.index(b"--out") + 1].decode())


def test_a_dead_worker_fails_its_cell_and_a_resumed_sweep_runs_only_that(cluster: LocalCluster, tmp_path: Path):
    docs = [{"id": f"d{i}", "document": f"Step {i}. Boil water. Add salt.", "summary": "Boil water."} for i in range(40)]
    dataset = write_jsonl(tmp_path / "docs.jsonl", docs)  # a local file: sent to the workers with each task
    spec = tmp_path / "exp.yaml"
    spec.write_text(f"""
name: node-dies
hardware: [FAKE-A, FAKE-B]
dataset: {dataset}
generation: {{max_new_tokens: 4}}
cells:
  - strategy: {FAULTS}:Slow
    name: slow
""")
    out = tmp_path / "out"
    args = [sys.executable, "-m", "llmopt.sweep", spec, "--executor", "ray", "--ray-address", cluster.address, "--out", out]
    driver = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=cli_env())
    deadline = time.monotonic() + 180
    while True:  # the FAKE-B cell is running and has finished a document: kill its node now
        assert driver.poll() is None and time.monotonic() < deadline, driver.communicate()
        pid = _cell_process("slow@FAKE-B")
        records = _out_folder(pid) / "records.jsonl" if pid else None
        if records is not None and records.is_file() and records.read_text().count("\n") >= 1:
            break
        time.sleep(0.2)
    cluster.kill("FAKE-B")
    stdout, stderr = driver.communicate(timeout=300)
    shutil.rmtree(records.parent.parent, ignore_errors=True)  # the dead machine's work folder, never cleaned up
    assert driver.returncode == 0, stderr
    dead = read_json(out / "slow@FAKE-B" / "sweep_cell.json")
    assert dead["status"] == "failed"
    assert "Ray worker running the cell died" in dead["errors"][0]
    assert read_json(out / "slow@FAKE-A" / "summary.json")["status"] == "ok"
    assert "2 cells, 1 failed" in stdout
    assert "slow@FAKE-B" in (out / "report.md").read_text()

    cluster.start_worker("FAKE-B")
    finished = (out / "slow@FAKE-A" / "summary.json").stat().st_mtime_ns
    again = sweep(spec, "--executor", "ray", "--ray-address", cluster.address, "--out", out)
    assert again.returncode == 0, again.stderr
    assert "slow@FAKE-A: done earlier (ok), skipped" in again.stderr
    assert (out / "slow@FAKE-A" / "summary.json").stat().st_mtime_ns == finished
    state = read_json(out / "slow@FAKE-B" / "summary.json")
    assert state["status"] == "ok" and state["n_completed"] == len(docs)
    assert not (out / "slow@FAKE-B" / "sweep_cell.json").exists()
