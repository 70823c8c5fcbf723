"""The zenoh and iceoryx2 ends of the benchmark (imported only by the workers that run them).

Both use their library's shared-memory path as far as the Python binding allows:

- zenoh 1.x: an explicit ``ShmProvider`` buffer per message. The binding offers no writable
  view of it, so the sender copies its frame in (``buf[:] = frame``, before the send stamp,
  like filling a loan), and no readable view either, so the receiver copies the payload out
  with ``ZBytes.to_bytes()`` (inside the measured latency). The two sessions are peers linked
  over tcp on 127.0.0.1 (scouting off); only SHM references cross that link when SHM works.
- iceoryx2: a loaned slice (``loan_slice_uninit``) filled in place and received as a
  ``memoryview`` of the shared memory (zero copy both ways), with an iceoryx2 event to wake
  the receiver (a blocking wait, as ZeroMQ's poll is for the others).
"""

from __future__ import annotations

import ctypes
import json
import queue
import time
from importlib import metadata
from typing import Any, Final

import numpy as np

from edgefuse.bench._payload import filled, stamp, words
from edgefuse.bench._peers import QUEUE_DEPTH, CellSpec, Got, Receiver, Sender

_KEY: Final = "edgefuse/bench/payload"


def _zenoh_config(zenoh: Any, *, listen: int = 0, connect: int = 0) -> Any:
    # Scouting off and explicit endpoints: the two peers find each other only through the
    # given loopback port, never a stray zenoh process elsewhere on the host or network.
    cfg = {
        "mode": "peer",
        "listen": {"endpoints": [f"tcp/127.0.0.1:{listen}"] if listen else []},
        "connect": {"endpoints": [f"tcp/127.0.0.1:{connect}"] if connect else []},
        "scouting": {"multicast": {"enabled": False}, "gossip": {"enabled": False}},
        "transport": {"shared_memory": {"enabled": True}},
    }
    return zenoh.Config.from_json5(json.dumps(cfg))


class ZenohSender(Sender):
    """A zenoh publisher putting one SHM buffer per message (see the module docstring)."""

    def __init__(self, spec: CellSpec) -> None:
        import zenoh

        self.zenoh = zenoh
        self.nbytes = spec.nbytes
        # Typed as Any: the binding's stubs leave close() and undeclare() unannotated.
        self.session: Any = zenoh.open(_zenoh_config(zenoh, connect=spec.port))
        self.pub: Any = self.session.declare_publisher(_KEY, express=True)
        self.frame = bytearray(spec.nbytes)
        view = np.frombuffer(self.frame, dtype=np.uint8)
        view[:] = filled((spec.nbytes,))
        self.words = words(view)
        self.provider: Any = None
        try:
            # Room for every buffer the receiver's queue and the link can hold, plus spares.
            self.provider = zenoh.shm.ShmProvider.default_backend(spec.nbytes * (QUEUE_DEPTH + 4))
            self.policy = zenoh.shm.BlockOn(zenoh.shm.GarbageCollect())
            self.note = "SHM provider; sender copies its frame into the SHM buffer before the stamp"
        except Exception as exc:  # the SHM feature missing from this build: say so, go on
            self.note = f"no SHM provider ({exc}); payload sent as bytes over the tcp link"

    def send(self, kind: int, seq: int) -> int:
        stamp(self.words, kind, seq)
        if self.provider is not None:
            buf = self.provider.alloc(self.nbytes, policy=self.policy)
            buf[:] = self.frame
            t_ns = time.monotonic_ns()
            buf[16:24] = t_ns.to_bytes(8, "little")  # word 2: the send stamp
            self.pub.put(buf)
            return t_ns
        t_ns = time.monotonic_ns()
        self.words[2] = t_ns
        self.pub.put(bytes(self.frame))
        return t_ns

    def close(self) -> None:
        self.pub.undeclare()
        self.session.close()


