# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv here.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export WANDB_MODE := disabled
export DO_NOT_TRACK := 1
export DS_BUILD_OPS := 0
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: install test demo lint clean

install: $(STAMP)

# torch is installed first and pinned (a CPU wheel); every later step is held to constraints.txt,
# so pip never backtracks and never swaps in a CUDA torch.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip==24.3.1
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[eval,axolotl,deepspeed,demo,test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -rs

demo: $(STAMP)
	$(PY) -m eval_harness.demo

lint: $(STAMP)
	$(PY) -m ruff check nlora_plugin eval_harness tests benchmarks

clean:
	rm -rf $(VENV) reports runs
