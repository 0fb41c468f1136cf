# make run                 the whole study on the offline synthetic demo dataset (laptop CPU profile)
# make run SEED=7          the same with another seed (demo data, split, training and evaluation)
# make run SHORTCUT=1      the demo with a planted shortcut (source marks outside the lungs), into
#                          outputs-shortcut/ and models-shortcut/: notebook 3's audit must catch it
# make run DATA=path/to/COVID-19_Radiography_Dataset   the study's recipe on the real Kaggle database
#                          (profiles/study.yaml: ImageNet weights, downloaded once by torchvision;
#                          offline: see README). PROFILE=name|path picks another profile;
#                          PARAMS='-p epochs 3' overrides notebook 2's settings
# make run ARCHS="resnet18 convnext_tiny efficientnet_b0"   other architectures (any torchvision
#                          classifier; the demo profile has settings for the modern families),
#                          into outputs-archs/ and models-archs/
# make external            score the trained models on a second, external demo site (another
#                          acquisition, other folder names, an unknown class): evaluate.py, into
#                          outputs/ beside the internal test (report.html shows both)
# make external EXTERNAL=path/to/class/folders CLASS_MAP='"No Finding=Normal" ...'
#                          the same on another collection of labelled images
# make app                 try the trained models on your own radiograph in the browser
#                          (http://127.0.0.1:7860; installs requirements-app.txt)
# make test                the test suite (CPU, offline)
# make test-quick          the suite without its end-to-end runs (notebooks, torchrun, multi-epoch
#                          trainings, benches, browser, the app's server) and the biggest models'
#                          copies of a check: about 1 min on 2 cores, to run while working
# make report              rebuild outputs/report.html (one self-contained page; notebook 3 writes it too)
# make results             regenerate the README results table and assets/ from outputs/metrics.json

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?=
SEED ?= 42
SHORTCUT ?=
ARCHS ?=
empty :=
space := $(empty) $(empty)
comma := ,
ifneq ($(strip $(ARCHS)),)
# Other architectures than the profile's (e.g. the modern families): kept apart from the default
# run's outputs and models, so the two can be compared
OUT ?= outputs-archs
MODELS ?= models-archs
ARCH_PARAMS := -y "archs: [$(subst $(space),$(comma)$(space),$(strip $(ARCHS)))]"
endif
ifeq ($(strip $(SHORTCUT)),)
DEMO_DIR ?= data/demo-seed$(SEED)
OUT ?= outputs
MODELS ?= models
DEMO_FLAGS :=
else
# The demo with a planted shortcut (class-correlated source marks outside the lungs): kept apart
# from the normal demo's outputs, so the two runs' shortcut audits can be compared.
DEMO_DIR ?= data/demo-shortcut-seed$(SEED)
OUT ?= outputs-shortcut
MODELS ?= models-shortcut
DEMO_FLAGS := --shortcut
endif
MANIFEST := $(OUT)/manifest.csv
PM := $(PY) -m papermill --cwd . --log-output -k python3

ifeq ($(strip $(DATA)),)
DATA_DIR := $(DEMO_DIR)
# The demo profile (profiles/demo-cpu.yaml): `make run` in about 9 minutes on 2 CPU cores with
# native bf16 (2-4x that in fp32: docs/speed.md), from random initialisation, chosen by
# measurement (docs/demo-data.md). The notebooks, train.py and evaluate.py read the same file;
# PARAMS adds papermill overrides, e.g. PARAMS='-p epochs 2'.
PROFILE ?= demo-cpu
else
DATA_DIR := $(DATA)
PROFILE ?= study
endif
PARAMS ?=
# split_dataset.py's --val/--test come from the profile too (read when the recipe runs, once the
# venv exists)
SPLIT_ARGS ?= $$($(PY) config.py $(PROFILE) --split-args)
# The external set: the demo's second site (its folders named as another hospital might name
# them, so they are mapped), or EXTERNAL=folder with CLASS_MAP='FOLDER=CLASS ...'.
EXTERNAL ?=
ifeq ($(strip $(EXTERNAL)),)
EXT_DIR := data/demo-external-seed$(SEED)
CLASS_MAP ?= covid19=COVID consolidation=Lung_Opacity "No Finding=Normal"
EXT_NAME ?= demo-external
else
EXT_DIR := $(EXTERNAL)
CLASS_MAP ?=
EXT_NAME ?=
endif
COMMON := -p data_dir "$(DATA_DIR)" -p manifest_path $(MANIFEST) -p out_dir $(OUT) -p seed $(SEED)
MODEL_PARAMS := -p profile $(PROFILE) -p models_dir $(MODELS) $(ARCH_PARAMS)

.PHONY: run data split notebooks external app test test-quick results report clean-outputs venv
run: split notebooks
	@echo "done: executed notebooks in $(OUT)/notebooks/, metrics in $(OUT)/metrics.json, the report in $(OUT)/report.html; 'make results' updates README.md"

