"""experiments/*.yaml: a matrix of cells (strategy and options) over one model, dataset and generation setting.

    name: cpu-demo
    hardware: "2-core CPU"            # a label for tables; matched against published tables when reproducing
    price_per_hour: 0.10              # optional, USD, for cost columns
    # hardware: [A100-40GB, H100-SXM] # or GPU types: one set of cells per type, run with --executor ray
    # price_per_hour: {A100-40GB: 1.5, H100-SXM: 3.0}   # then USD per GPU-hour by type
    # retries: 1                      # a cell whose Ray worker died is run again this many times
    model: tiny                       # or  models: [tiny, tiny-small]
    dataset: sample
    generation: {max_new_tokens: 32, limit: 8}
    timeout_s: 600                    # per cell
    reproduce: {table: lcary-2024, gpu: A100-40GB}    # optional
    cells:
      - strategy: default
        batch_size: [1, 4]            # one cell per batch size
      - strategy: vllm
        options: {enforce_eager: true, limit: 4}   # limit and max_new_tokens: this cell's own
        timeout_s: 300                # this cell's own timeout

Loaded with a safe loader; every error names the file and the bad key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmopt.errors import UsageError
from llmopt.files import read_user_file

TOP_KEYS = {
    "name", "hardware", "price_per_hour", "model", "models", "dataset", "workload", "weights", "generation", "timeout_s",
    "reproduce", "cells", "repeats", "reference", "price_per_kwh", "drift", "retries",
}  # fmt: skip
GENERATION_KEYS = {"max_new_tokens": int, "prompt": str, "sampling": str, "seed": int, "limit": int, "ignore_eos": bool}
CELL_KEYS = {"strategy", "batch_size", "options", "model", "name", "gpus", "timeout_s", "serve", "load"}
# A cell with `serve: ENGINE` is a load test (`llmopt loadtest --serve ENGINE`) instead of a run: `load` holds its
# flags (underscores for dashes; a list value is given once per item, e.g. serve_arg).
LOAD_TYPES: dict[str, type | tuple[type, ...]] = {
    "concurrency": (int, str),
    "rate": (int, float, str),
    "requests": int,
    "requests_per_user": int,
    "duration": (int, float),
    "search": str,
    "search_start": (int, float),
    "search_max": (int, float),
    "search_tolerance": (int, float),
    "confidence": (int, float),
    "slo": str,
    "api": str,
    "seed": int,
    "serve_arg": list,
    "serve_timeout": (int, float),
    "gguf_type": str,
    "warmup_requests": int,
    "quality_reference": str,
    "quality_floor": (int, float),
    "synthetic_tokens": int,
    "max_inflight": int,
    "timeout": (int, float),
}
OPTION_TYPES: dict[str, type | tuple[type, ...]] = {
    "dtype": str,
    "bnb_4bit_type": str,
    "gguf_type": str,
    "gguf_file": str,
    "speculative_tokens": int,
    "max_model_len": int,
    "gpu_memory_utilization": (int, float),
    "tensor_parallel_size": int,
    "enforce_eager": bool,
    "kv_cache_dtype": str,
    "trust_remote_code": bool,
    "warmup": bool,
    # The study used other prompts and sampling for its vLLM rows than for its transformers rows.
    "prompt": str,
    "sampling": str,
    "seed": int,
    # A cell's own share of the documents or tokens (a check that gives each cell a time budget)
    "limit": int,
    "max_new_tokens": int,
}
PUBLISHED_TABLES = {"lcary-2024"}
DRIFT_KEYS = ("reference", "strategies", "limit", "dtype", "modes_dtype", "max_new_tokens")
DRIFT_DTYPES = ("float16", "bfloat16", "float32")


@dataclass(frozen=True)
class Cell:
    name: str
    strategy: str
    model: str | None
    batch_size: int | str  # or "auto"
    options: dict[str, Any] = field(default_factory=dict)
    hardware: str | None = None  # the GPU type this cell must run on (the experiment's `hardware` list)
    gpus: int | None = None  # GPUs the cell takes; default its tensor_parallel_size, else 1
    timeout: int | None = None  # seconds this cell may run; default the experiment's timeout_s
    serve: str | None = None  # a load test of this served engine, not a run
    load: dict[str, Any] = field(default_factory=dict)  # the load test's flags

    @property
    def gpu_count(self) -> int:
        """How many GPUs the cell's run needs to itself: a parallel sweep never gives one GPU to two cells."""
        if self.gpus is not None:
            return self.gpus
        return int(self.options.get("tensor_parallel_size") or 1)

    def timeout_s(self, exp: Experiment) -> int:
        return self.timeout if self.timeout is not None else exp.timeout_s

    @property
    def module(self) -> str:
        """What the cell runs: `python -m llmopt.run`, or `llmopt.loadtest` for a served engine."""
        return "llmopt.loadtest" if self.serve else "llmopt.run"

    def run_args(self, exp: Experiment) -> list[str]:
        """The `python -m llmopt.run` (or `llmopt.loadtest`) arguments of this cell."""
        if self.serve:
            return self._load_args(exp)
        source = ["--workload", exp.workload] if exp.workload else ["--dataset", exp.dataset]
        args = ["--strategy", self.strategy, *source, "--batch-size", str(self.batch_size)]
        if exp.weights != "pretrained":
            args += ["--weights", exp.weights]
        if exp.repeats > 1:
            args += ["--repeats", str(exp.repeats)]
        if self.model:
            args += ["--model", self.model]
        for key, value in {**exp.generation, **self.options}.items():
            flag = "--" + key.replace("_", "-")
            if key == "warmup":
                args += [] if value else ["--no-warmup"]
            elif isinstance(value, bool):
                args += [flag] if value else []
            elif value is not None:
                args += [flag, str(value)]
        return args

    def _load_args(self, exp: Experiment) -> list[str]:
        """A served engine's load test: the experiment's model, dataset and generation, then the cell's flags."""
        args = ["--serve", str(self.serve), "--dataset", exp.dataset, "--no-plots"]
        if self.model:
            args += ["--model", self.model]
        if exp.price_per_hour is not None:
            args += ["--price-per-hour", str(exp.price_per_hour)]
        generation = {k: v for k, v in exp.generation.items() if k in ("max_new_tokens", "prompt", "ignore_eos")}
        for key, value in {**generation, **self.load}.items():
            flag = "--" + key.replace("_", "-")
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, bool):
                    args += [flag] if item else []
                elif item is not None:
                    args += [f"{flag}={item}"]  # `=`: a server flag given to --serve-arg starts with dashes
        return args


