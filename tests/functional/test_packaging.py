"""Installing hvd like an operator: set-up with Debian's own python3, and the .deb of `make deb`.

The .deb is installed into a scratch root (`dpkg --root`, nothing on this machine changes) and run
in a private mount namespace where that root's /opt is mounted over /opt, so /usr/bin/hvd and its
venv's absolute paths resolve exactly as on a host that installed the package. The venvs are
built once and cached under build/ (scripts/venv.sh skips a venv whose lock has not changed).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hvd import __version__
from hvd.catalog.protocol import PROTOCOL
from hvd.catalog.schema import MIGRATIONS
from tests.conftest import REPO, free_port, write_config

pytestmark = pytest.mark.slow

DEBIAN_PYTHON = Path("/usr/bin/python3")
VERSION_LINE = f"hvd {__version__} (catalog schema {len(MIGRATIONS)}, protocol {PROTOCOL})"


def _debian_python_missing() -> str | None:
    if not DEBIAN_PYTHON.exists():
        return "no Debian /usr/bin/python3 on this machine (apt-get install python3 python3-venv)"
    if subprocess.run([str(DEBIAN_PYTHON), "-c", "import venv, ensurepip"], capture_output=True).returncode:
        return "Debian's python3 lacks venv: run scripts/setup.sh (it installs python3-venv)"
    return None


def _run(argv: list[str], timeout: float = 600, **kw: object) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO, **kw)  # type: ignore[call-overload]
    assert out.returncode == 0, f"{shlex.join(argv)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    return out  # type: ignore[no-any-return]


def test_setup_with_debian_python_runs_the_tests() -> None:
    """scripts/venv.sh (the Python part of `make test`'s set-up) works with Debian's python3,
    which refuses `pip install` outside a venv (PEP 668)."""
    if (why := _debian_python_missing()) is not None:
        pytest.skip(why)
    venv = REPO / "build" / "test-debian-venv"
    _run(["bash", "scripts/venv.sh", "--python", str(DEBIAN_PYTHON), "--dir", str(venv),
          "--lock", "requirements-dev.lock"])
    version = _run([str(venv / "bin" / "python"), "-c", "import sys; print(sys.base_prefix)"])
    assert version.stdout.strip() == "/usr"  # Debian's interpreter, not this machine's other build
    assert _run([str(venv / "bin" / "hvd"), "--version"]).stdout.strip() == VERSION_LINE
    tests = _run([str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                  "tests/unit/test_cli_version.py", "tests/unit/test_config.py"])
    assert " passed" in tests.stdout and "failed" not in tests.stdout


@pytest.fixture(scope="module")
def deb() -> Path:
    if (why := _debian_python_missing()) is not None:
        pytest.skip(why)
    if shutil.which("dpkg-deb") is None:
        pytest.skip("no dpkg-deb: the package is built on Debian")
    out = _run(["bash", "scripts/build-deb.sh"], env={**os.environ, "DEB_COMPRESS": "-Zgzip -z1"})
    path = Path(out.stdout.strip().splitlines()[-1])
    assert path.name == f"hvd_{__version__}_amd64.deb"
    return path


@pytest.fixture(scope="module")
def installed(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch root with the package installed by dpkg (its dependencies are this machine's)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("installing into a scratch root and mounting it needs root and unshare")
    root = tmp_path_factory.mktemp("deb-root")
    (root / "var/lib/dpkg/info").mkdir(parents=True)
    (root / "var/lib/dpkg/updates").mkdir()
    (root / "var/lib/dpkg/status").touch()
    _run(["dpkg", f"--root={root}", "--force-depends", "--force-script-chrootless", "--log=/dev/null",
          "-i", str(deb)])
    return root


def in_root(root: Path, argv: list[str]) -> list[str]:
    """argv run with the scratch root's /opt mounted over /opt (private to that process)."""
    script = f'mount --bind {shlex.quote(str(root / "opt"))} /opt && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-ec", script, "sh", *argv]


def control_field(deb: Path, name: str) -> str:
    return _run(["dpkg-deb", "-f", str(deb), name]).stdout.strip()


def test_package_metadata(deb: Path) -> None:
    assert control_field(deb, "Package") == "hvd" and control_field(deb, "Version") == __version__
    listing = _run(["dpkg-deb", "-c", str(deb)]).stdout
    for path in ("./opt/hvd/bin/hvd", "./usr/bin/hvd -> /opt/hvd/bin/hvd", "./lib/systemd/system/hvd.service",
                 "./etc/hvd/hvd.toml"):
        assert path in listing
    # every dependency is a real Debian package name: set-up installed them all on this machine
    depends = [d.strip().split()[0] for d in control_field(deb, "Depends").replace("\n", " ").split(",")]
    unknown = [d for d in depends if subprocess.run(["dpkg-query", "-W", d], capture_output=True).returncode]
    assert unknown == []


def test_installed_package_runs_version_and_doctor(installed: Path) -> None:
    assert (installed / "var/lib/dpkg/info/hvd.conffiles").read_text().split() == ["/etc/hvd/hvd.toml"]
    assert _run(in_root(installed, [str(installed / "usr/bin/hvd"), "--version"])).stdout.strip() == VERSION_LINE
    # the conffile is the generated example: valid as installed
    cfg = installed / "etc/hvd/hvd.toml"
    env = {**os.environ, "HVD_LIBVIRT__VIRT_TYPE": "qemu"}  # this build machine is itself a VM
    doctor = subprocess.run(in_root(installed, [str(installed / "usr/bin/hvd"), "doctor", "-c", str(cfg)]),
                            capture_output=True, text=True, timeout=120, env=env)
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip()
            for line in doctor.stdout.splitlines() if line.count("│") >= 4}
    assert rows["config"] == "OK", doctor.stdout
    assert rows["libvirt"] == "OK", doctor.stdout  # libvirt-python, built for Debian's python, loads
    assert doctor.returncode == (1 if "FAIL" in rows.values() else 0), doctor.stderr


