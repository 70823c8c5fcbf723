"""The two ends of each benchmarked transport: a sender and a receiver per transport name.

Each end runs in its own worker process (:mod:`edgefuse.bench._worker`). A sender stamps the
markers (:mod:`edgefuse.bench._payload`) into the payload, takes the send stamp just before
the send call (after the payload is filled, for loaned buffers) and sends; a receiver returns
each message as a numpy array together with the time it became available. This module holds
edgefuse's own transports and plain pyzmq; zenoh and iceoryx2 live in ``_peers_ext``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Final

import numpy as np
import zmq

from edgefuse.bench._payload import filled, stamp, words
from edgefuse.transport import Publisher, Subscriber, TransportOptions

#: Every transport the benchmark knows, in the order results are listed.
TRANSPORTS: Final = (
    "edgefuse-shm",
    "edgefuse-shm-copy",
    "edgefuse-tcp",
    "pyzmq-copy",
    "pyzmq-zerocopy",
    "zenoh",
    "iceoryx2",
    "memcpy",
)
#: Messages a peer may queue, on each side where it has a queue: edgefuse's default
#: high-water mark, applied to every peer so that none buys throughput with deeper queues.
QUEUE_DEPTH: Final = 8
#: Buffers the pyzmq zero-copy sender rotates through. ZeroMQ reads a buffer sent without
#: copying from its I/O thread after the send call returns, and (measured here) can still be
#: reading it dozens of sends later even with a high-water mark of 8; so each buffer is
#: reused only once its MessageTracker says ZeroMQ has let go of it.
ZERO_COPY_POOL: Final = 16
_TRACKER_WAIT_S: Final = 10.0
_NODE: Final = "bench"
_STREAM: Final = "payload"
_ZMQ_TOPIC: Final = b"bench/payload"


@dataclass(frozen=True, slots=True)
class CellSpec:
    """What one benchmark cell runs: the transport, payload, pace and where the peers meet."""

    transport: str
    size: str
    nbytes: int
    shape: tuple[int, ...]
    #: Messages per second, or None for as fast as possible.
    rate_hz: float | None
    #: Measured messages at a fixed rate; at max rate, the cap on them.
    messages: int
    #: How long a max-rate cell sends measured messages.
    max_seconds: float
    warmup: int
    #: ZeroMQ endpoint (edgefuse, pyzmq), or "" when unused.
    endpoint: str
    #: TCP port of the zenoh subscriber's listener, or 0.
    port: int
    #: iceoryx2 service name and the edgefuse shared-memory run id.
    service: str
    run_id: str
    #: The worker gives up (and reports) after this long.
    timeout_s: float

    def to_json(self) -> str:
        """Serialise for a worker's command line."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> CellSpec:
        """Parse what :meth:`to_json` wrote."""
        d = json.loads(text)
        d["shape"] = tuple(d["shape"])
        return cls(**d)


@dataclass(slots=True)
class Got:
    """One received message: its payload words and stamps."""

    #: The payload as uint64 words (a view of the received array).
    words: np.ndarray
    #: Send stamp from the transport's own header; None: read it from the payload.
    t_send_ns: int | None
    #: ``time.monotonic_ns()`` when the payload was available as a numpy array.
    t_recv_ns: int
    #: The transport's own sequence number, to cross-check the payload's; None if it has none.
    header_seq: int | None = None
    #: Re-checks a zero-copy payload after it was read (edgefuse's seqlock); None: always valid.
    intact: Callable[[], bool] | None = None


class Sender:
    """Sends benchmark messages; subclasses fill the payload and call the transport."""

    note: str = ""

    def send(self, kind: int, seq: int) -> int:
        """Send message ``seq`` of ``kind``; return the send stamp (monotonic ns)."""
        raise NotImplementedError

    def describe(self) -> str:
        """What this peer's number measures, when that needs saying ("" otherwise)."""
        return self.note

    def close(self) -> None:
        """Release sockets and shared memory."""


