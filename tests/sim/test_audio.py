"""The simulated microphone: propagation delay and spreading, exact chunking, class signatures.

Sources are placed directly (``WorldObject``s standing still at known places, or one crossing in
front of the rig) or taken from a scenario's world; every expectation is computed from the rig
calibration and the speed of sound, never read back from the renderer's internals.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgefuse.calib.model import SensorCalibration, load_calibration
from edgefuse.sim.audio import (
    MAX_DELAY_S,
    SOURCE_HEIGHT_M,
    SPEED_OF_SOUND_MPS,
    MicArray,
    MicRenderer,
    source_signal,
)
from edgefuse.sim.scenarios import scenario
from edgefuse.sim.world import CLASS_BY_NAME, Sound, World, WorldObject
from tests.conftest import REPO

RATE = 16000
_CLASS_OF = {"engine": "car", "ev_tones": "ev", "footsteps": "pedestrian", "freewheel": "cyclist"}


@pytest.fixture(scope="module")
def mic() -> SensorCalibration:
    return load_calibration(REPO / "calibration/sim_rig.yaml").sensor("mic")


def still(
    kind: str,
    x: float,
    y: float,
    *,
    level: float = 0.2,
    freq_hz: float | None = None,
    seed: int = 5,
    life: tuple[float, float] = (-math.inf, math.inf),
    object_id: int = 0,
) -> WorldObject:
    """An object of ``kind``'s class standing at ``(x, y)`` for ``life``."""
    default_freq = {"engine": 36.0, "ev_tones": 640.0, "footsteps": 1.9, "freewheel": 11.0}
    f = default_freq[kind] if freq_hz is None else freq_hz
    return WorldObject(
        object_id=object_id,
        cls=CLASS_BY_NAME[_CLASS_OF[kind]],
        size_m=(1.0, 1.0, 1.0),
        color_bgr=(0, 0, 0),
        t_enter_s=life[0],
        t_exit_s=life[1],
        times_s=np.array([0.0]),
        xy_m=np.array([[x, y, 0.0]]),
        sound=Sound(kind=kind, level=level, freq_hz=f, seed=seed),
    )


def times(t0: float, seconds: float) -> np.ndarray:
    return t0 + np.arange(round(seconds * RATE)) / RATE


def distance(obj: WorldObject, element: np.ndarray) -> float:
    x, y, _ = obj.pose(0.0)
    return float(np.linalg.norm(np.array([x, y, SOURCE_HEIGHT_M[obj.sound.kind]]) - element))


def xcorr_peak(a: np.ndarray, b: np.ndarray, max_lag: int) -> float:
    """The lag (samples, sub-sample by a parabola) by which ``a`` trails ``b``."""
    n = 1 << (2 * max(a.size, b.size) - 1).bit_length()
    c = np.fft.irfft(np.fft.rfft(a, n) * np.conj(np.fft.rfft(b, n)), n)
    c = np.concatenate([c[-max_lag:], c[: max_lag + 1]])  # lags -max_lag .. max_lag
    i = int(np.argmax(c))
    y0, y1, y2 = c[i - 1], c[i], c[i + 1]
    return float(i - max_lag + 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2))


def band_share(x: np.ndarray, lo: float, hi: float) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size))) ** 2
    f = np.fft.rfftfreq(x.size, 1 / RATE)
    return float(spec[(f >= lo) & (f < hi)].sum() / spec.sum())


def peak_hz(x: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.fft.rfftfreq(x.size, 1 / RATE)[np.argmax(spec)])


def test_mic_position_comes_from_the_calibration(mic: SensorCalibration) -> None:
    r = MicRenderer(mic, background_noise=0.0, seed=0)
    assert r.channels == 1
    np.testing.assert_allclose(r.element_positions_m, [[1.0, 0.3, 1.6]])
    r2 = MicRenderer(mic, channels=2, background_noise=0.0, seed=0)
    np.testing.assert_allclose(r2.element_positions_m, [[1.0, 0.325, 1.6], [1.0, 0.275, 1.6]])


def test_delay_matches_distance_and_amplitude_falls_as_one_over_d(
    mic: SensorCalibration,
) -> None:
    r = MicRenderer(mic, background_noise=0.0, seed=0)
    element = r.element_positions_m[0]
    t = times(3.0, 2.0)
    gains = []
    for x, y in ((11.0, -2.0), (31.0, 6.0)):
        # Footsteps: broadband and never repeating (clicks would correlate one click later too).
        obj = still("footsteps", x, y, level=0.5)
        d = distance(obj, element)
        received = r.render([obj], t)[:, 0].astype(np.float64)
        expected_lag = d / SPEED_OF_SOUND_MPS * RATE
        lag = xcorr_peak(received, source_signal(obj, t), max_lag=2000)
        assert abs(lag - expected_lag) < 1.0, (d, lag, expected_lag)
        # Least-squares gain of the received signal on the source delayed by exactly d / c.
        s = source_signal(obj, t - d / SPEED_OF_SOUND_MPS)
        gain = float(received @ s / (s @ s)) / 32767
        assert gain == pytest.approx(0.5 / d, rel=0.01)
        gains.append((d, gain))
    (d1, g1), (d2, g2) = gains
    assert g1 / g2 == pytest.approx(d2 / d1, rel=0.02)


