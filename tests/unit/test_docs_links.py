"""The README and docs/ link only to files that exist inside the repository."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
PATH_IN_BACKTICKS = re.compile(r"`(\.\./[^`]+)`")


def test_readme_and_docs_link_inside_the_repository() -> None:
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    assert {p.name for p in pages} >= {"README.md", "architecture.md", "operations.md", "api.md"}
    broken = []
    for page in pages:
        text = page.read_text()
        broken += [f"{page.name}: {m}" for m in PATH_IN_BACKTICKS.findall(text)]
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):
                continue  # http(s): links leave the repository on purpose
            resolved = (page.parent / target).resolve()
            if not resolved.is_relative_to(REPO) or not resolved.exists():
                broken.append(f"{page.name}: {target}")
    assert broken == []
