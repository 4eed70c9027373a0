"""The cells of a sweep on this machine: one at a time, or side by side in `slots` processes. With `gpus`, each cell
gets the GPUs it needs to itself through CUDA_VISIBLE_DEVICES, and the next cell waiting starts as soon as enough of
them are free (a cell needing more than are free lets smaller ones behind it start). No GPU is given to two cells at
once; sweep_log.jsonl says which cell held which GPUs when. Side by side, each cell also gets its own share of
this machine's cores (its affinity, and OMP_NUM_THREADS unless the user set it), so cells do not crowd each other
off the CPU; one at a time, a cell has the whole machine as before."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from llmopt.sweeps import log
from llmopt.sweeps.cells import POLL_S, CellRun, ProgressBoard, kill_group, not_run
from llmopt.sweeps.experiment import Experiment
from llmopt.sweeps.gpus import device_name, type_mismatch
from llmopt.sweeps.plan import Done, Pending


@dataclass
class Running:
    pending: Pending
    run: CellRun
    gpus: list[str]
    slot: int  # which of the parallel slots it takes
    started: float  # Unix time, for the sweep log
    cpus: list[int]  # the cores it runs on; empty: the whole machine


@dataclass
class LocalExecutor:
    slots: int = 1
    gpus: list[str] | None = None  # None: every cell sees what the sweep sees (one cell at a time, or no GPU)

    def core_shares(self, parts: int | None = None) -> list[list[int]]:
        """This process's cores split evenly into `parts` (the slots by default); one share of all of them for one."""
        parts = parts or self.slots
        cores = sorted(os.sched_getaffinity(0))
        if parts == 1 or len(cores) < parts:
            return [cores] * parts
        size = len(cores) // parts
        return [cores[k * size : (k + 1) * size] for k in range(parts)]

    def cores_for(self, slot: int, held: list[str], shares: list[list[int]], per_gpu: list[list[int]]) -> list[int] | None:
        """A cell's cores when cells run side by side: with GPUs, the shares of the GPUs it holds (a cell on four GPUs
        feeds four of them: four shares); without, its slot's share. None: one at a time, the whole machine."""
        if self.slots == 1:
            return None
        if self.gpus:
            return sorted({c for g in held for c in per_gpu[self.gpus.index(g)]})
        return shares[slot]

    def _unavailable(self, pending: Pending) -> str | None:
        """Why this machine cannot run a cell at all: a GPU type it does not have, more GPUs than it was given."""
        cell = pending.cell
        if cell.hardware:  # every GPU a cell may be given must be of its type
            for gpu in self.gpus or [None]:
                why = type_mismatch(cell.hardware, device_name(gpu))
                if why:
                    return why
        if self.gpus is not None and cell.gpu_count > len(self.gpus):
            return f"the cell needs {cell.gpu_count} GPUs and the sweep was given {len(self.gpus)} (--gpus {','.join(self.gpus)})"
        return None

    def run(self, exp: Experiment, root: Path, todo: list[Pending], board: ProgressBoard, done: Done) -> None:
        waiting: list[Pending] = []
        for pending in todo:
            why = self._unavailable(pending)
            if why:
                done(pending, not_run(pending.cell, root / pending.cell.name, "unavailable", why))
            else:
                waiting.append(pending)
        free = list(self.gpus or [])
        shares = self.core_shares()
        per_gpu = self.core_shares(len(self.gpus)) if self.gpus else []
        free_slots = list(range(self.slots))
        running: list[Running] = []
        try:
            while waiting or running:
                for r in [r for r in running if not r.run.poll()]:
                    running.remove(r)
                    state = r.run.finish()
                    free += r.gpus
                    free_slots.append(r.slot)
                    entry = log.LogEntry.now(r.pending.cell.name, "local", r.started, state["status"], gpus=r.gpus,
                                             cpus=r.cpus)  # fmt: skip
                    log.append(root, entry)
                    done(r.pending, state)
                for pending in list(waiting):
                    need = pending.cell.gpu_count if self.gpus is not None else 0
                    if len(running) >= self.slots:
                        break
                    if need > len(free):
                        continue
                    held, free = free[:need], free[need:]
                    slot = free_slots.pop(0)
                    env = {}
                    if self.gpus is not None:
                        # Ids are NVML's (nvidia-smi's): CUDA counts in the same PCI order only when told to.
                        env = {"CUDA_VISIBLE_DEVICES": ",".join(held),
                               "CUDA_DEVICE_ORDER": os.environ.get("CUDA_DEVICE_ORDER", "PCI_BUS_ID")}  # fmt: skip
                    cpus = self.cores_for(slot, held, shares, per_gpu)
                    if cpus and "OMP_NUM_THREADS" not in os.environ:
                        env["OMP_NUM_THREADS"] = str(len(cpus))
                    run = CellRun(pending.cell, exp, root / pending.cell.name, pending.label, board, env, cpus)
                    run.start(pending.resume)
                    running.append(Running(pending, run, held, slot, time.time(), cpus or []))
                    waiting.remove(pending)
                if waiting or running:
                    time.sleep(POLL_S)
        except KeyboardInterrupt:
            _stop_all(running, board)
            raise
        finally:
            for r in running:  # the sweep is leaving: nothing a cell started may stay behind
                kill_group(r.run.proc)


def _stop_all(running: list[Running], board: ProgressBoard) -> None:
    """Ctrl-C: every running cell is asked to stop at once (each writes its partial summary), then waited for."""
    for r in running:
        board.end(r.pending.label)
        r.run.stop(signal.SIGINT)
    for r in running:
        r.run.wait_stopped()
