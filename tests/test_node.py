"""The node runner, in-process: one-shot timers and the run epoch."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from edgefuse.node import NodeRunner, NodeSpec, NoParams
from tests.nodes import OneShotRecorder

MS = 1_000_000


def make_runner(node_cls: type[Any], tmp_path: Path, *, poll: bool, **spec: Any) -> NodeRunner:
    """A runner with no outputs; with ``poll`` it also has an input, so the loop waits in
    ZeroMQ's poll (whole milliseconds) instead of ``time.sleep``."""
    inputs = {"x": ("other/x", f"ipc://{tmp_path}/nobody.pub")} if poll else {}
    return NodeRunner(
        node_cls, NoParams(), NodeSpec(name="n", type="t", params={}, inputs=inputs, **spec)
    )


@pytest.mark.parametrize("poll", [False, True], ids=["sleep", "poll"])
def test_one_shot_timers_fire_in_time_order_never_early(tmp_path: Path, poll: bool) -> None:
    runner = make_runner(OneShotRecorder, tmp_path, poll=poll)
    t0 = time.monotonic_ns()
    assert runner.run() == 0
    node = runner.node
    assert isinstance(node, OneShotRecorder)
    assert time.monotonic_ns() - t0 < 2_000 * MS, "the safety stop fired: timers were lost"
    labels = [label for label, _, _ in node.fired]
    # The past time fires first; equal times fire in scheduling order (b1 before b2); the
    # callback raising at 30 ms is counted, not recorded; the chain schedules itself.
    assert labels == ["past", "a", "b1", "b2", "c", "chain0", "chain1", "chain2", "chain3"]
    assert dict(runner.errors) == {"timer:RuntimeError": 1}
    for label, due, fired in node.fired:
        assert fired >= due, f"{label} fired {due - fired} ns early"
        # The idle loop wakes every 50 ms; a timer due sooner must not wait for that.
        if label != "past":
            assert fired - due < 20 * MS, f"{label} fired {(fired - due) / MS:.1f} ms late"


def test_callback_rescheduling_itself_in_the_past_does_not_starve_the_loop(
    tmp_path: Path,
) -> None:
    runner = make_runner(OneShotRecorder, tmp_path, poll=False)
    node = runner.node
    assert isinstance(node, OneShotRecorder)
    spins = 0

    def spin() -> None:
        nonlocal spins
        spins += 1
        node.at(0, spin)  # always already due: must wait for the next turn, not loop here

    def setup() -> None:
        node.at(0, spin)
        node.at(time.monotonic_ns() + 30 * MS, node.stop)

    node.setup = setup  # type: ignore[method-assign]
    t0 = time.monotonic_ns()
    assert runner.run() == 0
    assert 30 * MS <= time.monotonic_ns() - t0 < 1_000 * MS
    assert spins > 1


def test_at_takes_integer_nanoseconds(tmp_path: Path) -> None:
    runner = make_runner(OneShotRecorder, tmp_path, poll=False)
    try:
        with pytest.raises(TypeError, match="int time in ns"):
            runner.node.at(1.5, lambda: None)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="int time in ns"):
            runner.node.at(True, lambda: None)
    finally:
        runner.ctx.term()


def test_run_epoch_from_spec_or_runner_start(tmp_path: Path) -> None:
    before = time.monotonic_ns()
    solo = make_runner(OneShotRecorder, tmp_path, poll=False)
    after = time.monotonic_ns()
    given = make_runner(OneShotRecorder, tmp_path, poll=False, run_start_ns=123_456_789)
    try:
        # A node started on its own: its runner's start, and it does not move.
        assert before <= solo.node.run_start_ns <= after
        assert solo.node.run_start_ns == solo.run_start_ns
        assert given.node.run_start_ns == 123_456_789
        spec = NodeSpec(name="n", type="t", params={}, run_start_ns=42)
        assert NodeSpec.from_json(spec.to_json()).run_start_ns == 42
    finally:
        solo.ctx.term()
        given.ctx.term()