def _unit(root: Path) -> dict[str, str]:
    unit = {}
    for line in (root / "lib/systemd/system/hvd.service").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            unit[key] = value
    return unit


@pytest.fixture(scope="module")
def systemd_analyze() -> list[str]:
    """systemd-analyze of Debian's systemd, unpacked under build/ (this machine runs no systemd)."""
    if found := shutil.which("systemd-analyze"):
        return [found]
    root = REPO / "build" / "systemd"
    binary = root / "usr/bin/systemd-analyze"
    if not binary.exists():
        debs = root.parent / "systemd-debs"
        debs.mkdir(parents=True, exist_ok=True)
        got = subprocess.run(["apt-get", "download", "systemd", "libsystemd-shared"], cwd=debs,
                             capture_output=True, text=True, timeout=300)
        if got.returncode != 0:
            pytest.skip(f"cannot fetch Debian's systemd to verify the unit (apt-get update?): {got.stderr[-300:]}")
        for deb in debs.glob("*.deb"):
            _run(["dpkg-deb", "-x", str(deb), str(root)])
    libs = root / "usr/lib/x86_64-linux-gnu/systemd"
    return ["env", f"LD_LIBRARY_PATH={libs}", str(binary)]


def test_unit_passes_systemd_analyze_verify(installed: Path, systemd_analyze: list[str], tmp_path: Path) -> None:
    """Every directive of the unit is one this systemd knows and can parse (unknown keys and bad
    values are only warnings to systemd: they would silently drop hardening)."""
    unit = tmp_path / "hvd.service"
    text = (installed / "lib/systemd/system/hvd.service").read_text()
    unit.write_text(text.replace("/usr/bin/hvd", str(installed / "usr/bin/hvd")))
    out = subprocess.run(in_root(installed, [*systemd_analyze, "verify", "--man=no", "--generators=no", str(unit)]),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stderr.strip() == "" and out.stdout.strip() == "", out.stderr


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[Path, socket.socket]]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(30)
    yield path, sock
    sock.close()


def test_installed_daemon_follows_the_units_notify_protocol(
        installed: Path, tmp_path: Path, notify_socket: tuple[Path, socket.socket]) -> None:
    """The unit's own ExecStart (Type=notify, WatchdogSec, UMask) as systemd would run it: READY=1
    once the API listens, watchdog pings, STOPPING=1 and a clean exit on SIGTERM."""
    unit = _unit(installed)
    assert unit["Type"] == "notify"
    argv = shlex.split(unit["ExecStart"])
    assert argv[:2] == ["/usr/bin/hvd", "daemon"]
    port = free_port()
    cfg = write_config(tmp_path / "hvd", port)
    pre = shlex.split(unit["ExecStartPre"])
    pre = [str(installed / "usr/bin/hvd"), *pre[1:pre.index("-c")], "-c", str(cfg)]
    assert _run(in_root(installed, pre)).stdout.strip() == "config ok"
    argv = [str(installed / "usr/bin/hvd"), *argv[1:argv.index("-c")], "-c", str(cfg)]
    watchdog_usec = int(unit["WatchdogSec"].removesuffix("s")) * 1_000_000
    path, sock = notify_socket
    env = {**os.environ, "NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": str(watchdog_usec // 60)}
    umask = int(unit["UMask"], 8)
    proc = subprocess.Popen(in_root(installed, argv), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=lambda: os.umask(umask))
    try:
        seen: list[str] = []
        deadline = time.monotonic() + 60
        while "READY=1" not in seen and time.monotonic() < deadline:
            seen.append(sock.recv(256).decode())
        # READY=1 means the API listens already: a connection succeeds at once
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        seen += drain(sock, until="WATCHDOG=1")
        assert "WATCHDOG=1" in seen
        assert os.stat(tmp_path / "hvd/data/catalog.db").st_mode & 0o777 == 0o600  # the unit's UMask=0077
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, proc.stderr.read().decode() if proc.stderr else ""
        assert "STOPPING=1" in drain(sock)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def drain(sock: socket.socket, until: str | None = None) -> list[str]:
    """Datagrams received until `until` arrives, or until the socket stays quiet for a second."""
    got: list[str] = []
    sock.settimeout(1.0)
    try:
        while until not in got:
            got.append(sock.recv(256).decode())
    except TimeoutError:
        pass
    return got
