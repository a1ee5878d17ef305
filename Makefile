# Two commands matter: `make demo` and `make test`. Both create .venv/ on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test protos bench clean

install: $(STAMP)

# torch is installed first and pinned: on CPU machines `torch==2.13.0` resolves to the CPU build;
# an unpinned torch would pull several GB of CUDA wheels. GPU users: see README.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[enclave,dev,reference]'
	touch $(STAMP)

protos: install
	$(BIN)/python -m protos.generate

demo: install
	$(BIN)/python -m aaudit.demo --out demo-out

test: install
	$(BIN)/python -m pytest -q

# Measurements, each reported against a baseline taken in the same run (see perf/*.py --help).
bench: install
	$(BIN)/python perf/seal_throughput.py
	$(BIN)/python perf/verify_speed.py
	$(BIN)/python perf/log_scale.py --entries 100000
	$(BIN)/python perf/attest_under_load.py
	$(BIN)/python perf/gateway_cost.py
	$(BIN)/python perf/audit_overhead.py

clean:
	rm -rf demo-out .pytest_cache
