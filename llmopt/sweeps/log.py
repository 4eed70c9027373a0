"""sweep_log.jsonl in a sweep's folder: when each cell started and ended, where (the machine, the GPUs it was given)
and how it ended, appended by every session. A parallel or cluster sweep can be checked from it afterwards (no GPU
held by two cells at once) and its cells' wall times read."""

from __future__ import annotations

import json
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmopt.files import read_jsonl

SWEEP_LOG = "sweep_log.jsonl"


@dataclass
class LogEntry:
    cell: str
    executor: str  # local or ray
    started: float  # Unix time
    ended: float
    status: str
    gpus: list[str] = field(default_factory=list)  # CUDA_VISIBLE_DEVICES the cell ran with
    cpus: list[int] = field(default_factory=list)  # the cores it kept to, where cells ran side by side
    node: str = field(default_factory=socket.gethostname)

    @classmethod
    def now(cls, cell: str, executor: str, started: float, status: str, **where: Any) -> LogEntry:
        return cls(cell, executor, started, time.time(), status, **where)


def append(root: Path, entry: LogEntry) -> None:
    with open(root / SWEEP_LOG, "a", encoding="utf-8") as f:
        f.write(json.dumps(asdict(entry)) + "\n")


def read(root: Path) -> list[dict[str, Any]]:
    return read_jsonl(root / SWEEP_LOG)[0]
