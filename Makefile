PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test demo bench clean

setup: $(STAMP)

# constraints.txt pins torch (to the CPU wheel on disk), transformers and deepspeed (dev
# dependencies). DS_BUILD_OPS=0: DeepSpeed installs as pure Python, building no C++/CUDA op.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	DS_BUILD_OPS=0 $(PY) -m pip install -q -c constraints.txt -e '.[torch,dev]'
	touch $(STAMP)

test: setup
	$(PY) -m mypy
	$(PY) -m pytest

demo: setup
	$(VENV)/bin/stagecut plan --svg out/plan.svg

bench: setup
	$(PY) bench/plan_scaling.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache
