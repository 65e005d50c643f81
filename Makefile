# biggait: every target sets up its own venv first, so a fresh clone needs only `make train` / `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_SYS ?= python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
# torch and torchvision are a matched pair (see pytorch.org's version table); override for other platforms,
# e.g. TORCH_SPEC="torch==2.9.1 torchvision==0.24.1" on aarch64.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
# CPU-only machines: `make venv TORCH_CPU=1` takes the same pinned pair from PyTorch's CPU wheel index
# (about 0.2 GB instead of ~6 GB of CUDA wheels; docs/0_get_started.md). Empty (the default): PyPI's wheels.
TORCH_CPU  ?=
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_INDEX := $(if $(TORCH_CPU),--index-url $(TORCH_CPU_INDEX))
STAMP      := $(VENV)/.installed

DATASET ?= synthetic
ARGS    ?=
RAW     ?=
OUT     ?= data/$(DATASET)
CKPT    ?=
WORKERS ?= 2

export NO_ALBUMENTATIONS_UPDATE := 1
# The synthetic default never needs the network; the paper recipes download DINOv2 once (docs/reliability.md).
ifeq ($(DATASET),synthetic)
export HF_HUB_OFFLINE ?= 1
endif
export WANDB_SILENT := true
export PYTHONUNBUFFERED := 1

.PHONY: help venv data lvm check-recipe mask-branch train eval embed identify vtest demo bench-index test test-fast lint format bench-data bench-model baselines notebook clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  %-12s %s\n", $$1, $$2}'
	@echo "  variables: DATASET=$(DATASET) ARGS='<hydra overrides>' RAW=<raw dataset> OUT=$(OUT) CKPT=<checkpoint>"
	@echo "             TORCH_CPU=1 (make venv: CPU-only PyTorch wheels) TORCH_SPEC='$(TORCH_SPEC)'"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_INDEX) $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP) ## create .venv with pinned dependencies (idempotent)

data: $(STAMP) ## write shards: make data DATASET=synthetic | ccpg|casiab|sustech1k RAW=/path OUT=data/<name>
	$(PY) -m biggait.data_prep --dataset $(DATASET) --out $(OUT) $(if $(RAW),--raw $(RAW)) --workers $(WORKERS) $(ARGS)

# supervised: the default's stand-in (silhouette-trained); label_free: self-distillation without any label (docs/4_model.md)
LVM ?= supervised
lvm: $(STAMP) ## rebuild a synthetic stand-in LVM: make lvm [LVM=supervised (default's, ~6 min CPU)|label_free]
	@case "$(LVM)" in supervised|label_free) ;; *) echo "make lvm: LVM must be supervised or label_free, got '$(LVM)'"; exit 2;; esac
	$(PY) -m biggait.$(if $(filter label_free,$(LVM)),label_free_lvm,synthetic_lvm) $(ARGS)

# An unknown DATASET is one line naming the choices, not Hydra's list of every experiment file.
DATASETS   := synthetic $(patsubst conf/experiment/biggait_%.yaml,%,$(wildcard conf/experiment/biggait_*.yaml))
check-dataset = $(if $(filter $(DATASET),$(DATASETS)),,$(error unknown DATASET=$(DATASET); choose one of: $(DATASETS)))


# make train / eval MODEL=biggait (default) | biggergait | biggergait_group: the paper recipe
# conf/experiment/<MODEL>_<DATASET>.yaml, or on the synthetic default its CPU-sized model conf/model/<MODEL>_tiny.yaml.
# (make embed reads MODEL as a checkpoint path instead.)
RECIPE     = $(or $(MODEL),biggait)
EXPERIMENT = $(if $(filter synthetic,$(DATASET)),experiment=synthetic $(if $(filter-out biggait,$(RECIPE)),model=$(RECIPE)_tiny),experiment=$(RECIPE)_$(DATASET))
RECIPE_FILE = conf/$(if $(filter synthetic,$(DATASET)),model/$(RECIPE)_tiny,experiment/$(RECIPE)_$(DATASET)).yaml
check-recipe:
	$(check-dataset)
	@test "$(RECIPE)" = biggait -a "$(DATASET)" = synthetic || test -f $(RECIPE_FILE) || { echo "no recipe for MODEL=$(RECIPE) DATASET=$(DATASET) ($(RECIPE_FILE) does not exist): MODEL is biggait, biggergait or biggergait_group (BiggerGait's official recipes are for ccpg)"; exit 2; }