@pytest.mark.parametrize(
    ("start", "end", "t_mid"),
    [
        # Crossing 6 m in front of the rig at 13 m/s, around the closest approach.
        ((7.0, -60.0), (7.0, 60.0), 60 / 13),
        # Heading at the rig along a lane 4 m to its left, 40 m out: mostly radial motion.
        ((60.0, 4.3), (-60.0, 4.3), 20 / 13),
    ],
)
def test_moving_source_matches_the_exact_emission_time(
    mic: SensorCalibration,
    start: tuple[float, float],
    end: tuple[float, float],
    t_mid: float,
) -> None:
    car = WorldObject(
        object_id=1,
        cls=CLASS_BY_NAME["car"],
        size_m=(4.5, 1.8, 1.5),
        color_bgr=(0, 0, 0),
        t_enter_s=0.0,
        t_exit_s=120 / 13,
        times_s=np.array([0.0, 120 / 13]),
        xy_m=np.array([start, end]),
        sound=Sound(kind="engine", level=1.0, freq_hz=40.0, seed=9),
    )
    r = MicRenderer(mic, background_noise=0.0, seed=0)
    element = r.element_positions_m[0]
    t = times(t_mid - 0.1, 0.2)
    got = r.render([car], t)[:, 0].astype(np.float64)
    tau = t.copy()
    for _ in range(6):  # iterate tau = t - d(tau) / c to convergence, pose by pose
        p = np.array([(*car.pose(float(v))[:2], SOURCE_HEIGHT_M["engine"]) for v in tau])
        d = np.linalg.norm(p - element, axis=1)
        tau = t - d / SPEED_OF_SOUND_MPS
    want = 1.0 / d * source_signal(car, tau) * 32767
    assert np.abs(want).max() > 1000
    assert np.abs(got - want).max() < 0.01 * np.abs(want).max()


@pytest.mark.parametrize(
    ("name", "t0"),
    [("day", 100.0), ("static", 86400.25)],  # static: a day into the run, sources never entered
)
def test_chunking_does_not_change_a_sample(mic: SensorCalibration, name: str, t0: float) -> None:
    world = World(scenario(name), seed=3)
    # A drifting, slightly jittery sample clock, as the caller's would be.
    n = np.arange(6400)
    t = t0 + n / (RATE * (1 + 37e-6)) + 2e-7 * np.sin(n / 900)

    def objects(ts: np.ndarray) -> list[WorldObject]:
        return world.objects_between(float(ts[0]) - MAX_DELAY_S, float(ts[-1]))

    whole = MicRenderer(mic, background_noise=0.004, seed=11).render(objects(t), t)
    chunked = MicRenderer(mic, background_noise=0.004, seed=11)
    first = chunked.render(objects(t[:160]), t[:160])
    second = chunked.render(objects(t[160:320]), t[160:320])
    assert np.array_equal(np.concatenate([first, second]), whole[:320])
    parts, i = [], 0
    for size in [1, 97, 160, 333, 2, 1000, 160, 4000]:
        parts.append(chunked.render(objects(t[i : i + size]), t[i : i + size]))
        i += size
    parts.append(chunked.render(objects(t[i:]), t[i:]))
    assert np.array_equal(np.concatenate(parts), whole)
    # And it is not just background: the scene's sources are in it.
    quiet = MicRenderer(mic, background_noise=0.004, seed=11).render([], t)
    assert np.sqrt(np.mean((whole.astype(float) - quiet) ** 2)) > 50


def test_same_seed_same_samples_other_seed_other_background(mic: SensorCalibration) -> None:
    world = World(scenario("day"), seed=4)
    t = times(50.0, 0.5)
    objs = world.objects_between(t[0] - MAX_DELAY_S, t[-1])
    a = MicRenderer(mic, background_noise=0.004, seed=1).render(objs, t)
    b = MicRenderer(mic, background_noise=0.004, seed=1).render(objs, t)
    assert np.array_equal(a, b)
    t = times(20.0, 4.0)
    bg1 = MicRenderer(mic, background_noise=0.004, seed=1).render([], t)[:, 0].astype(float)
    bg2 = MicRenderer(mic, background_noise=0.004, seed=2).render([], t)[:, 0].astype(float)
    assert not np.array_equal(bg1, bg2)
    assert abs(np.corrcoef(bg1, bg2)[0, 1]) < 0.3
    for bg in (bg1, bg2):
        assert 0.6 * 0.004 * 32767 < bg.std() < 1.5 * 0.004 * 32767


