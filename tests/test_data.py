"""The study's sample is rebuilt exactly: first section of each article, dataset order; prompts as published."""

from __future__ import annotations

import csv

import pytest

from llmopt.documents import datasets, prompts
from llmopt.errors import UsageError
from llmopt.paths import DATA_DIR


def study_rows() -> list[dict]:
    """Rows shaped like `esdurmus/wiki_lingua` (english, train): the 100 study URLs among others, one repeated."""
    rows = [{"url": "https://www.wikihow.com/Unrelated-0", "article": {"document": ["x"], "summary": ["y"]}}]
    for i, url in enumerate(datasets.published_order()):
        rows.append({"url": url, "article": {"document": [f"first {i}", "second"], "summary": [f"sum {i}", "s2"]}})
        if i == 10:
            rows.append({"url": url, "article": {"document": ["a later copy"], "summary": ["no"]}})
    return rows


def test_selection_keeps_dataset_order_and_first_section():
    docs = datasets.select_wikilingua(study_rows())
    assert len(docs) == 100
    assert [d.id for d in docs] == datasets.published_order()
    assert docs[10].document == "first 10" and docs[10].summary == "sum 10"


def test_selection_fails_loudly_when_urls_are_missing():
    with pytest.raises(UsageError, match="99 of the study's 100 URLs"):
        datasets.select_wikilingua(study_rows()[:2])


def test_shipped_url_list_and_token_table_agree():
    urls = set((DATA_DIR / "wikilingua_100_urls.txt").read_text().split())
    assert len(urls) == 100 and set(datasets.published_order()) == urls
    with open(DATA_DIR / "lcary_2024_document_tokens.csv") as f:
        tokens = [int(r["document_tokens"]) for r in csv.DictReader(f)]
    assert sum(tokens) / len(tokens) == pytest.approx(515.44)


def test_published_prompts_are_exact():
    assert prompts.PROMPTS["published-hf"]("DOC") == "DOC\n\n\nSummarize the above text in 1-3 sentences."
    assert prompts.PROMPTS["published-vllm"]("DOC") == "Document: 'DOC' .\n\nSummary of the above Document in 1-3 sentences: '"


def test_cached_wikilingua_is_used_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMOPT_CACHE", str(tmp_path))
    (tmp_path / "wikilingua_100.jsonl").write_text('{"url": "u1", "document": "d", "summary": "s"}\n')
    assert datasets.load_dataset("wikilingua")[0].id == "u1"


def test_bundled_sample_is_there():
    docs = datasets.load_dataset("sample")
    assert len(docs) >= 20 and all(d.document and d.summary for d in docs)
    assert len({d.id for d in docs}) == len(docs)