class ZenohReceiver(Receiver):
    """A zenoh subscriber; its callback copies each payload out and stamps it at once."""

    def __init__(self, spec: CellSpec) -> None:
        import zenoh

        self.session: Any = zenoh.open(_zenoh_config(zenoh, listen=spec.port))
        self.queue: queue.SimpleQueue[tuple[np.ndarray, int, bool]] = queue.SimpleQueue()
        self.samples = 0
        self.shm_samples = 0
        # A callback runs on zenoh's receive thread as soon as a sample arrives, so the stamp
        # is not delayed by this process's main loop (as a polled channel's would be).
        self.sub: Any = self.session.declare_subscriber(_KEY, self._on_sample)

    def _on_sample(self, sample: Any) -> None:
        payload = sample.payload
        arr = np.frombuffer(payload.to_bytes(), dtype=np.uint8)
        t_ns = time.monotonic_ns()
        self.queue.put((arr, t_ns, payload.as_shm() is not None))

    def recv(self, timeout_ms: int) -> Got | None:
        try:
            arr, t_ns, shm = self.queue.get(timeout=timeout_ms / 1000)
        except queue.Empty:
            return None
        self.samples += 1
        self.shm_samples += shm
        return Got(words(arr), None, t_ns)

    def describe(self) -> str:
        return (
            f"zenoh {metadata.version('eclipse-zenoh')} peers over a tcp/127.0.0.1 link; "
            f"{self.shm_samples}/{self.samples} samples arrived as SHM; receiver copies the "
            "payload out (ZBytes.to_bytes, no buffer view in the binding)"
        )

    def detail(self) -> dict[str, Any]:
        return {"samples": self.samples, "shm_samples": self.shm_samples}

    def close(self) -> None:
        self.sub.undeclare()
        self.session.close()


def _iox2_open(spec: CellSpec) -> tuple[Any, Any, Any, Any]:
    """The iceoryx2 module, node, publish-subscribe service and event service of a cell.

    Both ends must ask for the same service settings or the second one cannot open it.
    """
    import iceoryx2 as iox2

    iox2.set_log_level(iox2.LogLevel.Error)
    # Signals stay with Python: the worker turns SIGTERM into a clean exit itself.
    node = (
        iox2.NodeBuilder.new()
        .signal_handling_mode(iox2.SignalHandlingMode.Disabled)
        .create(iox2.ServiceType.Ipc)
    )
    name = iox2.ServiceName.new(spec.service)
    service = (
        node.service_builder(name)
        .publish_subscribe(iox2.Slice[ctypes.c_uint8])
        .max_publishers(1)
        .max_subscribers(1)
        .history_size(0)
        .subscriber_max_buffer_size(QUEUE_DEPTH)
        .open_or_create()
    )
    event = node.service_builder(name).event().open_or_create()
    return iox2, node, service, event


class Iox2Sender(Sender):
    """An iceoryx2 publisher filling a loaned slice in place, then notifying the receiver."""

    note = "loaned slice filled in place, iceoryx2 event wakes the receiver"

    def __init__(self, spec: CellSpec) -> None:
        self.iox2, self.node, self.service, self.event = _iox2_open(spec)
        self.nbytes = spec.nbytes
        self.pub = (
            self.service.publisher_builder()
            .initial_max_slice_len(spec.nbytes)
            .allocation_strategy(self.iox2.AllocationStrategy.Static)
            .create()
        )
        self.notifier = self.event.notifier_builder().create()

    def send(self, kind: int, seq: int) -> int:
        sample = self.pub.loan_slice_uninit(self.nbytes)
        w = words(np.frombuffer(sample.payload().as_memory_view(), dtype=np.uint8))
        stamp(w, kind, seq)
        t_ns = time.monotonic_ns()
        w[2] = t_ns
        del w  # no view may outlive the loan
        sample.assume_init().send()
        self.notifier.notify()
        return t_ns

    def close(self) -> None:
        self.notifier.delete()
        self.pub.delete()
        del self.service, self.event, self.node


class Iox2Receiver(Receiver):
    """An iceoryx2 subscriber: waits on the event, then takes samples as shared-memory views."""

    def __init__(self, spec: CellSpec) -> None:
        self.iox2, self.node, self.service, self.event = _iox2_open(spec)
        self.sub = self.service.subscriber_builder().buffer_size(QUEUE_DEPTH).create()
        self.listener = self.event.listener_builder().create()
        self.held: Any = None

    def recv(self, timeout_ms: int) -> Got | None:
        if self.held is not None:
            self.held.delete()  # the previous sample goes back to the publisher
            self.held = None
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            sample = self.sub.receive()
            if sample is not None:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            # Events are latched: one sent between receive() and here wakes this at once.
            self.listener.timed_wait(self.iox2.Duration.from_secs_f64(remaining))
        arr = np.frombuffer(sample.payload().as_memory_view(), dtype=np.uint8)
        t_ns = time.monotonic_ns()
        self.held = sample
        return Got(words(arr), None, t_ns)

    def close(self) -> None:
        if self.held is not None:
            self.held.delete()
            self.held = None
        self.listener.delete()
        self.sub.delete()
        del self.service, self.event, self.node
