"""The simulated world: deterministic, consistent over time, with the look-alike classes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from edgefuse.errors import ConfigError
from edgefuse.sim.scenarios import SCENARIOS, scenario
from edgefuse.sim.world import CLASS_BY_NAME, CLASSES, World


def _state(world: World, t: float) -> list[tuple[int, str, tuple[float, ...]]]:
    return [(o.object_id, o.cls.name, tuple(o.box(t))) for o in world.objects_at(t)]


def test_same_seed_same_world_whatever_the_query_order() -> None:
    a, b = World(scenario("day"), seed=5), World(scenario("day"), seed=5)
    # b is asked far ahead first: generation must not depend on the order of queries.
    late = _state(b, 120.0)
    assert _state(a, 3.0) == _state(b, 3.0)
    assert _state(a, 120.0) == late
    assert _state(World(scenario("day"), seed=6), 3.0) != _state(a, 3.0)


def test_world_is_busy_from_the_start_and_has_every_class() -> None:
    w = World(scenario("day"), seed=1)
    seen = set()
    for t in np.arange(0.0, 300.0, 5.0):
        objs = w.objects_at(float(t))
        assert objs, f"empty world at t={t}"
        seen |= {o.cls.name for o in objs}
    assert seen == {c.name for c in CLASSES}


def test_objects_move_continuously_along_their_paths() -> None:
    w = World(scenario("day"), seed=2)
    for o in w.objects_at(10.0):
        p0 = np.array(o.pose(10.0)[:2])
        p1 = np.array(o.pose(10.1)[:2])
        speed = np.linalg.norm(p1 - p0) / 0.1
        hi = o.cls.speed_mps[1]
        assert speed <= hi * 1.1 + 0.5, (o.cls.name, speed)


def test_objects_between_covers_objects_at() -> None:
    w = World(scenario("busy"), seed=3)
    between = {o.object_id for o in w.objects_between(20.0, 21.0)}
    for t in (20.0, 20.5, 20.99):
        assert {o.object_id for o in w.objects_at(t)} <= between


def test_forget_before_bounds_memory() -> None:
    w = World(scenario("busy"), seed=3)
    for t in range(0, 2000, 50):
        w.objects_at(float(t))
        w.forget_before(t - 10.0)
    assert len(w._objects) < 80


def test_car_and_ev_differ_only_by_sound() -> None:
    car, ev = CLASS_BY_NAME["car"], CLASS_BY_NAME["ev"]
    differ = {
        f.name for f in dataclasses.fields(car) if getattr(car, f.name) != getattr(ev, f.name)
    }
    assert differ == {"name", "class_id", "sound", "sound_level"}


def test_static_scenario_stands_still() -> None:
    w = World(scenario("static"), seed=0)
    assert _state(w, 0.0) == _state(w, 100.0)
    assert len(w.objects_at(0.0)) >= 4


def test_unknown_scenario_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown scenario 'dya'.*day, night"):
        scenario("dya")
    assert {"day", "night", "busy", "static"} <= set(SCENARIOS)