@dataclass(frozen=True)
class Experiment:
    name: str
    hardware: str
    dataset: str
    generation: dict[str, Any]
    cells: list[Cell]
    workload: str | None = None  # prompt lengths without text, instead of the dataset
    weights: str = "pretrained"
    price_per_hour: float | None = None
    timeout_s: int = 3600
    reproduce: dict[str, Any] | None = None
    source: str = ""
    repeats: int = 1  # the timed loop this many times per cell; docs/s is the median
    reference: str | None = None  # the cell the others are compared with (quality deltas, the gate)
    price_per_kwh: float | None = None
    # {reference, strategies: [...], limit, dtype, modes_dtype, ...}: `llmopt drift` after the cells
    drift: dict[str, Any] | None = None
    hardware_types: list[str] = field(default_factory=list)  # GPU types, one set of cells each (Ray)
    prices: dict[str, float] = field(default_factory=dict)  # USD per hour by GPU type
    retries: int = 0  # Ray runs a cell again this many times when its worker or node dies

    def price_for(self, hardware_type: str | None) -> float | None:
        """USD per hour of the machine a cell ran on: its GPU type's price, else the experiment's single price."""
        if hardware_type is not None and hardware_type in self.prices:
            return self.prices[hardware_type]
        return self.price_per_hour

    def drift_args(self) -> list[str]:
        """The `llmopt drift` arguments of the experiment's drift section."""
        d = self.drift or {}
        model = d.get("model") or next((c.model for c in self.cells if c.model), None) or "meta-llama/Llama-2-7b-chat-hf"
        args = ["--model", model, "--reference", d.get("reference", "default"), "--dataset", self.dataset]
        args += ["--strategies", ",".join(d["strategies"]), "--prompt", self.generation.get("prompt") or "published-hf"]
        limit = d.get("limit") or self.generation.get("limit")
        tokens = d.get("max_new_tokens") or self.generation.get("max_new_tokens")
        args += (["--limit", str(limit)] if limit else []) + (["--max-new-tokens", str(tokens)] if tokens else [])
        args += ["--dtype", d["dtype"]] if d.get("dtype") else []
        return args + (["--modes-dtype", d["modes_dtype"]] if d.get("modes_dtype") else [])


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def _expect(value: Any, kind: type | tuple[type, ...], where: str) -> Any:
    # bool is an int in Python; a YAML `true` where a number belongs is a mistake, not 1.
    if isinstance(value, bool) and kind is not bool and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise UsageError(f"{where} must be {getattr(kind, '__name__', 'a number')}, got {value!r}")
    if not isinstance(value, kind):
        name = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise UsageError(f"{where} must be {name}, got {value!r}")
    return value


def _hardware_types(value: Any, source: str) -> list[str]:
    """`hardware` as a list of GPU types (one set of cells each), or [] where it is a single label."""
    if not isinstance(value, list):
        return []
    if not value:
        raise UsageError(f"{source}: 'hardware' is an empty list; give GPU types or one label")
    for item in value:
        _expect(item, str, f"{source}: each of 'hardware'")
    if len(set(value)) < len(value):
        raise UsageError(f"{source}: 'hardware' names a GPU type twice")
    return list(value)