@pytest.mark.parametrize("freq", [28.0, 36.0, 45.0])
def test_engine_energy_is_below_400_hz(mic: SensorCalibration, freq: float) -> None:
    r = MicRenderer(mic, background_noise=0.0, seed=0)
    x = r.render([still("engine", 6.0, 2.0, freq_hz=freq)], times(5.0, 2.0))[:, 0]
    assert band_share(x.astype(float), 0, 400) > 0.9


@pytest.mark.parametrize("freq", [550.0, 640.0, 750.0])
def test_ev_tones_peak_at_their_frequency(mic: SensorCalibration, freq: float) -> None:
    r = MicRenderer(mic, background_noise=0.0, seed=0)
    x = r.render([still("ev_tones", 6.0, 2.0, freq_hz=freq)], times(5.0, 2.0))[:, 0]
    assert abs(peak_hz(x.astype(float)) - freq) <= 5
    assert band_share(x.astype(float), 0, 400) < 0.1


def test_cars_and_evs_of_a_world_are_told_apart_by_sound() -> None:
    world = World(scenario("day"), seed=8)
    objs = world.objects_between(0.0, 300.0)
    cars = [o for o in objs if o.cls.name == "car"][:6]
    evs = [o for o in objs if o.cls.name == "ev"][:6]
    assert len(cars) == 6 and len(evs) == 6
    for o in cars + evs:
        s = source_signal(o, o.t_enter_s + 1.0 + np.arange(2 * RATE) / RATE)
        if o.cls.name == "car":
            assert band_share(s, 0, 400) > 0.9
        else:
            assert abs(peak_hz(s) - o.sound.freq_hz) <= 5
            assert band_share(s, 550, 1200) > 0.8


@pytest.mark.parametrize("kind", ["engine", "ev_tones", "footsteps", "freewheel"])
def test_level_is_the_amplitude_of_an_equally_loud_tone(kind: str) -> None:
    s = source_signal(still(kind, 5.0, 0.0), times(7.0, 4.0))
    assert np.isfinite(s).all()
    assert np.sqrt(np.mean(s**2)) == pytest.approx(1 / math.sqrt(2), rel=0.15)


def test_no_sound_from_outside_the_objects_life(mic: SensorCalibration) -> None:
    r = MicRenderer(mic, background_noise=0.0, seed=0)
    obj = still("engine", 30.0, 3.0, life=(10.0, 11.0))
    delay = distance(obj, r.element_positions_m[0]) / SPEED_OF_SOUND_MPS
    t = times(9.7, 1.6)
    x = r.render([obj], t)[:, 0]
    assert not x[t < 10.0 + delay].any()
    assert not x[t >= 11.0 + delay].any()
    assert x[(t > 10.1 + delay) & (t < 10.9 + delay)].std() > 30
    # Sound in flight when the object left still arrives.
    assert x[(t > 11.0) & (t < 11.0 + delay - 0.03)].std() > 30
    # An object gone long before the chunk, or too far away, is silent.
    assert not r.render([still("engine", 5.0, 0.0, life=(0.0, 5.0))], t).any()
    assert not r.render([still("engine", 200.0, 0.0)], t).any()


def test_two_element_array_delay_matches_geometry(mic: SensorCalibration) -> None:
    array = MicArray(offsets_m=((0.0, 0.1, 0.0), (0.0, -0.1, 0.0)))
    r = MicRenderer(mic, array=array, background_noise=0.0, seed=0)
    assert r.channels == 2
    obj = still("freewheel", 4.0, 9.0, level=0.5)  # ahead and to the left
    d0, d1 = (distance(obj, e) for e in r.element_positions_m)
    x = r.render([obj], times(2.0, 1.0)).astype(np.float64)
    lag = xcorr_peak(x[:, 1], x[:, 0], max_lag=40)
    expected = (d1 - d0) / SPEED_OF_SOUND_MPS * RATE
    assert expected > 5  # the left element hears it first
    assert abs(lag - expected) < 0.5


def test_loud_sources_saturate_without_wrapping(mic: SensorCalibration) -> None:
    t = times(1.0, 0.5)
    r = MicRenderer(mic, background_noise=0.0, seed=0)
    loud = r.render([still("engine", 1.0, 0.3, level=20.0)], t)[:, 0]
    quiet = r.render([still("engine", 1.0, 0.3, level=0.02)], t)[:, 0]
    assert loud.dtype == np.int16 and loud.max() == 32767 and loud.min() == -32768
    clear = np.abs(quiet) > 3
    assert np.array_equal(np.sign(loud[clear]), np.sign(quiet[clear]))


def test_bad_configuration_is_refused(mic: SensorCalibration) -> None:
    with pytest.raises(ValueError, match="offsets_m"):
        MicArray(offsets_m=())
    with pytest.raises(ValueError, match="channels"):
        MicRenderer(mic, channels=3, array=MicArray(), background_noise=0.0, seed=0)
    with pytest.raises(ValueError, match="background_noise"):
        MicRenderer(mic, background_noise=-1.0, seed=0)
    r = MicRenderer(mic, background_noise=0.0, seed=0)
    assert r.render([], np.zeros(0)).shape == (0, 1)
