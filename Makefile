# hvd — the two commands of the README: `make run` and `make test`. Both set up a fresh machine.
SHELL := /bin/bash
PY ?= python3

.PHONY: setup guest run test lint unit bench clean lab lab-down lab-status

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

# A multi-host lab on this machine (tests/lab/cluster.py): HOSTS hvd hosts, each with its own
# namespaces, libvirtd and daemon; runs in the background and prints an openrc. lab-down removes it.
HOSTS ?= 3
lab: guest
	$(PY) -m tests.lab.lab_cli up --hosts $(HOSTS)

lab-down:
	$(PY) -m tests.lab.lab_cli down

lab-status:
	$(PY) -m tests.lab.lab_cli status
