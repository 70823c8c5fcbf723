"""``edgefuse bench transport``: real publisher and subscriber processes, no mocks.

These tests check that the benchmark measures correctly (every requested cell delivered
intact payloads, the JSON has its shape, nothing leaks), never how fast anything is.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefuse.bench import _report, transport
from edgefuse.bench._payload import (
    KIND_END,
    KIND_MEASURED,
    PRESETS,
    check,
    parse_size,
    stamp,
    words,
)
from edgefuse.bench.cli import main
from edgefuse.transport.shm import list_segments
from tests.conftest import process_table

REPO = Path(__file__).resolve().parents[2]
RESULT_KEYS = {
    "transport",
    "size",
    "bytes",
    "rate",
    "sent",
    "received",
    "lost",
    "corrupt",
    "latency_ms",
    "throughput_msg_s",
    "throughput_MBps",
    "note",
    "error",
}


def _children() -> set[int]:
    """Live (non-zombie) child processes of this test process."""
    me = os.getpid()
    return {pid for pid, (ppid, state) in process_table().items() if ppid == me and state != "Z"}


def _run(tmp_path: Path, *args: str) -> dict[str, Any]:
    out = tmp_path / "bench.json"
    rc = main(["transport", "--quick", "--json", "--quiet", "--out", str(out), *args])
    assert rc == 0
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc


def _check_cells(doc: dict[str, Any], transports: list[str], sizes: list[str]) -> None:
    cells = {(r["transport"], r["size"], r["rate"]): r for r in doc["results"]}
    assert len(cells) == len(doc["results"]) == len(transports) * len(sizes) * 2
    for name in transports:
        for size in sizes:
            for rate in ("30", "max"):
                r = cells[(name, size, rate)]
                assert r.keys() >= RESULT_KEYS
                assert r["error"] is None, r["error"]
                assert r["bytes"] == parse_size(size).nbytes
                assert r["received"] > 0, r
                assert r["corrupt"] == 0, r
                assert r["sent"] >= r["received"]
                assert r["lost"] == r["sent"] - r["received"]
                lat = r["latency_ms"]
                assert 0 <= lat["p50"] <= lat["p99"], r
                assert r["throughput_msg_s"] is None or r["throughput_msg_s"] > 0


def test_markers_round_trip_and_catch_damage() -> None:
    payload = np.zeros(PRESETS["6.2MiB"][1], dtype=np.uint8)
    w = words(payload)
    stamp(w, KIND_MEASURED, 41, 123_456)
    assert check(w) == (KIND_MEASURED, 41, 123_456)
    stamp(w, KIND_END, 42)
    assert check(w) == (KIND_END, 42, 0)
    payload.reshape(-1)[payload.size // 2] ^= 0xFF  # a torn middle
    assert check(w) is None
    stale = np.zeros(1024, dtype=np.uint8)
    stamp(words(stale), KIND_MEASURED, 7)
    words(stale)[1] = 8  # a header that names another message than the payload holds
    assert check(words(stale)) is None
    assert check(words(np.zeros(1024, dtype=np.uint8))) is None  # never written


def test_sizes() -> None:
    assert parse_size("6.2MiB").nbytes == 1920 * 1080 * 3
    assert parse_size("6.2MiB").shape == (1080, 1920, 3)
    assert parse_size("24.9MiB").nbytes == 3840 * 2160 * 3
    assert parse_size("3MiB").nbytes == 3 << 20
    assert parse_size("10B").nbytes == 64  # room for the markers
    with pytest.raises(ValueError):
        parse_size("lots")
    assert transport.parse_rate("max") is None
    assert transport.parse_rate("30") == 30.0


def test_usage_errors_return_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["transport", "--transports", "carrier-pigeon"]) == 2
    assert main(["transport", "--sizes", "huge"]) == 2
    assert main(["nothing"]) == 2
    assert "carrier-pigeon" in capsys.readouterr().err


def _result(name: str, size: str, rate: str, p50: float, **kw: Any) -> dict[str, Any]:
    return {
        "transport": name,
        "size": size,
        "bytes": parse_size(size).nbytes,
        "rate": rate,
        "latency_ms": {"p50": p50, "p99": kw.get("p99", p50 * 2)},
        "throughput_MBps": kw.get("MBps"),
        "corrupt": 0,
        "error": None,
    }


def test_summary_states_each_goal_as_a_measured_fact() -> None:
    results = [
        _result("edgefuse-shm", "1MiB", "30", 0.1),
        _result("edgefuse-shm", "6.2MiB", "30", 0.2, p99=0.5),
        _result("pyzmq-copy", "6.2MiB", "30", 2.0),
        _result("iceoryx2", "1MiB", "30", 0.1),
        _result("iceoryx2", "6.2MiB", "30", 0.4),
        _result("zenoh", "1MiB", "30", 0.05),  # faster than edgefuse at 1 MiB
        _result("zenoh", "6.2MiB", "30", 0.8),
        _result("edgefuse-tcp", "6.2MiB", "max", 3.0, MBps=1500.0),
    ]
    goals = {g["id"]: g for g in _report.summary(results)["goals"]}
    assert goals["shm_6.2MiB_30Hz_p50_ms"]["measured"] == 0.2
    assert goals["shm_6.2MiB_30Hz_p50_ms"]["met"] is True
    assert goals["shm_6.2MiB_30Hz_p99_ms"]["met"] is True
    assert goals["pyzmq_copy_over_shm_p50_ratio_6.2MiB_30Hz"]["measured"] == 10.0
    assert goals["shm_vs_iceoryx2_p50_ratio_ge_1MiB_30Hz"]["met"] is True
    zenoh = goals["shm_vs_zenoh_p50_ratio_ge_1MiB_30Hz"]
    assert zenoh["per_size"] == {"1MiB": 2.0, "6.2MiB": 0.25}
    assert zenoh["measured"] == 2.0
    assert zenoh["met"] is False
    assert goals["tcp_6.2MiB_max_GBps"]["measured"] == 1.5
    assert goals["tcp_6.2MiB_max_GBps"]["met"] is True
    # Nothing measured: every goal is reported, none is met.
    empty = _report.summary([])["goals"]
    assert len(empty) == len(goals)
    assert not any(g["met"] for g in empty)


def test_quick_run_across_processes(tmp_path: Path) -> None:
    names = ["edgefuse-shm", "edgefuse-tcp", "pyzmq-copy", "memcpy"]
    doc = _run(tmp_path, "--transports", ",".join(names), "--sizes", "64KiB")
    assert {"machine", "command", "results", "summary"} <= doc.keys()
    assert doc["machine"]["cpu_count"] >= 1
    assert doc["machine"]["packages"]["pyzmq"]
    assert doc["command"].startswith("edgefuse bench transport --quick")
    _check_cells(doc, names, ["64KiB"])
    assert {g["id"] for g in doc["summary"]["goals"]} >= {"tcp_6.2MiB_max_GBps"}
    assert all(isinstance(g["met"], bool) for g in doc["summary"]["goals"])
    assert doc["summary"]["corrupt_total"] == 0
    # Every worker reaped, every segment of this run unlinked.
    assert _children() == set()
    assert list_segments(f"edgefuse.bench{os.getpid()}.") == []
    assert doc["hygiene"]["edgefuse_segments_left"] == []


@pytest.mark.slow
def test_every_peer_that_is_installed_measures(tmp_path: Path) -> None:
    names = ["edgefuse-shm-copy", "pyzmq-zerocopy", "zenoh", "iceoryx2"]
    doc = _run(tmp_path, "--transports", ",".join(names), "--sizes", "1KiB,64KiB")
    installed = [
        n
        for n, module in zip(names, ["zmq", "zmq", "zenoh", "iceoryx2"], strict=True)
        if importlib.util.find_spec(module) is not None
    ]
    _check_cells(doc, installed, ["1KiB", "64KiB"])
    for r in doc["results"]:
        if r["transport"] not in installed:
            assert r["error"].startswith("unavailable"), r
    for r in doc["results"]:
        if r["transport"] == "zenoh" and r["rate"] == "30":
            assert "SHM" in r["note"]  # says which mode was measured
    assert _children() == set()


def test_a_peer_that_fails_is_recorded_and_the_run_goes_on(tmp_path: Path) -> None:
    cfg = transport.BenchConfig(
        transports=("no-such-peer", "memcpy"),
        sizes=(parse_size("1KiB"),),
        rates_hz=(None,),
        messages=5,
        max_seconds=0.05,
        warmup=1,
    )
    doc = transport.run(cfg, command="test", progress=None)
    failed, floor = doc["results"]
    assert failed["transport"] == "no-such-peer"
    assert "no receiver" in failed["error"]
    assert floor["error"] is None and floor["received"] > 0
    assert _children() == set()


def test_python_dash_m_prints_one_json_document() -> None:
    argv = ["transport", "--quick", "--json", "--transports", "memcpy", "--rates", "max"]
    proc = subprocess.run(
        [sys.executable, "-m", "edgefuse.bench", *argv, "--sizes", "1KiB"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    (cell,) = doc["results"]
    assert cell["transport"] == "memcpy" and cell["received"] > 0 and cell["corrupt"] == 0
