"""Publisher and subscriber over ZeroMQ PUB/SUB, with shared memory for large same-host payloads.

A node owns one :class:`Publisher` (one PUB socket, bound) for all its output streams, and
one :class:`Subscriber` (one SUB socket, connected to every publisher it listens to). On
``ipc://`` endpoints, payloads of 64 KiB or more are written to a per-topic
:class:`~edgefuse.transport.shm.ShmRing` (or filled in place through :meth:`Publisher.loan`)
and only a reference crosses ZeroMQ; on ``tcp://`` they travel inline, sent without copying.
Queues are bounded by the high-water mark; losses show as gaps in ``seq``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import zmq

from edgefuse import envelope
from edgefuse.envelope import Buffer, Header, Message, PayloadDesc
from edgefuse.errors import EnvelopeError
from edgefuse.transport.endpoints import Endpoint
from edgefuse.transport.errors import ShmUnavailableError, TransportError
from edgefuse.transport.security import CurveKeys, ServerAuth, make_client, make_server
from edgefuse.transport.shm import ShmReader, ShmRing, footprint
from edgefuse.transport.stats import TopicStats

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True, slots=True)
class TransportOptions:
    """How a node's sockets behave; the launcher fills it from the pipeline's ``transport``."""

    #: Messages queued per peer before new ones are dropped (ZeroMQ high-water mark). libzmq
    #: accounts for sent messages lazily, so a burst of more than this many sends within about
    #: a millisecond is cut even when the subscriber keeps up: leave room for bursts.
    queue_depth: int = 16
    #: ``auto``: shared memory on ipc:// endpoints; ``never``: always inline.
    shm: Literal["auto", "never"] = "auto"
    #: Slots per shared-memory ring: a reader must finish with a message before this many newer
    #: ones are published on the same topic, or its read counts as an overrun.
    shm_slots: int = 16
    zero_copy_min_bytes: int = envelope.ZERO_COPY_MIN_BYTES
    #: CURVE keys for tcp:// endpoints (None: plain tcp, loopback unless configured otherwise).
    keys: CurveKeys | None = None
    #: Prefix of this run's shared-memory segments, so the launcher can clean them up.
    run_id: str = "solo"


class _LogOnce:
    """Log the first occurrence of each kind of problem at WARNING, later ones at DEBUG."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def __call__(self, kind: str, msg: str, *args: object) -> None:
        level = logging.DEBUG if kind in self._seen else logging.WARNING
        self._seen.add(kind)
        log.log(level, msg, *args)


