# tinypolicy: `make compress` runs the pipeline, `make test` runs the tests.
# Both create .venv on first use: torch==2.13.0 (CPU wheel) first, then the project.

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ENV    ?= Hopper-v5
PRESET ?= quick

.PHONY: install test test-fast compress bench-train clean

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

clean:
	rm -rf $(VENV) artifacts runs

# Export + bench of the RLx2 benchmark actors (docs/BENCHMARKS.md, "Export"); a missing
# checkpoint is skipped. Writes docs/results/export_*.{json,md,png}.
.PHONY: bench-export
bench-export: $(STAMP)
	$(PY) -m export.bench_docs runs/hopper-td3-rlx2-s0/checkpoint.pt runs/halfcheetah-td3-rlx2-s0/checkpoint.pt \
	    --untrained Hopper-v5:0.95
