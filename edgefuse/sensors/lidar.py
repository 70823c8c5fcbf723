"""The lidar node: a Velodyne over UDP, or scans from files, one sweep per message.

``source: udp`` binds a non-blocking UDP socket (``host``, ``port``, 2368 by default) and drains
it from a short timer of the node loop, so the loop never blocks; each datagram gets its host
receipt time, and :class:`~edgefuse.sensors.velodyne_sweeps.SweepAssembler` decodes them in batches
into sweeps cut at ``cut_azimuth_deg``. Every sweep is published on ``<name>/points`` in the
simulated lidar's layout (``xyzit_f32``: points ``(N, 5)`` float32 ``[x, y, z, intensity,
t_offset_s]`` plus ``ring`` uint8), with ``t_sensor_ns`` the sensor's µs-past-the-hour clock at
the sweep's first firing (wrapping; the aligner unwraps it) and ``t_host_ns`` the receipt of the
packet that completed it. No packets at start, or none for ``timeout_s`` mid-run, is logged once
and counted (``waiting``, ``outages``); the node keeps listening and says when data resumes.

Any other ``source`` is a scan file (KITTI ``.bin``, PCD, PLY) or a folder of them, published
at ``rate_hz`` (or, with ``rate_hz: 0``, at the pace of the folder's stamp file), looping if
``loop`` is set, else stopping after the last one.
"""

from __future__ import annotations

import errno
import math
import socket
import time
from dataclasses import dataclass
from typing import ClassVar, Literal

from edgefuse.errors import ConfigError
from edgefuse.node import Node
from edgefuse.sensors._lidar_files import ScanFiles, read_scan
from edgefuse.sensors.velodyne import FIELDS
from edgefuse.sensors.velodyne_sweeps import SweepAssembler

#: Datagrams drained per timer tick at most, so a flood cannot starve the loop.
_MAX_BATCH = 2048
#: Larger than any Velodyne datagram, so oversized ones show up as such.
_RECV_BYTES = 2048