class Publisher:
    """Publishes messages on ``<node>/<stream>`` topics from one bound PUB socket."""

    def __init__(
        self,
        endpoint: str,
        *,
        node: str,
        options: TransportOptions | None = None,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        self.endpoint = Endpoint.parse(endpoint)
        self.node = node
        self.options = options or TransportOptions()
        self._ctx = context or zmq.Context.instance()
        self._sock: zmq.Socket[Any] = self._ctx.socket(zmq.PUB)
        self._sock.sndhwm = self.options.queue_depth
        self._sock.linger = 0
        self._auth: ServerAuth | None = None
        try:
            if self.endpoint.scheme == "tcp" and self.options.keys is not None:
                self._auth = make_server(self._sock, self.options.keys)
            self._sock.bind(str(self.endpoint))
        except (zmq.ZMQError, TransportError) as exc:
            self.close()  # the socket must not outlive a failed constructor
            if isinstance(exc, TransportError):
                raise
            raise TransportError(f"cannot bind {self.endpoint}: {exc}") from exc
        #: The endpoint actually bound (resolves ``tcp://host:*``).
        self.bound = Endpoint.parse(self._sock.last_endpoint.decode())
        self._use_shm = self.options.shm == "auto" and self.endpoint.same_host
        self._rings: dict[str, ShmRing] = {}
        self._seq: dict[str, int] = {}
        self.stats: dict[str, TopicStats] = {}
        self._warn = _LogOnce()

    def topic(self, stream: str) -> str:
        """The topic of ``stream``: ``<node>/<stream>``."""
        return f"{self.node}/{stream}"

    def _ring(self, stream: str) -> ShmRing:
        ring = self._rings.get(stream)
        if ring is None:
            ring = ShmRing(
                run_id=self.options.run_id,
                topic=self.topic(stream),
                slot_count=self.options.shm_slots,
            )
            self._rings[stream] = ring
        return ring

    def loan(self, stream: str, shape: Sequence[int], dtype: Any) -> np.ndarray:
        """A writable array to fill and then pass to :meth:`publish`, which sends it with no copy.

        On a same-host endpoint the array lies in the topic's shared-memory ring; otherwise
        (tcp, or shared memory unavailable) it is an ordinary array sent inline.
        """
        shape_t = tuple(int(d) for d in shape)
        dt = np.dtype(dtype)
        if self._use_shm:
            try:
                ring = self._ring(stream)
                # A pending slot holds this message's earlier loans: taking a new slot would
                # abandon them. If the new loan does not fit, it goes on the heap and publish
                # moves the whole message into one fresh slot.
                if not ring.pending or ring.fits(PayloadDesc(dt, shape_t).nbytes):
                    arr, _ = ring.loan(shape_t, dt)
                    return arr
            except ShmUnavailableError as exc:
                self._fallback(exc)
        return np.empty(shape_t, dt)

    def _fallback(self, exc: ShmUnavailableError) -> None:
        self._warn("shm", "shared memory unavailable, sending inline from now on: %s", exc)
        self._use_shm = False

    def publish(
        self,
        stream: str,
        arrays: Sequence[np.ndarray] = (),
        *,
        t_sensor_ns: int,
        t_host_ns: int | None = None,
        t_ns: int | None = None,
        frame_id: str = "",
        encoding: str = "",
        meta: dict[str, Any] | None = None,
    ) -> Header:
        """Stamp the next ``seq`` for ``stream`` and send; return the header that was sent.

        Do not modify an array after publishing it: large payloads are sent without copying.
        ``t_host_ns`` defaults to now (host monotonic clock).
        """
        header = Header(
            stream=stream,
            seq=self._seq.get(stream, 0),
            t_sensor_ns=t_sensor_ns,
            t_host_ns=time.monotonic_ns() if t_host_ns is None else t_host_ns,
            t_ns=t_ns,
            frame_id=frame_id,
            encoding=encoding,
            meta=meta or {},
        )
        self.send(header, arrays)
        return header

    def send(self, header: Header, arrays: Sequence[np.ndarray]) -> None:
        """Send a message with a caller-built header (its ``seq`` is kept, ``t_pub_ns`` set)."""
        stream = header.stream
        dtypes = [envelope.wire_dtype(arr) for arr in arrays]  # refuse before touching a slot
        refs = self._place(stream, arrays) if self._use_shm else [None] * len(arrays)
        descs: list[PayloadDesc] = []
        inline: list[Buffer] = []
        for arr, dt, ref in zip(arrays, dtypes, refs, strict=True):
            shape = tuple(int(d) for d in arr.shape)
            if ref is not None:
                descs.append(PayloadDesc(dt, shape, ref))
            else:
                c = np.ascontiguousarray(arr)
                descs.append(PayloadDesc(dt, shape))
                inline.append(memoryview(c).cast("B") if c.nbytes else b"")
        topic = self.topic(stream)
        header.t_pub_ns = time.monotonic_ns()
        frames: list[Buffer] = [topic.encode(), envelope.encode_header(header, descs)]
        frames.extend(inline)
        last = len(frames) - 1
        for i, f in enumerate(frames):
            size = f.nbytes if isinstance(f, memoryview) else len(f)
            self._sock.send(
                f,
                flags=zmq.SNDMORE if i < last else 0,
                copy=size < self.options.zero_copy_min_bytes,
            )
        self._seq[stream] = header.seq + 1
        st = self.stats.setdefault(topic, TopicStats())
        st.messages += 1
        st.bytes += sum(d.nbytes for d in descs)

    def _place(self, stream: str, arrays: Sequence[np.ndarray]) -> list[envelope.ShmRef | None]:
        """Put the message's shared-memory payloads in one slot, commit it, return the refs.

        Loans from the pending slot stay where they are; other payloads of at least
        ``zero_copy_min_bytes`` are copied in. Every payload of a message must lie in the same
        slot, published by one commit: a payload left in another slot would keep that slot's
        odd generation (an overrun for every reader), and a ring growing between two payloads
        would unlink the segment holding the first.
        """
        ring = self._rings.get(stream)
        refs = [ring.owns(a) if ring is not None else None for a in arrays]
        to_copy = {
            i
            for i, a in enumerate(arrays)
            if refs[i] is None and a.nbytes >= self.options.zero_copy_min_bytes
        }
        if to_copy:
            try:
                ring = self._ring(stream)
                need = footprint(arrays[i].nbytes for i in to_copy)
                if any(r is not None for r in refs) and not ring.fits(need):
                    # The slot holding the loans has no room for the rest: move the whole
                    # message to a fresh slot (the loans' slot stays intact meanwhile, as the
                    # fresh one is another slot or another segment).
                    to_copy |= {i for i, r in enumerate(refs) if r is not None}
                    refs = [None] * len(arrays)
                    need = footprint(arrays[i].nbytes for i in to_copy)
                    ring.reserve(need)
                elif not ring.fits(need):
                    ring.reserve(need)
                for i in sorted(to_copy):
                    refs[i] = ring.write(np.ascontiguousarray(arrays[i]))
            except ShmUnavailableError as exc:
                self._fallback(exc)
                if ring is not None:
                    ring.abandon()
                return [None] * len(arrays)  # loans are ordinary memory: send all inline
        if ring is None:
            return refs
        if any(r is not None for r in refs):
            gen = ring.commit()
            return [None if r is None else _with_gen(r, gen) for r in refs]
        ring.abandon()  # loans taken but not sent: their slot is not published
        return refs

    @property
    def socket(self) -> zmq.Socket[Any]:
        """The underlying PUB socket (for tests and the launcher)."""
        return self._sock

    def close(self) -> None:
        """Close the socket and unlink this publisher's shared-memory segments."""
        for ring in getattr(self, "_rings", {}).values():
            ring.close()
        self._sock.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _with_gen(ref: envelope.ShmRef, generation: int) -> envelope.ShmRef:
    return envelope.ShmRef(ref.segment, ref.offset, ref.nbytes, generation)


class Subscriber:
    """Receives the given topics from one or more publishers; malformed input is counted, never
    raised: :meth:`recv` returns only intact, well-formed messages.
    """

    def __init__(
        self,
        endpoints: str | Iterable[str],
        topics: Iterable[str],
        *,
        options: TransportOptions | None = None,
        copy: bool = False,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        self.options = options or TransportOptions()
        self.copy = copy
        self.topics = frozenset(topics)
        # Parse first: a bad endpoint must not leave a socket behind.
        eps = [
            Endpoint.parse(e) for e in ([endpoints] if isinstance(endpoints, str) else endpoints)
        ]
        self._ctx = context or zmq.Context.instance()
        self._sock: zmq.Socket[Any] = self._ctx.socket(zmq.SUB)
        self._sock.rcvhwm = self.options.queue_depth
        # Reconnect quickly after a publisher restarts (ZeroMQ's default waits 100 ms and
        # more): every frame published before the reconnect is lost to this subscriber.
        self._sock.reconnect_ivl = 20
        self._sock.reconnect_ivl_max = 500
        self._sock.linger = 0
        try:
            if any(e.scheme == "tcp" for e in eps) and self.options.keys is not None:
                make_client(self._sock, self.options.keys)
            for topic in self.topics:
                self._sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
            for e in eps:
                self._sock.connect(str(e))
        except zmq.ZMQError as exc:
            self._sock.close(linger=0)
            raise TransportError(f"cannot connect to {eps}: {exc}") from exc
        self._shm = ShmReader()
        self._last_seq: dict[str, int] = {}
        self.stats: dict[str, TopicStats] = {t: TopicStats() for t in self.topics}
        #: Well-formed messages on topics that merely start with a subscribed one.
        self.ignored = 0
        #: Malformed messages whose topic could not be told (bad topic frame, foreign topic).
        self.unattributed = TopicStats()
        self._warn = _LogOnce()

    @property
    def socket(self) -> zmq.Socket[Any]:
        """The SUB socket, for polling several subscribers at once."""
        return self._sock

    def recv(self, timeout_ms: int | None = None) -> Message | None:
        """The next well-formed message, or None if none arrived within ``timeout_ms``.

        ``None`` waits forever, ``0`` does not wait.
        """
        deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if remaining is not None and not self._sock.poll(int(remaining * 1000)):
                return None
            frames = self._sock.recv_multipart(copy=False)
            msg = self.decode([f.buffer for f in frames])
            if msg is not None:
                return msg
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def decode(self, frames: Sequence[Buffer]) -> Message | None:
        """Decode raw multipart frames; count and log anything wrong and return None for it."""
        now = time.monotonic_ns()
        topic = None
        header: Header | None = None
        try:
            if len(frames) < 2:
                raise EnvelopeError(
                    "truncated", f"{len(frames)} frame(s); a message has at least 2"
                )
            topic = envelope.check_topic(frames[0])
            if topic not in self.topics:
                if any(topic.startswith(t) for t in self.topics):
                    # ZeroMQ filters by prefix: "camera/image" also admits "camera/image_raw".
                    # Not ours, and nothing wrong with it: counted apart, not logged.
                    self.ignored += 1
                    return None
                raise EnvelopeError("foreign_sender", f"unexpected topic {topic!r}")
            header, descs = envelope.decode_header(frames[1])
            envelope.check_layout(topic, header, descs, n_payload_frames=len(frames) - 2)
            arrays: list[np.ndarray] = []
            checks = []
            inline = iter(frames[2:])
            for d in descs:
                if d.shm is None:
                    arrays.append(envelope.array_from_buffer(d, next(inline)))
                else:
                    arr, intact = self._shm.resolve(d, d.shm.generation, copy=self.copy)
                    arrays.append(arr)
                    checks.append(intact)
        except EnvelopeError as exc:
            st = self.stats.get(topic, self.unattributed) if topic else self.unattributed
            if exc.kind == "overrun":
                st.overruns += 1
            else:
                st.malformed[exc.kind] += 1
            self._warn(exc.kind, "dropped a message on %s: %s", topic or "?", exc)
            # When the header was readable, its seq is consumed here: the loss is counted once,
            # as malformed or overrun, not again as a gap in seq. A foreign sender's seq says
            # nothing about this topic's stream.
            ours = header is not None and exc.kind != "foreign_sender"
            self._count_seq(topic, header.seq if ours and header is not None else None)
            return None
        self._count_seq(topic, header.seq)
        st = self.stats[topic]
        st.messages += 1
        st.bytes += sum(int(a.nbytes) for a in arrays)
        if header.t_pub_ns:
            st.latency_ns.append(now - header.t_pub_ns)
        validator = None
        if checks:
            validator = checks[0] if len(checks) == 1 else (lambda: all(c() for c in checks))
        return Message(topic, header, arrays, validator)

    def _count_seq(self, topic: str | None, seq: int | None) -> None:
        if topic is None or seq is None:
            return
        last = self._last_seq.get(topic)
        if last is not None:
            if seq > last + 1:
                self.stats[topic].dropped += seq - last - 1
            elif seq <= last:
                # The publisher restarted (its seq began again): not a loss.
                self._warn(
                    f"restart:{topic}",
                    "%s: seq went back from %d to %d (publisher restarted)",
                    topic,
                    last,
                    seq,
                )
        self._last_seq[topic] = seq

    def close(self) -> None:
        """Close the socket and drop the shared-memory mappings (views handed out stay valid)."""
        self._sock.close(linger=0)
        self._shm.close()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
