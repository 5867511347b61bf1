"""The config model: example file in sync, errors name the bad key or value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hvd.config import example_toml, load_config
from hvd.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_committed_example_matches_the_model() -> None:
    committed = (REPO / "hvd.toml.example").read_text()
    assert committed == example_toml(), "run `hvd config example > hvd.toml.example`"


def test_cli_prints_the_same_example() -> None:
    out = subprocess.run([sys.executable, "-m", "hvd", "config", "example"], capture_output=True, text=True,
                         check=True, cwd=REPO)
    assert out.stdout == example_toml()


def test_example_loads_back_to_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "hvd.toml"
    path.write_text(example_toml())
    assert load_config(path, environ={}) == load_config(None, environ={})


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "hvd.toml"
    path.write_text('[api]\nprot = 1\n')
    with pytest.raises(ConfigError, match=r"unknown key 'api\.prot'"):
        load_config(path, environ={})


def test_unknown_section_is_named(tmp_path: Path) -> None:
    path = tmp_path / "hvd.toml"
    path.write_text('[apii]\nport = 1\n')
    with pytest.raises(ConfigError, match="unknown key 'apii'"):
        load_config(path, environ={})


def test_bad_value_is_named(tmp_path: Path) -> None:
    path = tmp_path / "hvd.toml"
    path.write_text('[libvirt]\nvirt_type = "xen"\n')
    with pytest.raises(ConfigError, match=r"'libvirt\.virt_type'"):
        load_config(path, environ={})


def test_out_of_range_port_is_named(tmp_path: Path) -> None:
    path = tmp_path / "hvd.toml"
    path.write_text("[api]\nport = 70000\n")
    with pytest.raises(ConfigError, match=r"'api\.port'"):
        load_config(path, environ={})


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = tmp_path / "hvd.toml"
    path.write_text("[api]\nport = 9000\n")
    config = load_config(path, environ={"HVD_API__PORT": "9100", "HVD_LIBVIRT__VIRT_TYPE": "qemu"})
    assert config.api.port == 9100
    assert config.libvirt.virt_type == "qemu"


def test_environment_override_with_unknown_field_is_named() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'api\.nope'"):
        load_config(None, environ={"HVD_API__NOPE": "1"})


def test_config_is_frozen() -> None:
    config = load_config(None, environ={})
    with pytest.raises(ValueError):
        config.api.port = 1  # type: ignore[misc]


def test_bad_toml_syntax_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "hvd.toml"
    path.write_text("[api\n")
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(path, environ={})
