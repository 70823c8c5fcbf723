"""The simulated rig live: one process per sensor, paced in real time, same data as offline."""

from __future__ import annotations

import json
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefuse.launch import Launcher
from edgefuse.pipeline import load_pipeline
from edgefuse.sim.generate import make_sources
from edgefuse.sim.rig import SimParams
from tests.conftest import REPO

PIPELINE = """
name: simtest
params:
  scenario: static
  seed: 11
  rig: {rig}
  start_delay_s: 1.5
nodes:
  camera: {{type: sim_camera}}
  depth: {{type: sim_depth}}
  lidar: {{type: sim_lidar}}
  mic: {{type: sim_mic}}
  sim: {{type: sim_truth}}
  probe:
    type: tests.nodes:SimProbe
    params: {{path: {probe}}}
    inputs:
      camera: camera/image
      depth: depth/image
      lidar: lidar/points
      mic: mic/audio
      truth: sim/truth
"""


@pytest.mark.slow
def test_live_rig_matches_offline_byte_for_byte(tmp_path: Path) -> None:
    probe = tmp_path / "probe.jsonl"
    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE.format(rig=REPO / "calibration/sim_rig.yaml", probe=probe))
    report = tmp_path / "report.json"
    code = Launcher(load_pipeline(path), duration_s=7.0, report_path=report, status="off").run()
    assert code == 0
    rep: dict[str, Any] = json.loads(report.read_text())
    assert all(n["errors"] == {} for n in rep["nodes"].values()), rep["nodes"]
    seen: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in probe.read_text().splitlines():
        m = json.loads(line)
        seen[m["topic"]].append(m)
    # Rates: a few seconds of every stream arrived.
    assert len(seen["camera/image"]) > 60 and len(seen["mic/audio"]) > 200
    assert len(seen["lidar/points"]) > 20 and len(seen["sim/truth"]) > 60
    # Byte for byte what the offline sources render for the same index.
    sources = make_sources(
        SimParams(scenario="static", seed=11, rig=str(REPO / "calibration/sim_rig.yaml"))
    )
    for name, topic in (
        ("camera", "camera/image"),
        ("lidar", "lidar/points"),
        ("mic", "mic/audio"),
    ):
        for m in seen[topic][5:8]:
            s = sources[name].sample(m["index"])
            assert s is not None
            crc = 0
            for a in s.arrays:
                crc = zlib.crc32(np.ascontiguousarray(a).data, crc)
            assert crc == m["crc"], (topic, m["index"])
            assert s.t_sensor_ns == m["t_sensor_ns"]
    # Truth carries t_ns on the host timeline; sensors leave it to the aligner.
    assert all(m["t_ns"] is not None for m in seen["sim/truth"])
    assert all(m["t_ns"] is None for m in seen["camera/image"])
    # Delivery is paced: a camera frame arrives after the instant its truth describes.
    truth_t = {m["index"]: m["t_ns"] for m in seen["sim/truth"]}
    lags = [
        m["t_host_ns"] - truth_t[m["index"]] for m in seen["camera/image"] if m["index"] in truth_t
    ]
    assert lags and min(lags) > 0 and np.median(lags) < 250e6  # late under load, never early


def test_missing_rig_or_sensor_is_a_configuration_error(tmp_path: Path) -> None:
    from edgefuse.errors import ConfigError

    path = tmp_path / "p.yaml"
    path.write_text("params: {rig: nowhere/rig.yaml}\nnodes:\n  camera: {type: sim_camera}\n")
    with pytest.raises(ConfigError, match=r"params.rig from line 1.*'nowhere/rig.yaml' not found"):
        load_pipeline(path)
    # A rig without a lidar: the lidar node stops for good (exit 78), it is not restarted.
    rig = tmp_path / "rig.yaml"
    rig.write_text((REPO / "calibration/sim_rig.yaml").read_text().split("  lidar:")[0])
    path.write_text(f"params: {{rig: {rig}}}\nnodes:\n  lidar: {{type: sim_lidar}}\n")
    report = tmp_path / "r.json"
    Launcher(load_pipeline(path), duration_s=3.0, report_path=report, status="off").run()
    node = json.loads(report.read_text())["nodes"]["lidar"]
    assert node["restarts"] == 0 and node["state"] != "running", node


def test_a_node_that_falls_behind_drops_late_samples_instead_of_bursting() -> None:
    """A sim sensor stalled for 2 s (the host too busy) skips the samples whose delivery is more
    than ``max_lag_s`` past, unrendered and counted, and goes on with one that is nearly due."""
    import time

    from edgefuse.node import NodeRunner, NodeSpec
    from edgefuse.sim.nodes import CameraParams, SimCameraNode

    params = CameraParams(scenario="static", seed=1, start_delay_s=0.0, max_lag_s=0.25)
    spec = NodeSpec(name="camera", type="sim_camera", params={}, endpoint="")
    runner = NodeRunner(SimCameraNode, params, spec)
    node = runner.node
    assert isinstance(node, SimCameraNode)
    node.setup()
    assert node.counters() == {}
    first_k = node.k
    node.epoch_ns -= 2_000_000_000  # as if the node had been stalled for 2 s
    node._prepare()
    late = node.counters()["late_dropped"]
    assert 50 <= late <= 62  # 2 s at 30 Hz, less the quarter second still allowed
    due_ns = runner._oneshots[-1][0]
    assert time.monotonic_ns() - due_ns <= 250_000_000
    assert node.k - first_k >= late + 1
    runner.ctx.term()
