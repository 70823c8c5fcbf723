"""Named scenarios: what the simulated world holds and how it is lit.

A scenario fixes the lighting, how often each class of object appears and where the traffic
goes; the seed fixes everything else. ``day`` and ``night`` share their traffic so a model can be
compared across lighting; ``busy`` is dense enough that objects hide each other; ``static``
places objects once and never moves them (geometry checks); ``calibration`` is an empty world
in which :mod:`edgefuse.sim.calib_scene` moves a chessboard through known poses; ``timing`` is
an empty world in which :mod:`edgefuse.sim.time_scene` snaps the board between two stops with a
clapper clicking at each stop (temporal calibration).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from edgefuse.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class Scenario:
    """The content and lighting of a simulated world."""

    name: str
    description: str
    lighting: Literal["day", "night"] = "day"
    #: Spawns per second, per class name.
    spawn_rate_hz: dict[str, float] = field(default_factory=dict)
    #: Objects placed once and never moving (``spawn_rate_hz`` unused).
    static: bool = False
    #: Half-length of the roads (m): objects enter and leave this far from the rig.
    region_half_m: float = 60.0
    #: Share of lane traffic crossing in front of the rig (the rest passes beside it).
    crossing_share: float = 0.6
    crossing_x_m: tuple[float, float] = (6.0, 45.0)
    walk_x_m: tuple[float, float] = (2.0, 30.0)
    walk_y_m: float = 15.0
    #: Background noise RMS at the microphone (wind, distant traffic), full scale = 1.
    background_noise: float = 0.004


_TRAFFIC = {"car": 0.12, "ev": 0.12, "pedestrian": 0.08, "cyclist": 0.05}

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            name="day",
            description="daylight traffic: cars, EVs, pedestrians, cyclists crossing and passing",
            spawn_rate_hz=_TRAFFIC,
        ),
        Scenario(
            name="night",
            description="the day traffic at night: the camera sees little beyond the rig's lamp",
            lighting="night",
            spawn_rate_hz=_TRAFFIC,
            background_noise=0.003,
        ),
        Scenario(
            name="busy",
            description="dense daylight traffic with many occlusions",
            spawn_rate_hz={k: 2.5 * v for k, v in _TRAFFIC.items()},
            background_noise=0.006,
        ),
        Scenario(
            name="static",
            description="objects standing still in front of the rig (geometry checks)",
            static=True,
        ),
        Scenario(
            name="calibration",
            description="a chessboard on a stand held in varied poses before camera, depth "
            "and lidar, nothing else (extrinsic calibration; edgefuse.sim.calib_scene)",
        ),
        Scenario(
            name="timing",
            description="the board snapping between two stops near the rig, a clapper clicking "
            "as it stops (time offsets; edgefuse.sim.time_scene)",
        ),
    )
}


def scenario(name: str) -> Scenario:
    """The scenario called ``name``; ``ConfigError`` listing the known ones."""
    try:
        return SCENARIOS[name]
    except KeyError:
        known = ", ".join(SCENARIOS)
        raise ConfigError(f"unknown scenario {name!r}; expected one of: {known}") from None
