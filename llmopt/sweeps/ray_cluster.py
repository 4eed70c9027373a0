"""The cells of a sweep as Ray tasks on the machines of a Ray cluster.

Ray does the placement: each cell's task asks for the GPUs the cell needs and, where the experiment lists GPU types,
for that type's `accelerator_type` resource, so the cell runs on a node that has them and no GPU is given to two
cells. On its worker a task runs the cell exactly as a local sweep does (`llmopt run` in a process group of its own,
its timeout, its verdict) in a temporary folder, and sends the whole folder back; the driver unpacks it into the
results folder. The run measures the worker's machine, so env.json and the roofline name the worker's GPU. Ray's
type labels are short (A100 covers 40 and 80 GB), so the worker checks its GPU against the cell's type first, and it
gives the run the node's cores in proportion to the GPUs it holds (Ray would leave OMP_NUM_THREADS at 1).

A worker or node that dies mid-cell makes the task fail; the cell is then `failed` with Ray's reason (or run again,
`retries` times, where the experiment says so; a retry that waits for a kind of node the cluster no longer has is
`failed` too). A task that raises (llmopt missing on the worker) is `failed` with its own error. Ctrl-C cancels
the running tasks: each stops its run, which writes its partial summary, and sends its folder back, so the next
sweep resumes it. The workers need llmopt installed (the same extras as the strategies need), and a model given as a
local folder must be at the same path on every worker; a dataset given as a local file goes into Ray's object store
once and every task reads it from there.
"""

from __future__ import annotations

import dataclasses
import io
import os
import shutil
import socket
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmopt.errors import UsageError
from llmopt.results import CONFIG
from llmopt.sweeps import log
from llmopt.sweeps.cells import STOP_GRACE_S, ProgressBoard, not_run, run_cell
from llmopt.sweeps.experiment import Cell, Experiment
from llmopt.sweeps.plan import Done, Pending

RAY_MISSING = "the Ray executor needs Ray on this machine and on every worker: pip install 'llmopt[ray]'"
TYPE_RESOURCE = "accelerator_type:"  # Ray's resource for a node's GPU type (detected, or given with --resources)
PROGRESS_EVERY_S = 2.0  # how often a worker sends its cell's progress line to the driver
CANCEL_WAIT_S = STOP_GRACE_S + 30.0  # how long the driver waits for cancelled cells to send their partial folders


def pack(folder: Path) -> bytes:
    """A cell's folder as a gzip'd tar (records, summary, env, logs), to cross between machines."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return buffer.getvalue()


def unpack(data: bytes, parent: Path, name: str) -> None:
    """Replace parent/name with the folder packed in `data` (unpacked beside it first, then moved into place)."""
    staging = Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}-"))
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            tar.extractall(staging, filter="data")
        shutil.rmtree(parent / name, ignore_errors=True)
        (staging / name).rename(parent / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class ProgressBoardActor:
    """Holds each running cell's latest progress line, sent by the workers and read by the driver."""

    def __init__(self) -> None:
        self.lines: dict[str, str] = {}

    def update(self, key: str, text: str) -> None:
        self.lines[key] = text

    def end(self, key: str) -> None:
        self.lines.pop(key, None)

    def read(self) -> dict[str, str]:
        return dict(self.lines)


class RemoteBoard:
    """On a worker: the cell's progress, sent to the driver's board actor every PROGRESS_EVERY_S (not awaited)."""

    def __init__(self, actor: Any, where: str) -> None:
        self.actor, self.where, self.sent = actor, where, 0.0

    def update(self, key: str, text: str) -> None:
        if time.monotonic() - self.sent >= PROGRESS_EVERY_S:
            self.actor.update.remote(key, f"{text} on {self.where}")
            self.sent = time.monotonic()

    def end(self, key: str, text: str | None = None) -> None:
        self.actor.end.remote(key)


