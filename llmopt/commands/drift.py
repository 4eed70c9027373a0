"""llmopt drift (python -m llmopt.drift): how far each loading mode's next-token distributions drift from a reference.

llmopt drift --model tiny --reference default --strategies 8bit,4bit,vllm-awq=tiny-awq --dataset sample --limit 8
llmopt drift --model meta-llama/Llama-2-7b-chat-hf --strategies 8bit,4bit,vllm-awq=TheBloke/Llama-2-7B-Chat-AWQ
llmopt drift --model smollm2-135m --dtype float32 --modes-dtype auto --strategies default,8bit   # modes as runs are
llmopt drift --model smollm2-135m --strategies "llamacpp[gguf_type=q8_0],vllm[kv_cache_dtype=fp8]"   # a mode's options

The reference summarizes each document greedily, then every mode (the reference too, as a check: 0) reads the prompts
and those summaries teacher-forced. `STRATEGY=MODEL` gives a mode its own checkpoint of the same model (a 4-bit one);
`STRATEGY[option=value;...]` its options (a GGUF type, a KV cache dtype, the bitsandbytes 4-bit type), as `llmopt run`
takes them: each such mode is measured apart, under that label.
`--dtype` is the reference's dtype and, unless `--modes-dtype` says otherwise, the modes'; `--modes-dtype auto` runs
each mode at the dtype a run without --dtype gets (a sweep's cells), so that its figures describe those cells. Each
mode's result records the dtype it ran.
Each mode runs in a process of its own, and so does the reference, computed once and cached in the output folder: this
process never loads a model, so no CUDA context of its own stays on the GPU while a mode's engine wants the memory.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmopt.commands import common
from llmopt.errors import UsageError

REFERENCE_FILE = "reference.json"
DTYPES = ["float16", "bfloat16", "float32"]
AUTO = "auto"
# The options a mode may be given in --strategies (what changes the arithmetic; speed options change nothing here)
MODE_OPTIONS = {"gguf_type": str, "bnb_4bit_type": str, "kv_cache_dtype": str}
SPEC = re.compile(r"^(?P<name>[^\[\]=]+)(?:\[(?P<options>[^\]]*)\])?(?:=(?P<model>.+))?$")


@dataclass(frozen=True)
class Mode:
    """One mode to measure: a strategy on a model at a dtype (None: the strategy's own), under a label that names its
    result file. The reference itself is measured too, at its own dtype, as a check (0)."""

    label: str
    strategy: str
    model: str
    dtype: str | None
    reference_check: bool = False
    options: dict[str, Any] | None = None  # the strategy's options (gguf_type, kv_cache_dtype, bnb_4bit_type)
    spec: str | None = None  # the --strategies item it was asked as


def parse_spec(item: str) -> tuple[str, dict[str, Any], str | None]:
    """'llamacpp[gguf_type=q8_0]=MODEL' -> ('llamacpp', {'gguf_type': 'q8_0'}, 'MODEL')."""
    m = SPEC.match(item.strip())
    if not m:
        raise UsageError(f"--strategies: {item!r} is not like NAME, NAME=MODEL or NAME[option=value;...]=MODEL")
    options: dict[str, Any] = {}
    for part in [p.strip() for p in (m["options"] or "").split(";") if p.strip()]:
        key, sep, value = part.partition("=")
        if not sep or key not in MODE_OPTIONS:
            raise UsageError(f"--strategies: {item!r}: {part!r} is not one of {', '.join(k + '=...' for k in MODE_OPTIONS)}")
        options[key] = value
    return m["name"].strip(), options, m["model"]


def parser(prog: str) -> common.Parser:
    p = common.Parser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="the reference's model (Hub id, folder, tiny)")
    p.add_argument("--reference", default="default", help="the reference strategy (default: default)")
    p.add_argument("--strategies", help="modes to compare, comma-separated; STRATEGY=MODEL gives one its own checkpoint")
    p.add_argument("--dataset", default="wikilingua", help="wikilingua, sample or PATH.jsonl")
    p.add_argument("--prompt", choices=["published-hf", "published-vllm", "chat"], default="published-hf")
    p.add_argument("--limit", type=common.positive_int, help="only the first N documents")
    p.add_argument("--dtype", choices=DTYPES, help="the reference's dtype, and the modes' unless --modes-dtype")
    p.add_argument("--modes-dtype", choices=[*DTYPES, AUTO],
                   help="the modes' dtype (default: --dtype); auto: each mode's own, as a run without --dtype")  # fmt: skip
    p.add_argument("--max-new-tokens", type=common.positive_int, default=300, help="length of the reference summaries")
    p.add_argument("--enforce-eager", action="store_true", help="vLLM modes: no CUDA graphs")
    p.add_argument("--no-reference-check", dest="reference_check", action="store_false",
                   help="do not measure the reference against itself (the check that it reads 0; a process saved)")  # fmt: skip
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--out", type=Path, help="results folder (default results/drift-<model>)")
    # Internal: one mode in a process of its own, against the cached reference; the reference in a process of its own.
    p.add_argument("--one", help=argparse.SUPPRESS)  # a Mode as JSON
    p.add_argument("--build-reference", action="store_true", help=argparse.SUPPRESS)
    return p


def _modes(args: Any, model: str) -> list[Mode]:
    """The reference at its dtype (the check), then each listed mode at the modes' dtype. A listed mode that is the
    reference's strategy and model at another dtype is measured apart, labelled with that dtype."""
    if not args.strategies:
        raise UsageError("--strategies is required: the modes to compare with the reference, e.g. 8bit,4bit")
    modes_dtype = args.dtype if args.modes_dtype is None else (None if args.modes_dtype == AUTO else args.modes_dtype)
    check = Mode(args.reference, args.reference, model, args.dtype, reference_check=True)
    modes = [check] if args.reference_check else []
    for item in args.strategies.split(","):
        if not item.strip():
            continue
        name, options, own = parse_spec(item)
        label = name + ("[" + ";".join(f"{k}={v}" for k, v in options.items()) + "]" if options else "")
        mode = Mode(label, name, own or model, modes_dtype, options=options or None, spec=item.strip())
        if (name, mode.model) == (check.strategy, check.model) and not options:
            if modes_dtype == args.dtype:
                if args.reference_check:
                    continue  # the check is this very mode
            else:
                mode = Mode(f"{name}@{args.modes_dtype}", name, mode.model, modes_dtype, spec=item.strip())
        if mode.label not in [m.label for m in modes]:
            modes.append(mode)
    return modes


def _options(args: Any, strategy: str, dtype: str | None, own: dict[str, Any] | None = None) -> dict[str, Any]:
    from llmopt import strategies

    cls = strategies.resolve(strategy)
    options: dict[str, Any] = {"trust_remote_code": args.trust_remote_code, **(own or {})}
    # vLLM's 4-bit kernels compute in 16 bits only: they keep their own dtype when the reference runs in float32.
    if dtype and not (getattr(cls, "quantization", None) and dtype == "float32"):
        options["dtype"] = dtype
    if cls.engine_batching:
        options["max_logprobs"] = 20
        options["enable_prefix_caching"] = False
        if args.enforce_eager:
            options["enforce_eager"] = True
    if "gguf_type" in cls.options_taken:
        options["score_tokens"] = True
    return options


def _reference_prompts(args: Any) -> list[tuple[str, Any]]:
    from llmopt.documents.datasets import load_dataset
    from llmopt.documents.prompts import PROMPTS

    docs = load_dataset(args.dataset)[: args.limit] if args.limit else load_dataset(args.dataset)
    return [(d.id, PROMPTS[args.prompt](d.document)) for d in docs if d.document.strip()]


def _one(args: Any, mode: Mode, out: Path) -> int:
    """In a process of its own: load one mode, measure its drift against the cached reference, write it."""
    from llmopt import strategies
    from llmopt.files import write_json_atomic
    from llmopt.quality import drift
    from llmopt.runner import teacher_forced

    _, reference = drift.load_reference(out / REFERENCE_FILE)
    cls = strategies.resolve(mode.strategy)
    strategies.require_available(cls)
    strategy = cls(mode.model, **_options(args, mode.strategy, mode.dtype, mode.options))
    strategy.fetch()
    strategy.load()
    try:  # with --prompt chat the cached prompts are already templated: every mode reads the reference's very text
        result = teacher_forced.measure(strategy, mode.strategy, mode.model, reference)
        described = strategy.describe()
    finally:
        strategy.close()
    # What the mode ran, as a run's summary records it: a report gives these figures only to a row that ran the same
    # dtype, and (llama.cpp) the same GGUF type, the file as published, q8_0, ...
    gguf_type = described.get("gguf_type") if "gguf_type" in cls.options_taken else None
    write_json_atomic(out / "modes" / f"{mode.label}.json",
                      {**asdict(result), "status": "ok", "label": mode.label, "dtype": described.get("dtype"),
                       "dtype_requested": mode.dtype or AUTO, "reference_check": mode.reference_check,
                       "gguf_type": gguf_type, "options": mode.options, "spec": mode.spec,
                       "kv_cache_dtype": described.get("kv_cache_dtype")})  # fmt: skip
    return common.EXIT_OK


def _reference_meta(args: Any, model: str, prompts: list[tuple[str, Any]]) -> dict[str, Any]:
    """The settings a cached reference was built with: a later run with the same settings reuses it."""
    from llmopt.quality import drift

    return {"strategy": args.reference, "model": model, "dataset": args.dataset, "prompt": args.prompt,
            "max_new_tokens": args.max_new_tokens, "dtype": args.dtype, "documents": [i for i, _ in prompts],
            "top_k": drift.REFERENCE_TOP_K}  # fmt: skip


def _reference_is_cached(args: Any, model: str, out: Path) -> bool:
    """Whether the output folder holds the reference these settings give; the dataset is read here either way, so
    a bad one is a usage error before any child starts."""
    from llmopt.quality import drift

    meta = _reference_meta(args, model, _reference_prompts(args))
    path = out / REFERENCE_FILE
    return path.is_file() and drift.load_reference(path)[0] == meta


def _build_reference(args: Any, model: str, out: Path) -> int:
    """In a process of its own: the reference summaries and distributions, cached in the output folder."""
    from llmopt import strategies
    from llmopt.quality import drift
    from llmopt.runner import teacher_forced

    prompts = _reference_prompts(args)
    meta = _reference_meta(args, model, prompts)
    path = out / REFERENCE_FILE
    if path.is_file() and drift.load_reference(path)[0] == meta:
        return common.EXIT_OK
    cls = strategies.resolve(args.reference)
    strategies.require_available(cls)
    strategy = cls(model, **_options(args, args.reference, args.dtype))
    strategy.fetch()
    strategy.load()
    try:
        if args.prompt == "chat":
            prompts = list(zip([i for i, _ in prompts], strategy.apply_chat_template([p for _, p in prompts]), strict=True))
        docs = teacher_forced.build_reference(strategy, prompts, args.max_new_tokens)
    finally:
        strategy.close()
    drift.save_reference(path, meta, docs)
    return common.EXIT_OK


def main(argv: list[str] | None = None, prog: str = "llmopt drift") -> int:
    args = parser(prog).parse_args(argv)
    if args.out is None and (args.one or args.build_reference):
        raise UsageError("--one and --build-reference need --out")
    model = args.model or "meta-llama/Llama-2-7b-chat-hf"
    out = args.out or Path("results") / f"drift-{Path(model).name}"
    if args.one:
        return _one(args, Mode(**json.loads(args.one)), out)
    if args.build_reference:
        return _build_reference(args, model, out)
    modes = _modes(args, model)
    from llmopt import strategies

    for mode in modes:
        cls = strategies.resolve(mode.strategy)  # an unknown name is a usage error before any work
        taken = set(cls.options_taken) | ({"kv_cache_dtype"} if cls.engine_batching else set())
        unknown = sorted(set(mode.options or {}) - taken)
        if unknown:
            raise UsageError(f"--strategies: {mode.strategy} takes no option {unknown[0]!r}")
    try:
        (out / "modes").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot write the output folder {str(out)!r}: {exc.strerror or exc}") from None
    argv = argv or sys.argv[1:]
    if not _reference_is_cached(args, model, out):
        print(f"{prog}: reference {args.reference} on {model} ...", file=sys.stderr)
        code = _run_reference(argv, out, prog)
        if code != common.EXIT_OK:
            return code
    results = []
    for mode in modes:
        print(f"{prog}: {mode.label} ({mode.model}) ...", file=sys.stderr)
        results.append(_run_one(argv, mode, out))
    summary = _summary(args, model, out, results)
    from llmopt.files import write_json_atomic

    write_json_atomic(out / "summary.json", summary)
    (out / "report.md").write_text(_report(summary), encoding="utf-8")
    print(_report(summary))
    print(f"results: {out}")
    return common.EXIT_OK


def _run_reference(argv: list[str], out: Path, prog: str) -> int:
    """The reference in a child process, as each mode: its model, and on a GPU its CUDA context, are gone before the
    first mode starts. The child says on stderr why it stopped (one line on bad input or a strategy this machine
    cannot run); its exit code is this command's."""
    cmd = [sys.executable, "-m", "llmopt", "drift", *_without(argv, ("--out", "--one")), "--out",
           str(out), "--build-reference"]  # fmt: skip
    code = subprocess.run(cmd).returncode
    if code in (common.EXIT_OK, common.EXIT_USAGE, common.EXIT_UNAVAILABLE, common.EXIT_INTERRUPTED):
        return code
    print(f"{prog}: error: the reference failed (exit code {code})", file=sys.stderr)
    return common.EXIT_FAILED


def _run_one(argv: list[str], mode: Mode, out: Path) -> dict[str, Any]:
    """One mode in a child process (a crash, an OOM or a CUDA context stays there); its result or why it has none."""
    cmd = [sys.executable, "-m", "llmopt.drift", *_without(argv, ("--out", "--one")), "--out", str(out), "--one",
           json.dumps(asdict(mode))]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    path = out / "modes" / f"{mode.label}.json"
    if done.returncode == 0 and path.is_file():
        return json.loads(path.read_text())
    lines = [line.strip() for line in done.stderr.strip().splitlines() if line.strip()]
    telling = [line for line in lines if "error" in line.lower() and not line.startswith("For further information")]
    status = "unavailable" if done.returncode == common.EXIT_UNAVAILABLE else "failed"
    why = (telling or lines or [f"exit code {done.returncode}"])[-1]
    return {"strategy": mode.strategy, "label": mode.label, "model": mode.model, "dtype": None,
            "dtype_requested": mode.dtype or AUTO, "reference_check": mode.reference_check, "status": status,
            "options": mode.options, "spec": mode.spec, "error": why[:300]}  # fmt: skip


def _without(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    """argv without the given flags and their values (`--out DIR` or `--out=DIR`)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in flags:
            skip = True
            continue
        if any(arg.startswith(f + "=") for f in flags):
            continue
        kept.append(arg)
    return kept


def _summary(args: Any, model: str, out: Path, results: list[dict[str, Any]]) -> dict[str, Any]:
    from llmopt.quality import drift

    meta, reference = drift.load_reference(out / REFERENCE_FILE)
    # The dtype the reference ran, as its check (the same strategy, model and options) recorded it.
    ran = next((m.get("dtype") for m in results if m.get("reference_check") and m.get("status") == "ok"), args.dtype)
    return {
        "model": model,
        "reference": {"strategy": args.reference, "model": model, "dtype": ran},
        "dataset": args.dataset,
        "prompt": args.prompt,
        "documents": len(reference),
        "positions": sum(len(d.continuation) for d in reference),
        "reference_top_k": meta["top_k"],
        "max_new_tokens": args.max_new_tokens,
        "modes": results,
        "method": drift.__doc__.split("\n\n")[1].replace("\n", " ") if drift.__doc__ else "",
    }


def _report(summary: dict[str, Any]) -> str:
    def f(value: Any, spec: str) -> str:
        return "–" if value is None else format(value, spec)

    lines = [
        f"# Drift from {summary['reference']['strategy']} ({summary['model']})",
        "",
        f"{summary['documents']} documents of {summary['dataset']}, {summary['positions']} summary positions, "
        f"the reference's top {summary['reference_top_k']} tokens per position.",
        "",
        "| mode | model | dtype | KL mean | KL p99 | top-1 agreement | perplexity | status |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in summary["modes"]:
        lines.append(
            f"| {m.get('label', m['strategy'])} | {m['model']} | {m.get('dtype') or '–'} | {f(m.get('kl_mean'), '.5g')} | "
            f"{f(m.get('kl_p99'), '.5g')} | "
            f"{f(m.get('top1_agreement'), '.4f')} | {f(m.get('perplexity'), '.4f')} | "
            f"{m['status'] if m['status'] == 'ok' else m['status'] + ': ' + m.get('error', '')} |"
        )
    return "\n".join(lines) + "\n"


def entry(prog: str = "llmopt drift", argv: list[str] | None = None) -> int:
    return common.guarded(prog, main, argv)
