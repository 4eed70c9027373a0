"""NVML, read safely: the GPUs a run really uses, and their memory sampled while it runs.

CUDA numbers devices after `CUDA_VISIBLE_DEVICES` (the run's device 0 may be the machine's GPU 3); NVML numbers
every GPU of the machine. The two are matched by UUID (or PCI bus id where no UUID is given), never by index. MIG
instances are matched by their own UUIDs; a GPU in MIG mode named by its index or its UUID is, to CUDA, its first MIG
instance, never the whole GPU (whose memory and name would be the parent's). NVML is optional: missing, refused
(containers) or failing, it leaves the figures null with a note, and never fails a run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CudaDevice:
    """What is known of one visible CUDA device, to find it in NVML: its UUID or PCI bus id (from torch), or the
    NVML index CUDA_VISIBLE_DEVICES gives it."""

    uuid: str | None
    pci_bus_id: str | None  # "0000:3b:00.0"
    nvml_index: int | None = None


@dataclass(frozen=True)
class NvmlDevice:
    uuid: str
    pci_bus_id: str | None
    handle: Any
    parent: str | None = None  # a MIG instance: the UUID of its GPU
    mig_ids: tuple[int, int] | None = None  # a MIG instance: its GPU instance and compute instance ids
    mig_mode: bool = False  # a whole GPU with MIG enabled: CUDA sees its MIG instances, not the GPU itself


def _uuid_key(uuid: str | None) -> str | None:
    # torch: "2c8c4ee4-..."; NVML: "GPU-2c8c4ee4-..." or "MIG-...".
    if not uuid:
        return None
    text = uuid.strip().lower()
    for prefix in ("gpu-", "mig-"):
        text = text.removeprefix(prefix)
    return text


def _pci_key(bus_id: str | None) -> tuple[int, ...] | None:
    # NVML: "00000000:3B:00.0" (8-digit domain); torch-derived: "0000:3b:00.0". Compared as numbers.
    try:
        domain, bus, rest = (bus_id or "").strip().split(":")
        device, _, function = rest.partition(".")
        return int(domain, 16), int(bus, 16), int(device, 16), int(function or "0", 16)
    except ValueError:
        return None


def match(wanted: Sequence[CudaDevice], available: Sequence[NvmlDevice]) -> list[NvmlDevice | None]:
    """The NVML device of each visible CUDA device (None where none matches), by UUID first, then PCI bus id."""
    by_uuid = {_uuid_key(d.uuid): d for d in available}
    by_pci = {_pci_key(d.pci_bus_id): d for d in available if _pci_key(d.pci_bus_id)}
    found = []
    for device in wanted:
        hit = by_uuid.get(_uuid_key(device.uuid)) if device.uuid else None
        if hit is None and device.pci_bus_id:
            hit = by_pci.get(_pci_key(device.pci_bus_id))
        found.append(hit)
    return found


def cuda_devices(torch: Any, count: int) -> list[CudaDevice]:
    """The first `count` visible CUDA devices as torch describes them."""
    devices = []
    for index in range(min(count, torch.cuda.device_count())):
        props = torch.cuda.get_device_properties(index)
        uuid = getattr(props, "uuid", None)
        bus = getattr(props, "pci_bus_id", None)
        pci = None
        if bus is not None:
            pci = f"{getattr(props, 'pci_domain_id', 0):04x}:{bus:02x}:{getattr(props, 'pci_device_id', 0):02x}.0"
        devices.append(CudaDevice(str(uuid) if uuid is not None else None, pci))
    return devices


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def nvml_devices() -> list[NvmlDevice]:
    """Every GPU NVML sees, with its MIG instances, in NVML's order. A GPU NVML cannot query is left out (the run's
    own may be fine); NVML itself missing or refusing raises (the caller turns it into a note)."""
    import pynvml

    pynvml.nvmlInit()
    devices = []
    for index in range(pynvml.nvmlDeviceGetCount()):
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
        except pynvml.NVMLError:
            continue
        try:
            bus = _text(pynvml.nvmlDeviceGetPciInfo(handle).busId)
        except pynvml.NVMLError:
            bus = None
        try:
            mig_mode = pynvml.nvmlDeviceGetMigMode(handle)[0] == pynvml.NVML_DEVICE_MIG_ENABLE
        except (pynvml.NVMLError, AttributeError):  # GPUs without MIG (before the A100) answer "not supported"
            mig_mode = False
        devices.append(NvmlDevice(uuid, bus, handle, mig_mode=mig_mode))
        if mig_mode:
            devices.extend(_mig_instances(pynvml, handle, uuid))
    return devices


def _mig_instances(pynvml: Any, handle: Any, parent: str) -> list[NvmlDevice]:
    """The MIG instances of a GPU in MIG mode, in NVML's order (the order CUDA enumerates them in)."""
    found = []
    for slot in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
        try:
            mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
            uuid = _text(pynvml.nvmlDeviceGetUUID(mig))
        except pynvml.NVMLError:
            continue  # an empty slot
        try:
            ids = (int(pynvml.nvmlDeviceGetGpuInstanceId(mig)), int(pynvml.nvmlDeviceGetComputeInstanceId(mig)))
        except pynvml.NVMLError:
            ids = None
        found.append(NvmlDevice(uuid, None, mig, parent=parent, mig_ids=ids))  # its bus is the parent's
    return found