# BiggerGait freezes a mask branch that BigGait pretrained on the same backbone (docs/4_model.md). On the synthetic
# world make builds it on first use: BigGait's synthetic recipe (seed 0) up to the step where that recipe freezes its
# mask branch (callbacks.mask_branch_schedule.freeze_at_step), without the test; the branch's weights are then those
# of the full `make train` run at any later step. Copied out only once the run has finished, so an interrupted run
# never leaves a half-trained file that make would take as built.
MASK_BRANCH_RUN       := outputs/mask_branch/biggait_synthetic_seed0
MASK_BRANCH_SYNTHETIC := outputs/mask_branch/biggait_synthetic_seed0.ckpt
$(MASK_BRANCH_SYNTHETIC): | $(STAMP)
	rm -rf $(MASK_BRANCH_RUN)
	$(PY) -m biggait.train experiment=synthetic seed=0 test_after_fit=false \
	  'trainer.max_steps=$${callbacks.mask_branch_schedule.freeze_at_step}' hydra.run.dir=$(MASK_BRANCH_RUN)
	cp $(MASK_BRANCH_RUN)/checkpoints/last.ckpt $@.tmp && mv $@.tmp $@
SYNTHETIC_MASK_BRANCH = $(if $(filter synthetic,$(DATASET)),$(if $(filter biggergait%,$(RECIPE)),$(MASK_BRANCH_SYNTHETIC)))

mask-branch: $(MASK_BRANCH_SYNTHETIC) ## the synthetic BigGait run whose mask branch make train MODEL=biggergait freezes (built on first use)

train: $(STAMP) check-recipe $(SYNTHETIC_MASK_BRANCH) ## train (and evaluate): make train DATASET=synthetic [MODEL=biggergait] ARGS="trainer.max_steps=100"
	$(PY) -m biggait.train $(EXPERIMENT) $(if $(SYNTHETIC_MASK_BRANCH),model.net.mask_branch=$(SYNTHETIC_MASK_BRANCH)) $(ARGS)

eval: $(STAMP) check-recipe ## evaluate a checkpoint: make eval CKPT=path.ckpt DATASET=synthetic [MODEL=biggergait]
	@test -n "$(CKPT)" || { echo "make eval needs CKPT=<path to a .ckpt> (ours, or converted with python -m biggait.compat.opengait)"; exit 2; }
	$(PY) -m biggait.eval $(EXPERIMENT) ckpt_path="$(CKPT)" $(ARGS)

MODEL   ?=
INPUT   ?=
GALLERY ?=
PROBES  ?=

embed: $(STAMP) ## embed footage: make embed MODEL=last.ckpt INPUT="frames_dir video.mp4" OUT=gallery.npz [ARGS="--tracks mot.txt"]
	@test -n "$(MODEL)" -a -n "$(INPUT)" -a -n "$(filter %.npz,$(OUT))" || { echo "make embed needs MODEL=<.ckpt or .pt> INPUT=<frames folder(s) or video> OUT=<gallery.npz> (docs/inference.md)"; exit 2; }
	$(PY) -m biggait.embed "$(MODEL)" $(INPUT) --out "$(OUT)" $(ARGS)

identify: $(STAMP) ## identify probes: make identify GALLERY=gallery.npz PROBES=probes.npz [ARGS="--top-k 5 --json out.json"]
	@test -n "$(GALLERY)" -a -n "$(PROBES)" || { echo "make identify needs GALLERY=<gallery.npz> PROBES=<probes.npz> (docs/inference.md)"; exit 2; }
	$(PY) -m biggait.identify "$(GALLERY)" "$(PROBES)" $(ARGS)

VIDEO ?= /usr/share/doc/opencv-doc/examples/data/vtest.avi

