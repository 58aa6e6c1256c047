# tinypolicy: `make compress` runs the pipeline, `make test` runs the tests.
# Both create .venv on first use: torch==2.13.0 (CPU wheel) first, then the project.

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ENV    ?= Hopper-v5
PRESET ?= quick

.PHONY: install test test-fast lint-imports compress bench-train bench-embedded clean embedded-deps render-deps distill ad \
        benchmarks-report

# MuJoCo renders offscreen through EGL (Mesa's software driver when there is no GPU)
export MUJOCO_GL ?= egl

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Cross compilers and QEMU for `tinypolicy embedded` and its tests (Debian packages, as root).
EMBEDDED_APT := gcc gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm qemu-user \
                gcc-aarch64-linux-gnu libc6-dev-arm64-cross
embedded-deps:
	@dpkg -s $(EMBEDDED_APT) >/dev/null 2>&1 || { apt-get update && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(EMBEDDED_APT); }

# The embedded tests need the cross toolchains and QEMU; without root they skip.
test: $(STAMP)
	-@$(MAKE) --no-print-directory embedded-deps render-deps
	$(PY) -m pytest -q -n auto --dist loadfile --no-loadscope-reorder

test-fast: $(STAMP)
	$(PY) -m pytest -q -n auto --dist loadfile --no-loadscope-reorder -m "not integration"

# The layering contract (.importlinter) alone; `make test` runs it too. It checks a staged
# copy in which ondevice/, models/, export/ and pipeline/ sit inside tinypolicy/, as installed.
lint-imports: $(STAMP)
	$(PY) -m pytest -q tests/test_layout.py -k import_linter

# The embedded and rendering stages need Debian packages; without root they are skipped
# (the report says so) rather than failing the whole pipeline.
# FROM=CHECKPOINT compresses that policy (e.g. of `tinypolicy import`) instead of training one.
compress: $(STAMP)
	-@$(MAKE) --no-print-directory embedded-deps render-deps
	$(VENV)/bin/tinypolicy compress --env $(ENV) --preset $(PRESET) --out artifacts/$(ENV) $(if $(FROM),--from $(FROM))

bench-train: $(STAMP)
	$(PY) -m benchmarks.train_speed

# Both run on the actor-only checkpoints committed under docs/results/actors/ (see
# benchmarks/export_docs.py: `save-actor` adds one from a training run); ACTORS=NAME... for some.
bench-embedded: $(STAMP) embedded-deps
	$(PY) -m benchmarks.embedded run $(ACTORS) --out docs/results/embedded.json

# Mesa's EGL, for MuJoCo's offscreen rendering of distilled states (Debian packages, as root).
RENDER_APT := libegl1 libegl-mesa0 libgl1-mesa-dri
render-deps:
	@dpkg -s $(RENDER_APT) >/dev/null 2>&1 || { apt-get update && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(RENDER_APT); }

distill: $(STAMP)
	$(VENV)/bin/tinypolicy distill --env $(ENV) --size 64 --mode f --population 64 --generations 200 \
		--out artifacts/$(ENV)/distill
# Algorithm Distillation: `make ad` on Dark Room (~1 h of training on one core), `make ad
# ENV=tinypolicy/DarkKeyToDoor-v0` on Key-to-Door (its own defaults); re-running resumes.
# ENV's default (Hopper-v5) is no AD env, so here it means Dark Room.
AD_ENV = $(if $(filter tinypolicy/%,$(ENV)),$(ENV),tinypolicy/DarkRoom-v0)
AD_OUT ?= artifacts/ad$(if $(filter tinypolicy/DarkKeyToDoor-v0,$(AD_ENV)),-k2d)
ad: $(STAMP)
	$(PY) -m tinypolicy ad collect --env $(AD_ENV) --out $(AD_OUT)/data
	$(PY) -m tinypolicy ad train --data $(AD_OUT)/data --out $(AD_OUT)/ad
	$(PY) -m tinypolicy ad train --data $(AD_OUT)/data --out $(AD_OUT)/ed --source expert --steps 1500
	$(PY) -m tinypolicy ad evaluate $(AD_OUT)/ad/checkpoint.pt --ed $(AD_OUT)/ed/checkpoint.pt --out $(AD_OUT)/eval
	$(PY) -m tinypolicy ad export $(AD_OUT)/ad/checkpoint.pt --out $(AD_OUT)/export

clean:
	rm -rf $(VENV) artifacts runs

# Every generated table of docs/BENCHMARKS.md, rewritten from the committed raw files (docs/results/).
benchmarks-report: $(STAMP)
	$(PY) -m benchmarks.docs_page

# Export + bench of the committed benchmark actors (docs/BENCHMARKS.md, "Export"), with
# emx-onnx-cgen as the external dense peer (the `emx` extra). Writes docs/results/export_*.
.PHONY: bench-export
bench-export: $(STAMP)
	-$(PY) -m pip install --quiet -e '.[emx]'
	$(PY) -m benchmarks.export_docs run $(ACTORS)
