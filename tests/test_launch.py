"""The launcher with real node processes: data flows, crashes restart, stops are clean."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from edgefuse.errors import ConfigError
from edgefuse.launch import Launcher
from edgefuse.pipeline import load_pipeline
from edgefuse.transport import generate_keys
from tests.conftest import REPO, child_pids, edgefuse_segments

pytestmark = pytest.mark.usefixtures("run_dir", "no_leaks")

PATTERN = """\
name: {name}
transport: {transport}
nodes:
  camera:
    type: test_pattern
    params: {{width: 320, height: 240, rate_hz: 30}}
  check:
    type: pattern_check
    params: {{log_every_s: 0}}
    inputs: {{image: camera/image}}
"""


def launch(tmp_path: Path, text: str, duration_s: float) -> dict[str, Any]:
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    report = tmp_path / "report.json"
    code = Launcher(
        load_pipeline(path), duration_s=duration_s, report_path=report, status="off"
    ).run()
    assert code == 0
    data: dict[str, Any] = json.loads(report.read_text())
    return data


def test_pattern_pipeline_streams_intact_frames(tmp_path: Path) -> None:
    rep = launch(tmp_path, PATTERN.format(name="pat", transport="{mode: ipc}"), 3.0)
    t = rep["topics"]["camera/image"]
    assert t["messages"] >= 30 and t["received"] >= 30
    assert t["subscribers"] == ["check"]
    assert t["dropped"] == 0 and t["overruns"] == 0 and t["malformed"] == {}
    assert 20 < t["rate_hz"] < 40
    assert t["bytes"] == t["messages"] * 320 * 240 * 3
    assert {"p50", "p90", "p99", "max"} <= set(t["latency_ms"])
    # The checker recomputes every frame: no corrupt frame was seen.
    assert rep["nodes"]["check"]["errors"] == {}
    assert all(n["restarts"] == 0 for n in rep["nodes"].values())


def test_tcp_with_curve_keys(tmp_path: Path) -> None:
    generate_keys(tmp_path / "keys")
    rep = launch(tmp_path, PATTERN.format(name="sec", transport="{mode: tcp, keys: keys}"), 3.0)
    t = rep["topics"]["camera/image"]
    assert t["received"] >= 20 and t["malformed"] == {}
    assert rep["nodes"]["check"]["errors"] == {}


CRASH = """\
nodes:
  crash:
    type: tests.nodes:CrashingNode
    params: {ticks: 25, rate_hz: 50, exit_code: 3}
  sink:
    type: tests.nodes:FragileSink
    inputs: {data: crash/count}
"""


@pytest.mark.slow
def test_crashed_node_restarts_with_backoff_and_sink_survives_bad_data(tmp_path: Path) -> None:
    rep = launch(tmp_path, CRASH, 5.0)
    crash = rep["nodes"]["crash"]
    # Each life lasts ~1 s (start-up + 25 ticks), then back-off 0.5 s, 1 s, 2 s, 4 s:
    # two or three restarts fit in 5 s, five would not.
    assert 2 <= crash["restarts"] <= 4
    assert crash["exit_codes"][:2] == [3, 3]
    sink = rep["nodes"]["sink"]
    assert sink["restarts"] == 0 and sink["state"] == "stopped"
    assert sink["errors"].get("on_message:data:ValueError", 0) >= 3
    t = rep["topics"]["crash/count"]
    # The sink heard every incarnation (the first few frames of each are lost while ZeroMQ
    # reconnects); seq starting again at 0 is a restart, not a drop.
    assert t["received"] >= 10 * (crash["restarts"] + 1)
    assert t["dropped"] == 0
    # A crashed node cannot unlink its own segments: the launcher did (no_leaks checks).


EPOCH = """\
nodes:
  crash:
    type: tests.nodes:CrashingNode
    params: {{ticks: 5, rate_hz: 50, record: {record}}}
  steady:
    type: tests.nodes:CrashingNode
    params: {{ticks: 1000000, rate_hz: 5, record: {record}}}
