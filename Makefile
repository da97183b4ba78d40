# The two commands of the README: `make demo` (main job) and `make test`.
# Each does its own set-up (scripts/setup is idempotent and quick when done).
VENV   := .venv
PY     := $(VENV)/bin/python
CLI    := $(VENV)/bin/osgtest-dag
DEMO   := demo-run

.PHONY: setup demo test bench clean

setup:
	@scripts/setup

demo: setup
	@scripts/demo

test: setup
	$(PY) -m pytest -q -ra --durations=15 -n 2 --dist loadgroup $(PYTEST_ARGS)

bench: setup
	$(PY) benchmarks/bench_generate.py

clean:
	rm -rf $(DEMO) .pytest_cache
