# tinypolicy: `make compress` runs the pipeline, `make test` runs the tests.
# Both create .venv on first use: torch==2.13.0 (CPU wheel) first, then the project.

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ENV    ?= Hopper-v5
PRESET ?= quick

.PHONY: install test test-fast compress bench-train clean render-deps distill

# MuJoCo renders offscreen through EGL (Mesa's software driver when there is no GPU)
export MUJOCO_GL ?= egl

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

render-deps:
	apt-get install -y --no-install-recommends libegl1 libegl-mesa0 libgl1-mesa-dri

distill: $(STAMP)
	$(VENV)/bin/tinypolicy distill --env $(ENV) --size 64 --mode f --population 64 --generations 200 \
		--out artifacts/$(ENV)/distill

clean:
	rm -rf $(VENV) artifacts runs
