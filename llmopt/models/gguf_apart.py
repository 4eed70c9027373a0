"""What a llamacpp run reads from and makes of GGUF files (the weight type, the trained context, the tensor bytes; a
GGUF file dequantized to a checkpoint; a checkpoint converted to a GGUF type), each done in a fresh Python process.

Why apart: the `gguf` package imports mistral_common where it is installed (vLLM needs it), and mistral_common
imports OpenCV (with ffmpeg's libraries) to learn whether it can. The process that times llama.cpp should load what
llama.cpp alone loads, so that llmopt and a bare llama.cpp loop differ only in llmopt's own work; it never imports
`gguf`. (Two short launches once read llama.cpp 6% slower with OpenCV in the process; later ones did not confirm it:
docs/benchmarks.md.) A child costs about a second, before the clock and the load; a file's facts are read once.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmopt.errors import UsageError
from llmopt.models.gguf import Converted

EXIT_USAGE = 2
REFUSAL = "llmopt-gguf-apart-refused: "  # the child's refusal (a UsageError), one JSON string after this prefix


@dataclass(frozen=True)
class Facts:
    file_type: str  # as llama.cpp names it: Q4_1, Q8_0, F16...
    context_length: int | None  # `<arch>.context_length`
    tensor_bytes: int  # every tensor as stored
    streamed_bytes: int  # what one forward pass reads (llmopt.models.gguf.tensor_bytes)


def facts(path: Path) -> Facts:
    stat = path.stat()
    return _facts(str(path.resolve()), stat.st_size, stat.st_mtime)


@functools.lru_cache(maxsize=16)
def _facts(path: str, size: int, mtime: float) -> Facts:
    return Facts(**_call("facts_here", path))


def dequantized(path: Path) -> Path:
    """llmopt.models.fromgguf.ensure, apart: the cached checkpoint of a GGUF file."""
    return Path(_call("dequantized_here", str(path)))


def converted(source: str, gguf_type: str) -> Converted:
    """llmopt.models.gguf.convert, apart: the cached GGUF of a checkpoint at `gguf_type`."""
    path, seconds = _call("converted_here", source, gguf_type)
    return Converted(Path(path), seconds)


def _call(function: str, *args: Any) -> Any:
    child = [sys.executable, "-c", CHILD, function, json.dumps(args)]
    done = subprocess.run(child, capture_output=True, text=True)
    lines = done.stderr.strip().splitlines()
    refusals = [line.removeprefix(REFUSAL) for line in lines if line.startswith(REFUSAL)]
    if done.returncode == EXIT_USAGE and refusals:
        raise UsageError(json.loads(refusals[-1]))
    if done.returncode != 0:
        raise RuntimeError(f"{function}{tuple(args)} failed in its own process (exit {done.returncode}): "
                           + "\n".join(lines[-20:]))  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


# The child's side: each returns what JSON carries.


def facts_here(path: str) -> dict[str, Any]:
    from llmopt.models import fromgguf, gguf

    total, streamed = gguf.tensor_bytes(Path(path))
    return {"file_type": fromgguf.file_type(Path(path)), "context_length": gguf.context_length(Path(path)),
            "tensor_bytes": total, "streamed_bytes": streamed}  # fmt: skip


def dequantized_here(path: str) -> str:
    from llmopt.models import fromgguf

    return str(fromgguf.ensure(Path(path)))


def converted_here(source: str, gguf_type: str) -> list[Any]:
    from llmopt.models import gguf

    done = gguf.convert(source, gguf_type)
    return [str(done.path), done.seconds]


CHILD_FUNCTIONS = {"facts_here": facts_here, "dequantized_here": dequantized_here, "converted_here": converted_here}


def answer(function: str, arguments: str) -> int:
    """The child's side: run one of CHILD_FUNCTIONS on its JSON arguments and print its JSON result."""
    result_out, sys.stdout = sys.stdout, sys.stderr  # what the libraries print stays off the answer
    try:
        result = CHILD_FUNCTIONS[function](*json.loads(arguments))
    except UsageError as exc:
        print(REFUSAL + json.dumps(str(exc)), file=sys.stderr)
        return EXIT_USAGE
    result_out.write(json.dumps(result) + "\n")
    return 0


# The child's whole program: its two arguments go straight to answer().
CHILD = "import sys; from llmopt.models.gguf_apart import answer; sys.exit(answer(sys.argv[1], sys.argv[2]))"
