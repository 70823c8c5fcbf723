"""The time-calibration scenario (``timing``): a board moved between two stops, and a clapper.

Kalibr-style temporal calibration wants sharp events that every sensor perceives. Here the
calibration board (:class:`~edgefuse.sim.calib_scene.BoardTarget`) rides a rail across the
rig's view, 3.3 m before the cameras (well inside the depth camera's 8 m range) and in the
lidar's beams: it holds at one stop for a random 0.7-1.3 s, then moves 0.8 m sideways to the
other at constant speed in ``move_s`` (0.5 s) and stops dead. The plate is rolled 8° so no edge
lies along a pixel row or column, and the move is sideways at constant range so every sensor's
view of it changes in proportion to the distance travelled. The **event** is the instant the
board passes the middle of the rail: a **clapper** there, at :attr:`TimingScene.clapper_m`,
clicks at that instant (a 2 kHz burst decaying in 2 ms that starts at its peak), and every
visual stream sees the board halfway between its holds. Random holds put the events at random
phases of every sensor's sampling grid.

Known answers: :attr:`TimingScene.events_s` (world instants of the events), and
:meth:`TimingScene.sound_distance_m` (clapper to microphone: the click reaches the mic
``d / 343 m/s`` after the event, which is physics, not clock offset). A generated session
records both in its ``timing_scene`` metadata. Every sensor renders with its rig
``time_offset_ns`` as in :mod:`edgefuse.sim.generate`, so a session rendered with a rig of
chosen offsets checks ``edgefuse calibrate time`` against them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgefuse.calib.model import RigCalibration
from edgefuse.sim.audio import SPEED_OF_SOUND_MPS, MicRenderer
from edgefuse.sim.calib_scene import BoardTarget, CalibrationScene, calibration_sources
from edgefuse.sim.generate import (
    sample_header,
    samples,
    session_metadata,
    session_writer,
)
from edgefuse.sim.rig import MicSource, SimParams, Source, load_rig

#: Topics of a generated timing session.
TOPICS = {
    "camera": "camera/image",
    "depth": "depth/image",
    "lidar": "lidar/points",
    "mic": "mic/audio",
}


def board_pose(centre_m: tuple[float, float, float], target: BoardTarget, roll_deg: float) -> Any:
    """``T_base_link_board`` of a board facing the rig (its printed side towards -x) with the
    plate's centre at ``centre_m`` in ``base_link``, rolled ``roll_deg`` about its normal."""
    # Board axes in base_link: x (along a row) to the rig's right, y (down the columns) down,
    # z (into the board) away from the rig.
    R0 = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    c, s = math.cos(math.radians(roll_deg)), math.sin(math.radians(roll_deg))
    R = R0 @ np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = np.asarray(centre_m) - R @ target.centre
    return T


