# tinypolicy: `make compress` runs the pipeline, `make test` runs the tests.
# Both create .venv on first use: torch==2.13.0 (CPU wheel) first, then the project.

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ENV    ?= Hopper-v5
PRESET ?= quick

.PHONY: install test test-fast compress bench-train ad clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not integration"

compress: $(STAMP)
	$(VENV)/bin/tinypolicy compress --env $(ENV) --preset $(PRESET) --out artifacts/$(ENV)

bench-train: $(STAMP)
	$(PY) -m export.bench_train

# Algorithm Distillation on Dark Room: ~1 h of training on one core; re-running resumes.
AD_OUT ?= artifacts/ad
ad: $(STAMP)
	$(PY) -m pipeline ad collect --out $(AD_OUT)/data
	$(PY) -m pipeline ad train --data $(AD_OUT)/data --out $(AD_OUT)/ad
	$(PY) -m pipeline ad train --data $(AD_OUT)/data --out $(AD_OUT)/ed --source expert --steps 1500
	$(PY) -m pipeline ad evaluate $(AD_OUT)/ad/checkpoint.pt --ed $(AD_OUT)/ed/checkpoint.pt --out $(AD_OUT)/eval
	$(PY) -m pipeline ad export $(AD_OUT)/ad/checkpoint.pt --out $(AD_OUT)/export

clean:
	rm -rf $(VENV) artifacts runs
