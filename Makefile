# Developer entry points. `make run` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
VIAM_VENV := .venv-viam
BIN := $(VENV)/bin
VIAM_SDK := viam-sdk==0.85.1

.PHONY: run test lint fmt protos bench soak clean

$(BIN)/syncd: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# Viam's own SDK lives in its own interpreter: it pins another protobuf runtime and
# registers the same message names as syncd's generated code.
$(VIAM_VENV)/bin/python:
	$(PYTHON) -m venv $(VIAM_VENV)
	$(VIAM_VENV)/bin/pip install --quiet $(VIAM_SDK)

run: $(BIN)/syncd
	$(BIN)/syncd run -c config.example.yaml

test: $(BIN)/syncd $(VIAM_VENV)/bin/python
	$(BIN)/ruff check syncd tests bench scripts
	$(BIN)/ruff format --check syncd tests bench scripts
	SYNCD_VIAM_PYTHON=$(CURDIR)/$(VIAM_VENV)/bin/python $(BIN)/python -m pytest -q

lint: $(BIN)/syncd
	$(BIN)/ruff check syncd tests bench scripts

fmt: $(BIN)/syncd
	$(BIN)/ruff check --fix syncd tests bench scripts
	$(BIN)/ruff format syncd tests bench scripts

protos: $(BIN)/syncd
	$(BIN)/python scripts/gen_protos.py

bench: $(BIN)/syncd
	for script in bench/outbox.py bench/sync.py bench/query.py bench/bandwidth.py bench/idle.py; do \
		$(BIN)/python $$script || exit 1; done

# Long reliability runs, outside CI (tests/test_chaos.py is the short one): SOAK_S seconds
# of `syncd run` and `syncd sink` killed at random (SYNCD_CHAOS_SEED=N to replay a
# schedule), then FUZZ_S seconds of coverage-guided fuzzing of the capture-file reader if
# atheris is installed (pip install atheris).
SOAK_S ?= 600
FUZZ_S ?= 600
soak: $(BIN)/syncd
	$(BIN)/python bench/chaos.py --duration $(SOAK_S)
	if $(BIN)/python -c "import atheris" 2>/dev/null; then \
		$(BIN)/python bench/fuzz_capture.py -max_total_time=$(FUZZ_S) -rss_limit_mb=2048; \
	else echo "atheris is not installed: skipping bench/fuzz_capture.py"; fi

clean:
	rm -rf $(VENV) $(VIAM_VENV) run build *.egg-info .pytest_cache .ruff_cache .hypothesis
