"""The simulated microphone: point sources heard with their propagation delay, plus background.

Every object is a point source at its ground-centre pose, raised to a height typical of its
class (an engine or an EV's speaker ~0.4 m, footsteps at the ground, a freewheel at the hub).
The pressure at array element ``e`` and sample time ``t`` is

    p_e(t) = sum over objects of  level / max(d, 1 m) * s_obj(tau),   tau = t - d(tau) / c

with ``d`` the distance from the source at the emission time ``tau`` to the element. ``tau`` is
found by fixed-point steps from ``d(t)``; each shrinks the error by v/c < 0.06 and two leave
< 0.2 sample. The Doppler shift of a passing car comes out of this for free. A source contributes
only while its object is alive at ``tau`` (a 20 ms ramp at both ends, so entries and exits do not
click), so a sound in flight when its object leaves the world still arrives. Objects beyond
:data:`MAX_AUDIBLE_M` are silent (faded out over the last 30 m).

Delay and gain are computed per object on a fixed 10 ms grid of reception times and interpolated
linearly in between (the delay's curvature is tiny: < 0.05 sample of error for a car passing 3 m
away), from positions on a fixed 50 ms grid of emission times plus the path's waypoints
(``WorldObject.pose`` costs ~30 µs, too much to call per sample; paths are linear between
waypoints, so this is exact but for a cyclist's sway). Both grids are global, every source
signal ``s_obj`` is a pure function of the object's sound parameters and ``tau`` (analytic
sinusoids, wavetables and seeded noise tables read at ``tau``) and the background a pure function
of the sample time: so the samples do not depend on how the caller cuts the stream into chunks,
nor on the process that renders them.

Signatures (``Sound.kind``), each normalised to the power of a unit sinusoid (RMS 1/sqrt 2), so
``level`` is the amplitude at 1 m of an equally loud tone:

- ``engine``: the firing frequency and its harmonics with half-orders, rolling off to 600 Hz,
  with a slow RPM wander, plus low-passed rumble: nearly all energy below 400 Hz.
- ``ev_tones``: an acoustic vehicle alerting system: tones at ``freq_hz`` and 1.5 x ``freq_hz``
  (550-1125 Hz), slowly amplitude-modulated, plus faint tyre noise.
- ``footsteps``: band-passed scuff bursts at ``freq_hz`` steps per second, alternate feet louder.
- ``freewheel``: ratchet clicks at ``freq_hz`` per second (decaying 3-4.5 kHz transients) plus
  faint chain noise.

The background (wind: brown-ish; distant traffic: pink-ish, 40 Hz-1.5 kHz) comes from two long
seeded tables of coprime lengths indexed by the rounded sample time, so it repeats only after
months. Channels read it at different offsets: capsule self-noise and wind turbulence at each
capsule are independent, and independent background does not bias a time-difference estimate.
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from edgefuse.calib.model import SensorCalibration
from edgefuse.sim.world import Sound, WorldObject

SPEED_OF_SOUND_MPS = 343.0
#: Sources farther than this are not rendered (faded out over the last 30 m).
MAX_AUDIBLE_M = 150.0
#: The longest propagation delay: the caller asks the world for objects from ``t0 - MAX_DELAY_S``.
MAX_DELAY_S = MAX_AUDIBLE_M / SPEED_OF_SOUND_MPS
FULL_SCALE = 32767
#: Height (m) of each kind of source above its object's ground centre.
SOURCE_HEIGHT_M = {"engine": 0.4, "ev_tones": 0.4, "footsteps": 0.05, "freewheel": 0.5}

_FADE_FROM_M = 120.0
_RAMP_S = 0.02
_KNOT_RATE_HZ = 100.0  # reception-time grid of delays and gains
_PATH_RATE_HZ = 20.0  # emission-time grid of source positions
_UNIT_RMS = 1.0 / math.sqrt(2.0)
# Fixed seeds of the per-kind noise tables: sources must sound the same in every process.
_TABLE_SEEDS = {"rumble": 11, "tyre": 12, "scuff": 13, "chain": 14}
# Share of each signature's power (as amplitudes) in its tonal/impulsive part and its noise.
_MIX = {"engine": (0.85, 0.5), "ev_tones": (1.0, 0.15), "freewheel": (0.95, 0.3)}
_NOISE_OF = {"engine": "rumble", "ev_tones": "tyre", "footsteps": "scuff", "freewheel": "chain"}


def _weights(kind: str) -> tuple[float, float]:
    """Amplitudes of a signature's two independent unit-RMS parts, together unit-sine power."""
    a, b = _MIX[kind]
    return _UNIT_RMS * a / math.hypot(a, b), _UNIT_RMS * b / math.hypot(a, b)


