# hvd — the two commands of the README: `make run` and `make test`. Both set up a fresh machine.
SHELL := /bin/bash
# the virtual environment scripts/setup.sh (or `make venv` alone) makes
PY ?= .venv/bin/python

.PHONY: setup venv guest run test lint unit bench clean deb lock lock-upgrade lab lab-down lab-status

setup:
	bash scripts/setup.sh

guest: setup
	bash guest/build.sh

run: guest
	bash scripts/run-dev.sh

venv:
	bash scripts/venv.sh

lint: venv
	$(PY) -m ruff check hvd tests bench
	$(PY) -m mypy hvd

test: guest
	bash scripts/test.sh

bench: guest
	$(PY) bench/api.py

# build/hvd_<version>_amd64.deb: hvd in its own venv under /opt/hvd, the systemd unit, /etc/hvd/hvd.toml
deb:
	bash scripts/build-deb.sh

# refresh requirements.lock and requirements-dev.lock from pyproject.toml (keeps existing pins);
# lock-upgrade moves every pin to the newest allowed release
lock:
	bash scripts/lock.sh

lock-upgrade:
	UPGRADE=1 bash scripts/lock.sh

clean:
	rm -rf build dev-data .venv

# A multi-host lab on this machine (tests/lab/cluster.py): HOSTS hvd hosts, each with its own
# namespaces, libvirtd and daemon; runs in the background and prints an openrc. lab-down removes it.
HOSTS ?= 3
lab: guest
	$(PY) -m tests.lab.lab_cli up --hosts $(HOSTS)

lab-down:
	$(PY) -m tests.lab.lab_cli down

lab-status:
	$(PY) -m tests.lab.lab_cli status
