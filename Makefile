# Two entry points, both doing all set-up on a fresh machine (see README):
#   make demo   - install, then run `rdd quickstart` on its embedded default
#   make test   - install, then run the test suite
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.rdd-installed

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml .ci/setup
	bash .ci/setup $(VENV)
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/rdd quickstart --out runs/quickstart

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf runs .pytest_cache