# Scuff noise is multiplied by the step envelope, which carries the footsteps' normalisation.
_NOISE_WEIGHT = {
    "rumble": _weights("engine")[1],
    "tyre": _weights("ev_tones")[1],
    "scuff": 1.0,
    "chain": _weights("freewheel")[1],
}
_WIND_LEN = 2**19
_TRAFFIC_LEN = 3**12  # coprime with _WIND_LEN: the sum repeats after their product


@dataclass(frozen=True, kw_only=True)
class MicArray:
    """Microphone element positions (m) in the ``mic`` frame; one channel per element."""

    offsets_m: tuple[tuple[float, float, float], ...] = ((0.0, 0.0, 0.0),)

    def __post_init__(self) -> None:
        if not self.offsets_m or any(len(o) != 3 for o in self.offsets_m):
            raise ValueError(f"offsets_m must be one or more (x, y, z), got {self.offsets_m}")

    @property
    def channels(self) -> int:
        """The number of elements, hence of output channels."""
        return len(self.offsets_m)

    @classmethod
    def linear(cls, channels: int, spacing_m: float = 0.05) -> MicArray:
        """``channels`` elements along the mic frame's y axis, ``spacing_m`` apart, centred;
        channel 0 leftmost (+y), as in a stereo pair."""
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        mid = (channels - 1) / 2
        return cls(offsets_m=tuple((0.0, (mid - i) * spacing_m, 0.0) for i in range(channels)))


# --- noise tables ------------------------------------------------------------------------------
def _lowpass(f: np.ndarray, fc: float, order: int) -> np.ndarray:
    return np.asarray(1.0 / np.sqrt(1.0 + (f / fc) ** (2 * order)))


def _highpass(f: np.ndarray, fc: float, order: int) -> np.ndarray:
    r = (f / fc) ** order
    return np.asarray(r / np.sqrt(1.0 + r * r))


def _shaped_noise(
    seed: Sequence[int],
    n: int,
    rate_hz: float,
    shape: Callable[[np.ndarray], np.ndarray],
    limit_hz: float,
) -> np.ndarray:
    """Seeded Gaussian noise of length ``n`` with amplitude spectrum ``shape``, RMS 1, periodic.

    Shaping by FFT makes the table circular, so reading it in a loop has no seam; nothing above
    ``limit_hz`` survives, so reading it at a lower rate does not alias.
    """
    spec = np.fft.rfft(np.random.default_rng(list(seed)).standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / rate_hz)
    spec *= shape(np.maximum(f, 1e-3)) * (f < limit_hz)
    x = np.fft.irfft(spec, n)
    return np.asarray(x / math.sqrt(float(np.mean(x * x))))