@dataclass(frozen=True, kw_only=True, eq=False)
class TimingScene(CalibrationScene):
    """The board's two stops (``poses``), the schedule of its moves and the clapper.

    Move ``j`` goes from stop ``j % 2`` to stop ``(j + 1) % 2`` at constant speed during
    ``events_s[j] ± move_s / 2``; the board stands still in between. The clapper clicks at
    each ``events_s[j]``, when the board passes the middle of its travel."""

    events_s: tuple[float, ...]
    #: Where the clapper clicks (base_link, m).
    clapper_m: tuple[float, float, float] = (4.6, 0.05, 0.9)
    #: Click: amplitude at 1 m (full scale 1), ring frequency and decay time.
    click_level: float = 0.3
    click_hz: float = 2000.0
    click_decay_s: float = 0.002
    hold_s: float = 1.0
    move_s: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.poses) != 2:
            raise ValueError(f"a timing scene has two stops, got {len(self.poses)} poses")
        gaps = np.diff(np.asarray((-self.move_s / 2, *self.events_s)))
        if not len(self.events_s) or gaps.min() <= self.move_s:
            raise ValueError("events_s must increase by more than move_s, from move_s / 2 on")

    @property
    def duration_s(self) -> float:
        """Until one second after the last event."""
        return self.events_s[-1] + 1.0 if self.events_s else 1.0

    def pose_at(self, t_s: float) -> tuple[np.ndarray, int, bool]:
        """``(T_base_link_board, stop index, still)`` at world time ``t_s``; while moving, the
        index is the stop it left."""
        half = self.move_s / 2
        j = int(np.searchsorted(np.asarray(self.events_s) - half, t_s, side="right")) - 1
        if j >= 0 and t_s < self.events_s[j] + half:  # during move j
            a = 0.5 - (self.events_s[j] - t_s) / self.move_s  # constant velocity, dead stops
            A, B = self.poses[j % 2], self.poses[(j + 1) % 2]
            T = A.copy()  # both stops have the same orientation: a pure translation
            T[:3, 3] = (1 - a) * A[:3, 3] + a * B[:3, 3]
            return T, j % 2, False
        return self.poses[(j + 1) % 2].copy(), (j + 1) % 2, True

    def sound_distance_m(self, rig: RigCalibration, mic: str = "mic") -> float:
        """Distance from the clapper to the microphone (its frame origin) in ``rig``."""
        return float(np.linalg.norm(np.asarray(self.clapper_m) - rig.sensor(mic).T[:3, 3]))

    def click(self, t_s: np.ndarray, elements_m: np.ndarray) -> np.ndarray:
        """Pressure ``(n, elements)`` (full scale 1) of the clapper's clicks at the elements
        ``elements_m`` (base_link) at world times ``t_s``: each click starts at its peak when
        the sound of an event arrives (``d / 343 m/s`` after it) and rings down; the level
        falls as 1 / d."""
        out = np.zeros((len(t_s), len(elements_m)))
        ev = np.asarray(self.events_s)
        for e, pos in enumerate(elements_m):
            d = float(np.linalg.norm(np.asarray(self.clapper_m) - pos))
            arrive = ev + d / SPEED_OF_SOUND_MPS
            j = np.searchsorted(arrive, t_s, side="right") - 1  # the last click begun
            ok = j >= 0
            u = np.where(ok, t_s - arrive[np.maximum(j, 0)], 0.0)
            ring = np.exp(-u / self.click_decay_s) * np.cos(2 * math.pi * self.click_hz * u)
            gain = self.click_level / max(d, 1.0)
            out[:, e] = np.where(ok & (u < 20 * self.click_decay_s), gain * ring, 0.0)
        return out

    def describe(self) -> dict[str, Any]:
        """The scene as plain data (session metadata)."""
        return {
            **super().describe(),
            "events_s": list(self.events_s),
            "clapper_m": list(self.clapper_m),
            "click": {
                "level": self.click_level,
                "hz": self.click_hz,
                "decay_s": self.click_decay_s,
            },
        }


def default_timing_scene(
    *, seed: int = 0, duration_s: float = 30.0, move_s: float = 0.5
) -> TimingScene:
    """The default scene: plate centre 4.8 m ahead of base_link (3.3 m before the cameras),
    1.25 m high, at y = +0.45 m and -0.35 m at the two stops; the first move starts at 1 s,
    holds are drawn uniformly in 0.7-1.3 s from ``seed``, the last move ends at least one
    second before ``duration_s``."""
    target = BoardTarget()
    poses = (
        board_pose((4.8, 0.45, 1.25), target, 8.0),
        board_pose((4.8, -0.35, 1.25), target, 8.0),
    )
    if duration_s < 2.0 + move_s:
        raise ValueError(
            f"a timing session needs at least {2.0 + move_s:g} s (the first move starts at 1 s "
            f"and the last ends 1 s before the end), got {duration_s:g} s"
        )
    rng = np.random.default_rng([seed, 0x71_41_E5])
    events: list[float] = []
    t = 1.0  # the first move starts here
    while t + move_s <= duration_s - 1.0:
        events.append(round(t + move_s / 2, 9))
        t += move_s + float(rng.uniform(0.7, 1.3))
    return TimingScene(target=target, poses=poses, events_s=tuple(events), move_s=move_s)


