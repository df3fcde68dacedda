# lb: `make demo` and `make test` install everything they need first (scripts/setup.sh is
# idempotent and quick when nothing is missing).
VENV ?= .venv
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast bench bench-quick clean

setup:
	bash scripts/setup.sh

demo: setup
	bash scripts/demo.sh

test: setup
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS) tests

bench: setup
	$(VENV)/bin/python -m bench.run --suite all

bench-quick: setup
	$(VENV)/bin/python -m bench.run --suite all --quick

clean:
	-$(VENV)/bin/lb lab down
	rm -rf build *.egg-info lb/_bpfbatch*.so
