"""``edgefuse topics``, ``echo`` and ``hz`` against a real running pipeline."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefuse import introspect
from edgefuse.transport import generate_keys
from tests.conftest import REPO, edgefuse_cli

pytestmark = pytest.mark.usefixtures("no_leaks")

PIPELINE = """\
name: intro
transport: {transport}
nodes:
  camera:
    type: test_pattern
    params: {{width: 160, height: 120, rate_hz: 20}}
"""


@pytest.fixture(params=["ipc", "tcp-curve"])
def running(request: pytest.FixtureRequest, run_dir: Path, tmp_path: Path) -> Iterator[str]:
    transport = "{mode: ipc}"
    if request.param == "tcp-curve":
        generate_keys(tmp_path / "keys")
        transport = "{mode: tcp, keys: keys}"
    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE.format(transport=transport))
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgefuse", "run", str(path), "--status", "off", "--duration", "20"],
        cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 15
        while not introspect.list_topics():
            assert time.monotonic() < deadline, "pipeline did not start"
            time.sleep(0.1)
        yield request.param
    finally:
        proc.terminate()
        proc.wait(timeout=5)


cli = edgefuse_cli


def test_topics_echo_hz(running: str) -> None:
    r = cli("topics", "-v")
    assert r.returncode == 0
    assert r.stdout.startswith("/camera/image  [bgr8]  ")
    assert ("tcp://127.0.0.1:" if running == "tcp-curve" else "ipc://") in r.stdout
    rows = json.loads(cli("topics", "--json").stdout)
    assert [row["topic"] for row in rows] == ["camera/image"]

    r = cli("echo", "/camera/image", "-n", "2", "--timeout", "10")
    assert r.returncode == 0, r.stderr
    blocks = [b for b in r.stdout.split("---") if b.strip()]
    assert len(blocks) == 2
    assert "encoding: 'bgr8'" in blocks[0] and "frame_id: 'camera_optical'" in blocks[0]
    assert "payload[0]: shape=[120, 160, 3] dtype=uint8 min=" in blocks[0]
    seqs = [int(b.split("seq: ")[1].split("\n")[0]) for b in blocks]
    assert seqs[1] > seqs[0]

    out = io.StringIO()
    figures = introspect.hz("camera/image", duration_s=2.5, out=out)
    assert "average rate:" in out.getvalue()
    assert 15 < figures["rate_hz"] < 25  # 20 Hz publisher; loose: this is a shared machine
    assert figures["dropped"] == 0


def test_unknown_topic_is_a_clear_error(run_dir: Path) -> None:
    r = cli("echo", "nope/x", "--timeout", "1")
    assert r.returncode == 2
    assert "no running pipeline publishes 'nope/x'" in r.stderr
    assert "no running pipeline" in cli("topics").stdout


@pytest.mark.parametrize("running", ["tcp-curve"], indirect=True)
def test_unauthorised_client_key_hears_nothing(running: str, tmp_path: Path) -> None:
    other = tmp_path / "other-keys"
    generate_keys(other)  # a different server key and a client nobody authorised
    out = io.StringIO()
    n = introspect.echo("camera/image", count=1, timeout_s=2, keys=str(other), out=out)
    assert n == 0 and out.getvalue() == ""