"""


@pytest.mark.slow
def test_all_nodes_of_a_run_share_its_epoch_across_restarts(tmp_path: Path) -> None:
    record = tmp_path / "epochs.txt"
    before = time.monotonic_ns()
    rep = launch(tmp_path, EPOCH.format(record=record), 3.0)
    after = time.monotonic_ns()
    lines = [line.split() for line in record.read_text().splitlines()]
    pids = {name: {int(pid) for n, pid, _ in lines if n == name} for name in ("crash", "steady")}
    assert rep["nodes"]["crash"]["restarts"] >= 1 and len(pids["crash"]) >= 2
    assert len(pids["steady"]) == 1
    epochs = {int(epoch) for _, _, epoch in lines}
    assert len(epochs) == 1, f"nodes disagree on the run epoch: {lines}"
    assert before <= epochs.pop() <= after


def test_config_error_in_node_is_not_restarted(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("nodes:\n  n:\n    type: tests.nodes:CrashingNode\n")
    pipeline = load_pipeline(path)
    # Break the node type after validation, as a node whose import fails at start would.
    object.__setattr__(pipeline.nodes["n"].config, "type", "tests.nodes:Missing")
    t0 = time.monotonic()
    code = Launcher(pipeline, duration_s=5, status="off").run()
    assert code == 1  # a node failed for good
    assert time.monotonic() - t0 < 4  # the launcher ended when nothing was left running


def _spawn_cli(tmp_path: Path, text: str, *extra: str) -> subprocess.Popen[bytes]:
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    return subprocess.Popen(
        [sys.executable, "-m", "edgefuse", "run", str(path), "--status", "plain", *extra],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _wait_for_nodes(proc: subprocess.Popen[bytes], n: int, timeout_s: float = 15) -> set[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        kids = child_pids(proc.pid)
        if len(kids) >= n and any(s.startswith("edgefuse.") for s in edgefuse_segments()):
            return kids
        time.sleep(0.1)
    raise AssertionError("pipeline did not start")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_everything_within_2s(tmp_path: Path, sig: signal.Signals) -> None:
    proc = _spawn_cli(tmp_path, PATTERN.format(name="sig", transport="{mode: ipc}"))
    kids = _wait_for_nodes(proc, 2)
    t0 = time.monotonic()
    proc.send_signal(sig)
    proc.wait(timeout=5)
    assert time.monotonic() - t0 < 2.0
    assert proc.returncode == 0
    assert not any(os.path.exists(f"/proc/{k}") and _state(k) != "Z" for k in kids)


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_node_ignoring_sigterm_is_killed_within_2s(tmp_path: Path) -> None:
    proc = _spawn_cli(tmp_path, "nodes:\n  s:\n    type: tests.nodes:StubbornNode\n")
    deadline = time.monotonic() + 15
    while len(child_pids(proc.pid)) < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.5)  # let the node install its SIG_IGN
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=5)
    assert time.monotonic() - t0 < 2.0
    assert b"did not stop within 1.5 s: killed" in out


def test_a_node_that_asks_for_more_time_to_stop_gets_it(tmp_path: Path) -> None:
    proc = _spawn_cli(tmp_path, "nodes:\n  s:\n    type: tests.nodes:SlowToStop\n")
    deadline = time.monotonic() + 15
    while len(child_pids(proc.pid)) < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=15)
    assert b"flushed everything" in out and b"killed" not in out


def test_killed_launcher_takes_its_nodes_along(tmp_path: Path) -> None:
    proc = _spawn_cli(tmp_path, PATTERN.format(name="kill", transport="{mode: ipc}"))
    kids = _wait_for_nodes(proc, 2)
    proc.kill()  # SIGKILL: the launcher cannot clean up; the nodes must notice by themselves
    proc.wait()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and any(_state(k) not in ("gone", "Z") for k in kids):
        time.sleep(0.05)
    assert all(_state(k) in ("gone", "Z") for k in kids), "orphaned node processes"
    # The nodes stopped cleanly (SIGTERM via PR_SET_PDEATHSIG) and unlinked their segments.
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and edgefuse_segments():
        time.sleep(0.05)


def test_cli_duration_and_report(tmp_path: Path) -> None:
    proc = _spawn_cli(
        tmp_path,
        PATTERN.format(name="cli", transport="{mode: ipc}"),
        "--duration",
        "2.5",
        "--report",
        str(tmp_path / "r.json"),
    )
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out.decode()
    assert b"camera/image" in out and b"RATE Hz" in out
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["pipeline"] == "cli" and rep["topics"]["camera/image"]["received"] > 0


def test_cli_reports_config_errors_with_exit_code_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("nodes:\n  camera:\n    type: test_pattern\n    params: {fps: 30}\n")
    r = subprocess.run(
        [sys.executable, "-m", "edgefuse", "run", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    assert f"{path}:4: nodes.camera.params.fps: unknown key" in r.stderr


def test_node_processes_get_single_thread_pools_unless_the_user_sets_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """numpy's BLAS, OpenMP and OpenCV pools run one thread per core in every node otherwise."""
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.delenv("OPENCV_FOR_THREADS_NUM", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's choice wins
    out = tmp_path / "env.json"
    probe = f"{{type: 'tests.nodes:EnvProbe', params: {{path: '{out}'}}}}"
    text = f"name: envtest\nnodes:\n  probe: {probe}\n"
    launch(tmp_path, text, 1.5)
    env = json.loads(out.read_text())
    assert env["OPENBLAS_NUM_THREADS"] == "1" and env["MKL_NUM_THREADS"] == "1"
    assert env["OPENCV_FOR_THREADS_NUM"] == "1" and env["cv2_threads"] == 1
    assert env["OMP_NUM_THREADS"] == "2"


def test_a_node_runs_at_the_niceness_its_pipeline_gives_it(tmp_path: Path) -> None:
    out = tmp_path / "env.json"
    base = os.nice(0)
    probe = f"{{type: 'tests.nodes:EnvProbe', params: {{path: '{out}'}}, nice: 7}}"
    launch(tmp_path, f"name: nicetest\nnodes:\n  probe: {probe}\n", 1.5)
    assert json.loads(out.read_text())["nice"] == min(19, base + 7)
    bad = tmp_path / "bad.yaml"
    for value in ("25", "-21", "1.5", "high"):
        bad.write_text(f"nodes:\n  probe: {{type: 'tests.nodes:EnvProbe', nice: {value}}}\n")
        with pytest.raises(ConfigError, match="nice"):
            load_pipeline(bad)


def _may_raise_priority() -> bool:
    try:
        with open("/proc/self/status") as f:
            caps = next(line for line in f if line.startswith("CapEff:"))
        return bool(int(caps.split()[1], 16) & (1 << 23))  # CAP_SYS_NICE
    except (OSError, StopIteration):
        return False


@pytest.mark.skipif(not _may_raise_priority(), reason="needs CAP_SYS_NICE (root) to go below 0")
def test_a_node_on_the_latency_path_runs_ahead_with_a_negative_niceness(tmp_path: Path) -> None:
    out = tmp_path / "env.json"
    base = os.nice(0)
    probe = f"{{type: 'tests.nodes:EnvProbe', params: {{path: '{out}'}}, nice: -3}}"
    launch(tmp_path, f"name: nicetest\nnodes:\n  probe: {probe}\n", 1.5)
    assert json.loads(out.read_text())["nice"] == max(-20, base - 3)


def test_a_negative_niceness_without_the_right_runs_the_node_anyway() -> None:
    # An unprivileged process (as root: one that gave up root first) asks for nice -5.
    code = (
        "import logging, os, sys\n"
        "from edgefuse.node import _renice\n"
        "if os.geteuid() == 0:\n"
        "    os.setgid(65534); os.setuid(65534)\n"
        "logging.basicConfig(stream=sys.stdout, format='%(levelname)s %(message)s')\n"
        "before = os.nice(0)\n"
        "_renice('probe', -5)\n"
        "print('nice', before, os.nice(0))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "WARNING probe: nice -5 needs root, CAP_SYS_NICE" in r.stdout
    before, after = r.stdout.split("nice ")[-1].split()
    assert before == after
