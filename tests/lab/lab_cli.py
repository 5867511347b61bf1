"""`make lab` / `make lab-down` / `make lab-status`: ``python3 -m tests.lab.lab_cli up|down|status``.

`up` starts a lab owned by a background `serve` process and prints its openrc; `down` asks every
`make lab` owner to tear its lab down (labs of running test sessions are left alone) and removes
stale labs; `status` lists labs and each host's leader.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

import requests

from tests.lab.cluster import REPO, LabCluster
from tests.lab.lab_plan import API_PORT, PREFIX, STATE_ROOT, host_ip, lab_dir, lab_name
from tests.lab.lab_system import (
    clean_stale_labs,
    drop_guard_if_unused,
    http_session,
    lab_available,
    labs_lock,
    labs_present,
    live_labs,
    read_owner,
    wait_gone,
)


def _serve(hosts: int) -> int:
    """Run a lab in this process until SIGTERM/SIGINT (the `make lab` owner)."""
    stop = False

    def on_signal(_sig: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        lab = LabCluster(hosts, cli=True, ready_timeout=180).start()
    except Exception as exc:
        print(f"lab start failed: {exc}", file=sys.stderr, flush=True)
        print("FAILED", flush=True)
        return 1
    print(f"READY {lab.index}", flush=True)
    # from now on nobody reads our output: keep it with the lab
    out = os.open(lab.dir / "owner.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(out, 1)
    os.dup2(out, 2)
    try:
        while not stop:
            time.sleep(0.5)
    finally:
        lab.stop()
    return 0


def _up(hosts: int) -> int:
    log = STATE_ROOT / f"{PREFIX}-cli-{os.getpid()}.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "tests.lab.lab_cli", "serve", "--hosts", str(hosts)],
                                stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, cwd=REPO,
                                start_new_session=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()
    proc.stdout.close()
    if not line.startswith("READY"):
        proc.wait(30)
        print(f"lab did not start: {log.read_text(errors='replace')[-5000:]}", file=sys.stderr)
        log.unlink(missing_ok=True)
        return 1
    log.unlink(missing_ok=True)
    index = int(line.split()[1])
    print(f"# lab {lab_name(index)}: {hosts} hosts, owner pid {proc.pid}, state in {lab_dir(index)}")
    print("# stop it with: make lab-down")
    print((lab_dir(index) / "openrc").read_text(), end="")
    return 0


def _down() -> int:
    with labs_lock():
        owners = live_labs()
    code = 0
    for index, owner in sorted(owners.items()):
        if not owner.cli:
            print(f"lab {lab_name(index)} belongs to process {owner.pid} (a test run): left alone")
            continue
        os.kill(owner.pid, signal.SIGTERM)
        if wait_gone([owner.pid], 60):
            print(f"lab {lab_name(index)}: owner {owner.pid} did not stop; removing the lab itself")
            os.kill(owner.pid, signal.SIGKILL)
            code = 1
        print(f"lab {lab_name(index)} removed")
    with labs_lock():
        for index in clean_stale_labs():
            print(f"stale lab {lab_name(index)} removed")
        drop_guard_if_unused()
    return code


def _status() -> int:
    present = labs_present()
    if not present:
        print("no lab")
    for index in sorted(present):
        owner = read_owner(index)
        state = "running" if owner is not None and owner.alive() else "stale (run make lab-down)"
        who = f"owner {owner.pid}{' (make lab)' if owner.cli else ''}" if owner else "no owner"
        print(f"{lab_name(index)}: {state}, {who}, {lab_dir(index)}")
        session = http_session()
        session.verify = str(lab_dir(index) / "ca.crt")  # the lab's cluster CA (LabCluster.ca_file)
        for cfg in sorted(lab_dir(index).glob("h*/hvd.toml")):
            url = f"https://{host_ip(index, int(cfg.parent.name[1:]))}:{API_PORT}"
            try:
                health = session.get(url + "/healthz", timeout=2).json()
                print(f"  {cfg.parent.name} {url} leader={health.get('leader')}")
            except (requests.RequestException, ValueError):
                print(f"  {cfg.parent.name} {url} not answering")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tests.lab.lab_cli", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("command", choices=["up", "down", "status", "serve"])
    parser.add_argument("--hosts", type=int, default=3)
    args = parser.parse_args(argv)
    if args.command in ("up", "serve") and (reason := lab_available()):
        print(reason, file=sys.stderr)
        return 1
    if args.command == "up":
        return _up(args.hosts)
    if args.command == "serve":
        return _serve(args.hosts)
    if args.command == "down":
        return _down()
    return _status()


if __name__ == "__main__":
    sys.exit(main())