class Receiver:
    """Receives benchmark messages."""

    note: str = ""

    def recv(self, timeout_ms: int) -> Got | None:
        """The next message, or None if none arrived within ``timeout_ms``."""
        raise NotImplementedError

    def describe(self) -> str:
        """What this peer's number measures, when that needs saying ("" otherwise)."""
        return self.note

    def detail(self) -> dict[str, Any]:
        """Transport-specific counters worth reporting (drops, overruns, ...)."""
        return {}

    def close(self) -> None:
        """Release sockets and shared memory."""


class EdgefuseSender(Sender):
    """edgefuse's :class:`~edgefuse.transport.Publisher`, in one of three ways of publishing.

    ``loan``: the payload is filled in place in the shared-memory ring (zero copy; the slot
    is reused memory, so only the markers are written). ``copy``: an existing array is
    published (one memcpy into the ring). ``fresh``: on tcp, ``loan`` returns a new heap
    array per message, which the producer fills from its frame before the stamp; it is then
    sent inline without copying. (A reused array cannot be sent that way: edgefuse offers no
    signal for when ZeroMQ has finished reading it.)
    """

    def __init__(self, spec: CellSpec, mode: str) -> None:
        self.mode = mode
        self.shape = spec.shape
        opts = TransportOptions(run_id=spec.run_id, queue_depth=QUEUE_DEPTH, shm_slots=QUEUE_DEPTH)
        self.pub = Publisher(spec.endpoint, node=_NODE, options=opts)
        self.frame = None if mode == "loan" else filled(spec.shape)
        if mode == "fresh":
            self.note = "fresh array per message (tcp loan), filled from the frame before the stamp"

    def send(self, kind: int, seq: int) -> int:
        if self.mode == "copy":
            assert self.frame is not None
            arr = self.frame
        else:
            arr = self.pub.loan(_STREAM, self.shape, np.uint8)
            if self.frame is not None:
                np.copyto(arr, self.frame)
        stamp(words(arr), kind, seq)
        t_ns = time.monotonic_ns()
        self.pub.publish(_STREAM, [arr], t_sensor_ns=t_ns)
        return t_ns

    def close(self) -> None:
        self.pub.close()


class EdgefuseReceiver(Receiver):
    """edgefuse's :class:`~edgefuse.transport.Subscriber` (zero-copy views, as nodes get them)."""

    def __init__(self, spec: CellSpec) -> None:
        opts = TransportOptions(run_id=spec.run_id, queue_depth=QUEUE_DEPTH, shm_slots=QUEUE_DEPTH)
        self.topic = f"{_NODE}/{_STREAM}"
        self.sub = Subscriber(spec.endpoint, [self.topic], options=opts)
        #: Per message: the send stamp to edgefuse's own t_pub_ns (taken inside publish just
        #: before the socket send) and the total; with the subscriber's t_pub_ns-to-decode
        #: samples they split the latency into publish, ZeroMQ hop and decode.
        self.publish_ns: list[int] = []
        self.total_ns: list[int] = []

    def recv(self, timeout_ms: int) -> Got | None:
        msg = self.sub.recv(timeout_ms)
        if msg is None:
            return None
        t_ns = time.monotonic_ns()
        h = msg.header
        self.publish_ns.append(h.t_pub_ns - h.t_sensor_ns)
        self.total_ns.append(t_ns - h.t_sensor_ns)
        return Got(words(msg.arrays[0]), h.t_sensor_ns, t_ns, h.seq, msg.intact)

    def detail(self) -> dict[str, Any]:
        st = self.sub.stats[self.topic]
        # Medians over every message received (probes and warm-up included): a breakdown of
        # where the time goes, not the measured latency itself.
        publish = float(np.median(self.publish_ns)) if self.publish_ns else 0.0
        hop = float(np.median(st.latency_ns)) if st.latency_ns else 0.0
        total = float(np.median(self.total_ns)) if self.total_ns else 0.0
        return {
            "overruns": st.overruns,
            "dropped": st.dropped,
            "malformed": dict(st.malformed),
            "breakdown_p50_ms": {
                "publish": round(publish / 1e6, 4),
                "zmq_hop": round(hop / 1e6, 4),
                "decode_and_rest": round(max(0.0, total - publish - hop) / 1e6, 4),
            },
        }

    def close(self) -> None:
        self.sub.close()