def run_remote(cell: Cell, exp: Experiment, prior: bytes | None, files: dict[str, bytes], label: str,
               board: Any) -> tuple[dict[str, Any], bytes, dict[str, Any]]:  # fmt: skip
    """The Ray task: run one cell on this worker and return its state, its packed folder and where it ran."""
    import ray

    work = Path(tempfile.mkdtemp(prefix="llmopt-cell-"))
    node = f"{socket.gethostname()}/{ray.get_runtime_context().get_node_id()[:8]}"  # several nodes may share a host
    where = {"node": node, "gpus": [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g],
             "started": time.time()}  # fmt: skip
    try:
        if cell.hardware:  # Ray's short labels (A100, H100) cover several variants: the worker checks its own GPU
            from llmopt.sweeps.gpus import device_name, type_mismatch

            name = device_name()  # None: no GPU NVML can see, the node's type label is all there is to go by
            why = type_mismatch(cell.hardware, name, advice="") if name else None
            if why:
                return {"status": "unavailable", "error": f"on {node}: {why}"}, b"", where
        if exp.dataset in files:  # a local dataset file of the driver's, written here
            (work / "dataset").mkdir()
            local = work / "dataset" / Path(exp.dataset).name
            local.write_bytes(files[exp.dataset])
            exp = dataclasses.replace(exp, dataset=str(local))
        if prior is not None:
            unpack(prior, work, cell.name)
        cell_dir = work / cell.name
        remote = RemoteBoard(board, where["node"])
        remote.actor.update.remote(label, f"{label}: started on {where['node']}")
        try:
            state = run_cell(cell, exp, cell_dir, (cell_dir / CONFIG).is_file(), label, remote, cell_env(_threads(cell)))
        except KeyboardInterrupt:  # the driver cancelled the task: the run has stopped and written what it finished
            state = {"status": "interrupted"}
        return state, pack(cell_dir) if cell_dir.is_dir() else b"", where
    finally:
        shutil.rmtree(work, ignore_errors=True)


def cell_env(threads: dict[str, str], worker_env: dict[str, str] | None = None) -> dict[str, str]:
    """The run's environment on its worker: its threads, and CUDA's device order, PCI bus order as in a local sweep.
    Ray gives the task its GPUs in CUDA_VISIBLE_DEVICES as indices in NVML's (PCI) order; CUDA's own default order
    puts the fastest GPU first, so on a node with mixed GPUs the run would use, and name, another GPU than Ray gave
    it, and read another's memory through NVML. A worker's own CUDA_DEVICE_ORDER is kept."""
    env = os.environ if worker_env is None else worker_env
    return {**threads, "CUDA_DEVICE_ORDER": env.get("CUDA_DEVICE_ORDER", "PCI_BUS_ID")}


