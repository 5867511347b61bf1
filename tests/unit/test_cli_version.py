"""`hvd --version` names the release, the catalog schema it writes and the protocol level it applies."""

from __future__ import annotations

import subprocess
import sys

from hvd import __version__
from hvd.catalog.protocol import PROTOCOL
from hvd.catalog.schema import MIGRATIONS


def test_version_names_release_schema_and_protocol() -> None:
    out = subprocess.run([sys.executable, "-m", "hvd", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"hvd {__version__} (catalog schema {len(MIGRATIONS)}, protocol {PROTOCOL})"
