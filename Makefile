# hvd — the two commands of the README: `make run` and `make test`. Both set up a fresh machine.
SHELL := /bin/bash
PY ?= python3

.PHONY: setup guest run test lint unit bench clean

setup:
	bash scripts/setup.sh

guest: setup
	bash guest/build.sh

run: guest
	bash scripts/run-dev.sh

lint:
	$(PY) -m ruff check hvd tests bench
	$(PY) -m mypy hvd

test: guest
	bash scripts/test.sh

bench: guest
	$(PY) bench/api.py

clean:
	rm -rf build dev-data