@dataclass(frozen=True, kw_only=True)
class LidarParams:
    """Parameters of :class:`LidarNode`."""

    #: ``udp`` for a live sensor, else a scan file or a folder of scans.
    source: str = "udp"
    #: Address to listen on (``0.0.0.0``: every interface).
    host: str = "0.0.0.0"
    port: int = 2368
    model: Literal["auto", "VLP-16", "VLP-32C", "HDL-32E"] = "auto"
    #: Returns to publish: whatever the sensor sends, or only those of one kind.
    return_mode: Literal["any", "strongest", "last", "dual"] = "any"
    #: Where sweeps start, as a yaw in the lidar frame (degrees, counter-clockwise from x).
    cut_azimuth_deg: float = 0.0
    #: Files: scans per second (0: the pace of the stamp file).
    rate_hz: float = 10.0
    #: Files: start over after the last scan.
    loop: bool = False
    #: Files: a stamp file (default: found beside the folder, see ``_lidar_files``).
    stamps: str = ""
    frame_id: str = "lidar"
    #: UDP: how often the socket is drained (ms).
    poll_ms: float = 5.0
    #: UDP: no packet for this long is an outage (s).
    timeout_s: float = 1.0
    #: UDP: socket receive buffer (bytes); a 10 Hz VLP-32C sends about 1.9 MB/s.
    rcvbuf_bytes: int = 4 * 1024 * 1024

    def __post_init__(self) -> None:
        if not self.source:
            raise ValueError("source must be 'udp' or a file or folder path")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if not math.isfinite(self.cut_azimuth_deg):
            raise ValueError(f"cut_azimuth_deg must be finite, got {self.cut_azimuth_deg}")
        if not 0 <= self.rate_hz <= 1000:
            raise ValueError(f"rate_hz must be in 0..1000, got {self.rate_hz}")
        if not 0.5 <= self.poll_ms <= 100:
            raise ValueError(f"poll_ms must be in 0.5..100, got {self.poll_ms}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.rcvbuf_bytes < 65536:
            raise ValueError(f"rcvbuf_bytes must be >= 65536, got {self.rcvbuf_bytes}")


class LidarNode(Node):
    """A Velodyne VLP-16 / VLP-32C / HDL-32E over UDP, or lidar scan files, on
    ``<name>/points`` (see the module documentation)."""

    Params = LidarParams
    outputs: ClassVar = {"points": "xyzit_f32"}

    def setup(self) -> None:
        p: LidarParams = self.params
        self.published = 0
        self.waiting = True
        self.outages = 0
        self._logged: set[str] = set()
        if p.source == "udp":
            self._setup_udp()
        else:
            self._setup_files()

    # --- UDP ---------------------------------------------------------------------------
    def _setup_udp(self) -> None:
        p: LidarParams = self.params
        self.assembler = SweepAssembler(
            model=p.model, return_mode=p.return_mode, cut_azimuth_deg=p.cut_azimuth_deg
        )
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, p.rcvbuf_bytes)
        try:
            sock.bind((p.host, p.port))
        except OSError as exc:
            sock.close()
            hint = " (another driver already listening?)" if exc.errno == errno.EADDRINUSE else ""
            raise ConfigError(
                f"lidar: cannot listen on udp {p.host}:{p.port}: {exc.strerror}{hint}"
            ) from None
        sock.setblocking(False)
        self.sock = sock
        self.port = sock.getsockname()[1]
        self.started_ns = time.monotonic_ns()
        self.last_packet_ns = 0
        self.log.info("listening for Velodyne %s packets on udp %s:%d", p.model, p.host, self.port)
        self.every(p.poll_ms / 1000, self._poll)

    def _poll(self) -> None:
        payloads: list[bytes] = []
        hosts: list[int] = []
        recv = self.sock.recv
        for _ in range(_MAX_BATCH):
            try:
                data = recv(_RECV_BYTES)
            except (BlockingIOError, InterruptedError):
                break
            payloads.append(data)
            hosts.append(time.monotonic_ns())
        now = time.monotonic_ns()
        if not payloads:
            self._check_silence(now)
            return
        if self.waiting:
            gap_s = (now - (self.last_packet_ns or self.started_ns)) / 1e9
            if self.last_packet_ns:
                self.log.info("lidar packets resumed after %.1f s", gap_s)
            else:
                self.log.info("first lidar packets after %.1f s", gap_s)
            self.waiting = False
        self.last_packet_ns = hosts[-1]
        for sweep in self.assembler.push(payloads, hosts):
            self.publish(
                "points",
                [sweep.points, sweep.ring],
                t_sensor_ns=sweep.t_sensor_ns,
                t_host_ns=sweep.t_host_ns,
                frame_id=self.params.frame_id,
                meta=sweep.meta,
            )
            self.published += 1
        for kind, detail in self.assembler.problems.items():
            if kind not in self._logged:
                self._logged.add(kind)
                self.log.warning("lidar: %s (counted as %s; logged once)", detail, kind)

    def _check_silence(self, now: int) -> None:
        p: LidarParams = self.params
        since = self.last_packet_ns or self.started_ns
        if self.waiting or now - since < p.timeout_s * 1e9:
            return
        self.waiting = True
        if self.last_packet_ns:
            self.outages += 1
            self.log.warning(
                "lidar: no packets on udp %s:%d for %.1f s (sensor gone?); still listening",
                p.host,
                self.port,
                p.timeout_s,
            )
        else:
            self.log.warning(
                "lidar: no packets on udp %s:%d after %.1f s (is the sensor powered, and its "
                "destination address this host?); still listening",
                p.host,
                self.port,
                p.timeout_s,
            )

    # --- files -------------------------------------------------------------------------
    def _setup_files(self) -> None:
        p: LidarParams = self.params
        self.files = ScanFiles(p.source, stamps=p.stamps)
        if p.rate_hz == 0 and self.files.stamps_ns is None:
            raise ConfigError(
                f"lidar source {p.source!r}: rate_hz 0 paces by the stamp file, and none was "
                "found (give stamps: or a rate_hz)"
            )
        self.index = 0
        self.loops = 0
        self.waiting = False
        self.period_ns = round(1e9 / p.rate_hz) if p.rate_hz else 0
        stamps = self.files.stamps_ns
        n = len(self.files)
        # A loop continues the sensor clock instead of going back in time.
        self.loop_span_ns = (
            stamps[n - 1] - stamps[0] + (stamps[1] - stamps[0] if n > 1 else 100_000_000)
            if stamps
            else n * (self.period_ns or 100_000_000)
        )
        self.t0_ns = time.monotonic_ns()
        self.at(self.t0_ns, self._next_file)

    def _stamp(self, i: int) -> int:
        stamps = self.files.stamps_ns
        base = stamps[i] if stamps else i * (self.period_ns or 100_000_000)
        return base + self.loops * self.loop_span_ns

    def _next_file(self) -> None:
        p: LidarParams = self.params
        path = self.files.files[self.index]
        stamp = self._stamp(self.index)
        sweep_s = self.period_ns / 1e9 if self.period_ns else 0.1
        try:
            scan = read_scan(path, cut_azimuth_deg=p.cut_azimuth_deg, sweep_s=sweep_s)
        except ValueError as exc:
            # A bad file is skipped and counted; the rest of the folder still plays.
            scan = None
            self.runner.errors["bad_scan_file"] += 1
            self.log.warning("lidar: skipping %s", exc)
        if scan is not None:
            self.publish(
                "points",
                [scan.points, scan.ring],
                t_sensor_ns=stamp,
                frame_id=p.frame_id,
                meta={
                    "fields": list(FIELDS),
                    "sweep_s": sweep_s,
                    "file": path.name,
                    "index": self.index,
                },
            )
            self.published += 1
        self.index += 1
        if self.index >= len(self.files):
            if not p.loop:
                self.log.info("lidar: played %d scans from %s", self.published, p.source)
                self.stop()
                return
            self.index = 0
            self.loops += 1
        if self.period_ns:
            due = self.t0_ns + (self.loops * len(self.files) + self.index) * self.period_ns
        else:
            first = self.files.stamps_ns[0] if self.files.stamps_ns else 0
            due = self.t0_ns + self._stamp(self.index) - first
        self.at(due, self._next_file)  # when behind, it fires at the next turn of the loop

    # --- status ------------------------------------------------------------------------
    def counters(self) -> dict[str, int | float]:
        """Sweeps published, waiting for data (1/0), outages, and the decoder's counters."""
        out: dict[str, int | float] = {
            "sweeps": self.published,
            "waiting": int(self.waiting),
            "outages": self.outages,
        }
        if self.params.source == "udp":
            c = self.assembler.counters.as_dict()
            c.pop("sweeps")
            out.update(c)
        return out

    def teardown(self) -> None:
        sock = getattr(self, "sock", None)
        if sock is not None:
            sock.close()