def _threads(cell: Cell) -> dict[str, str]:
    """OMP_NUM_THREADS for the run: Ray sets it to the task's CPU request (1 for a GPU cell), which would starve a
    run's CPU side; a GPU cell gets the node's cores in proportion to the GPUs it holds, a CPU cell its cores."""
    import ray

    if "OMP_NUM_THREADS" in ray.get_runtime_context().runtime_env.get("env_vars", {}):
        return {}  # the user's own setting, passed through the runtime environment
    cores = len(os.sched_getaffinity(0))
    node_gpus = int(ray.get_runtime_context().get_assigned_resources().get("GPU", 0))
    if not node_gpus:
        return {"OMP_NUM_THREADS": str(cores)}
    here = next((n for n in ray.nodes() if n.get("NodeID") == ray.get_runtime_context().get_node_id()), {})
    total = max(1, int((here.get("Resources") or {}).get("GPU", 1)))
    return {"OMP_NUM_THREADS": str(max(1, cores * node_gpus // total))}


def connect(address: str | None) -> Any:
    """Ray, connected to the cluster at `address` (or to the one running on this machine, or a new local one)."""
    try:
        import ray
    except ImportError:
        raise UsageError(RAY_MISSING) from None
    import logging
    import signal
    import threading

    # ray.init replaces SIGTERM's handler with sys.exit: the sweep's own handler (stop the cells, keep their
    # partial folders) is put back.
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING, include_dashboard=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UsageError(f"cannot reach the Ray cluster at {address or 'this machine'}: {exc}") from None
    finally:
        if main and previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return ray


@dataclass
class Placement:
    """What a cell's task asks Ray for, or why no node of the cluster can ever give it."""

    options: dict[str, Any]
    type_label: str | None = None
    unavailable: str | None = None


def alive_nodes(ray: Any) -> list[dict[str, float]]:
    """The resources of each node of the cluster that is alive now."""
    return [dict(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive")]


def place(cell: Cell, exp: Experiment, nodes: list[dict[str, float]]) -> Placement:
    """The task's resources: the cell's GPUs and GPU type. On a cluster without any GPU a cell takes a whole node's
    CPUs instead, so that two cells never share a machine's cores and slow each other down."""
    labels = {k[len(TYPE_RESOURCE) :] for n in nodes for k in n if k.startswith(TYPE_RESOURCE)}
    any_gpu = any(n.get("GPU", 0) > 0 for n in nodes)
    options: dict[str, Any] = {"max_retries": exp.retries, "retry_exceptions": False}
    if any_gpu:
        options.update(num_gpus=cell.gpu_count, num_cpus=1)
    else:
        # The smallest worker's cores (a head started with --num-cpus 0 runs no cell and does not count).
        cpus = [n["CPU"] for n in nodes if n.get("CPU", 0) > 0]
        options.update(num_gpus=0, num_cpus=max(1.0, min(cpus, default=1.0)))
    label = None
    if cell.hardware:
        # Ray labels a node by the GPU's short name (A100, H100, L4); a node may be given an exact one instead.
        short = cell.hardware.split("-")[0]
        label = cell.hardware if cell.hardware in labels else short if short in labels else None
        if label is None:
            have = ", ".join(sorted(labels)) or "none"
            return Placement(options, None, f"no node of the Ray cluster has GPU type {cell.hardware} (accelerator "
                             f"types there: {have}); start one with ray start --resources "
                             f"'{{\"{TYPE_RESOURCE}{cell.hardware}\": 1}}'")  # fmt: skip
        options["resources"] = {TYPE_RESOURCE + label: 0.001}  # Ray's own way to ask for a type: a sliver of it
    wanted = {"GPU": options["num_gpus"], "CPU": options["num_cpus"], **options.get("resources", {})}
    if not any(all(n.get(k, 0) >= v for k, v in wanted.items() if v) for n in nodes):
        need = f"{cell.gpu_count} GPU(s)" + (f" of type {cell.hardware}" if cell.hardware else "")
        return Placement(options, label, f"no node of the Ray cluster has {need} (the cell's tensor_parallel_size)")
    return Placement(options, label)


@dataclass
class InFlight:
    pending: Pending
    placement: Placement
    started: float  # Unix time the task was handed to Ray


@dataclass
class RayExecutor:
    address: str | None = None

    def run(self, exp: Experiment, root: Path, todo: list[Pending], board: ProgressBoard, done: Done) -> None:
        ray = connect(self.address)
        try:
            self._run(ray, exp, root, todo, board, done)
        finally:
            ray.shutdown()

    def _run(self, ray: Any, exp: Experiment, root: Path, todo: list[Pending], board: ProgressBoard, done: Done) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # The board lives on the driver's own node: a worker node that dies must not take the progress with it.
        here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
        actor = ray.remote(num_cpus=0, scheduling_strategy=here)(ProgressBoardActor).remote()
        task = ray.remote(run_remote)
        # A local dataset goes into Ray's object store once; every task reads the same copy.
        files = ray.put({exp.dataset: Path(exp.dataset).read_bytes()} if Path(exp.dataset).is_file() else {})
        nodes = alive_nodes(ray)
        flights: dict[Any, InFlight] = {}
        for pending in todo:
            placement = place(pending.cell, exp, nodes)
            if placement.unavailable:
                done(pending, not_run(pending.cell, root / pending.cell.name, "unavailable", placement.unavailable))
                continue
            prior = pack(root / pending.cell.name) if pending.resume else None
            ref = task.options(**placement.options).remote(pending.cell, exp, prior, files, pending.label, actor)
            flights[ref] = InFlight(pending, placement, time.time())
        try:
            while flights:
                ready, _ = ray.wait(list(flights), num_returns=1, timeout=1.0)
                for ref in ready:
                    self._land(ray, ref, flights.pop(ref), exp, root, board, done)
                try:
                    lines = ray.get(actor.read.remote(), timeout=10)
                except ray.exceptions.RayError:  # progress is for the eye; it never stops a sweep
                    continue
                for flight in flights.values():
                    if flight.pending.label in lines:
                        board.update(flight.pending.label, lines[flight.pending.label])
                self._drop_unplaceable(ray, flights, lines, exp, root, board, done)
        except KeyboardInterrupt:
            self._cancel(ray, flights, exp, root, board, done)
            raise

    def _land(self, ray: Any, ref: Any, flight: InFlight, exp: Experiment, root: Path, board: ProgressBoard,
              done: Done) -> None:  # fmt: skip
        """A task has ended: its folder into the results, or the failed verdict of a cell whose worker died."""
        cell, cell_dir = flight.pending.cell, root / flight.pending.cell.name
        board.end(flight.pending.label)
        try:
            state, packed, where = ray.get(ref)
        except ray.exceptions.TaskCancelledError:
            state, packed, where = {"status": "interrupted"}, b"", {}
        except ray.exceptions.RayTaskError as exc:  # the task itself raised (llmopt missing there, a full disk)
            cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else exc
            reason = f"the cell's Ray task failed on its worker: {type(cause).__name__}: {str(cause).splitlines()[0]}"
            state = not_run(cell, cell_dir, "failed", reason, stderr_tail=str(exc)[-2000:])
            log.append(root, log.LogEntry.now(cell.name, "ray", flight.started, "failed", node="unknown"))
            done(flight.pending, state)
            return
        except ray.exceptions.RayError as exc:  # the worker process or its node died (Ray retried it `retries` times)
            tries = f" (tried {exp.retries + 1} times)" if exp.retries else ""
            reason = f"the Ray worker running the cell died{tries}: {type(exc).__name__}: {str(exc).splitlines()[0]}"
            state = not_run(cell, cell_dir, "failed", reason, stderr_tail=str(exc)[-2000:])
            log.append(root, log.LogEntry.now(cell.name, "ray", flight.started, "failed", node="unknown"))
            done(flight.pending, state)
            return
        if state.get("status") == "unavailable" and not packed:  # refused on the worker before running
            state = not_run(cell, cell_dir, "unavailable", state["error"])
        if packed:
            unpack(packed, root, cell.name)
        if state.get("status") == "interrupted":
            return
        started = where.pop("started", flight.started)
        log.append(root, log.LogEntry.now(cell.name, "ray", started, state["status"], **where))
        done(flight.pending, state)

    def _drop_unplaceable(self, ray: Any, flights: dict[Any, InFlight], started: dict[str, str], exp: Experiment,
                          root: Path, board: ProgressBoard, done: Done) -> None:  # fmt: skip
        """A cell whose kind of node the cluster no longer has (all of them died) would wait forever, the first time
        or retried after its node died: it is cancelled and `failed`, and the sweep goes on. A cell running now
        has its node, so only cells without one are caught."""
        nodes = alive_nodes(ray)
        for ref, flight in list(flights.items()):
            placement = place(flight.pending.cell, exp, nodes)
            if placement.unavailable is None:
                continue
            ray.cancel(ref, force=True)
            del flights[ref]
            cell = flight.pending.cell
            began = "after it started" if flight.pending.label in started else "before it started"
            reason = f"the Ray cluster lost its nodes for this cell {began}: {placement.unavailable}"
            board.end(flight.pending.label)
            done(flight.pending, not_run(cell, root / cell.name, "failed", reason))

    def _cancel(self, ray: Any, flights: dict[Any, InFlight], exp: Experiment, root: Path, board: ProgressBoard,
                done: Done) -> None:  # fmt: skip
        """Ctrl-C: every task is cancelled (a running run stops and writes its partial summary) and what the
        workers send back within CANCEL_WAIT_S is kept, so the next sweep resumes it."""
        for ref in flights:
            ray.cancel(ref)
        deadline = time.monotonic() + CANCEL_WAIT_S
        while flights and time.monotonic() < deadline:
            ready, _ = ray.wait(list(flights), num_returns=1, timeout=1.0)
            for ref in ready:
                self._land(ray, ref, flights.pop(ref), exp, root, board, done)
