"""The document loop of one run: load the strategy (after its download), build the prompts, warm up, run the batches
under the clock and the memory monitor, and always leave a valid summary, also on Ctrl-C or a crash."""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from llmopt.documents.datasets import Document
from llmopt.documents.prompts import PROMPTS
from llmopt.errors import UsageError
from llmopt.measure import environment, memory
from llmopt.measure.energy import EnergyMeter
from llmopt.measure.timing import SyncedTimer
from llmopt.runner import batching, summary
from llmopt.runner.config import RunConfig
from llmopt.runner.records import Item, Recorder, RunDir
from llmopt.stopping import StopRequest
from llmopt.strategies.base import GenerationParams, Strategy, sampling_preset


class Run:
    def __init__(
        self,
        config: RunConfig,
        strategy_cls: type[Strategy],
        docs: Sequence[Document],
        out: RunDir,
        stop: StopRequest | None = None,
    ) -> None:
        self.config = config
        self.strategy_cls = strategy_cls
        self.docs = list(docs[: config.limit] if config.limit else docs)
        self.out = out
        self.stop = stop or StopRequest()
        self.recorder = Recorder(out, self.stop)
        self.strategy: Strategy | None = None
        self.batcher: batching.Batcher | None = None
        self.memory = memory.DeviceMemory()
        self.energy = EnergyMeter()
        self.session: dict[str, Any] = {
            # None until the document loop runs: a model that never loaded has no loop time, not 0 s
            "event": "session", "download_s": None, "load_s": None, "warmup_s": None, "run_s": None,
        }  # fmt: skip
        self.batch_size = config.batch_size if isinstance(config.batch_size, int) else 1

    def params(self) -> GenerationParams:
        temperature, top_p, top_k = sampling_preset(self.config.sampling, self.strategy_cls.published_sampling)
        return GenerationParams(
            max_new_tokens=self.config.max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            seed=self.config.seed,
            ignore_eos=self.config.ignore_eos,
        )

    @property
    def aborted(self) -> bool:
        return self.batcher is not None and self.batcher.aborted

    def execute(
        self, on_progress: Callable[[int], None] | None = None, on_start: Callable[[int], None] | None = None
    ) -> dict[str, Any]:
        """Process every unfinished document; always leaves a valid summary, also on Ctrl-C or a crash."""
        progress = on_progress or (lambda n: None)
        interrupted = False
        try:
            finished = {doc_id for doc_id, r in self.out.records().items() if r["status"] != "failed"}
            todo = [Item(i, d, "") for i, d in enumerate(self.docs) if d.id not in finished]
            if todo and self._load(todo, progress):
                if on_start:
                    on_start(len(todo))
                runnable = self._prepare(todo, progress)
                if self.config.batch_size == "auto" and not self.strategy_cls.engine_batching and runnable:
                    self.batch_size = self._find_batch_size(runnable)
                size = len(runnable) if self.strategy_cls.engine_batching else self.batch_size
                batches = batching.split(runnable, max(size, 1))
                self.recorder.honour_stop()
                self._warm_up(batches)
                self.recorder.honour_stop()
                self._loop(batches, progress)
        except KeyboardInterrupt:
            interrupted = True
        except UsageError:
            raise
        except Exception as exc:  # a crash becomes a `failed` run with its error; the traceback goes to a file
            self.session["error"] = f"{type(exc).__name__}: {exc}"
            self.out.write_error_log(traceback.format_exc())
        finally:
            with self.stop.shielded():
                self._finish(interrupted or self.stop.requested)
        return self.summary()

    def _load(self, todo: list[Item], progress: Callable[[int], None]) -> bool:
        """Download (timed apart), then load. A model that does not fit at load time makes every document `oom`."""
        self.strategy = self.strategy_cls(self.config.model, **self.config.options)
        self.session["download_s"] = self.strategy.fetch()  # None: nothing to download (a local folder, no model)
        self.memory.read_idle()  # the GPUs' use before the model is there, subtracted from the device figure
        started = time.perf_counter()
        strategy = self.strategy

        def load() -> None:
            strategy.load()
            strategy.synchronize()

        error = memory.unless_out_of_memory(load)
        if error is not None:
            error = error.replace(":", " while loading the model:", 1) if ":" in error else f"{error} while loading the model"
        self.session["load_s"] = time.perf_counter() - started
        if error is None:
            # Random weights and text-less workloads produce no summary worth scoring.
            scored = self.config.options.get("weights", "pretrained") != "random" and not self.config.dataset.startswith(
                "workload:"
            )
            self.batcher = batching.Batcher(self.strategy, self.params(), self.recorder, scored)
            return True
        self.recorder.event({"event": "oom", "stage": "load", "batch_size": None, "doc_ids": [it.doc.id for it in todo],
                             "generate_s": 0.0, "error": error})  # fmt: skip
        self.recorder.append([Recorder.record(it, "oom", reason=error) for it in todo])
        progress(len(todo))
        return False

    def _prepare(self, todo: list[Item], progress: Callable[[int], None]) -> list[Item]:
        """Build prompts and count tokens; record empty and over-long documents as skipped."""
        assert self.strategy is not None
        skipped, runnable = [], []
        for item in todo:
            if item.doc.prompt_tokens is None and not item.doc.document.strip():
                skipped.append(Recorder.record(item, "skipped", reason="empty document"))
            else:
                runnable.append(item)
        if self.strategy_cls.uses_prompt:
            texts = [PROMPTS[self.config.prompt](it.doc.document) for it in runnable]
            if self.config.prompt == "chat":
                texts = self.strategy.apply_chat_template(texts)
        else:
            texts = [it.doc.document for it in runnable]
        prompts: list[str | list[int]] = list(texts)
        for i, item in enumerate(runnable):
            if item.doc.prompt_tokens is not None:  # a workload: lengths only, the token ids are drawn
                prompts[i] = self.strategy.random_prompt(item.doc.prompt_tokens, seed=item.index)
        for item, prompt, n in zip(runnable, prompts, self.strategy.count_tokens(prompts), strict=True):
            item.prompt, item.prompt_tokens = prompt, n
        keep = []
        for item in runnable:
            reason = self.strategy.skip_reason(item.prompt_tokens, self.config.max_new_tokens)
            if reason:
                skipped.append(Recorder.record(item, "skipped", reason=reason, prompt_tokens=item.prompt_tokens))
            else:
                keep.append(item)
        self.recorder.append(skipped)
        progress(len(skipped))
        return keep

    def _find_batch_size(self, runnable: list[Item]) -> int:
        assert self.batcher is not None
        batcher = self.batcher
        started = time.perf_counter()
        chosen, tried = batching.find_batch_size(runnable, lambda items: batcher.fits(items, self.config.max_new_tokens))
        self.recorder.event({"event": "auto_batch", "tried": tried, "chosen": chosen})
        self.session.update(auto_batch_s=time.perf_counter() - started, batch_size=chosen)
        return chosen

    def _warm_up(self, batches: list[list[Item]]) -> None:
        if not (self.config.warmup and batches):
            return
        assert self.strategy is not None
        timer = SyncedTimer(self.strategy.synchronize)
        strategy, batch_prompts, params = self.strategy, [[it.prompt for it in b] for b in batches], self.params()

        def warm_up() -> None:
            with timer:
                strategy.warm_up(batch_prompts, params)

        memory.unless_out_of_memory(warm_up)  # a warm-up that does not fit is no reason to stop: the loop backs off
        strategy.drop_prompt_cache()  # the warm-up's prompt is one of the documents
        self.session["warmup_s"] = timer.seconds

    def _loop(self, batches: list[list[Item]], progress: Callable[[int], None]) -> None:
        """The timed document loop, `repeats` times: memory peaks, energy and the clock cover exactly this. The first
        pass writes the records; later ones time the batches that completed in it again."""
        assert self.strategy is not None and self.batcher is not None
        self.memory.start(self.strategy.memory_scope())
        self.energy.start(self.memory.handles, self.memory.on_gpu, self.memory.note)
        started = time.perf_counter()
        try:
            for batch in batches:
                self.batcher.run(batch, progress)
                if self.batcher.aborted:
                    break
                self.recorder.honour_stop()  # an interrupt that something inside the batch swallowed
            for repeat in range(2, self.config.repeats + 1):
                if self.batcher.aborted:
                    break
                try:
                    seconds, docs = self.batcher.repeat()
                except Exception as exc:  # the records of the first pass are complete: a later pass cannot spoil them
                    error = f"{type(exc).__name__}: {exc}"[:500]
                    self.recorder.event({"event": "repeat", "repeat": repeat, "error": error})
                    print(f"llmopt: warning: repeat {repeat} failed, keeping the passes before it: {error}", file=sys.stderr)
                    break
                self.recorder.event({"event": "repeat", "repeat": repeat, "generate_s": seconds, "docs": docs})
        finally:
            self.session["run_s"] = time.perf_counter() - started
            self.energy.stop()
            self.memory.stop()

    def _finish(self, interrupted: bool) -> None:
        """The session's event and the summary first, then the strategy's close: a slow engine shutdown (tensor-
        parallel workers) must not cost the summary when a sweep kills the cell after its grace period."""
        if self.strategy is not None:
            try:
                self.session["describe"] = self.strategy.describe()
            except Exception as exc:  # a user's strategy that cannot describe itself after a failed load
                self.session["describe"] = {"error": f"describe failed: {type(exc).__name__}: {exc}"}
        self.session.update(self.memory.peaks())
        self.session.update(self.energy.figures())
        if self.batcher is not None:
            self.session.update(docs_generated=self.batcher.docs_generated, tokens_generated=self.batcher.tokens_generated)
        self.session.update(peak_rss_bytes=memory.peak_rss_bytes(), interrupted=interrupted, aborted=self.aborted)
        damaged = self.out.damaged_lines()
        if damaged:  # cut off by a hard kill in an earlier session; their documents were run again
            self.session["damaged_record_lines"] = damaged
        self.out.append_event(self.session)
        self.out.sort_records()
        self.out.write_summary(self.summary())
        if self.strategy is not None:
            try:
                self.strategy.close()
            except Exception as exc:  # a failing close must not lose the results (they are written already)
                print(f"llmopt: warning: closing the strategy failed: {exc}", file=sys.stderr)

    def summary(self) -> dict[str, Any]:
        ids = {d.id for d in self.docs}
        records = [r for r in self.out.records().values() if r["id"] in ids]
        device = environment.device_label(environment.gpu_info())
        return summary.build(self.config.identity(), len(self.docs), records, self.out.events(), device)
