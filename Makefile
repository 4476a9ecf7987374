# The README's two commands: `make run` and `make test`. Both install first (idempotent).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU wheel by default; a GPU host sets TORCH_SPEC (e.g. TORCH_SPEC="torch==2.13.0").
TORCH_SPEC ?= torch==2.13.0
TINY_MODEL ?= var/models/tiny
SAMPLE ?= $(shell $(BIN)/python -c "from pydicom.data import get_testdata_file; print(get_testdata_file('examples_palette.dcm'))" 2>/dev/null)

.PHONY: install run demo test lint bench clean lock

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first and pinned: a plain `torch` requirement would pull a multi-GB CUDA build.
# xgrammar without its declared deps: they pull a 1 GB triton the CPU path never uses.
# Every other package at the version in constraints.txt (what CI tested); `make lock` refreshes it.
$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -c constraints.txt --no-deps "xgrammar>=0.2.8,<0.3" "apache-tvm-ffi>=0.1.11"
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	touch $@

install: $(VENV)/.installed

$(TINY_MODEL)/fada_model.json: $(VENV)/.installed
	$(BIN)/fada model build-tiny --out $(TINY_MODEL)

# The service on its embedded default: SQLite and a serverless broker under ./var, the tiny
# local model (built on first start). HOST/PORT override where it listens.
HOST ?= 127.0.0.1
PORT ?= 8000
run: install
	$(BIN)/fada serve --host $(HOST) --port $(PORT)

# One image through the pipeline, no service: the obstetric ultrasound DICOM that ships with pydicom.
demo: $(TINY_MODEL)/fada_model.json
	$(BIN)/fada analyze "$(SAMPLE)" --model $(TINY_MODEL)

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy api worker services shared cli tests bench

bench: $(TINY_MODEL)/fada_model.json
	$(BIN)/python bench/pipeline_cpu.py --model $(TINY_MODEL)

# GPU throughput of the 4B shape, reference way vs the worker's batches (docs/PERFORMANCE.md).
# On a CUDA host, after `make install TORCH_SPEC=...` and the gpu extra; ARGS adds options,
# e.g. ARGS="--memory-sweep 1,2,4,8,16". `--tiny` runs the same code on the CPU.
.PHONY: bench-gpu
bench-gpu: install
	$(BIN)/python bench/gpu_pipeline.py --json var/bench/gpu_pipeline.json $(ARGS)

# Take the newest releases pyproject.toml allows, then record them: run `make test` before committing.
lock: $(BIN)/python
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q --upgrade --no-deps "xgrammar>=0.2.8,<0.3" "apache-tvm-ffi>=0.1.11"
	$(BIN)/pip install -q --upgrade --upgrade-strategy eager -e ".[dev]"
	{ sed -n '/^#/p' constraints.txt; $(BIN)/pip freeze --exclude-editable | grep -v '^torch=='; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) var build *.egg-info
