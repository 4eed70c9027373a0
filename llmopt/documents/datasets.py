"""Documents to summarize: the Wikilingua sample of the published study, a JSONL file, or the bundled sample."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from llmopt.errors import UsageError
from llmopt.files import read_user_file
from llmopt.paths import DATA_DIR, cache_dir

WIKILINGUA_HUB_ID = "esdurmus/wiki_lingua"


@dataclass(frozen=True)
class Document:
    id: str
    document: str
    summary: str
    # A synthetic workload has no text, only a prompt length; the strategy draws that many token ids.
    prompt_tokens: int | None = None


def load_jsonl(path: Path) -> list[Document]:
    """Lines of {"id" or "url", "document", "summary"}; every error names its line."""
    text = read_user_file(path, "dataset file")
    docs: list[Document] = []
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise UsageError(f"{where}: expected a JSON object")
        doc_id = row.get("id", row.get("url"))
        if doc_id is None:
            raise UsageError(f'{where}: needs an "id" or "url"')
        doc_id = str(doc_id)
        if doc_id in seen:
            raise UsageError(f"{where}: duplicate id {doc_id!r}")
        seen.add(doc_id)
        for key in ("document", "summary"):
            if not isinstance(row.get(key), str):
                raise UsageError(f'{where}: needs a string "{key}"')
        docs.append(Document(doc_id, row["document"], row["summary"]))
    if not docs:
        raise UsageError(f"dataset file {str(path)!r} holds no documents")
    return docs


def published_order() -> list[str]:
    """The 100 study URLs in the order the study processed them (dataset order)."""
    with open(DATA_DIR / "lcary_2024_document_tokens.csv", newline="", encoding="utf-8") as f:
        return [row["url"] for row in sorted(csv.DictReader(f), key=lambda r: int(r["position"]))]


def select_wikilingua(rows: Iterable[dict]) -> list[Document]:
    """The study's sample from rows of the `english` config: first section of each selected article, dataset order."""
    wanted = set((DATA_DIR / "wikilingua_100_urls.txt").read_text(encoding="utf-8").split())
    docs = []
    for row in rows:
        url = row["url"]
        if url in wanted:
            article = row["article"]
            docs.append(Document(url, article["document"][0], article["summary"][0]))
            wanted.discard(url)  # the study kept the first occurrence
    if wanted:
        raise UsageError(f"{len(wanted)} of the study's 100 URLs are not in {WIKILINGUA_HUB_ID}, e.g. {sorted(wanted)[0]}")
    return docs


def load_wikilingua() -> list[Document]:
    """The 100-article sample, from the local cache or once from the Hub."""
    cached = cache_dir() / "wikilingua_100.jsonl"
    if cached.is_file():
        return load_jsonl(cached)
    local = "use --dataset sample (bundled) or --dataset PATH.jsonl (lines with id, document, summary)"
    from llmopt import hub

    if hub.offline():
        raise UsageError(f"the Wikilingua sample is not cached at {cached} and HF_HUB_OFFLINE is set: {local}")
    answer = hub.probe(WIKILINGUA_HUB_ID, kind="dataset")
    if answer.status == "unreachable":
        raise UsageError(
            f"the Wikilingua sample is not cached at {cached} and the Hub cannot be reached ({answer.detail}): {local}"
        )
    try:
        import datasets
    except ImportError:
        raise UsageError(
            "--dataset wikilingua downloads the sample once and needs the datasets package: "
            "pip install datasets (or pass --dataset sample / --dataset PATH.jsonl)"
        ) from None
    try:
        rows = datasets.load_dataset(WIKILINGUA_HUB_ID, "english", split="train")
    except Exception as exc:  # network, hub or format errors all mean the same to the user
        raise UsageError(f"could not load {WIKILINGUA_HUB_ID} from the Hub: {type(exc).__name__}: {exc}") from None
    docs = select_wikilingua(rows)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps({"url": doc.id, "document": doc.document, "summary": doc.summary}) + "\n")
    tmp.replace(cached)
    return docs


def load_dataset(spec: str) -> list[Document]:
    if spec == "sample":
        return load_jsonl(DATA_DIR / "sample.jsonl")
    if spec == "wikilingua":
        return load_wikilingua()
    path = Path(spec).expanduser()
    if path.suffix != ".jsonl" and not path.exists():
        raise UsageError(f"unknown dataset {spec!r}: use wikilingua, sample, or a PATH.jsonl")
    return load_jsonl(path)