# Byte-compiling: pip's own (every installed file, one at a time: torch alone has thousands)
# is off; instead each module is compiled the first time a process run by make imports it, and
# kept. This machine's kind sets PYTHONDONTWRITEBYTECODE, which would make every Python process
# compile torch, pandas and the rest from source again (1.2 s more per process: make test-quick
# 92 s instead of 59 s), so make's recipes run without it. Only what the project imports is
# compiled (~5,600 of the venv's ~14,800 files): a fresh clone's venv no longer spends 27 s
# compiling everything on 2 cores (docs/speed.md). A venv made for the tests gets all three
# requirement files in one pip call (three calls resolve three times).
unexport PYTHONDONTWRITEBYTECODE
PIP := $(PY) -m pip install -q --no-compile
NEW_VENV := test -x $(PY) || $(PYTHON) -m venv $(VENV); \
	test -f $(VENV)/.pip-upgraded || ($(PIP) --upgrade pip && touch $(VENV)/.pip-upgraded)
# The requirements go in with uv where it can be had (pip installs it into the venv, ~3 s): it
# puts torch's ~3 GB of wheels in place in 18 s where pip took 48 s for the test venv, the same
# versions (docs/speed.md). uv does not read pip's configuration, so a constraint file pip is
# configured with (PIP_CONSTRAINT, or pip config's global.constraint) is passed on. Where uv
# cannot be installed or cannot resolve (an index only pip is configured for), pip installs
# everything as before. NO_UV=1 uses pip alone.
NO_UV ?=
PIP_CONSTRAINT_FILE = $${PIP_CONSTRAINT:-$$($(PY) -m pip config get global.constraint 2>/dev/null)}
UV_INSTALL = c=$(PIP_CONSTRAINT_FILE); \
	$(PIP) uv && $(VENV)/bin/uv pip install -q --python $(PY) $${c:+--constraint "$$c"}
INSTALL = $(if $(strip $(NO_UV)),$(PIP) $(1),($(UV_INSTALL) $(1)) || $(PIP) $(1))
venv: $(VENV)/.installed
$(VENV)/.installed: requirements.txt
	$(NEW_VENV)
	$(call INSTALL,-r requirements.txt)
	touch $@
$(VENV)/.installed-app: $(VENV)/.installed requirements-app.txt
	$(call INSTALL,-r requirements-app.txt)
	touch $@
# A fresh clone installs all three at once; after a change to any of them what changed is added.
$(VENV)/.installed-test: requirements.txt requirements-app.txt requirements-test.txt
	$(NEW_VENV)
	$(call INSTALL,-r requirements.txt -r requirements-app.txt -r requirements-test.txt)
	touch $(VENV)/.installed $(VENV)/.installed-app $@

data: venv
ifeq ($(strip $(DATA)),)
	$(PY) demo_data.py $(DEMO_DIR) --seed $(SEED) $(DEMO_FLAGS)
else
	@test -d "$(DATA)" || (echo "DATA=$(DATA) is not a folder: unzip the Kaggle COVID-19 Radiography Database and pass its folder" && exit 2)
endif

split: data
	$(PY) split_dataset.py "$(DATA_DIR)" --manifest $(MANIFEST) --seed $(SEED) $(SPLIT_ARGS)

notebooks: venv
	@mkdir -p $(OUT)/notebooks
	$(PM) 1_data_exploration.ipynb $(OUT)/notebooks/1_data_exploration.ipynb $(COMMON)
	$(PM) 2_finetune_models.ipynb $(OUT)/notebooks/2_finetune_models.ipynb $(COMMON) $(MODEL_PARAMS) $(PARAMS)
	$(PM) 3_evaluate_results.ipynb $(OUT)/notebooks/3_evaluate_results.ipynb $(COMMON) $(MODEL_PARAMS)

external: venv
	@ls $(MODELS)/*.pt >/dev/null 2>&1 || (echo "no models in $(MODELS)/: run 'make run' first" && exit 2)
ifeq ($(strip $(EXTERNAL)),)
	$(PY) demo_data.py $(EXT_DIR) --site external --seed $(SEED)
endif
	$(PY) evaluate.py $(MODELS)/*.pt --data-dir "$(EXT_DIR)" --out $(OUT) --seed $(SEED) --profile $(PROFILE) \
		$(if $(strip $(CLASS_MAP)),--class-map $(CLASS_MAP)) $(if $(strip $(EXT_NAME)),--name $(EXT_NAME))

PORT ?= 7860
app: $(VENV)/.installed-app
	$(PY) app.py --models $(MODELS) --port $(PORT)

# One pytest worker per core, one thread each (two threads per process on two cores ran the
# suite 1.3x slower); a module's tests stay on one worker (they share its fixtures).
PYTEST := OMP_NUM_THREADS=1 $(PY) -m pytest -q -n auto --dist loadscope
test: $(VENV)/.installed-test
	$(PYTEST)

test-quick: $(VENV)/.installed-test
	$(PYTEST) -m "not slow"

report: venv
	$(PY) report.py --out $(OUT)

results: venv
	$(PY) update_readme.py --metrics $(OUT)/metrics.json --readme README.md --assets assets \
		$(if $(wildcard outputs-shortcut/metrics.json),--shortcut-metrics outputs-shortcut/metrics.json) \
		$(if $(wildcard outputs-archs/metrics.json),--archs-metrics outputs-archs/metrics.json)

clean-outputs:
	rm -rf $(OUT) $(MODELS) .cache outputs-shortcut models-shortcut outputs-archs models-archs
