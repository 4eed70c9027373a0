"""What `llmopt tune` searches: configurations, each an engine (a served engine for `--objective online`, a loading
mode for `offline`) with one value per knob.

By default the space is every engine this host can run, each with the knob values that usually matter; an engine that
cannot run here is listed with the registry's reason, never tried. A space file (`--space FILE.yaml`) names the engines
and the values of their knobs instead:

    objective: online                   # optional; the command line's --objective wins
    engines:
      vllm: {max_num_seqs: [4, 16], ngram: [false, true]}
      llamacpp: {gguf_type: [published, q8_0]}
      transformers: {}                  # its default values
    # offline:  modes: {default: {batch_size: [1, 8]}, 4bit: {batch_size: [8]}}

Every configuration is the cross product of its engine's knob values. A configuration also names its *quality mode*:
the offline loading mode that computes what it serves (the drift screen and the gate measure that mode).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmopt.errors import UsageError

PUBLISHED = "published"  # llama.cpp: the model's own GGUF file as it was published (no conversion)


@dataclass(frozen=True)
class Knob:
    name: str
    kind: type  # int, str or bool
    default: tuple[Any, ...]  # the values a default space tries; the first is the engine's own default
    choices: tuple[Any, ...] | None = None  # the values allowed, where the engine has a fixed set
    help: str = ""

    def check(self, value: Any, where: str) -> Any:
        if value is None and self.kind is not bool:
            return None  # the engine's own default
        if isinstance(value, bool) != (self.kind is bool) or not isinstance(value, self.kind):
            raise UsageError(f"{where}: {self.name} takes {self.kind.__name__} values, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise UsageError(f"{where}: {self.name} takes {', '.join(map(str, self.choices))}, not {value!r}")
        if self.kind is int and value < 1:
            raise UsageError(f"{where}: {self.name} must be at least 1, got {value}")
        return value


@dataclass(frozen=True)
class Engine:
    """One way of running the model that the tuner can choose: a server (online) or a loading mode (offline)."""

    name: str
    objective: str  # "online" or "offline"
    strategy: str  # the registry's loading mode that runs the same arithmetic (availability, quality)
    knobs: tuple[Knob, ...]
    packing: str | None = None  # the 4-bit packing of the model it serves (awq, gptq): the model's own packed copy
    simplicity: int = 0  # a tie between configurations goes to the simpler engine, then the fewer changed knobs

    def knob(self, name: str) -> Knob:
        for k in self.knobs:
            if k.name == name:
                return k
        known = ", ".join(k.name for k in self.knobs) or "none"
        raise UsageError(f"engine {self.name!r} has no knob {name!r} (its knobs: {known})")


BATCH = Knob("batch_size", int, (1, 8), help="documents per generate call")
GGUF = Knob("gguf_type", str, (PUBLISHED, "q8_0"), (PUBLISHED, "f16", "q8_0", "q4_k_m", "q4_0"), "llama.cpp's weight type")
KV_DTYPE = Knob("kv_cache_dtype", str, ("auto",), ("auto", "fp8", "fp8_e4m3", "fp8_e5m2"), "KV cache storage type")

SEQS = Knob("max_num_seqs", int, (4, 16), help="vllm serve --max-num-seqs: sequences batched at once")
BATCHED_TOKENS = Knob("max_num_batched_tokens", int, (None,), help="vllm serve --max-num-batched-tokens (default: vLLM's)")
TRANSFORMERS_KNOBS = (
    Knob("quantization", str, ("none", "bnb-8bit", "bnb-4bit"), ("none", "bnb-8bit", "bnb-4bit"), "--quantization"),
    Knob("continuous_batching", bool, (True,), help="transformers serve --continuous-batching"),
    Knob("attn_implementation", str, ("sdpa",), ("sdpa", "eager", "flash_attention_2"), "--attn-implementation"),
    Knob("compile", bool, (False,), help="transformers serve --compile"),
)
LLAMACPP_KNOBS = (GGUF, Knob("n_batch", int, (512,), help="llama.cpp's prompt batch (tokens a forward pass takes)"))
NGRAM_KNOB = Knob("ngram", bool, (False,), help="speculative decoding from the prompt's own n-grams (lossless)")
EAGER = Knob("enforce_eager", bool, (False,), help="vllm serve --enforce-eager: no compiling or graph capture at start")
ONLINE: dict[str, Engine] = {
    e.name: e
    for e in (
        Engine("transformers", "online", "default", TRANSFORMERS_KNOBS, simplicity=0),
        Engine("llamacpp", "online", "llamacpp", LLAMACPP_KNOBS, simplicity=1),
        Engine("vllm", "online", "vllm", (SEQS, BATCHED_TOKENS, KV_DTYPE, NGRAM_KNOB, EAGER), simplicity=2),
        Engine("vllm-awq", "online", "vllm-awq", (SEQS, BATCHED_TOKENS, EAGER), packing="awq", simplicity=3),
    )
}

# Offline: every loading mode of the registry, with the knobs it takes. Not searched by default: the `lead` floor (no
# model), modes that need a GPU or a packing this model has not, `compile` on a CPU (minutes of compiling per cell).
OFFLINE_KNOBS: dict[str, tuple[Knob, ...]] = {
    "llamacpp": (GGUF,),
    "4bit": (BATCH, Knob("bnb_4bit_type", str, ("nf4",), ("nf4", "fp4"), "bitsandbytes 4-bit type")),
    "vllm": (KV_DTYPE,),
    "vllm-ngram": (Knob("speculative_tokens", int, (4,), help="tokens drafted per step"),),
    "prompt-lookup": (Knob("speculative_tokens", int, (10,), help="tokens drafted per step"),),
}
OFFLINE_SIMPLICITY = {"default": 0, "sdpa": 0, "8bit": 1, "4bit": 1, "torchao-int8": 1, "torchao-int4": 1, "llamacpp": 2}
NOT_BY_DEFAULT = {"lead", "compile", "flash-attn", "gptq", "vllm-gptq", "torchao-fp8", "vllm-fp8"}


def offline_engine(strategy: str) -> Engine:
    from llmopt import strategies

    cls = strategies.resolve(strategy)
    if strategy in OFFLINE_KNOBS:
        knobs = OFFLINE_KNOBS[strategy]
    elif cls.engine_batching or cls.max_batch_size == 1:
        knobs = ()
    else:
        knobs = (BATCH,)
    packing = getattr(cls, "quantization", None) if strategy in ("vllm-awq", "vllm-gptq", "gptq") else None
    packing = packing or ("gptq" if strategy == "gptq" else None)
    return Engine(strategy, "offline", strategy, knobs, packing, OFFLINE_SIMPLICITY.get(strategy, 3))


@dataclass(frozen=True)
class QualityMode:
    """The offline loading mode whose outputs a configuration serves: what drift and the gate measure."""

    strategy: str
    model: str
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        opts = ";".join(f"{k}={v}" for k, v in self.options)
        return self.strategy + (f"[{opts}]" if opts else "")


@dataclass(frozen=True)
class Config:
    engine: str
    objective: str
    model: str
    settings: tuple[tuple[str, Any], ...]  # (knob, value) in the engine's knob order

    def get(self, name: str, default: Any = None) -> Any:
        return dict(self.settings).get(name, default)

    @property
    def key(self) -> str:
        """A stable name: the engine and every knob's value (the history and the cells are keyed by it)."""
        return " ".join([self.engine, *(f"{k}={_text(v)}" for k, v in self.settings)])

    @property
    def slug(self) -> str:
        parts = [self.engine, *(f"{_short(k)}{_text(v)}" for k, v in self.settings)]
        return "-".join(parts).replace("/", "_").replace(" ", "")

    def engine_spec(self) -> Engine:
        return ONLINE[self.engine] if self.objective == "online" else offline_engine(self.engine)

    @property
    def changed(self) -> int:
        """How many knobs are away from their engine's own default (a tie goes to the fewer)."""
        spec = self.engine_spec()
        return sum(value != spec.knob(name).default[0] for name, value in self.settings)

    def quality_mode(self) -> QualityMode:
        """What this configuration computes, as a loading mode: speed knobs (batching, scheduling, compile, lossless
        speculation) are left out, weight and cache formats are kept."""
        if self.objective == "offline":
            kept = [(k, v) for k, v in self.settings if k not in ("batch_size", "speculative_tokens")]
            kept = [
                (k, v)
                for k, v in kept
                if not (k == "gguf_type" and v == PUBLISHED) and not (k == "kv_cache_dtype" and v == "auto")
            ]
            return QualityMode(self.engine, self.model, tuple(kept))
        if self.engine == "transformers":
            mode = {"none": "default", "bnb-8bit": "8bit", "bnb-4bit": "4bit"}[self.get("quantization", "none")]
            return QualityMode(mode, self.model)
        if self.engine == "llamacpp":
            gguf = self.get("gguf_type", PUBLISHED)
            return QualityMode("llamacpp", self.model, () if gguf == PUBLISHED else (("gguf_type", gguf),))
        kv = self.get("kv_cache_dtype", "auto")
        return QualityMode(self.engine, self.model, () if kv in (None, "auto") else (("kv_cache_dtype", kv),))


