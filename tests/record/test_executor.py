"""The lossless executor: the simulated pipeline on a generated session, deterministic to the
byte, the offline aligner's sets, event-time timers, synchronous delivery, bad nodes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from edgefuse.envelope import Message
from edgefuse.errors import ConfigError
from edgefuse.node import Node
from edgefuse.pipeline import load_pipeline
from edgefuse.record import SessionReader
from edgefuse.record.executor import LosslessExecutor, plan
from edgefuse.record.replay_cli import main
from edgefuse.record.selection import select
from edgefuse.sim.generate import generate
from edgefuse.sim.rig import SimParams
from edgefuse.sync.offline import align_messages, aligner_from_pipeline
from tests.conftest import REPO

SIM = str(REPO / "pipelines/sim.yaml")


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("replay") / "day_3.mcap"
    generate(path, SimParams(scenario="day", seed=3), duration_s=1.5)
    return path


def _raw(path: Path, topic: str) -> list[bytes]:
    """The recorded bytes (header and payloads) of every message on ``topic``."""
    from mcap.reader import make_reader

    with open(path, "rb") as f:
        return [m.data for _, ch, m in make_reader(f).iter_messages() if ch.topic == topic]


def test_lossless_replay_twice_is_byte_identical_with_the_offline_sets(
    session: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outs = []
    for run in ("a", "b"):
        out, js = tmp_path / f"{run}.mcap", tmp_path / f"{run}.jsonl"
        args = [str(session), "--lossless", "--pipeline", SIM, "-o", str(out)]
        assert main([*args, "--json-out", str(js)]) == 0
        outs.append((out, js))
    assert "detect/objects" in capsys.readouterr().out
    (a, aj), (b, bj) = outs
    dets_a, dets_b = _raw(a, "detect/objects"), _raw(b, "detect/objects")
    assert dets_a and dets_a == dets_b  # headers (t_pub_ns, meta) and payloads
    assert a.read_bytes() == b.read_bytes() and aj.read_bytes() == bj.read_bytes()
    with SessionReader(session) as r:
        offline = list(align_messages(r.messages(), aligner_from_pipeline(SIM)))
    with SessionReader(a) as r:
        sets = list(r.messages(["sync/set"]))
        dets = list(r.messages(["detect/objects"]))
    assert len(sets) == len(offline) == len(dets) > 30
    assert [m.header.t_ns for m in sets] == [s.t_ns for s in offline]
    # Nothing from the wall clock: publish times are event times, latencies zero.
    for m in dets:
        assert m.header.t_pub_ns >= m.header.t_host_ns > 0
        assert set(m.header.meta["latency_ms"].values()) == {0.0}
    lines = [json.loads(x) for x in aj.read_text().splitlines()]
    assert sum(x["topic"] == "detect/objects" for x in lines) == len(dets)


@dataclass(frozen=True, kw_only=True)
class _RelayParams:
    lossless: bool = False
    fail_every: int = 0


class RelayNode(Node):
    """Relays camera frame numbers, schedules a one-shot 5 ms after each frame (event time)
    and ticks every 100 ms; records everything it sees in ``events`` (a class-level list)."""

    Params = _RelayParams
    outputs: ClassVar = {"n": "i64"}
    inputs: ClassVar = ("image",)
    events: ClassVar[list[tuple[str, int]]] = []

    def setup(self) -> None:
        self.seen = 0
        self.every(0.1, lambda: self.events.append(("tick", 0)))

    def on_message(self, port: str, msg: Message) -> None:
        self.seen += 1
        if self.params.fail_every and self.seen % self.params.fail_every == 0:
            raise ValueError("injected")
        t = msg.header.t_host_ns
        self.events.append(("frame", t))
        self.at(t + 5_000_000, lambda: self.events.append(("oneshot", t + 5_000_000)))
        self.publish("n", [np.array([msg.header.seq], np.int64)], t_sensor_ns=msg.header.seq)


class SinkNode(Node):
    """Records what the relay sends (into ``RelayNode.events``)."""

    inputs: ClassVar = ("n",)

    def on_message(self, port: str, msg: Message) -> None:
        RelayNode.events.append(("relayed", int(msg.arrays[0][0])))


def _pipeline(tmp_path: Path, *, fail_every: int = 0) -> Path:
    p = tmp_path / "relay.yaml"
    p.write_text(
        f"""
name: relay
nodes:
  sink: {{type: tests.record.test_executor:SinkNode, inputs: {{n: relay/n}}}}
  camera: {{type: sim_camera}}
  pattern: {{type: test_pattern}}
  relay:
    type: tests.record.test_executor:RelayNode
    inputs: {{image: camera/image}}
    params: {{fail_every: {fail_every}}}
"""
    )
    return p


def test_timers_run_on_event_time_and_delivery_is_synchronous(
    session: Path, tmp_path: Path
) -> None:
    pipe = load_pipeline(_pipeline(tmp_path))
    p = plan(pipe, ["camera/image", "mic/audio"])
    assert p.sources == {"camera": ["camera/image"]}
    assert "pattern" in p.skipped and p.order == ["relay", "sink"]  # topological, not file order
    RelayNode.events.clear()
    sel = select(session, duration_s=1.0)
    report = LosslessExecutor(pipe, sel).run()
    assert report.counters == {"relay": {}, "sink": {}}
    assert report.fed == {"camera/image": 30}  # only what a replaced source published
    log = RelayNode.events
    frames = [i for i, (k, _) in enumerate(log) if k == "frame"]
    assert len(frames) == 30
    for n, i in enumerate(frames):
        assert log[i + 1] == ("relayed", n)  # delivered before anything else happens
    # Each one-shot fires after its frame and before the first frame arriving after its due.
    times = [t for k, t in log if k == "frame"]
    for i, (kind, due) in enumerate(log):
        if kind == "oneshot":
            before = [t for k, t in log[:i] if k == "frame"]
            after = [t for k, t in log[i:] if k == "frame"]
            assert before[-1] <= due - 5_000_000 and all(t >= due for t in after[:1])
    # Periodic ticks on event time: one per 100 ms of the recording, whatever the wall clock.
    span_s = (times[-1] - sel.start_ns) / 1e9
    assert sum(k == "tick" for k, _ in log) == int(span_s / 0.1)


def test_a_failing_node_is_counted_and_the_replay_goes_on(session: Path, tmp_path: Path) -> None:
    pipe = load_pipeline(_pipeline(tmp_path, fail_every=3))
    RelayNode.events.clear()
    report = LosslessExecutor(pipe, select(session, duration_s=1.0)).run()
    assert report.errors == {"relay": {"on_message:image:ValueError": 10}}
    assert report.published["relay/n"] == 20


def test_a_pipeline_the_recording_does_not_feed_is_a_clear_error(
    session: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = tmp_path / "other.yaml"
    p.write_text("name: other\nnodes:\n  cam: {type: test_pattern}\n")
    with pytest.raises(ConfigError, match="replaces none of the pipeline's source nodes"):
        LosslessExecutor(load_pipeline(p), select(session))
    assert main([str(session), "--lossless", "--pipeline", str(p)]) == 2
    assert "replaces none" in capsys.readouterr().err
    assert main([str(session), "--lossless"]) == 2
    assert "give --pipeline" in capsys.readouterr().err
