"""``edgefuse bench align``: the document it prints is complete and its figures consistent."""

from __future__ import annotations

import json

import pytest

from tests.conftest import edgefuse_cli


@pytest.mark.slow
def test_bench_align_json() -> None:
    out = edgefuse_cli(
        "bench",
        "align",
        "--json",
        "--quiet",
        "--seconds",
        "30",
        "--repeats",
        "1",
        "--clocks",
        "acceptance",
        timeout_s=240,
    )
    doc = json.loads(out.stdout)
    assert doc["benchmark"] == "align" and doc["input"]["clocks"] == "acceptance"
    n = doc["input"]["messages"]
    assert n == sum(doc["input"]["per_stream"].values()) > 4000
    assert doc["throughput"]["edgefuse_messages_per_s"] > 0
    assert doc["throughput"]["ros_approximate_time_messages_per_s"] > 0
    # One set per camera frame (the camera drops a few), each emitted by its deadline.
    assert abs(doc["sets"]["emitted"] - doc["input"]["per_stream"]["camera"]) <= 1
    assert doc["added_latency_ms"]["max"] <= doc["input"]["max_wait_ms"]
    assert doc["goals"]["added_latency_max<=max_wait"] is True
    # After 10 s every clock is well under a millisecond and far better than arrival stamps.
    for stream, acc in doc["clock_accuracy"].items():
        assert acc["error_ms"]["rms"] < 0.5, (stream, acc)
        assert acc["error_ms"]["rms"] < acc["raw_arrival_error_ms"]["rms"] / 5, (stream, acc)
        assert acc["within_bound"] >= 0.9, (stream, acc)
    pairing = doc["pairing"]
    assert pairing["edgefuse"]["pairs"] > 800
