"""`transformers serve` (transformers 5, the `serving` extra) on a checkpoint folder, run as
`python -m transformers.cli.transformers serve FOLDER`: the model is loaded before the server answers.

The model: tiny or a folder as it is; `smollm2-135m` (or any .gguf file) the float32 checkpoint llmopt dequantizes from
the file once; a Hub id downloaded first. The server then answers only requests naming that folder (its path is the
served name), and lists the Hugging Face cache at /v1/models, not the model it serves.

How it serves: without `--continuous-batching` one request at a time (one generation thread, the others queue); with
it (`--serve-arg=--continuous-batching`, tuned by the `--cb-*` flags) requests share batches through a paged KV cache.
`--quantization bnb-8bit` or `bnb-4bit` loads the weights through bitsandbytes. It refuses a request carrying
`ignore_eos` (HTTP 422: it checks the fields against OpenAI's), takes no API key, and sends `usage` at the end of every
stream. Precision: llmopt's rule (`precision.serving_dtype`, as `llmopt run` gives transformers and vLLM) unless
`--dtype` is given; threads: torch's, one per CPU of this process (OMP_NUM_THREADS), unless the environment sets them.
"""

from __future__ import annotations

import os

from llmopt.serving.server import Server, given


class TransformersServer(Server):
    program = "transformers serve"
    module = "transformers.cli.transformers"
    requires = (
        ("transformers", "'transformers[serving]'"),
        ("fastapi", "'transformers[serving]'"),
        ("uvicorn", "'transformers[serving]'"),
        ("openai", "'transformers[serving]'"),
        ("torch", "torch"),
    )
    honours_ignore_eos = False
    refuses_ignore_eos = True
    takes_api_key = False
    names_its_model = False

    def __init__(self, *args: object, **options: object) -> None:
        super().__init__(*args, **options)  # type: ignore[arg-type]
        self.dtype = ""

    def prepare(self) -> None:
        super().prepare()
        from llmopt.models import resolve
        from llmopt.strategies.hf import default_dtype
        from llmopt.strategies.vllm import _has_cuda

        self.path = resolve.fetch(self.model).path
        self.served_name = self.path  # the only name it answers to
        self.dtype = default_dtype("cuda" if _has_cuda() else "cpu", resolve.load_config(self.model, self.path, False))

    def arguments(self) -> list[str]:
        args = ["serve", self.path, "--host", "127.0.0.1", "--port", str(self.port)]
        if not given("--dtype", self.extra_args):
            args += ["--dtype", self.dtype]
        return args

    def environment(self) -> dict[str, str]:
        return {
            "HF_HUB_OFFLINE": "1",  # the folder is local: nothing to ask the Hub
            "HF_HUB_DISABLE_UPDATE_CHECK": "1",  # the CLI would otherwise ask PyPI for a newer transformers
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS") or str(len(os.sched_getaffinity(0))),
        }

    def notes(self) -> list[str]:
        if given("--continuous-batching", self.extra_args):
            batching = "transformers serve batches requests continuously (--continuous-batching)"
        else:
            batching = "transformers serve answers one request at a time: the others wait (no --continuous-batching)"
        return [batching]
