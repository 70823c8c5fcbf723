"""``edgefuse bench sim`` produces its JSON document from real renders and a real live run."""

from __future__ import annotations

import json

import pytest

from tests.conftest import edgefuse_cli


def test_offline_capacity_json() -> None:
    r = edgefuse_cli("bench", "sim", "--json", "--seconds", "0.5", "--live-seconds", "0", "--quiet")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    off = doc["offline"]
    assert set(off) == {"camera", "depth", "lidar", "mic", "truth", "cpu_share_total"}
    for name in ("camera", "depth", "lidar", "mic", "truth"):
        assert off[name]["samples"] > 0 and off[name]["realtime_factor"] > 0
        assert 0 < off[name]["cpu_share"] < 5
    assert doc["live"] is None and "offline_cpu_share_total<=1" in doc["goals"]
    assert doc["command"].startswith("edgefuse bench sim")


@pytest.mark.slow
def test_live_run_measures_every_node_and_topic() -> None:
    r = edgefuse_cli(
        "bench",
        "sim",
        "--json",
        "--seconds",
        "0.3",
        "--live-seconds",
        "3",
        "--warmup",
        "4",
        "--quiet",
        timeout_s=120,
    )
    assert r.returncode == 0, r.stderr
    live = json.loads(r.stdout)["live"]
    assert live["launcher_exit"] == 0
    nodes = {"camera", "depth", "lidar", "mic", "sim", "sync", "detect", "score"}
    assert set(live["nodes"]) == nodes
    assert all(v["cpu_share"] > 0 for v in live["nodes"].values())
    for topic in ("camera/image", "depth/image", "lidar/points", "mic/audio", "sim/truth"):
        assert live["topics"][topic]["messages"] > 0