def _text(value: Any) -> str:
    if value is None:
        return "default"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _short(name: str) -> str:
    return "".join(part[0] for part in name.split("_"))


@dataclass
class Space:
    objective: str
    model: str
    configs: list[Config]
    unavailable: dict[str, str] = field(default_factory=dict)  # engine -> why it cannot run here
    source: str = "default"  # "default" or the space file


def packed_model(model: str, packing: str | None) -> str | None:
    """The model's own packed copy for an engine that needs one (smollm2-135m -> smollm2-135m-awq), or None where
    llmopt cannot make one (a Hub model: its AWQ checkpoint must be named in the space file)."""
    if packing is None:
        return model
    from llmopt.models import packaged

    return f"{model}-{packing}" if f"{model}-{packing}" in packaged.ALIASES else None


def why_unavailable(engine: Engine, model: str, has_own_model: bool = False) -> str | None:
    """Why the engine cannot run here (the registry's reason, the server's missing package), or None."""
    from llmopt import strategies

    status = strategies.availability(strategies.resolve(engine.strategy))
    if not status.ready:
        return status.reason
    if engine.objective == "online":
        from llmopt.serving import server

        problem = server.unavailable_reason(engine.name)
        if problem:
            return problem
    if not has_own_model and packed_model(model, engine.packing) is None:
        return f"needs a {engine.packing.upper()} checkpoint of {model}: name it in a space file (model: ...)"
    return None