class ZmqSender(Sender):
    """Plain pyzmq PUB over ipc: ``send_multipart([topic, payload], copy=...)``.

    Without copying, buffers rotate through a pool guarded by MessageTrackers (waiting for a
    free buffer happens before the stamp, as a producer would wait for one).
    """

    def __init__(self, spec: CellSpec, *, copy: bool) -> None:
        self.copy = copy
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.sock: zmq.Socket[Any] = self.ctx.socket(zmq.PUB)
        self.sock.sndhwm = QUEUE_DEPTH
        self.sock.linger = 0
        self.sock.bind(spec.endpoint)
        n = 1 if copy else ZERO_COPY_POOL
        self.frames = [filled((spec.nbytes,)) for _ in range(n)]
        self.words = [words(f) for f in self.frames]
        self.trackers: list[zmq.MessageTracker | None] = [None] * n
        if not copy:
            self.note = f"{n} buffers reused once their MessageTracker is done"

    def send(self, kind: int, seq: int) -> int:
        i = seq % len(self.frames)
        tracker = self.trackers[i]
        if tracker is not None and not tracker.done:
            tracker.wait(_TRACKER_WAIT_S)
        w = self.words[i]
        stamp(w, kind, seq)
        t_ns = time.monotonic_ns()
        w[2] = t_ns
        if self.copy:
            self.sock.send_multipart([_ZMQ_TOPIC, self.frames[i]])
        else:
            self.trackers[i] = self.sock.send_multipart(
                [_ZMQ_TOPIC, self.frames[i]], copy=False, track=True
            )
        return t_ns

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


class ZmqReceiver(Receiver):
    """Plain pyzmq SUB: ``recv_multipart(copy=...)`` viewed with ``np.frombuffer``."""

    def __init__(self, spec: CellSpec, *, copy: bool) -> None:
        self.copy = copy
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.sock: zmq.Socket[Any] = self.ctx.socket(zmq.SUB)
        self.sock.rcvhwm = QUEUE_DEPTH
        self.sock.linger = 0
        self.sock.setsockopt(zmq.SUBSCRIBE, _ZMQ_TOPIC)
        self.sock.connect(spec.endpoint)

    def recv(self, timeout_ms: int) -> Got | None:
        if not self.sock.poll(timeout_ms):
            return None
        if self.copy:
            data: Any = self.sock.recv_multipart()[1]
        else:
            data = self.sock.recv_multipart(copy=False)[1].buffer
        arr = np.frombuffer(data, dtype=np.uint8)
        t_ns = time.monotonic_ns()
        return Got(words(arr), None, t_ns)

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


def make_sender(spec: CellSpec) -> Sender:
    """The sending end of ``spec.transport`` (ImportError if its library is missing)."""
    t = spec.transport
    if t == "edgefuse-shm":
        return EdgefuseSender(spec, "loan")
    if t == "edgefuse-shm-copy":
        return EdgefuseSender(spec, "copy")
    if t == "edgefuse-tcp":
        return EdgefuseSender(spec, "fresh")
    if t in ("pyzmq-copy", "pyzmq-zerocopy"):
        return ZmqSender(spec, copy=t == "pyzmq-copy")
    if t == "zenoh":
        from edgefuse.bench._peers_ext import ZenohSender

        return ZenohSender(spec)
    if t == "iceoryx2":
        from edgefuse.bench._peers_ext import Iox2Sender

        return Iox2Sender(spec)
    raise ValueError(f"no sender for transport {t!r}")


def make_receiver(spec: CellSpec) -> Receiver:
    """The receiving end of ``spec.transport`` (ImportError if its library is missing)."""
    t = spec.transport
    if t.startswith("edgefuse-"):
        return EdgefuseReceiver(spec)
    if t in ("pyzmq-copy", "pyzmq-zerocopy"):
        return ZmqReceiver(spec, copy=t == "pyzmq-copy")
    if t == "zenoh":
        from edgefuse.bench._peers_ext import ZenohReceiver

        return ZenohReceiver(spec)
    if t == "iceoryx2":
        from edgefuse.bench._peers_ext import Iox2Receiver

        return Iox2Receiver(spec)
    raise ValueError(f"no receiver for transport {t!r}")
