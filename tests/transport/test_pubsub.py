"""Publisher and subscriber across real processes, over ipc (shared memory) and tcp (inline).

Every payload's bytes are derived from (stream, seq, payload index), so the receiving side
recomputes what it must have got and compares all of it. Child publishers are spawned
interpreters; they publish on a ``sync`` stream until the test has seen one (ZeroMQ drops what
a PUB socket sends before the subscription arrives) and keep their shared memory until told.
"""

from __future__ import annotations

import logging
import mmap
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from edgefuse import envelope
from edgefuse.envelope import Message, PayloadDesc
from edgefuse.transport import Publisher, Subscriber, TransportOptions
from edgefuse.transport.shm import list_segments

from .conftest import PATIENCE_S, Children, Flag, child_sync, parent_sync, recv_topic

NODE = "n"
STREAMS = ("small", "big", "multi", "loan")
COUNT = 12


def pattern(seq: int, j: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """Payload ``j`` of message ``seq``: every element depends on its index, seq and j."""
    n = int(np.prod(shape))
    values = (np.arange(n, dtype=np.int64) * 7 + seq * 131 + j * 17) % 251
    return values.astype(dtype).reshape(shape)


def expected(stream: str, seq: int) -> list[np.ndarray]:
    """What message ``seq`` on ``stream`` carries."""
    if stream == "small":  # 1 KiB: inline everywhere
        return [pattern(seq, 0, (1000,), np.uint8)]
    if stream == "big":  # 256 KiB: shared memory on ipc
        return [pattern(seq, 0, (256, 256), "<f4")]
    if stream == "multi":  # 1.9 MB in four payloads: more than one 1 MiB slot
        return [
            pattern(seq, 0, (600_000,), "<u2"),
            pattern(seq, 1, (10,), "<f8"),
            pattern(seq, 2, (700_000,), np.uint8),
            np.array(seq, ">i8"),
        ]
    if stream == "loan":  # filled in place: an image and a depth map, 1.5 MB together
        return [
            pattern(seq, 0, (480, 640, 3), np.uint8),
            pattern(seq, 1, (480, 640), "<u2"),
            pattern(seq, 2, (3,), "<i4"),
        ]
    raise ValueError(stream)


def publish_expected(pub: Publisher, stream: str, seq: int) -> None:
    arrays = expected(stream, seq)
    if stream == "loan":
        loans = [pub.loan(stream, a.shape, a.dtype) for a in arrays[:2]]
        for loan, a in zip(loans, arrays, strict=False):
            loan[...] = a
        arrays = [*loans, arrays[2]]
    pub.publish(
        stream,
        arrays,
        t_sensor_ns=seq * 1000,
        t_host_ns=seq * 1000 + 5,
        frame_id="camera_optical",
        encoding="bgr8",
        meta={"seq": seq, "stream": stream},
    )


def _content_publisher(endpoint: str, options: TransportOptions, go: Flag, done: Flag) -> None:
    with Publisher(endpoint, node=NODE, options=options) as pub:
        child_sync(pub, go)
        for seq in range(COUNT):
            for stream in STREAMS:
                publish_expected(pub, stream, seq)
        assert pub.stats[f"{NODE}/multi"].messages == COUNT
        if not done.wait(PATIENCE_S):
            raise TimeoutError("the test never finished reading")


def recv_raw(sub: Subscriber, timeout_s: float = PATIENCE_S) -> tuple[list[Any], Message] | None:
    """The next data message with its raw frames (to see how it travelled); sync skipped."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not sub.socket.poll(100):
            continue
        frames = [f.buffer for f in sub.socket.recv_multipart(copy=False)]
        msg = sub.decode(frames)
        if msg is not None and not msg.topic.endswith("/sync"):
            return frames, msg
    return None


def check_message(frames: list[Any], msg: Message, seq: int, *, shm: bool) -> None:
    """Content, header and the path each payload took (shared memory or inline, no copy)."""
    stream = msg.header.stream
    want = expected(stream, seq)
    assert msg.header.seq == seq
    assert (msg.header.t_sensor_ns, msg.header.t_host_ns) == (seq * 1000, seq * 1000 + 5)
    assert (msg.header.frame_id, msg.header.encoding) == ("camera_optical", "bgr8")
    assert msg.header.meta == {"seq": seq, "stream": stream}
    assert msg.header.t_pub_ns > 0 and msg.header.t_ns is None
    assert len(msg.arrays) == len(want)
    _, descs = envelope.decode_header(frames[1])
    inline = iter(frames[2:])
    for got, exp, desc in zip(msg.arrays, want, descs, strict=True):
        assert got.dtype == exp.dtype and got.shape == exp.shape
        assert np.array_equal(got, exp), f"{stream} #{seq}: content differs"
        assert not got.flags.writeable
        big = exp.nbytes >= envelope.ZERO_COPY_MIN_BYTES
        if shm and big:
            assert desc.shm is not None, f"{stream} #{seq}: {exp.nbytes} bytes went inline"
            assert isinstance(root(got), mmap.mmap)  # a view into the segment
        else:
            assert desc.shm is None
            frame = next(inline)
            if got.nbytes:  # a view of the received frame, not a copy
                assert np.shares_memory(got, np.frombuffer(frame, np.uint8))
    assert msg.intact()


def root(arr: np.ndarray) -> object:
    """The object at the bottom of an array's chain of views."""
    obj: object = arr
    while isinstance(obj, np.ndarray) and obj.base is not None:
        obj = obj.base
    return obj.obj if isinstance(obj, memoryview) else obj


@pytest.mark.parametrize("scheme", ["ipc", "tcp"])
def test_every_message_arrives_intact_over(
    scheme: str,
    ipc: Callable[[str], str],
    tcp: Callable[[], str],
    opts: Callable[..., TransportOptions],
    children: Children,
) -> None:
    endpoint = ipc("pub") if scheme == "ipc" else tcp()
    # Room for every message: this test is about content, not about losing any.
    options = opts(queue_depth=1000, shm_slots=COUNT + 2)
    go, done = Flag(), Flag()
    topics = [f"{NODE}/{s}" for s in (*STREAMS, "sync")]
    with Subscriber(endpoint, topics, options=options) as sub:
        proc = children.start(_content_publisher, endpoint, options, go, done)
        parent_sync(sub, go)
        received: dict[str, list[Message]] = {s: [] for s in STREAMS}
        for _ in range(COUNT * len(STREAMS)):
            got = recv_raw(sub)
            assert got is not None, f"timed out; so far {[len(v) for v in received.values()]}"
            frames, msg = got
            stream = msg.header.stream
            check_message(frames, msg, len(received[stream]), shm=scheme == "ipc")
            received[stream].append(msg)
        # The shared-memory views are still valid: no slot was reused.
        assert all(m.intact() for ms in received.values() for m in ms)
        if scheme == "ipc":
            assert any(s.startswith(f"edgefuse.{options.run_id}.") for s in list_segments())
        done.set()
        children.join(proc)
        for stream in STREAMS:
            st = sub.stats[f"{NODE}/{stream}"]
            assert st.messages == COUNT
            assert (st.dropped, st.overruns, dict(st.malformed)) == (0, 0, {})
            assert len(st.latency_ns) == COUNT
            assert st.bytes == COUNT * sum(a.nbytes for a in expected(stream, 0))
    # The publisher removed its segments when it closed.
    assert not list_segments(f"edgefuse.{options.run_id}.")


def in_process_sync(pub: Publisher, sub: Subscriber) -> None:
    """Publish on ``sync`` until ``sub`` receives one (subscriptions take a moment)."""
    deadline = time.monotonic() + PATIENCE_S
    while time.monotonic() < deadline:
        pub.publish("sync", [], t_sensor_ns=0)
        msg = sub.recv(50)
        if msg is not None and msg.topic == f"{NODE}/sync":
            return
    raise AssertionError("no sync message arrived")


def test_loaned_payloads_travel_without_a_copy(
    ipc: Callable[[str], str], opts: Callable[..., TransportOptions]
) -> None:
    endpoint = ipc("loan")
    topics = [f"{NODE}/img", f"{NODE}/sync"]
    with (
        Publisher(endpoint, node=NODE, options=opts()) as pub,
        Subscriber(endpoint, topics, options=opts()) as sub,
    ):
        in_process_sync(pub, sub)
        loan = pub.loan("img", (512, 1024), np.uint8)
        loan[...] = 1
        copied = np.full((256, 1024), 2, np.uint8)  # fits in the loan's slot too
        pub.publish("img", [loan, copied], t_sensor_ns=0)
        msg = recv_topic(sub, f"{NODE}/img")
        assert msg is not None
        view_of_loan, view_of_copy = msg.arrays
        assert bool(np.all(view_of_loan == 1)) and bool(np.all(view_of_copy == 2))
        # Touch both sources after publishing (what the docs forbid): the loan was never
        # copied, so the receiver sees the change; the ordinary array was copied once.
        loan[0, 0] = 200
        copied[0, 0] = 200
        assert view_of_loan[0, 0] == 200
        assert view_of_copy[0, 0] == 2
        assert msg.intact()


def test_shm_never_sends_everything_inline_on_ipc(
    ipc: Callable[[str], str], opts: Callable[..., TransportOptions], run_id: str
) -> None:
    endpoint = ipc("inline")
    topics = [f"{NODE}/big", f"{NODE}/sync"]
    with (
        Publisher(endpoint, node=NODE, options=opts(shm="never")) as pub,
        Subscriber(endpoint, topics, options=opts()) as sub,
    ):
        in_process_sync(pub, sub)
        loan = pub.loan("big", (1 << 20,), np.uint8)  # an ordinary array when shm is off
        loan[...] = 9
        pub.publish("big", [loan], t_sensor_ns=0)
        got = recv_raw(sub)
        assert got is not None
        frames, msg = got
        assert envelope.decode_header(frames[1])[1][0].shm is None
        assert len(frames) == 3 and bool(np.all(msg.arrays[0] == 9))
        assert list_segments(f"edgefuse.{run_id}.") == []


def test_a_new_publisher_in_the_same_process_is_not_confused_with_the_old(
    ipc: Callable[[str], str], opts: Callable[..., TransportOptions], caplog: Any
) -> None:
    # Same run id, topic and pid: the second ring's segment must not share the first's name,
    # or the subscriber's cached mapping of the (unlinked) first would serve its old bytes.
    caplog.set_level(logging.WARNING, logger="edgefuse.transport.pubsub")
    endpoint = ipc("again")
    topics = [f"{NODE}/img", f"{NODE}/sync"]
    with Subscriber(endpoint, topics, options=opts()) as sub:
        for value in (1, 7):
            with Publisher(endpoint, node=NODE, options=opts()) as pub:
                in_process_sync(pub, sub)
                pub.publish("img", [np.full(100_000, value, np.uint8)], t_sensor_ns=value)
                msg = recv_topic(sub, f"{NODE}/img")
                assert msg is not None and msg.header.seq == 0
                assert bool(np.all(msg.arrays[0] == value)), "stale data from the old segment"
                assert msg.intact()
        st = sub.stats[f"{NODE}/img"]
        assert (st.messages, st.dropped, st.overruns) == (2, 0, 0)
    assert "publisher restarted" in caplog.text


def _burst_publisher(
    endpoint: str,
    options: TransportOptions,
    events: tuple[Flag, Flag, Flag, Flag],
    count: int,
    nbytes: int,
) -> None:
    """Publish ``count`` messages as fast as possible, then one more once the test has drained."""
    go, burst_done, drained, done = events
    with Publisher(endpoint, node=NODE, options=options) as pub:
        child_sync(pub, go)
        for seq in range(count + 1):
            if seq == count:
                burst_done.set()
                if not drained.wait(PATIENCE_S):
                    raise TimeoutError("the test never drained")
            loan = pub.loan("data", (nbytes,), np.uint8)
            loan.fill(seq % 256)
            pub.publish("data", [loan], t_sensor_ns=seq)
        if not done.wait(PATIENCE_S):
            raise TimeoutError("the test never finished")


def run_burst(
    sub: Subscriber,
    children: Children,
    endpoint: str,
    options: TransportOptions,
    count: int,
    nbytes: int,
) -> list[Message]:
    """Let the child burst while nobody reads, then read everything; returns what arrived."""
    events = (Flag(), Flag(), Flag(), Flag())
    go, burst_done, drained, done = events
    proc = children.start(_burst_publisher, endpoint, options, events, count, nbytes)
    parent_sync(sub, go)
    assert burst_done.wait(PATIENCE_S)
    topic = f"{NODE}/data"
    got: list[Message] = []

    def check(msg: Message) -> None:
        # Checked on arrival, then intact() says the slot was not reused meanwhile.
        assert bool(np.all(msg.arrays[0] == msg.header.seq % 256)), "torn or foreign data"
        assert msg.intact()
        got.append(msg)

    while (msg := recv_topic(sub, topic, timeout_s=0.5)) is not None:
        check(msg)
    drained.set()
    last = recv_topic(sub, topic)
    assert last is not None and last.header.seq == count
    check(last)
    done.set()
    children.join(proc)
    return got


def test_queue_overflow_shows_as_counted_drops(
    tcp: Callable[[], str], opts: Callable[..., TransportOptions], children: Children
) -> None:
    endpoint = tcp()
    count = 300
    options = opts(queue_depth=2)
    with Subscriber(endpoint, [f"{NODE}/data", f"{NODE}/sync"], options=options) as sub:
        got = run_burst(sub, children, endpoint, options, count, 64 * 1024)
        seqs = [m.header.seq for m in got]
        assert seqs == sorted(set(seqs)) and seqs[0] == 0
        st = sub.stats[f"{NODE}/data"]
        assert st.dropped > 0, "a burst of 19 MB through queues of 2 lost nothing?"
        assert st.messages + st.dropped == count + 1  # every seq accounted for, once
        assert st.overruns == 0 and not st.malformed


def test_slow_reader_of_a_small_ring_gets_overruns_never_torn_data(
    ipc: Callable[[str], str], opts: Callable[..., TransportOptions], children: Children
) -> None:
    endpoint = ipc("ring")
    count = 20
    options = opts(queue_depth=1000, shm_slots=2)
    with Subscriber(endpoint, [f"{NODE}/data", f"{NODE}/sync"], options=options) as sub:
        got = run_burst(sub, children, endpoint, options, count, 128 * 1024)
        # Two slots: only the last two messages of the burst were still in the ring.
        assert [m.header.seq for m in got] == [count - 2, count - 1, count]
        st = sub.stats[f"{NODE}/data"]
        assert st.overruns == count - 2
        assert st.dropped == 0  # an overrun is not also counted as a drop
        assert st.messages == 3 and not st.malformed


def _racing_publisher(endpoint: str, options: TransportOptions, go: Flag, stop: Flag) -> None:
    """Publish 1 MiB messages, each byte ``seq % 256``, until stopped: in turns a paced
    stretch (the reader keeps up) and a burst as fast as possible (the writer laps it)."""
    with Publisher(endpoint, node=NODE, options=options) as pub:
        child_sync(pub, go)
        seq = 0
        deadline = time.monotonic() + PATIENCE_S
        while not stop.is_set() and time.monotonic() < deadline:
            loan = pub.loan("race", (1 << 20,), np.uint8)
            loan.fill(seq % 256)
            pub.publish("race", [loan], t_sensor_ns=seq)
            seq += 1
            if seq % 40 < 20:
                time.sleep(0.003)


def test_reading_while_the_writer_laps_the_ring_never_passes_torn_data(
    ipc: Callable[[str], str], opts: Callable[..., TransportOptions], children: Children
) -> None:
    endpoint = ipc("race")
    options = opts(queue_depth=4, shm_slots=2)
    topics = [f"{NODE}/race", f"{NODE}/sync"]
    go, stop = Flag(), Flag()
    with (
        Subscriber(endpoint, topics, options=options) as viewer,
        Subscriber(endpoint, topics, options=options, copy=True) as copier,
    ):
        proc = children.start(_racing_publisher, endpoint, options, go, stop)
        parent_sync(viewer, go)
        checked = {"view ok": 0, "view torn, detected": 0, "copy ok": 0}
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            for sub in (viewer, copier):
                msg = recv_topic(sub, f"{NODE}/race", timeout_s=1.0)
                assert msg is not None
                ok = bool(np.all(msg.arrays[0] == msg.header.seq % 256))
                if sub is copier:
                    # A copy is checked after copying: what is delivered is always whole.
                    assert ok and msg.intact() and msg.arrays[0].flags.owndata
                    checked["copy ok"] += 1
                elif msg.intact():  # checked after reading: then what was read was whole
                    assert ok, "a view read as intact held torn data"
                    checked["view ok"] += 1
                else:
                    checked["view torn, detected"] += 1
        stop.set()
        children.join(proc)
        assert checked["view ok"] > 0 and checked["copy ok"] > 0, checked
        # The writer did lap the reader: references to reused slots were counted.
        assert viewer.stats[f"{NODE}/race"].overruns + checked["view torn, detected"] > 0


def _restarting_publisher(
    endpoint: str, options: TransportOptions, go: Flag, done: Flag, values: list[int]
) -> None:
    with Publisher(endpoint, node=NODE, options=options) as pub:
        child_sync(pub, go)
        for v in values:
            pub.publish("data", [np.full(100_000, v, np.uint8)], t_sensor_ns=v)
        if not done.wait(PATIENCE_S):
            raise TimeoutError("the test never finished")


def test_publisher_restart_is_not_counted_as_a_drop(
    ipc: Callable[[str], str],
    opts: Callable[..., TransportOptions],
    children: Children,
    caplog: Any,
) -> None:
    caplog.set_level(logging.WARNING, logger="edgefuse.transport.pubsub")
    endpoint = ipc("restart")
    options = opts(queue_depth=100)
    runs = [[1, 2, 3, 4, 5], [11, 12, 13]]
    with Subscriber(endpoint, [f"{NODE}/data", f"{NODE}/sync"], options=options) as sub:
        for values in runs:
            go, done = Flag(), Flag()
            proc = children.start(_restarting_publisher, endpoint, options, go, done, values)
            parent_sync(sub, go)
            for seq, v in enumerate(values):
                msg = recv_topic(sub, f"{NODE}/data")
                assert msg is not None
                assert msg.header.seq == seq and bool(np.all(msg.arrays[0] == v))
            done.set()
            children.join(proc)
        st = sub.stats[f"{NODE}/data"]
        assert st.messages == 8 and st.dropped == 0 and st.overruns == 0
    assert "seq went back from 4 to 0 (publisher restarted)" in caplog.text


def test_publish_refuses_bad_dtypes_before_touching_shared_memory(
    ipc: Callable[[str], str], opts: Callable[..., TransportOptions], run_id: str
) -> None:
    with Publisher(ipc("bad"), node=NODE, options=opts()) as pub:
        with pytest.raises(envelope.EnvelopeError) as err:
            pub.publish("x", [np.zeros(100_000), np.zeros(3, object)], t_sensor_ns=0)
        assert err.value.kind == "bad_dtype"
        assert list_segments(f"edgefuse.{run_id}.") == []
        header = pub.publish("x", [np.zeros(100_000)], t_sensor_ns=0)
        assert header.seq == 0  # the refused message took no seq
        assert pub.stats[f"{NODE}/x"].messages == 1
        assert PayloadDesc(np.dtype("<f8"), (100_000,)).nbytes == pub.stats[f"{NODE}/x"].bytes
