# The two commands of the README:
#   make run    install into .venv and serve on http://127.0.0.1:8080/
#   make test   install what the tests need (Python packages, Chromium, Redis, coturn) and run them all
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: run test lint bench fuzz clean system-deps

run: $(VENV)/.installed
	$(BIN)/fantasize-rtc serve $(ARGS)

test: $(VENV)/.installed-test system-deps lint
	$(BIN)/python -m pytest $(ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check server tests examples bench
	$(BIN)/ruff format --check server tests examples bench
	$(BIN)/mypy

# The fuzzing suite at length (the default suite runs a bounded sample of it): FUZZ_EXAMPLES cases
# per test (default 2000), seed printed; replay a run with `make fuzz SEED=<seed>`.
fuzz: $(VENV)/.installed-test system-deps
	@seed=$${SEED:-$$(date +%s)}; echo "fuzz seed $$seed (replay: make fuzz SEED=$$seed)"; \
	HYPOTHESIS_PROFILE=fuzz FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-2000} $(BIN)/python -m pytest tests/test_fuzz.py \
		tests/test_media_fuzz.py --hypothesis-seed=$$seed --hypothesis-show-statistics --timeout 3600 $(ARGS)

bench: $(VENV)/.installed-test system-deps
	$(BIN)/python -m pip install --quiet -e '.[fast]'
	$(BIN)/python -m bench $(ARGS)

system-deps:
	@sh scripts/install-system-deps.sh

$(VENV)/.venv-created:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.venv-created
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.venv-created
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@ $(VENV)/.installed

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache .hypothesis test-artifacts
