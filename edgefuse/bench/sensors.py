"""``edgefuse bench sensors``: what each driver costs, as one JSON document.

- **lidar**: Velodyne VLP-32C packets (10 Hz, single return) decoded into sweeps as the lidar
  node does it (:func:`~edgefuse.bench.sensors_lidar.bench_lidar_decode`): the fraction of one
  core the stream costs and the latency from the packet completing a sweep to the sweep being
  ready. Goal: at most 10 % of one core.
- **camera**: 1080p30 bgr8 frames published on the same-host transport (shared memory) as the
  camera node publishes them (:func:`~edgefuse.bench.sensors_capture.bench_camera_publish`).
  Goal: at most 2 ms per frame.
- **microphone**: the CPU cost per 10 ms chunk of the microphone node's stamping and publish.
"""

from __future__ import annotations

import os
import platform
from typing import Any

GOAL_LIDAR_CORE_FRACTION = 0.10
GOAL_CAMERA_PUBLISH_MS = 2.0


def run(*, seconds: float = 5.0, command: str = "") -> dict[str, Any]:
    """Every driver's figures and whether the goals are met."""
    from edgefuse.bench.sensors_capture import bench_camera_publish, bench_microphone
    from edgefuse.bench.sensors_lidar import bench_lidar_decode

    lidar = bench_lidar_decode(model="VLP-32C", seconds=seconds)
    camera = bench_camera_publish(width=1920, height=1080, fps=30, seconds=seconds)
    mic = bench_microphone()
    cam_ms = camera["publish_ms"].get("p50")
    return {
        "benchmark": "sensors",
        "command": command,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_1min": os.getloadavg()[0],
        },
        "lidar": lidar,
        "camera": camera,
        "microphone": mic,
        "goals": {
            "lidar_core_fraction_max": GOAL_LIDAR_CORE_FRACTION,
            "lidar_met": lidar["core_fraction"] <= GOAL_LIDAR_CORE_FRACTION,
            "camera_publish_ms_max": GOAL_CAMERA_PUBLISH_MS,
            "camera_met": cam_ms is not None and cam_ms <= GOAL_CAMERA_PUBLISH_MS,
        },
    }
