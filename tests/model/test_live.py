"""The ``live_map`` node: detections paired with ``sim/truth`` by time, scored like eval."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgefuse.envelope import Header, Message
from edgefuse.model.live import LiveScoreNode, LiveScoreParams
from edgefuse.record import SessionReader
from edgefuse.runtime import detections as wire
from edgefuse.runtime.infer import DEFAULT_MODEL, model_metadata
from edgefuse.runtime.postprocess import Detections
from edgefuse.sim.generate import generate
from edgefuse.sim.rig import SimParams
from edgefuse.sim.truth import TruthFrame

MS = 1_000_000


@pytest.fixture(scope="module")
def truth(tmp_path_factory: pytest.TempPathFactory) -> list[Message]:
    """3 s of real ``sim/truth`` messages of a busy scene, from a generated session."""
    path = tmp_path_factory.mktemp("live") / "busy.mcap"
    generate(path, SimParams(scenario="busy", seed=4), duration_s=3.0, sensors=("truth",))
    with SessionReader(path) as r:
        return [m for m in r.messages() if m.topic == "sim/truth"]


def detections_of(
    msg: Message, *, seq: int, skew_ns: int, shift_m: float = 0.0, class_of: int | None = None
) -> Message:
    """A ``detect/objects`` message reporting every truth object of ``msg`` (score 0.9),
    its centre moved ``shift_m`` along x, its class replaced by ``class_of`` when given."""
    f = TruthFrame.from_message(msg)
    box3d = np.array(f.box3d, np.float32)
    box3d[:, 0] += shift_m
    n = len(f)
    cls = np.full(n, class_of) if class_of is not None else f.class_id
    dets = Detections(
        np.asarray(cls, np.int64),
        np.full(n, 0.9, np.float32),
        box3d,
        np.full((n, 4), np.nan, np.float32),
    )
    names = model_metadata(DEFAULT_MODEL)["grid"]["class_names"]
    arrays, meta = wire.to_payload(
        dets,
        class_names=names,
        modalities={"camera": True},
        set_seq=seq,
        latency_ms={},
        backend="test",
        model_sha256="",
    )
    t_ns = msg.header.t_ns
    assert t_ns is not None
    h = Header(
        stream="objects",
        seq=seq,
        t_sensor_ns=t_ns,
        t_host_ns=t_ns + 40 * MS,
        t_ns=t_ns + skew_ns,
        encoding=wire.ENCODING,
        meta=meta,
    )
    return Message("detect/objects", h, arrays)


def scorer() -> LiveScoreNode:
    node = LiveScoreNode(name="score", params=LiveScoreParams(skip_s=0.5))
    node.setup()
    return node


def test_perfect_detections_score_100_and_each_is_paired_with_its_own_frame(
    truth: list[Message],
) -> None:
    node = scorer()
    for i, m in enumerate(truth):
        node.on_message("truth", m)
        # Detections come after their frame's truth, their set time a clock error away.
        node.on_message("detections", detections_of(m, seq=i, skew_ns=(-1) ** i * 2 * MS))
    c = node.counters()
    assert c["unmatched"] == 0 and c["bad"] == 0
    assert c["frames"] == len(truth) - node._skipped and node._skipped > 0
    assert node.current_map() == pytest.approx(1.0)


def test_displaced_or_misclassified_detections_score_less(truth: list[Message]) -> None:
    far, wrong = scorer(), scorer()
    for i, m in enumerate(truth):
        # Detections may also arrive before the truth frame they belong to.
        far.on_message("detections", detections_of(m, seq=i, skew_ns=0, shift_m=1.5))
        far.on_message("truth", m)
        wrong.on_message("truth", m)
        wrong.on_message("detections", detections_of(m, seq=i, skew_ns=0, class_of=3))
    m_far, m_wrong = far.current_map(), wrong.current_map()
    assert m_far is not None and m_wrong is not None
    # 1.5 m off: matched at the 2 and 4 m thresholds only, at most half the thresholds (less
    # where the shift takes a detection out of the camera's view or next to a hidden object).
    assert 0.25 < m_far <= 0.5 + 1e-9
    assert m_wrong < 0.5  # only the cyclists are right


def test_detections_without_a_truth_frame_within_tolerance_are_unmatched(
    truth: list[Message],
) -> None:
    node = scorer()
    for i, m in enumerate(truth):
        node.on_message("truth", m)
        node.on_message("detections", detections_of(m, seq=i, skew_ns=12 * MS))
    c = node.counters()
    assert c["frames"] == 0 and c["unmatched"] > 0 and "map" not in c


def test_a_malformed_message_is_counted_not_raised(truth: list[Message]) -> None:
    node = scorer()
    h = Header(stream="objects", seq=0, t_sensor_ns=0, t_host_ns=0, t_ns=0, meta={})
    node.on_message("detections", Message("detect/objects", h, []))
    assert node.counters()["bad"] == 1


def test_a_missing_model_is_a_configuration_error(tmp_path: Path) -> None:
    from edgefuse.errors import ConfigError

    node = LiveScoreNode(name="score", params=LiveScoreParams(model=str(tmp_path / "none.onnx")))
    with pytest.raises(ConfigError, match=r"none\.onnx"):
        node.setup()