def _prices(value: Any, hardware_types: list[str], source: str) -> tuple[float | None, dict[str, float]]:
    """`price_per_hour`: one price, or one per GPU type of the `hardware` list."""
    if value is None:
        return None, {}
    if isinstance(value, dict):
        if not hardware_types:
            raise UsageError(f"{source}: 'price_per_hour' by GPU type needs 'hardware' to be a list of those types")
        unknown = sorted(set(value) - set(hardware_types))
        if unknown:
            raise UsageError(f"{source}: 'price_per_hour' names {unknown[0]!r}, which is not in 'hardware'")
        prices = {k: float(_expect(v, (int, float), f"{source}: 'price_per_hour.{k}'")) for k, v in value.items()}
        if any(v <= 0 for v in prices.values()):
            raise UsageError(f"{source}: every 'price_per_hour' must be positive")
        return None, prices
    if _expect(value, (int, float), f"{source}: 'price_per_hour'") <= 0:
        raise UsageError(f"{source}: 'price_per_hour' must be positive")
    return float(value), {}


def parse(data: Any, source: str) -> Experiment:
    if not isinstance(data, dict):
        raise UsageError(f"{source}: the top level must be a mapping of keys")
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise UsageError(f"{source}: unknown key {unknown[0]!r} (known: {', '.join(sorted(TOP_KEYS))})")
    for key in ("name", "cells"):
        if key not in data:
            raise UsageError(f"{source}: missing key {key!r}")
    name = _slug(_expect(data["name"], str, f"{source}: 'name'"))
    if "model" in data and "models" in data:
        raise UsageError(f"{source}: give 'model' or 'models', not both")
    models = data.get("models", [data["model"]] if "model" in data else [None])
    _expect(models, list, f"{source}: 'models'")
    for m in models:
        if m is not None:
            _expect(m, str, f"{source}: each of 'models'")
    generation = dict(_expect(data.get("generation") or {}, dict, f"{source}: 'generation'"))
    for key, value in generation.items():
        if key not in GENERATION_KEYS:
            raise UsageError(f"{source}: unknown key 'generation.{key}' (known: {', '.join(GENERATION_KEYS)})")
        if value is not None:
            _expect(value, GENERATION_KEYS[key], f"{source}: 'generation.{key}'")
    hardware_types = _hardware_types(data.get("hardware"), source)
    price, prices = _prices(data.get("price_per_hour"), hardware_types, source)
    retries = _expect(data.get("retries", 0), int, f"{source}: 'retries'")
    if retries < 0:
        raise UsageError(f"{source}: 'retries' must be 0 or more")
    timeout = _expect(data.get("timeout_s", 3600), int, f"{source}: 'timeout_s'")
    if timeout < 1:
        raise UsageError(f"{source}: 'timeout_s' must be at least 1")
    workload = data.get("workload")
    if workload is not None:
        _expect(workload, str, f"{source}: 'workload'")
        if "dataset" in data:
            raise UsageError(f"{source}: give 'dataset' or 'workload', not both")
    weights = data.get("weights", "pretrained")
    if weights not in ("pretrained", "random"):
        raise UsageError(f"{source}: 'weights' must be pretrained or random, got {weights!r}")
    repeats = _expect(data.get("repeats", 1), int, f"{source}: 'repeats'")
    if repeats < 1:
        raise UsageError(f"{source}: 'repeats' must be at least 1")
    price_kwh = data.get("price_per_kwh")
    if price_kwh is not None and _expect(price_kwh, (int, float), f"{source}: 'price_per_kwh'") <= 0:
        raise UsageError(f"{source}: 'price_per_kwh' must be positive")
    reference = data.get("reference")
    if reference is not None:
        _expect(reference, str, f"{source}: 'reference'")
    drift = data.get("drift")
    if drift is not None:
        _expect(drift, dict, f"{source}: 'drift'")
        unknown = sorted(set(drift) - set(DRIFT_KEYS))
        if unknown:
            raise UsageError(f"{source}: unknown key 'drift.{unknown[0]}' (known: {', '.join(DRIFT_KEYS)})")
        for key in ("dtype", "modes_dtype"):
            allowed = DRIFT_DTYPES if key == "dtype" else (*DRIFT_DTYPES, "auto")
            if key in drift and drift[key] not in allowed:
                raise UsageError(f"{source}: 'drift.{key}' must be one of {', '.join(allowed)}, got {drift[key]!r}")
        if not isinstance(drift.get("strategies"), list) or not drift["strategies"]:
            raise UsageError(f"{source}: 'drift.strategies' must be a list of strategy names")
    reproduce = data.get("reproduce")
    if reproduce is not None:
        _expect(reproduce, dict, f"{source}: 'reproduce'")
        if reproduce.get("table") not in PUBLISHED_TABLES:
            raise UsageError(f"{source}: 'reproduce.table' must be one of {', '.join(sorted(PUBLISHED_TABLES))}")
    cells: list[Cell] = []
    for i, raw in enumerate(_expect(data["cells"], list, f"{source}: 'cells'")):
        where = f"{source}: cells[{i}]"
        _expect(raw, dict, where)
        bad = sorted(set(raw) - CELL_KEYS)
        if bad:
            raise UsageError(f"{where}: unknown key {bad[0]!r} (known: {', '.join(sorted(CELL_KEYS))})")
        serve = raw.get("serve")
        if serve is not None:
            _expect(serve, str, f"{where}.serve")
        if "strategy" not in raw and serve is None:
            raise UsageError(f"{where}: missing key 'strategy' (or 'serve' for a load test)")
        strategy = _expect(raw.get("strategy", serve), str, f"{where}.strategy")
        load = dict(_expect(raw.get("load") or {}, dict, f"{where}.load"))
        if load and serve is None:
            raise UsageError(f"{where}: 'load' is for a load-test cell (give 'serve')")
        for key, value in load.items():
            if key not in LOAD_TYPES:
                raise UsageError(f"{where}: unknown load flag {key!r} (known: {', '.join(LOAD_TYPES)})")
            _expect(value, LOAD_TYPES[key], f"{where}.load.{key}")
        options = dict(_expect(raw.get("options") or {}, dict, f"{where}.options"))
        for key, value in options.items():
            if key not in OPTION_TYPES:
                raise UsageError(f"{where}: unknown option {key!r} (known: {', '.join(OPTION_TYPES)})")
            _expect(value, OPTION_TYPES[key], f"{where}.options.{key}")
        sizes = raw.get("batch_size", 1)
        sizes = sizes if isinstance(sizes, list) else [sizes]
        for size in sizes:
            if size == "auto":
                continue
            if not isinstance(size, int) or isinstance(size, bool):
                raise UsageError(f"{where}.batch_size must be a whole number or auto, got {size!r}")
            if size < 1:
                raise UsageError(f"{where}.batch_size must be at least 1, got {size}")
        gpus = raw.get("gpus")
        if gpus is not None and _expect(gpus, int, f"{where}.gpus") < 0:
            raise UsageError(f"{where}.gpus must be 0 or more, got {gpus}")
        cell_timeout = raw.get("timeout_s")
        if cell_timeout is not None and _expect(cell_timeout, int, f"{where}.timeout_s") < 1:
            raise UsageError(f"{where}.timeout_s must be at least 1, got {cell_timeout}")
        cell_models = [raw["model"]] if "model" in raw else models
        for model in cell_models:
            for size in sizes:
                base = raw.get("name") or strategy.rpartition(":")[2]
                parts = [base, f"b{size}" if len(sizes) > 1 or size != 1 else ""]
                if len(cell_models) > 1 and model:
                    parts.insert(0, Path(model).name)
                cell_name = _slug("-".join(p for p in parts if p))
                for hardware_type in hardware_types or [None]:
                    typed = f"{cell_name}@{_slug(hardware_type)}" if hardware_type else cell_name
                    cells.append(Cell(typed, strategy, model, size, options, hardware_type, gpus, cell_timeout,
                                      serve, load))  # fmt: skip
    if not cells:
        raise UsageError(f"{source}: 'cells' is empty")
    names = [c.name for c in cells]
    if reference is not None and "@" in reference:  # each GPU type is compared with its own reference cell
        raise UsageError(f"{source}: 'reference' names a cell without its GPU type ({reference.partition('@')[0]!r})")
    if reference is not None and reference not in names and not any(n.startswith(f"{reference}@") for n in names):
        raise UsageError(f"{source}: 'reference' {reference!r} is not a cell (cells: {', '.join(names)})")
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise UsageError(f"{source}: two cells are both named {duplicate!r}; give one a 'name'")
    return Experiment(
        name=name,
        hardware=" / ".join(hardware_types) if hardware_types else str(data.get("hardware") or "unknown"),
        dataset=str(data.get("dataset") or "wikilingua"),
        generation=generation,
        cells=cells,
        workload=workload,
        weights=weights,
        price_per_hour=price,
        timeout_s=timeout,
        reproduce=reproduce,
        source=source,
        repeats=repeats,
        reference=reference,
        price_per_kwh=float(price_kwh) if price_kwh is not None else None,
        drift=drift,
        hardware_types=hardware_types,
        prices=prices,
        retries=retries,
    )


def load(path: Path) -> Experiment:
    import yaml

    text = read_user_file(path, "experiment file")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UsageError(f"{where}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    return parse(data, str(path))