@dataclass(frozen=True)
class _Table:
    """A periodic table of power-of-two length, with each sample's slope to the next (wrapping)."""

    values: np.ndarray
    slopes: np.ndarray
    mask: int

    @classmethod
    def of(cls, x: np.ndarray) -> _Table:
        """The table of one period ``x`` (its length a power of two)."""
        n = x.shape[0]
        if n & (n - 1):
            raise ValueError(f"table length {n} is not a power of two")
        return cls(x, np.roll(x, -1) - x, n - 1)

    def read(self, pos: np.ndarray) -> np.ndarray:
        """Linear read at fractional sample positions ``pos`` (any real, wrapped)."""
        # floor + bit mask instead of np.remainder: half the cost, and reads are most of a chunk.
        fl = np.floor(pos)
        i = fl.astype(np.int64)
        i &= self.mask
        f: np.ndarray = pos - fl
        f *= self.slopes.take(i)
        f += self.values.take(i)
        return f


@functools.cache
def _kind_table(name: str, rate_hz: int) -> tuple[_Table, float]:
    """A noise table shared by all sources of a kind (each reads it at its own offset and speed).

    Returns the table (its weight in the signature folded in) and its sample rate. Broadband
    tables run at twice the output rate so linear reads stay flat to well past the bands used;
    the rumble needs only 4 kHz.
    """
    top = 0.45 * rate_hz
    seed = (_TABLE_SEEDS[name], rate_hz)
    if name == "rumble":
        shape = lambda f: _highpass(f, 25.0, 2) * _lowpass(f, 160.0, 3)  # noqa: E731
        x = _shaped_noise(seed, 2**15, 4000.0, shape, min(top, 1000.0))
        return _Table.of(x * _NOISE_WEIGHT[name]), 4000.0
    fs = 2.0 * rate_hz
    shapes: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        # Tyre/road noise peaks around 1 kHz.
        "tyre": lambda f: _highpass(f, 400.0, 2) * _lowpass(f, 1500.0, 2),
        # A shoe on asphalt: a dull thud and a brighter scuff.
        "scuff": lambda f: _highpass(f, 150.0, 2) * _lowpass(f, 2500.0, 2),
        "chain": lambda f: _highpass(f, 900.0, 2) * _lowpass(f, 5000.0, 2),
    }
    x = _shaped_noise(seed, 2**17, fs, shapes[name], top)
    return _Table.of(x * _NOISE_WEIGHT[name]), fs


@dataclass(frozen=True)
class _Noise:
    """A source's view of a shared noise table: its own speed and offset."""

    table: _Table
    scale: float
    offset: float

    @classmethod
    def draw(
        cls, rng: np.random.Generator, kind: str, rate_hz: int, speed: tuple[float, float]
    ) -> _Noise:
        """Draw the speed (size of the engine, brightness of the tyres) and offset from ``rng``."""
        table, fs = _kind_table(_NOISE_OF[kind], rate_hz)
        return cls(table, fs * float(rng.uniform(*speed)), float(rng.uniform(0.0, table.mask + 1)))

    def __call__(self, tau: np.ndarray) -> np.ndarray:
        pos = tau * self.scale
        pos += self.offset
        return self.table.read(pos)


