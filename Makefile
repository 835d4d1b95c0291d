# The two set-up commands of the README: `make demo` and `make test`.
# Both install into a local virtual environment first (idempotent `make install`).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.energy-lm-installed
FAIRSEQ_DIST ?= fairseq-fixed==0.12.3.1

DEMO_DIR ?= demo
DEMO_UPDATES ?= 900

.PHONY: install demo lint test test-fast fairseq-tests kernel-compile-check gpu-check clean

install: $(STAMP)

# fairseq-fixed builds its C++ extensions against the installed torch: no build
# isolation (an isolated build would fetch the newest CUDA torch), no dependencies
# (they include torchaudio).
$(STAMP): pyproject.toml requirements/stack.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -r requirements/stack.txt
	$(BIN)/python -m pip install --no-deps --no-build-isolation $(FAIRSEQ_DIST)
	$(BIN)/python -m pip install --no-deps -e .
	touch $@

$(DEMO_DIR)/corpus/data-bin/dict.txt: | $(STAMP)
	$(BIN)/energy-lm-prepare embedded --out $(DEMO_DIR)/corpus --workers 2

# Train a tiny CLAP-head RoBERTa with ALiBi (roberta_zero_clap_tiny) with the stock
# fairseq-train, then fill masks. Re-running resumes from checkpoint_last.pt (and stops
# at once when done). ALiBi rather than learned positions: measured, a tiny RoBERTa with
# learned positions does not learn local context in a few CPU minutes (valid MLM loss
# 8.40 bits after 600 updates, fills '.', 'the'), with ALiBi it does (7.72 bits).
# On a busy machine the package lowers fairseq-train's threads to the free cores
# (energy_lm/patches/shared_cpu.py; measured in docs/measurements.md).
demo: $(STAMP) $(DEMO_DIR)/corpus/data-bin/dict.txt
	$(BIN)/fairseq-train $(DEMO_DIR)/corpus/data-bin \
	    --task masked_lm --criterion masked_lm --arch roberta_zero_clap_tiny \
	    --tokens-per-sample 128 --sample-break-mode none --batch-size 16 \
	    --optimizer adam --adam-betas '(0.9,0.98)' --adam-eps 1e-6 --weight-decay 0.01 \
	    --lr 1e-3 --lr-scheduler polynomial_decay --warmup-updates 60 \
	    --total-num-update $(DEMO_UPDATES) --max-update $(DEMO_UPDATES) \
	    --dropout 0.1 --attention-dropout 0.0 --clip-norm 1.0 \
	    --save-dir $(DEMO_DIR)/checkpoints --no-epoch-checkpoints \
	    --log-format simple --log-interval 50 --seed 1
	$(BIN)/energy-lm-fill-mask $(DEMO_DIR)/checkpoints $(DEMO_DIR)/corpus/data-bin \
	    --checkpoint-file checkpoint_last.pt

# The suite runs on TEST_WORKERS pytest-xdist workers, whole files per worker (module
# fixtures are built once), one OpenMP thread each: two workers of two threads on two
# cores spin against each other. Measured on 2 cores: 1,171 s in one process (two
# threads), 835 s on two workers (xdist hands out files with the most tests first, so the
# longest single-test file, the stability run, ends the suite alone for ~2.5 min).
TEST_WORKERS ?= 2
PYTEST := env OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# ruff with the rules in pyproject.toml: unused imports, conditions written twice, loop
# variables caught late; `make test` runs it first
lint: $(STAMP)
	$(BIN)/ruff check .

test: lint
	$(BIN)/python tools/kernel_compile_check.py --quick
	$(PYTEST) tests

test-fast: $(STAMP)
	$(PYTEST) -m "not slow" tests

# fairseq's own tests (from its source distribution, fetched from PyPI), bare and with
# energy_lm: fails if the package breaks one that passes with bare fairseq (CI runs it)
fairseq-tests: $(STAMP)
	$(BIN)/python tools/fairseq_tests.py

# Every paired-attention kernel launch compiled for A100 and H100 without a GPU (shared
# memory, scratch, spills against tools/kernel_compile_baseline.json, tensor cores);
# `make test` runs its bf16 + fp32 set (every tile configuration the host code chooses)
kernel-compile-check: $(STAMP)
	$(BIN)/python tools/kernel_compile_check.py

# The GPU check (benchmarks/gpu_check.py): kernel tests compiled, kernel benchmark, the
# MonArc/LM step on triton, triton vs reference training curves; exits 0 without CUDA.
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py --out gpu-check.md

clean:
	rm -rf $(DEMO_DIR)
