# lb: `make demo` and `make test` install everything they need first (scripts/setup.sh is
# idempotent and quick when nothing is missing).
VENV ?= .venv
PYTEST_ARGS ?=

BENCH_SUITE ?= all

.PHONY: setup setup-vm install demo test bench bench-quick bench-smoke bench-report clean

# a developer's machine: the director's dependencies, the lab/test/bench tools, .venv (editable)
setup:
	bash scripts/setup.sh

# a director: bcc, kernel headers for it, bpffs, lb in PREFIX (/opt/lb), `lb` in BINDIR
# (/usr/local/sbin), every unit of lb/systemd/ in UNITDIR
# (/usr/local/lib/systemd/system); stops nothing
install:
	bash scripts/install-director.sh

demo: setup
	bash scripts/demo.sh

# setup-vm: qemu, virtme-ng and Debian's IPVS kernel for tests/vm/ (one VM boot inside the suite)
setup-vm: setup
	bash scripts/setup-vm.sh

# Workers: the lab's tests on one, the IPVS VM on another, the rest spread (tests/conftest.py).
TEST_WORKERS ?= 3

test: setup setup-vm
	LB_VM_REQUIRED=1 LB_NO_SKIPS=1 LB_ARTIFACTS=$(CURDIR)/artifacts $(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder \
		--durations=25 $(PYTEST_ARGS) tests

# bench/results/<date>-<suite>.json, latest.md, latest.png; BENCH_SUITE=http,pps runs only those
bench: setup
	$(VENV)/bin/python -m bench.run --suite $(BENCH_SUITE)

bench-quick: setup
	$(VENV)/bin/python -m bench.run --suite $(BENCH_SUITE) --quick

bench-smoke: setup
	$(VENV)/bin/python -m bench.run --suite $(BENCH_SUITE) --smoke

# rebuild latest.md / latest.png from the newest JSON results
bench-report:
	$(VENV)/bin/python -m bench.report

clean:
	-$(VENV)/bin/lb lab down
	rm -rf build *.egg-info lb/_bpfbatch*.so