# --- sources -----------------------------------------------------------------------------------
class _Source:
    """A source signal ``s(tau_rel)``: unit-power, a pure function of its parameters and time."""

    def __call__(self, tau: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def _harmonic_table(amp: np.ndarray, phase: np.ndarray, rms: float, n: int = 4096) -> _Table:
    """One period of ``sum_m amp[m] cos(2 pi (m + 1) x + phase[m])``, ``n`` points, RMS ``rms``."""
    spec = np.zeros(n // 2 + 1, complex)
    spec[1 : amp.size + 1] = amp * np.exp(1j * phase)
    x = np.fft.irfft(spec, n)
    return _Table.of(x * (rms / math.sqrt(float(np.mean(x * x)))))


class _Engine(_Source):
    def __init__(self, sound: Sound, rng: np.random.Generator, rate_hz: int) -> None:
        f0 = sound.freq_hz
        # Orders in half-multiples of the firing frequency (a four-stroke cycle spans two
        # firings): firing harmonics dominate, half-orders from cylinder imbalance are weaker.
        m = np.arange(1, int(min(600.0, 0.45 * rate_hz) // (f0 / 2)) + 1)
        f = m * f0 / 2
        amp = np.where(m % 2 == 0, 1.0, 0.3) / np.sqrt(np.maximum(m / 2, 1.0))
        # Exhaust and body radiate little below ~30 Hz; the tail falls off towards 600 Hz.
        amp *= _highpass(f, 30.0, 2) * _lowpass(f, 250.0, 2)
        amp *= rng.uniform(0.6, 1.4, m.size)
        self.table = _harmonic_table(amp, rng.uniform(0, 2 * np.pi, m.size), _weights("engine")[0])
        self.per_s = f0 / 2 * (self.table.mask + 1)
        # RPM wander: +-1..3 % at a fraction of a hertz (phase = integral of the frequency).
        self.wander_w = 2 * math.pi * float(rng.uniform(0.15, 0.5))
        self.wander_ph = float(rng.uniform(0, 2 * math.pi))
        self.wander = self.per_s * float(rng.uniform(0.01, 0.03)) / self.wander_w
        self.rumble = _Noise.draw(rng, "engine", rate_hz, (0.8, 1.25))

    def __call__(self, tau: np.ndarray) -> np.ndarray:
        w = tau * self.wander_w
        w += self.wander_ph
        pos = np.sin(w, out=w)
        pos *= self.wander
        pos += tau * self.per_s
        out = self.table.read(pos)
        out += self.rumble(tau)
        return out


class _EvTones(_Source):
    def __init__(self, sound: Sound, rng: np.random.Generator, rate_hz: int) -> None:
        self.am_depth = float(rng.uniform(0.2, 0.35))
        # The modulation adds depth^2 / 2 to the tones' power.
        wt = _weights("ev_tones")[0] / math.sqrt(1 + self.am_depth**2 / 2)
        # Table period = two periods of f: harmonic 2 is f, 3 is 1.5 f, 4 a faint 2 f from the
        # small speaker's distortion.
        amp = np.array([0.0, 1.0, float(rng.uniform(0.35, 0.6)), 0.08])
        self.table = _harmonic_table(amp, rng.uniform(0, 2 * np.pi, 4), wt)
        self.per_s = sound.freq_hz / 2 * (self.table.mask + 1)
        self.am_w = 2 * math.pi * float(rng.uniform(1.0, 3.0))
        self.am_ph = float(rng.uniform(0, 2 * math.pi))
        self.tyre = _Noise.draw(rng, "ev_tones", rate_hz, (0.85, 1.15))

    def __call__(self, tau: np.ndarray) -> np.ndarray:
        am = tau * self.am_w
        am += self.am_ph
        np.sin(am, out=am)
        am *= self.am_depth
        am += 1.0
        am *= self.table.read(tau * self.per_s)
        am += self.tyre(tau)
        return am


def _burst_norm(rate: float, env: Callable[[np.ndarray], np.ndarray], amps: np.ndarray) -> float:
    """The gain that gives bursts of envelope ``env`` repeating at ``rate`` Hz unit-sine power."""
    u = (np.arange(4096) + 0.5) / 4096 / rate
    return _UNIT_RMS / math.sqrt(float(np.mean(env(u) ** 2) * np.mean(amps**2)))


def _event_phase(tau: np.ndarray, rate: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """For periodic events at ``rate`` Hz: the fraction of the period elapsed at ``tau`` and
    which of ``n`` (a power of two) cycling events it belongs to."""
    events = tau * rate
    k = np.floor(events)
    i = k.astype(np.int64)
    i &= n - 1
    events -= k
    return events, i


class _Footsteps(_Source):
    def __init__(self, sound: Sound, rng: np.random.Generator, rate_hz: int) -> None:
        self.rate = sound.freq_hz
        # Eight steps of per-step variety; even steps (one foot) louder than odd ones.
        amps = np.where(np.arange(8) % 2 == 0, 1.0, float(rng.uniform(0.55, 0.75)))
        amps = amps * rng.uniform(0.85, 1.15, 8)
        attack, decay = float(rng.uniform(0.002, 0.004)), float(rng.uniform(0.025, 0.045))
        # The envelope exp(-u/decay) (1 - exp(-u/attack)) with u = fraction of a step / rate.
        self.c1 = -1.0 / (decay * self.rate)
        self.c2 = self.c1 - 1.0 / (attack * self.rate)
        self.scuff = _Noise.draw(rng, "footsteps", rate_hz, (0.8, 1.25))
        self.amps = amps * _burst_norm(self.rate, lambda u: self._env(u * self.rate), amps)

    def _env(self, frac: np.ndarray) -> np.ndarray:
        return np.asarray(np.exp(frac * self.c1) - np.exp(frac * self.c2))

    def __call__(self, tau: np.ndarray) -> np.ndarray:
        steps, i = _event_phase(tau, self.rate, 8)
        out = self._env(steps)
        out *= self.amps.take(i)
        out *= self.scuff(tau)
        return out


class _Freewheel(_Source):
    def __init__(self, sound: Sound, rng: np.random.Generator, rate_hz: int) -> None:
        self.rate = sound.freq_hz
        ring_hz = min(float(rng.uniform(3000.0, 4500.0)), 0.35 * rate_hz)
        decay = float(rng.uniform(0.001, 0.002))
        # A click exp(-u/decay) sin(2 pi ring u), u = fraction of a click period / rate.
        self.c_decay = -1.0 / (decay * self.rate)
        self.c_ring = 2 * math.pi * ring_hz / self.rate
        amps = rng.uniform(0.7, 1.0, 4)  # four pawls, each its own click
        norm = _burst_norm(self.rate, lambda u: self._click(u * self.rate), amps)
        self.amps = amps * (norm * _weights("freewheel")[0] / _UNIT_RMS)
        self.chain = _Noise.draw(rng, "freewheel", rate_hz, (0.9, 1.1))

    def _click(self, frac: np.ndarray) -> np.ndarray:
        return np.asarray(np.exp(frac * self.c_decay) * np.sin(frac * self.c_ring))

    def __call__(self, tau: np.ndarray) -> np.ndarray:
        clicks, i = _event_phase(tau, self.rate, 4)
        out = self._click(clicks)
        out *= self.amps.take(i)
        out += self.chain(tau)
        return out


_SOURCES: dict[str, Callable[[Sound, np.random.Generator, int], _Source]] = {
    "engine": _Engine,
    "ev_tones": _EvTones,
    "footsteps": _Footsteps,
    "freewheel": _Freewheel,
}


@functools.lru_cache(maxsize=64)  # ~64 KB each; more than are ever audible at once
def _source(sound: Sound, rate_hz: int) -> _Source:
    try:
        make = _SOURCES[sound.kind]
    except KeyError:
        raise ValueError(
            f"unknown sound kind {sound.kind!r}; expected one of: {', '.join(_SOURCES)}"
        ) from None
    return make(sound, np.random.default_rng([sound.seed, 0xA0D10]), rate_hz)


def _time_ref(obj: WorldObject) -> float:
    # Source time counts from the object's entry so phases stay precise over hours of world time.
    return obj.t_enter_s if math.isfinite(obj.t_enter_s) else 0.0


def source_signal(obj: WorldObject, tau_s: np.ndarray, *, rate_hz: int = 16000) -> np.ndarray:
    """The unit-level signal ``s_obj`` that ``obj`` emits at world times ``tau_s`` (float64).

    This is what :class:`MicRenderer` delays and scales (by ``level / max(d, 1 m)``); it ignores
    whether the object is alive. Same shape as ``tau_s``.
    """
    tau = np.asarray(tau_s, np.float64)
    return _source(obj.sound, rate_hz)(tau - _time_ref(obj))


# --- propagation -------------------------------------------------------------------------------
class _Track:
    """One object as heard by the array: its source and its cached path and delay/gain knots."""

    def __init__(self, obj: WorldObject, elements: np.ndarray, rate_hz: int) -> None:
        self.obj = obj
        self.source = _source(obj.sound, rate_hz)
        self.t_ref = _time_ref(obj)
        h = SOURCE_HEIGHT_M[obj.sound.kind]
        # Element positions relative to the source height: (x, y, dz^2).
        self._elements = [(float(x), float(y), (h - float(z)) ** 2) for x, y, z in elements]
        self._path: dict[int, tuple[float, float]] = {}
        self._waypoints = [float(v) for v in obj.times_s]
        self._waypoint_pos: dict[int, tuple[float, float]] = {}
        self._knots: dict[int, tuple[list[float], list[float]]] = {}
        self._static: tuple[list[float], list[float]] | None = None
        if len(obj.times_s) == 1:
            x, y, _ = obj.pose(0.0)
            self._static = self._knot(0.0, lambda _t: (x, y))

    def _position(self, t: float) -> tuple[float, float]:
        # Linear between cached poses on a 50 ms grid, with the waypoints (corners, entry and
        # exit) as extra breakpoints: exact on the piecewise-linear paths, < 1 mm off on a
        # cyclist's sway.
        u = t * _PATH_RATE_HZ
        j = math.floor(u)
        path = self._path
        p0, p1 = path.get(j), path.get(j + 1)
        if p0 is None or p1 is None:
            if len(path) > 256:  # keep ~2 s behind the newest grid point
                self._path = path = {i: q for i, q in path.items() if i >= j - 40}
            if p0 is None:
                p0 = path[j] = self.obj.pose(j / _PATH_RATE_HZ)[:2]
            if p1 is None:
                p1 = path[j + 1] = self.obj.pose((j + 1) / _PATH_RATE_HZ)[:2]
        t0, t1 = j / _PATH_RATE_HZ, (j + 1) / _PATH_RATE_HZ
        wp = self._waypoints
        lo, hi = bisect.bisect_right(wp, t0), bisect.bisect_left(wp, t1)
        if lo < hi:  # a waypoint inside this cell: interpolate between the breakpoints around t
            i = bisect.bisect_right(wp, t, lo, hi)
            if i > lo:
                t0, p0 = wp[i - 1], self._waypoint(i - 1)
            if i < hi:
                t1, p1 = wp[i], self._waypoint(i)
            a = (t - t0) / (t1 - t0)
        else:
            a = u - j
        return p0[0] + a * (p1[0] - p0[0]), p0[1] + a * (p1[1] - p0[1])

    def _waypoint(self, i: int) -> tuple[float, float]:
        p = self._waypoint_pos.get(i)
        if p is None:
            p = self._waypoint_pos[i] = self.obj.pose(self._waypoints[i])[:2]
        return p

    def _knot(
        self, g: float, position: Callable[[float], tuple[float, float]]
    ) -> tuple[list[float], list[float]]:
        """Delay and gain per element of the sound heard at reception time ``g``."""
        delays, gains = [], []
        level = self.obj.sound.level
        x, y = position(g)
        for ex, ey, dz2 in self._elements:
            d = math.sqrt((x - ex) ** 2 + (y - ey) ** 2 + dz2)
            # Where the source was when the sound heard at g left it: each fixed-point step
            # shrinks the error by v/c < 0.06, and a second one (cheap, per knot) takes a car
            # heading at the rig from 60 m from ~4 samples off to < 0.2.
            for _ in range(2):
                xs, ys = position(g - d / SPEED_OF_SOUND_MPS)
                d = math.sqrt((xs - ex) ** 2 + (ys - ey) ** 2 + dz2)
            fade = min(1.0, max(0.0, (MAX_AUDIBLE_M - d) / (MAX_AUDIBLE_M - _FADE_FROM_M)))
            delays.append(d / SPEED_OF_SOUND_MPS)
            gains.append(level * fade / max(d, 1.0))
        return delays, gains

    def knots(self, k_lo: int, count: int) -> list[tuple[list[float], list[float]]]:
        """Delays and gains per element at reception times ``k / 100 s``, ``k_lo <= k < +count``."""
        if self._static is not None:
            return [self._static] * count
        cache = self._knots
        out = []
        for k in range(k_lo, k_lo + count):
            kn = cache.get(k)
            if kn is None:
                kn = cache[k] = self._knot(k / _KNOT_RATE_HZ, self._position)
            out.append(kn)
        if len(cache) > 2 * count + 8:
            self._knots = {k: v for k, v in cache.items() if k >= k_lo}
        return out


class MicRenderer:
    """Renders the microphone (array) of a calibrated rig: sources, propagation and background."""

    def __init__(
        self,
        cal: SensorCalibration,
        *,
        rate_hz: int = 16000,
        channels: int = 1,
        array: MicArray | None = None,
        background_noise: float,
        seed: int,
    ) -> None:
        """A renderer for the mic at ``cal``'s pose: ``array`` (default: ``channels`` elements
        5 cm apart along the mic's y axis) gives the element offsets, ``background_noise`` the
        background RMS (full scale 1) and ``seed`` the background's noise."""
        if rate_hz < 1000:
            raise ValueError(f"rate_hz must be >= 1000, got {rate_hz}")
        if background_noise < 0:
            raise ValueError(f"background_noise must be >= 0, got {background_noise}")
        if array is None:
            array = MicArray.linear(channels)
        elif channels not in (1, array.channels):
            raise ValueError(f"channels={channels} but the array has {array.channels} elements")
        self.cal = cal
        self.rate_hz = rate_hz
        self.array = array
        self.channels = array.channels
        self.background_noise = background_noise
        self.seed = seed
        T = cal.T
        #: Element positions in ``base_link``, (channels, 3).
        self.element_positions_m = np.asarray(np.array(array.offsets_m) @ T[:3, :3].T + T[:3, 3])
        self._tracks: dict[int, _Track] = {}  # by id() of the object
        self._wind = self._traffic = np.zeros(0)
        if background_noise > 0:
            top = 0.45 * rate_hz
            wind = _shaped_noise(
                (seed, 0xB1D),
                _WIND_LEN,
                rate_hz,
                lambda f: _highpass(f, 15.0, 2) / f * _lowpass(f, 2000.0, 1),
                top,
            )
            traffic = _shaped_noise(
                (seed, 0x7AF),
                _TRAFFIC_LEN,
                rate_hz,
                lambda f: _highpass(f, 40.0, 2) / np.sqrt(f) * _lowpass(f, 1500.0, 2),
                top,
            )
            # Weights folded in: wind and traffic independent, together RMS background_noise.
            self._wind = wind * (0.8 * background_noise)
            self._traffic = traffic * (0.6 * background_noise)
        # Channel e reads the tables e * 1000003 samples on (independent backgrounds).
        self._bg_offsets = np.arange(self.channels, dtype=np.int64) * 1_000_003
        for name in _TABLE_SEEDS:  # build the shared tables now, not in the first chunk
            _kind_table(name, rate_hz)

    def render(
        self,
        objects: Sequence[WorldObject],
        t_s: np.ndarray,
        *,
        extra: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    ) -> np.ndarray:
        """Samples ``(n, channels)`` int16 (full scale 32767, clipped) at world times ``t_s`` (n,).

        ``objects`` must hold every object that may be audible in the chunk, e.g.
        ``world.objects_between(t_s[0] - MAX_DELAY_S, t_s[-1])``; extra ones cost time only. The
        result depends only on the objects, the times and the seed, never on the chunking.
        ``extra(t_s, element_positions_m)`` adds sources that are not world objects (a scene's
        clapper): pressure ``(n, channels)`` in full-scale units, added before quantisation.
        """
        t = np.asarray(t_s, np.float64)
        if t.ndim != 1:
            raise ValueError(f"t_s must be one-dimensional, got shape {t.shape}")
        p = np.zeros((t.size, self.channels))
        if t.size:
            self._add_sources(objects, t, p)
            if self.background_noise > 0:
                self._add_background(t, p)
            if extra is not None:
                p += extra(t, self.element_positions_m)
        p *= FULL_SCALE
        np.rint(p, out=p)
        np.clip(p, -32768, 32767, out=p)  # saturate: no int16 wraparound
        return p.astype(np.int16)

    def _tracks_for(self, objects: Sequence[WorldObject]) -> list[_Track]:
        # Keyed by identity (a track holds its object, so the key cannot be reused), summed in
        # a fixed order (by object id) so results do not depend on the caller's list order.
        old, self._tracks = self._tracks, {}
        for o in sorted(objects, key=lambda o: o.object_id):
            tr = old.get(id(o))
            self._tracks[id(o)] = tr or _Track(o, self.element_positions_m, self.rate_hz)
        return list(self._tracks.values())

    def _add_sources(self, objects: Sequence[WorldObject], t: np.ndarray, p: np.ndarray) -> None:
        u = t * _KNOT_RATE_HZ
        kf = np.floor(u)
        k_lo = int(kf.min())
        count = int(kf.max()) - k_lo + 2
        delays: list[list[float]] = [[] for _ in range(count)]
        gains: list[list[float]] = [[] for _ in range(count)]
        active = []
        for tr in self._tracks_for(objects):
            kn = tr.knots(k_lo, count)
            if not any(g > 0 for _, gs in kn for g in gs):
                continue  # beyond MAX_AUDIBLE_M for the whole chunk
            active.append(tr)
            for row_d, row_g, (d, g) in zip(delays, gains, kn, strict=True):
                row_d.extend(d)
                row_g.extend(g)
        if not active:
            return
        # Delay and gain of every (object, element) column, linear between the knots.
        E = self.channels
        idx = (kf - k_lo).astype(np.intp)
        w = (u - kf)[:, None]
        D, G = np.array(delays), np.array(gains)
        d0, g0 = D[idx], G[idx]
        tau = d0 - D[idx + 1]
        tau *= w
        tau -= d0
        tau += t[:, None]  # t - (d0 + w (d1 - d0))
        gain = G[idx + 1] - g0
        gain *= w
        gain += g0
        los, his = tau.min(axis=0).tolist(), tau.max(axis=0).tolist()
        for j, tr in enumerate(active):
            a, b = tr.obj.t_enter_s, tr.obj.t_exit_s
            t_lo, t_hi = min(los[j * E : (j + 1) * E]), max(his[j * E : (j + 1) * E])
            if t_hi < a or t_lo >= b:
                continue  # not alive at any emission time of the chunk
            tj = tau[:, j * E : (j + 1) * E]
            c = tr.source(tj - tr.t_ref)
            c *= gain[:, j * E : (j + 1) * E]
            # The ramps are exactly 1 away from the ends of life (same expression, monotone),
            # so skipping them there gives the same bits as applying them.
            if (t_lo - a) / _RAMP_S < 1.0 or (b - t_hi) / _RAMP_S < 1.0:
                c *= np.clip((tj - a) / _RAMP_S, 0.0, 1.0) * np.clip((b - tj) / _RAMP_S, 0.0, 1.0)
            p += c

    def _add_background(self, t: np.ndarray, p: np.ndarray) -> None:
        k = np.rint(t * self.rate_hz).astype(np.int64)[:, None] + self._bg_offsets
        p += self._wind.take(k & (_WIND_LEN - 1))
        p += self._traffic.take(k % _TRAFFIC_LEN)