vtest: ## install OpenCV's sample clip vtest.avi (Debian's opencv-doc, ~96 MB; needs apt and root)
	@test -f $(VIDEO) || { apt-get update -qq && apt-get install -y -qq opencv-doc; }
	@ls -l $(VIDEO)

demo: $(STAMP) ## the real clip end to end: make demo MODEL=last.ckpt [VIDEO=...] (docs/inference.md)
	@test -n "$(MODEL)" || { echo "make demo needs MODEL=<.ckpt or .pt> (and make vtest, or VIDEO=<static-camera video>)"; exit 2; }
	$(PY) -m biggait.demo $(MODEL) --video $(VIDEO) --out-dir outputs/demo $(ARGS)

bench-index: $(STAMP) ## exact vs FAISS search on memory-mapped galleries: make bench-index ARGS="--sizes 100000 1000000"
	$(PY) bench/bench_index.py $(ARGS)

lint: $(STAMP) ## ruff check
	$(VENV)/bin/ruff check src tests scripts bench notebooks

format: $(STAMP) ## ruff format + fix
	$(VENV)/bin/ruff check --fix src tests scripts bench notebooks
	$(VENV)/bin/ruff format src tests scripts bench notebooks

test: lint ## lint, then the whole test suite (fast tests first, then the slow ones)
	WANDB_MODE=offline $(PY) -m pytest -m "not slow" -q
	WANDB_MODE=offline $(PY) -m pytest -m slow -q

test-fast: $(STAMP) ## only the fast tests
	WANDB_MODE=offline $(PY) -m pytest -m "not slow" -q

bench-data: $(STAMP) ## data-pipeline frames/s and sequences/s, 1 and 2 workers: the previous reader vs now, local vs HTTP
	$(PY) bench/bench_data.py $(ARGS)

bench-model: $(STAMP) ## model frames/s per precision, vs the official code with OPENGAIT_SRC (docs/performance.md)
	$(PY) bench/bench_model.py $(ARGS)

baselines: $(STAMP) ## the two non-learned baselines on the synthetic test split (data_prep/README.md)
	$(PY) scripts/baselines.py $(ARGS)

# Studies on the synthetic `make train` recipe (biggait.study): conditions x seeds, one table; ARGS = Hydra overrides
SEEDS     ?= 0 1 2
STEPS     ?= 600
ABLATIONS ?= all
.PHONY: ablate
ablate: $(STAMP) ## the paper's GRE ablations x seeds: make ablate [SEEDS="0 1 2"] [STEPS=600] [ABLATIONS=all|mask_branch,...]
	$(PY) scripts/ablate.py --ablations $(ABLATIONS) --seeds $(SEEDS) --steps $(STEPS) $(if $(ARGS),-- $(ARGS))

LABEL_FREE ?= src/biggait/assets/synthetic_lvm_tiny_label_free.pt
.PHONY: compare-lvm
compare-lvm: $(STAMP) ## random / label-free / supervised stand-in LVM x seeds: make compare-lvm [SEEDS=...] [STEPS=...] [LABEL_FREE=file]
	$(PY) scripts/compare_lvms.py --label-free $(LABEL_FREE) --seeds $(SEEDS) --steps $(STEPS) $(if $(ARGS),-- $(ARGS))

SEQUENCE ?=
FIGURES  ?= outputs/notebook
notebook: $(STAMP) ## run the feature-map notebook headless: make notebook [CKPT=last.ckpt] [SEQUENCE=subject/type/view] [FIGURES=outputs/notebook]
	$(PY) scripts/run_notebook.py $(if $(CKPT),--checkpoint $(CKPT)) $(if $(SEQUENCE),--sequence $(SEQUENCE)) --out $(FIGURES) $(ARGS)

.PHONY: notebook-ui
notebook-ui: $(STAMP) ## open the feature-map notebook in the browser (installs the optional Jupyter UI first)
	$(PY) -m pip install --quiet -e '.[notebook]'
	$(VENV)/bin/jupytext --sync notebooks/feature_maps.py
	$(PY) -m jupyter notebook notebooks/feature_maps.ipynb

clean: ## remove outputs and caches (keeps .venv and data/)
	rm -rf outputs multirun .pytest_cache .ruff_cache wandb lightning_logs
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
