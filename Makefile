# kd-nbs: `make report` runs the study (quick preset) and builds the website; `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
# The real CIFAR-100: ../shared/data on our machines; elsewhere $KD_NBS_DATA or the per-user cache (downloaded).
SHARED_DATA := $(abspath ../shared/data)
ifneq ($(wildcard $(SHARED_DATA)/cifar-100-python/train),)
export KD_NBS_DATA ?= $(SHARED_DATA)
endif
PRESET ?= quick
NAME   ?= $(PRESET)
SEEDS  ?= 0

.PHONY: setup report benchmark test bench export clean-reports gpu-check gpu-study device-bundle lab tensorboard clean-nbs

$(VENV)/.installed: requirements.txt settings.ini setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

setup: $(VENV)/.installed

# The tests also run the Ray executor on a local Ray instance: Ray is an extra of the test environment only.
$(VENV)/.ray: requirements-ray.txt $(VENV)/.installed
	$(PY) -m pip install -q -r requirements-ray.txt -c requirements.txt
	touch $@

report: setup
	$(BIN)/kd-nbs run --preset $(PRESET) --name $(NAME) --seeds $(SEEDS)

# The CIFAR-100 distillation benchmark (CRD's Table 1 pairs x every distillation method, nbs/19_benchmark.ipynb):
# benchmark-quick runs two pairs at 1/4 width on a CPU; BENCH_PRESET=benchmark, the anchors' 240-epoch recipe on all
# seven pairs (a GPU's work); BENCH_ARGS="--methods lm crd dkd" and the like narrow the grid
BENCH_PRESET ?= benchmark-quick
BENCH_ARGS   ?= $(if $(filter benchmark-quick,$(BENCH_PRESET)),--pairs vgg13:vgg8 resnet32x4:resnet8x4,)
benchmark: setup
	$(BIN)/kd-nbs run --study benchmark --preset $(BENCH_PRESET) --name $(BENCH_PRESET) --seeds $(SEEDS) $(BENCH_ARGS)

test: setup $(VENV)/.ray
	KD_NBS_PRESET=smoke $(BIN)/nbdev_test
	@before=$$(cat kd_nbs/*.py | sha256sum); $(BIN)/nbdev_export; after=$$(cat kd_nbs/*.py | sha256sum); \
	  [ "$$before" = "$$after" ] || { echo 'kd_nbs/ was out of date with nbs/: run nbdev_export and commit'; exit 1; }
	$(PY) -m pytest -q --durations=15 tests

bench: setup
	$(BIN)/kd-nbs bench $(if $(KD_NBS_DATA),--data-dir $(KD_NBS_DATA),)

# JupyterLab on nbs/ with the project's kernel (the venv's python3) and data folder; LAB_ARGS for --port, --ip, ...
# (--allow-root only as root: containers often run as root, and Jupyter refuses it otherwise)
# nbdev's hooks first (a git merge driver for notebooks; clean-on-save in any Jupyter of this user), and JupyterLab saves
# every notebook clean: cells and their tags, no outputs, execution counts or editor metadata (nbs/98_lab.ipynb)
lab: setup
	$(BIN)/nbdev_install_hooks
	$(BIN)/jupyter lab --notebook-dir=nbs --ContentsManager.pre_save_hook=kd_nbs.lab.clean_on_save \
	  $(if $(filter 0,$(shell id -u)),--allow-root,) $(LAB_ARGS)

# Clean the notebooks as JupyterLab's save hook does (make test fails while one is not clean)
clean-nbs: setup
	$(PY) -m kd_nbs.lab --fix nbs

# TensorBoard on a run folder (default: the last `make report`'s): every training's scalars, live while the suite runs
RUN ?= reports/$(NAME)
tensorboard: setup
	$(BIN)/kd-nbs tensorboard $(RUN) $(TB_ARGS)

export: setup
	$(BIN)/nbdev_export

# The GPU check: per-epoch times (eager and compiled), memory, sharing, a bf16 sanity run and the projected paper
# study. Runs with the machine's own python3 and torch (no venv, no Jupyter): make gpu-check GPU_OUT=folder
GPU_OUT ?= gpu-check
gpu-check:
	PYTHONPATH=$(CURDIR) $(PYTHON) -m kd_nbs.gpucheck $(GPU_OUT) $(GPU_CHECK_ARGS)

# The whole study at full width (preset gpu-short) on the GPU(s) here, with the machine's own python3 and torch: installs
# the bundle below when Jupyter is missing, finds the data ($$KD_NBS_DATA, the staged parts in .stage/, else synthetic
# images), runs the suite and packs its folder without checkpoints into $(GPU_OUT)/gpu-study-<name>.tar.gz
# (make gpu-study GPU_OUT=$$OUT; GPU_STUDY_ARGS="--preset smoke --name x" and the like)
gpu-study:
	PYTHONPATH=$(CURDIR) $(PYTHON) -m kd_nbs.gpustudy run $(GPU_OUT) $(GPU_STUDY_ARGS)

# The wheels gpu-study needs on a GPU machine with only torch (Python $(BUNDLE_PY), x86-64 Linux), into .bundle/
BUNDLE_PY ?= 3.12
device-bundle: setup
	$(PY) -m kd_nbs.gpustudy bundle --python $(BUNDLE_PY)