class _ClapperMicRenderer(MicRenderer):
    """The microphone renderer with the scene's clapper added to the world's sounds."""

    scene: TimingScene

    def render(self, objects: Any, t_s: np.ndarray, *, extra: Any = None) -> np.ndarray:
        return super().render(objects, t_s, extra=extra or self.scene.click)


class TimingMicSource(MicSource):
    """The microphone of the timing scene (16 kHz, 10 ms chunks, as the default rig)."""

    def __init__(self, params: SimParams, *, rig: RigCalibration, scene: TimingScene) -> None:
        super().__init__(params, rate_hz=16000, rig=rig)
        r = self.renderer
        self.renderer = _ClapperMicRenderer(
            self.cal,
            rate_hz=r.rate_hz,
            array=r.array,
            background_noise=r.background_noise,
            seed=r.seed,
        )
        self.renderer.scene = scene


def timing_sources(
    params: SimParams, scene: TimingScene, *, sensors: tuple[str, ...] = tuple(TOPICS)
) -> dict[str, Source]:
    """The sources of a timing session (keys as :data:`TOPICS`) at the rig's default rates."""
    unknown = set(sensors) - set(TOPICS)
    if unknown:
        raise ValueError(f"unknown sensors {sorted(unknown)}; expected some of {list(TOPICS)}")
    visual = tuple(s for s in sensors if s != "mic")
    out = calibration_sources(params, scene, sensors=visual) if visual else {}
    if "mic" in sensors:
        out["mic"] = TimingMicSource(params, rig=load_rig(params), scene=scene)
    return out


def generate_timing(
    path: str | Path,
    params: SimParams | None = None,
    *,
    scene: TimingScene | None = None,
    duration_s: float = 30.0,
    sensors: tuple[str, ...] = tuple(TOPICS),
) -> dict[str, int]:
    """Write a timing session (scenario ``timing``) of ``duration_s`` to ``path``: the sensors
    of ``sensors`` seeing (and hearing) the scene, rendered with the rig's ``time_offset_ns``;
    the rig attached; the scene, its events and the clapper's distance to the microphone in the
    ``timing_scene`` metadata. Returns messages per topic."""
    if duration_s <= 0:
        raise ValueError(f"duration must be > 0, got {duration_s}")
    params = replace(params or SimParams(), scenario="timing")
    scene = scene or default_timing_scene(seed=params.seed, duration_s=duration_s)
    rig = load_rig(params)
    sources = timing_sources(params, scene, sensors=sensors)
    described = {**scene.describe(), "sound_distance_m": scene.sound_distance_m(rig)}
    metadata: dict[str, dict[str, str]] = {
        **session_metadata(params, source="edgefuse sim timing", duration_s=duration_s),
        "timing_scene": {"json": json.dumps(described)},
    }
    seq: dict[str, int] = {}
    with session_writer(path, params, metadata) as out:
        for name, s in samples(sources, duration_s=duration_s):
            topic = TOPICS[name]
            n = seq.get(topic, 0)
            seq[topic] = n + 1
            out.write(topic, sample_header(topic, n, s), s.arrays)
        counts = dict(out.counts)
    return counts


@dataclass(frozen=True)
class TimingTruth:
    """What a timing session's metadata says: event instants and the clapper's distance."""

    events_s: tuple[float, ...]
    sound_distance_m: float
    extra: dict[str, Any] = field(default_factory=dict)


def timing_truth(meta: dict[str, dict[str, str]]) -> TimingTruth:
    """The known answers a generated timing session recorded in its metadata."""
    d = json.loads(meta["timing_scene"]["json"])
    return TimingTruth(tuple(d["events_s"]), float(d["sound_distance_m"]), d)