def expand(engine: Engine, values: dict[str, list[Any]], model: str, where: str) -> list[Config]:
    """The cross product of an engine's knob values (its defaults for the knobs not given)."""
    for name in values:
        try:
            engine.knob(name)
        except UsageError as exc:
            raise UsageError(f"{where}: {exc}") from None
    columns = []
    for knob in engine.knobs:
        given = values.get(knob.name, list(knob.default))
        given = given if isinstance(given, list) else [given]
        if not given:
            raise UsageError(f"{where}: {knob.name} lists no value")
        columns.append([(knob.name, knob.check(v, where)) for v in dict.fromkeys(given)])
    return [Config(engine.name, engine.objective, model, tuple(combo)) for combo in itertools.product(*columns)]


def engines_for(objective: str) -> list[str]:
    if objective == "online":
        return list(ONLINE)
    from llmopt.strategies import REGISTRY

    return [name for name in REGISTRY if name not in NOT_BY_DEFAULT]


def default_space(objective: str, model: str) -> Space:
    configs: list[Config] = []
    unavailable: dict[str, str] = {}
    for name in engines_for(objective):
        engine = ONLINE[name] if objective == "online" else offline_engine(name)
        why = why_unavailable(engine, model)
        if why:
            unavailable[name] = why
            continue
        configs += expand(engine, {}, packed_model(model, engine.packing) or model, "default space")
    return Space(objective, model, configs, unavailable)


def parse_space(data: Any, source: str, objective: str, model: str) -> Space:
    """A space file's engines and knob values; every name is checked before anything runs."""
    if not isinstance(data, dict):
        raise UsageError(f"{source}: the top level must be a mapping (engines: or modes:)")
    unknown = sorted(set(data) - {"objective", "engines", "modes", "models"})
    if unknown:
        raise UsageError(f"{source}: unknown key {unknown[0]!r} (known: objective, engines, modes, models)")
    key = "engines" if objective == "online" else "modes"
    other = "modes" if key == "engines" else "engines"
    if other in data and key not in data:
        raise UsageError(f"{source}: gives {other}:, which is for --objective {'offline' if other == 'modes' else 'online'}")
    table = data.get(key)
    if not isinstance(table, dict) or not table:
        raise UsageError(f"{source}: {key}: must map each {key[:-1]} to its knobs, e.g. {key}: {{vllm: {{}}}}")
    models = data.get("models") or {}
    if not isinstance(models, dict):
        raise UsageError(f"{source}: models: must map an engine to its own checkpoint (vllm-awq: ORG/MODEL-AWQ)")
    configs: list[Config] = []
    unavailable: dict[str, str] = {}
    checked: list[tuple[Engine, str | None, list[Config]]] = []
    for name, values in table.items():
        where = f"{source}: {key}.{name}"
        if objective == "online":
            if name not in ONLINE:
                raise UsageError(f"{where}: unknown engine (engines: {', '.join(ONLINE)})")
            engine = ONLINE[name]
        else:
            from llmopt.strategies import REGISTRY

            if name not in REGISTRY:
                raise UsageError(f"{where}: unknown loading mode (modes: {', '.join(REGISTRY)})")
            engine = offline_engine(name)
        values = values or {}
        if not isinstance(values, dict):
            example = engine.knobs[0].name if engine.knobs else "batch_size"
            raise UsageError(f"{where}: must map knobs to lists of values, e.g. {{{example}: [1, 8]}}")
        own = models.get(name)
        if own is not None and not isinstance(own, str):
            raise UsageError(f"{source}: models.{name} must be a model name")
        checked.append((engine, own, expand(engine, values, own or packed_model(model, engine.packing) or model, where)))
    # Every name and value is checked above before this machine is asked what it can run (which imports engines).
    for engine, own, configs_here in checked:
        why = why_unavailable(engine, model, has_own_model=bool(own))
        if why:
            unavailable[engine.name] = why
            continue
        configs += configs_here
    return Space(objective, model, configs, unavailable, source)


def load_space(path: Path, objective: str, model: str) -> Space:
    import yaml

    from llmopt.files import read_user_file

    text = read_user_file(path, "space file")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    if isinstance(data, dict) and data.get("objective") not in (None, "online", "offline"):
        raise UsageError(f"{path}: objective must be online or offline, got {data.get('objective')!r}")
    return parse_space(data, str(path), objective, model)


def space_objective(path: Path | None) -> str | None:
    """The objective a space file names, if any (the command line's --objective wins)."""
    if path is None:
        return None
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return data.get("objective") if isinstance(data, dict) else None
