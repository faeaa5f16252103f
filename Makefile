# make test   - create .venv (CPU torch), install requirements, run the test suite
# make bench  - run the benchmarks in bench/ (ratios against transformers, same run)
# make demo   - the whole pipeline end to end on a synthetic medical VQA set (CPU): python -m demo.run
PY      ?= python3
VENV    ?= .venv
# The CPU build of torch; on a GPU machine install your CUDA torch first and this is skipped.
TORCH   ?= torch==2.13.0
BIN     := $(VENV)/bin

.PHONY: venv test bench demo clean

$(BIN)/activate:
	$(PY) -m venv $(VENV)

venv: $(BIN)/activate
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -r requirements.txt

test: venv
	$(BIN)/python -m pytest -q tests

bench: venv
	@for f in bench/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

demo: venv
	$(BIN)/python -m demo.run

clean:
	rm -rf $(VENV) demo_out .pytest_cache
