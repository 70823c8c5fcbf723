"""Shared fixtures: an isolated run folder per test, and leak checks for processes and /dev/shm."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: Real recorded sensor data, shared by the team beside the repository (never copied into it);
#: EDGEFUSE_SHARED_DATA points elsewhere, e.g. for a clone that does not sit beside it.
SHARED_DATA = Path(os.environ.get("EDGEFUSE_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point EDGEFUSE_RUN_DIR at a fresh folder so tests see only their own pipelines."""
    d = tmp_path / "run"
    monkeypatch.setenv("EDGEFUSE_RUN_DIR", str(d))
    monkeypatch.chdir(REPO)  # node processes import test helper nodes from tests/
    return d


def edgefuse_cli(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``python -m edgefuse ARGS`` from the repository root; capture text output."""
    return subprocess.run(
        [sys.executable, "-m", "edgefuse", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state letter) of every process, read from /proc."""
    table: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        table[int(entry)] = (int(fields[1]), fields[0])
    return table


def child_pids(pid: int) -> set[int]:
    """Every live (non-zombie) descendant of ``pid``."""
    parents = {c: pp for c, (pp, state) in process_table().items() if state != "Z"}
    out: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {c for c, p in parents.items() if p in frontier} - out
        out |= frontier
    return out


def edgefuse_segments() -> set[str]:
    """Names of edgefuse shared-memory segments currently in /dev/shm."""
    return {n for n in os.listdir("/dev/shm") if n.startswith("edgefuse.")}


@pytest.fixture
def no_leaks() -> Iterator[None]:
    """Fail the test if it leaves edgefuse segments or child processes behind."""
    before = edgefuse_segments()
    yield
    assert edgefuse_segments() - before == set(), "shared-memory segments leaked"
    assert child_pids(os.getpid()) == set(), "child processes left running"
