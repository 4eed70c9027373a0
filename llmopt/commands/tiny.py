"""llmopt tiny (python -m llmopt.tiny): write a tiny random Llama-shaped checkpoint (optionally 4-bit packed) anywhere.

llmopt tiny OUT --size small [--packing awq]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from llmopt.commands import common


def main(argv: list[str] | None = None, prog: str = "llmopt tiny") -> int:
    from llmopt.models import tiny

    p = common.Parser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="folder to write the checkpoint into")
    p.add_argument("--size", choices=sorted(tiny.SHAPES), default="tiny")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--packing", choices=["awq", "gptq"], help="also pack the weights in this 4-bit layout")
    args = p.parse_args(argv)
    if args.packing:
        with tempfile.TemporaryDirectory() as tmp:
            tiny.pack(tiny.build(Path(tmp), args.size, args.seed), args.out, args.packing)
    else:
        tiny.build(args.out, args.size, args.seed)
    print(args.out)
    return common.EXIT_OK


def entry(prog: str = "llmopt tiny", argv: list[str] | None = None) -> int:
    return common.guarded(prog, main, argv)
