"""The ``edgefuse`` command line: verbs, exit codes and error messages."""

from __future__ import annotations

import stat
from pathlib import Path

from edgefuse import __version__
from tests.conftest import edgefuse_cli

cli = edgefuse_cli


def test_version_and_help() -> None:
    assert cli("--version").stdout.strip() == f"edgefuse {__version__}"
    r = cli("--help")
    assert r.returncode == 0
    for verb in ("run", "check", "topics", "echo", "hz", "keys", "bench"):
        assert verb in r.stdout


def test_check_ok_and_error() -> None:
    r = cli("check", "pipelines/sim.yaml")
    assert r.returncode == 0 and "ok (8 nodes, 7 topics)" in r.stdout
    r = cli("check", "pipelines/none.yaml")
    assert r.returncode == 2 and "pipelines/none.yaml: cannot read" in r.stderr


def test_keys_generate_layout_and_refuses_to_overwrite(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    r = cli("keys", "generate", str(keys))
    assert r.returncode == 0, r.stderr
    for name in (
        "server.key",
        "server.key_secret",
        "client.key",
        "client.key_secret",
        "authorized/client.key",
    ):
        assert (keys / name).is_file(), name
    assert stat.S_IMODE((keys / "client.key_secret").stat().st_mode) == 0o600
    server_before = (keys / "server.key_secret").read_bytes()
    r = cli("keys", "generate", str(keys))
    assert r.returncode == 2 and "already exists" in r.stderr
    r = cli("keys", "generate", str(keys), "--client", "viewer")
    assert r.returncode == 0
    assert (keys / "authorized" / "viewer.key").is_file()
    assert (keys / "server.key_secret").read_bytes() == server_before
