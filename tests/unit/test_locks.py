"""The dependency locks cover pyproject.toml: set-up installs only from them (hash-checked), so a
requirement that is not locked is missing from every venv and from the .deb."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s\\;]+)")


def pins(lock: str) -> dict[str, str]:
    """name -> pinned version; every pin carries at least one sha256 hash."""
    text = (REPO / lock).read_text()
    found = {}
    for block in re.split(r"\n(?=\S)", text):
        if match := PIN.match(block):
            assert "--hash=sha256:" in block, f"{lock}: {match.group(1)} has no hash"
            found[canonicalize_name(match.group(1))] = match.group(2)
    return found


def test_every_requirement_is_locked_at_an_allowed_version() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime, dev = pins("requirements.lock"), pins("requirements-dev.lock")
    wanted = [("requirements.lock", runtime, r) for r in project["dependencies"]]
    wanted += [("requirements-dev.lock", dev, r) for r in project["dependencies"]]
    wanted += [("requirements-dev.lock", dev, r) for r in project["optional-dependencies"]["dev"]]
    problems = []
    for lock, pinned, text in wanted:
        req = Requirement(text)
        version = pinned.get(canonicalize_name(req.name))
        if version is None or not req.specifier.contains(version, prereleases=True):
            problems.append(f"{lock}: {req} (locked: {version})")
    assert problems == [], "run `make lock`: " + "; ".join(problems)


def test_the_package_ships_the_versions_the_tests_run() -> None:
    runtime, dev = pins("requirements.lock"), pins("requirements-dev.lock")
    assert {name: dev.get(name) for name in runtime} == runtime
