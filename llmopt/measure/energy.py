"""Energy over the document loop: NVML's total-energy counter on every GPU the run uses; on a CPU, the kernel's RAPL
counters (`/sys/class/powercap`, Intel and AMD packages). Where the run's counter cannot be read, null with the
reason: a GPU run without NVML is never given the CPU package's joules, which would mix two quantities in one column.

Both are cumulative counters read at the start and the end of the loop; RAPL's wraps around at
`max_energy_range_uj`, which the difference allows for. NVML's counter needs Volta or newer; RAPL files are often
readable by root only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

POWERCAP = Path("/sys/class/powercap")


@dataclass
class _Counter:
    read: Any  # () -> joules so far
    wrap_j: float | None = None  # the counter's range, where it wraps


@dataclass
class EnergyMeter:
    counters: list[_Counter] = field(default_factory=list)
    source: str | None = None
    note: str | None = None
    _start: list[float] = field(default_factory=list)
    joules: float | None = None

    def start(self, gpu_handles: list[Any] | None, on_gpu: bool = False, gpu_note: str | None = None) -> None:
        """Read every counter. `gpu_handles`: the NVML handles of the run's GPUs; `on_gpu`: the run is on a GPU (with
        no handles: NVML could not be read, for the reason `gpu_note`); neither: a CPU run, measured by RAPL."""
        if gpu_handles:
            self.counters, self.source, self.note = _nvml(gpu_handles)
        elif on_gpu:
            self.counters, self.source = [], "nvml"
            self.note = f"a GPU run without an NVML energy reading ({gpu_note or 'NVML found none of its GPUs'})"
        else:
            self.counters, self.source, self.note = _rapl()
        try:
            self._start = [c.read() for c in self.counters]
        except Exception as exc:  # a counter that cannot be read after all: no figure, never a failed run
            self.counters, self.note = [], f"{self.source} energy counter unreadable: {type(exc).__name__}: {exc}"

    def stop(self) -> None:
        if not self.counters:
            return
        try:
            ends = [c.read() for c in self.counters]
        except Exception as exc:
            self.note = f"{self.source} energy counter unreadable: {type(exc).__name__}: {exc}"
            return
        total = 0.0
        for counter, begin, end in zip(self.counters, self._start, ends, strict=True):
            used = end - begin
            if used < 0 and counter.wrap_j:  # the counter wrapped around once during the loop
                used += counter.wrap_j
            total += used
        self.joules = total

    def figures(self) -> dict[str, Any]:
        return {"energy_j": self.joules, "energy_source": self.source if self.joules is not None else None,
                "energy_note": None if self.joules is not None else (self.note or "no energy counter")}  # fmt: skip


def _nvml(handles: list[Any]) -> tuple[list[_Counter], str, str | None]:
    try:
        import pynvml

        counters = []
        for handle in handles:
            pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)  # raises on GPUs before Volta
            counters.append(_Counter(lambda h=handle: pynvml.nvmlDeviceGetTotalEnergyConsumption(h) / 1000))  # mJ
        return counters, "nvml", None
    except Exception as exc:
        return [], "nvml", f"NVML total energy not available: {type(exc).__name__}: {exc}"


def _rapl(root: Path = POWERCAP) -> tuple[list[_Counter], str, str | None]:
    """The package domains (`intel-rapl:N` with name package-N; AMD packages appear there too), not their
    sub-domains (cores, dram), which the package already counts."""
    if not root.is_dir():
        return [], "rapl", f"no RAPL counters ({root} does not exist: a VM or container without powercap)"
    counters = []
    for domain in sorted(root.glob("*-rapl:*")):
        if domain.name.count(":") != 1:
            continue
        energy = domain / "energy_uj"
        try:
            if not (domain / "name").read_text().startswith("package"):
                continue
            energy.read_text()
            wrap = float((domain / "max_energy_range_uj").read_text()) / 1e6
        except OSError as exc:
            return [], "rapl", f"RAPL counters not readable ({exc.strerror or exc}; they are often root only)"
        counters.append(_Counter(lambda f=energy: float(f.read_text()) / 1e6, wrap))
    if not counters:
        return [], "rapl", f"no RAPL package domain under {root}"
    return counters, "rapl", None