def handles_for(wanted: Sequence[CudaDevice]) -> tuple[list[Any], str | None]:
    """NVML handles of the visible devices a run uses, or an empty list and why not."""
    try:
        found = select(wanted, nvml_devices())
    except ImportError:
        return [], "NVML not installed (pip install nvidia-ml-py)"
    except Exception as exc:  # NVMLError in a container without the driver library, MIG permission errors, ...
        return [], f"NVML unavailable: {type(exc).__name__}: {exc}"
    missing = [i for i, d in enumerate(found) if d is None]
    if missing:
        return [], f"NVML shows no device matching CUDA device {missing[0]} (by UUID or PCI bus id)"
    return [d.handle for d in found if d is not None], None


def visible(count: int, env: str | None = None) -> list[CudaDevice] | None:
    """The first `count` devices of CUDA_VISIBLE_DEVICES as UUIDs or NVML indices, read without initializing CUDA
    (a parent whose engine runs in another process must not create a CUDA context of its own). Integers are NVML
    indices, the reading vLLM makes too (a sweep sets CUDA_DEVICE_ORDER=PCI_BUS_ID so that CUDA agrees). As CUDA
    does, the list ends at the first entry that names no device ("-1"). None where the variable is unset: then
    devices 0..count-1."""
    import os

    text = os.environ.get("CUDA_VISIBLE_DEVICES") if env is None else env
    if text is None:
        return None
    devices = []
    for entry in [e.strip() for e in text.split(",") if e.strip()][:count]:
        if entry.isdigit():
            devices.append(CudaDevice(None, None, int(entry)))
        elif entry.lower().startswith(("gpu-", "mig-")):
            devices.append(CudaDevice(entry, None))
        else:
            break
    return devices


def _legacy_mig(name: str) -> tuple[str, int, int] | None:
    """CUDA 11's MIG names, `MIG-GPU-<gpu uuid>/<gpu instance>/<compute instance>`: the GPU's UUID and the two ids."""
    parts = name.split("/")
    if len(parts) != 3 or not parts[0].lower().startswith("mig-gpu-") or not (parts[1].isdigit() and parts[2].isdigit()):
        return None
    return parts[0][len("mig-") :], int(parts[1]), int(parts[2])


def select(wanted: Sequence[CudaDevice], devices: Sequence[NvmlDevice]) -> list[NvmlDevice | None]:
    """The NVML device that is each CUDA device of `wanted` (None where none is), as CUDA maps them: an index counts
    whole GPUs in NVML's (PCI) order, a UUID names a GPU or a MIG instance, and a GPU in MIG mode is its first MIG
    instance (a CUDA process sees one instance of it; the whole GPU's memory and name would be wrong)."""
    whole = [d for d in devices if d.parent is None]
    instances: dict[str, list[NvmlDevice]] = {}
    for d in devices:
        if d.parent is not None:
            instances.setdefault(_uuid_key(d.parent) or "", []).append(d)

    def as_cuda_sees(gpu: NvmlDevice | None) -> NvmlDevice | None:
        if gpu is None or not gpu.mig_mode:
            return gpu
        migs = instances.get(_uuid_key(gpu.uuid) or "", [])
        return migs[0] if migs else None  # MIG mode without an instance: CUDA sees no device there

    found: list[NvmlDevice | None] = []
    for device in wanted:
        if device.nvml_index is not None:
            found.append(as_cuda_sees(whole[device.nvml_index] if device.nvml_index < len(whole) else None))
        elif device.uuid and (legacy := _legacy_mig(device.uuid)):
            parent, gi, ci = legacy
            migs = instances.get(_uuid_key(parent) or "", [])
            found.append(next((m for m in migs if m.mig_ids == (gi, ci)), None))
        else:
            found.append(as_cuda_sees(match([device], devices)[0]))
    return found


