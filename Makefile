# The pip twin of pixi.toml: every pixi task has a target of the same name here, and
# tests/test_tasks.py keeps the two lists in step. The first target run creates .venv.
#   make gpt2        chat with GPT-2            (pixi run gpt2)
#   make test        the test suite             (pixi run test), then test-serve
#   make test-serve  the serving tests in .venv-serve (pixi run test-serve)
#   make s01 … s11   check a tutorial step      (pixi run s01 …); SOLUTIONS=1 checks solutions/
#   make check-all   every step's checker       (pixi run check-all)
#   make my-gpt2     run your own finished GPT-2 (steps/step_11.py)
#   make bench       ours against the others    (pixi run bench)
#   make eval        perplexity of GPT-2        (pixi run eval)
#   make serve       GPT-2 over an OpenAI API   (pixi run serve); its own .venv-serve (see README)

PYTHON ?= python3
VENV := .venv
SERVE_VENV := .venv-serve
SERVE_STAMP := $(SERVE_VENV)/.installed
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MODEL ?= gpt2
STEPS := s01 s02 s03 s04 s05 s06 s07 s08 s09 s10 s11
# Where torch comes from; PyPI's torch for Linux x86-64 is the CUDA build (several GB).
# TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu installs the CPU build instead.
TORCH_INDEX_URL ?=

.PHONY: setup gpt2 test test-serve check-all my-gpt2 bench verify eval serve $(STEPS)

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)) torch
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test,bench]"
	# The LLMs-from-scratch book's own GPTModel writes the .pth the tests load. Its package
	# requires TensorFlow and an older numpy for chapters we do not use: its code alone, then.
	$(PY) -m pip install --quiet --no-deps llms-from-scratch==1.0.19
	touch $(STAMP)

gpt2: $(STAMP)
	$(VENV)/bin/max-gpt2 chat --model $(MODEL)

# The suite in .venv, then the serve tests in .venv-serve (MAX Serve's own environment: in .venv
# they are skipped).
test: $(STAMP)
	$(PY) -m pytest
	$(MAKE) test-serve

test-serve: $(SERVE_STAMP)
	$(SERVE_VENV)/bin/python -m pytest tests/test_serve.py tests/test_serve_narrow.py

$(STEPS): $(STAMP)
	$(PY) -m checks $(@:s%=%)

check-all: $(STAMP)
	$(PY) -m checks all

my-gpt2: $(STAMP)
	$(PY) steps/step_11.py

bench: $(STAMP)
	$(VENV)/bin/max-gpt2 bench --json bench.json --plot bench.png

verify: $(STAMP)
	$(VENV)/bin/max-gpt2 verify --model $(MODEL)

eval: $(STAMP)
	$(VENV)/bin/max-gpt2 eval --model $(MODEL)

# MAX Serve pins transformers, so `serve` gets an environment of its own (the tests in it:
# .venv-serve/bin/python -m pytest tests/test_serve.py tests/test_serve_narrow.py).

$(SERVE_STAMP): pyproject.toml constraints.txt
	test -d $(SERVE_VENV) || $(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(SERVE_VENV)/bin/python -m pip install --quiet -c constraints.txt $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)) torch
	$(SERVE_VENV)/bin/python -m pip install --quiet -c constraints.txt -e ".[serve,test]"
	touch $(SERVE_STAMP)

serve: $(SERVE_STAMP)
	$(SERVE_VENV)/bin/max-gpt2 serve --model $(MODEL)
