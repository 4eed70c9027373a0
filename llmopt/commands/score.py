"""llmopt score (python -m llmopt.score): ROUGE-1/2/L F1 of a predictions file, with bootstrap 95% intervals, as JSON.

    llmopt score --predictions results/RUN/records.jsonl

Each line needs "prediction" and "reference"; lines without a prediction (skipped or oom documents) are
counted and left out. Scored as evaluate's "rouge" scores (see llmopt.quality.rouge).
"""

from __future__ import annotations

import json
from pathlib import Path

from llmopt.commands import common
from llmopt.errors import UsageError
from llmopt.files import read_user_file


def read_pairs(path: Path) -> tuple[list[str], list[str], int]:
    lines = read_user_file(path, "predictions file").splitlines()
    predictions, references, unscored = [], [], 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("reference"), str):
            raise UsageError(f'{path}:{number}: needs a string "reference"')
        if row.get("prediction") is None:
            unscored += 1
            continue
        if not isinstance(row["prediction"], str):
            raise UsageError(f'{path}:{number}: "prediction" must be a string')
        predictions.append(row["prediction"])
        references.append(row["reference"])
    if not predictions:
        raise UsageError(f"{str(path)!r} holds no lines with a prediction to score")
    return predictions, references, unscored


def main(argv: list[str] | None = None, prog: str = "llmopt score") -> int:
    p = common.Parser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--predictions", type=Path, required=True, help="JSONL with prediction and reference per line")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    args = p.parse_args(argv)
    from llmopt.quality import rouge

    predictions, references, unscored = read_pairs(args.predictions)
    aggregates = rouge.aggregate(rouge.score_pairs(predictions, references), seed=args.seed)
    result: dict[str, object] = {"n": len(predictions), "n_unscored": unscored}
    for kind, agg in aggregates.items():
        result[kind] = round(agg.mid, 6)
        result[f"{kind}_ci95"] = [round(agg.low, 6), round(agg.high, 6)]
        result[f"{kind}_mean"] = round(agg.mean, 6)
    result["method"] = "rouge-score F1, no stemmer; value = median of 1000 bootstrap means (seeded), as evaluate reports"
    print(json.dumps(result, indent=2))
    return common.EXIT_OK


def entry(prog: str = "llmopt score", argv: list[str] | None = None) -> int:
    return common.guarded(prog, main, argv)