def handles_without_cuda(count: int) -> tuple[list[Any], str | None]:
    """NVML handles of the first `count` visible devices, found from CUDA_VISIBLE_DEVICES alone."""
    try:
        devices = nvml_devices()
    except ImportError:
        return [], "NVML not installed (pip install nvidia-ml-py)"
    except Exception as exc:
        return [], f"NVML unavailable: {type(exc).__name__}: {exc}"
    wanted = visible(count)
    if wanted is None:
        wanted = [CudaDevice(None, None, i) for i in range(count)]
    found = select(wanted, devices)
    if not found or any(d is None for d in found):
        return [], "NVML shows no device matching CUDA_VISIBLE_DEVICES"
    return [d.handle for d in found if d is not None], None


def visible_devices() -> list[NvmlDevice]:
    """Every CUDA device this process could use, as NVML devices (MIG instances where CUDA sees those), in CUDA's
    order; raises where NVML cannot answer (not installed, no driver)."""
    devices = nvml_devices()
    wanted = visible(len(devices))
    if wanted is None:
        wanted = [CudaDevice(None, None, i) for i in range(len([d for d in devices if d.parent is None]))]
    return [d for d in select(wanted, devices) if d is not None]


def uuid_of(handle: Any) -> str | None:
    import pynvml

    try:
        return _text(pynvml.nvmlDeviceGetUUID(handle))
    except pynvml.NVMLError:
        return None


def capability(handle: Any) -> tuple[int, int]:
    """A device's compute capability; a MIG instance has its GPU's."""
    import pynvml

    try:
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
    except pynvml.NVMLError:
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(pynvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(handle))
    return int(major), int(minor)


def describe(handle: Any) -> dict[str, Any]:
    """Name, memory and compute capability of a device, from NVML."""
    import pynvml

    major, minor = capability(handle)
    return {
        "name": _text(pynvml.nvmlDeviceGetName(handle)),
        "memory_bytes": int(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
        "capability": f"{major}.{minor}",
        "uuid": _text(pynvml.nvmlDeviceGetUUID(handle)),
    }


def memory_used(handle: Any) -> int:
    import pynvml

    return int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)


@dataclass
class Sampler:
    """Reads each device every `interval_s` in a background thread and keeps the peak of their sum.

    `read` is called with one device at a time; the first error stops the sampling and becomes the note, so a
    driver hiccup leaves a figure from the samples before it, never an exception in the run.
    """

    devices: Sequence[Any]
    read: Callable[[Any], int] = memory_used
    interval_s: float = 0.1
    peak: int | None = None
    per_device_peak: list[int] = field(default_factory=list)
    note: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> None:
        if self.note is not None or not self.devices:
            return
        try:
            values = [self.read(device) for device in self.devices]
        except Exception as exc:
            self.note = f"NVML read failed: {type(exc).__name__}: {exc}"
            return
        self.peak = max(self.peak or 0, sum(values))
        self.per_device_peak = [max(a, b) for a, b in zip(self.per_device_peak or values, values, strict=True)]

    def start(self) -> Sampler:
        self.sample()
        self._thread = threading.Thread(target=self._run, name="llmopt-nvml", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()
        self.sample()  # the last reading, on this thread too: a stuck driver call must not block the caller

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5 * self.interval_s + 5)
            if self._thread.is_alive():  # an NVML call stuck in the driver: keep the samples, never hang the run
                self.note = self.note or "NVML stopped answering; figures are from the samples before"
            self._thread = None
