"""Fixtures for the transport tests: leak checks, unique endpoints, and child processes.

Every test here is checked for hygiene by an autouse fixture: no ``/dev/shm/edgefuse.*``
segment made by the test (or a child it spawned) may remain, and no child process may outlive
it (leftovers are killed and reaped, and the test fails). Child processes are started with the
``spawn`` context, so they are fresh interpreters that import this package exactly like a node
process would.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import multiprocessing.process
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from multiprocessing import resource_tracker
from pathlib import Path
from typing import Any

import pytest

from edgefuse.envelope import Message
from edgefuse.transport import Publisher, Subscriber, TransportOptions
from edgefuse.transport.endpoints import free_tcp_port
from tests.conftest import process_table

SHM_DIR = "/dev/shm"
#: How long a test waits for anything a healthy child does in well under a second.
PATIENCE_S = 20.0

SPAWN = multiprocessing.get_context("spawn")


#: Pids of the child processes the running test started (their segments are the test's too).
_spawned: set[int] = set()


def edgefuse_segments() -> set[str]:
    """Names of edgefuse segments in /dev/shm made by this process or the test's children.

    A segment name ends in ``.<creator pid>.<token><index>``. Segments of other processes on
    the machine (a benchmark running beside the tests) are not this test's business: they are
    neither counted nor removed.
    """
    mine = {os.getpid(), *_spawned}
    out = set()
    for name in os.listdir(SHM_DIR):
        if not name.startswith("edgefuse."):
            continue
        pid = name.rsplit(".", 2)[-2] if name.count(".") >= 3 else ""
        if pid.isdigit() and int(pid) in mine:
            out.add(name)
    return out


def direct_children() -> list[tuple[int, str]]:
    """(pid, state) of every process whose parent is this one."""
    me = os.getpid()
    return [(pid, state) for pid, (ppid, state) in process_table().items() if ppid == me]


def open_fds() -> int:
    """Number of file descriptors this process holds."""
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def transport_hygiene() -> Iterator[None]:
    """Fail a test that leaves edgefuse segments or child processes behind (and clean up)."""
    _spawned.clear()
    before = edgefuse_segments()
    yield
    leftovers: list[str] = []
    for proc in multiprocessing.process.active_children():
        proc.terminate()
        proc.join(5)
        leftovers.append(f"{proc.name} (pid {proc.pid})")
    # spawn starts multiprocessing's resource tracker (a child of ours) on first use; stop it
    # so that every test starts and ends with no children at all. Objects of the test that
    # registered with it (semaphores of Events) are collected first so it has nothing to warn
    # about.
    gc.collect()
    stop_tracker = getattr(resource_tracker._resource_tracker, "_stop", None)
    if stop_tracker is not None:
        stop_tracker()
    for pid, state in direct_children():
        if state != "Z":
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            leftovers.append(f"pid {pid} ({state})")
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    leaked = edgefuse_segments() - before
    for name in leaked:  # do not let one failure cascade into the next tests
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(SHM_DIR, name))
    assert not leftovers, f"child processes left behind: {leftovers}"
    assert not leaked, f"shared-memory segments left behind: {sorted(leaked)}"


@pytest.fixture
def run_id() -> str:
    """A run id of this test alone, so its segment names are its own."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def ipc(tmp_path: Path) -> Callable[[str], str]:
    """``ipc(name)``: a unique ipc:// endpoint under this test's tmp_path."""

    def make(name: str) -> str:
        path = tmp_path / f"{name}.ipc"
        # sun_path holds 107 bytes; a longer path fails with a confusing ZMQError.
        assert len(str(path)) < 100, f"ipc path too long for a unix socket: {path}"
        return f"ipc://{path}"

    return make


@pytest.fixture
def tcp() -> Callable[[], str]:
    """``tcp()``: a tcp:// endpoint on a loopback port that is free right now."""
    return lambda: f"tcp://127.0.0.1:{free_tcp_port()}"


@pytest.fixture
def opts(run_id: str) -> Callable[..., TransportOptions]:
    """``opts(**overrides)``: transport options carrying this test's run id."""
    return lambda **kw: TransportOptions(run_id=run_id, **kw)


class Flag:
    """A one-shot signal between the test and a spawned child, like ``multiprocessing.Event``.

    Built on a pipe rather than a semaphore: a semaphore registers with multiprocessing's
    resource tracker, which the hygiene fixture stops after every test.
    """

    def __init__(self) -> None:
        self._r, self._w = SPAWN.Pipe(duplex=False)
        self._seen = False

    def set(self) -> None:
        self._w.send_bytes(b"!")

    def wait(self, timeout: float | None = None) -> bool:
        """True once set (by any process holding the flag); False after ``timeout`` s."""
        if not self._seen and self._r.poll(timeout):
            self._seen = True
        return self._seen

    def is_set(self) -> bool:
        return self.wait(0)


class Children:
    """Spawned child processes of one test; joined (or killed) when the test ends."""

    def __init__(self) -> None:
        self.procs: list[Any] = []

    def start(self, target: Callable[..., None], *args: Any) -> Any:
        """Start ``target(*args)`` in a fresh interpreter (spawn) and return the process."""
        proc = SPAWN.Process(target=target, args=args, daemon=True)
        proc.start()
        _spawned.add(proc.pid)
        self.procs.append(proc)
        return proc

    def join(self, proc: Any, timeout: float = PATIENCE_S) -> None:
        """Wait for ``proc`` and check it exited cleanly (a failing child fails the test)."""
        proc.join(timeout)
        assert not proc.is_alive(), f"{proc.name} did not exit within {timeout} s"
        assert proc.exitcode == 0, f"{proc.name} exited with {proc.exitcode}"

    def close(self) -> None:
        for proc in self.procs:
            proc.join(2)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        self.procs.clear()  # their arguments (pipes) go with them


@pytest.fixture
def children() -> Iterator[Children]:
    """Start child processes with ``children.start(target, *args)``."""
    c = Children()
    yield c
    c.close()


# --- the handshake between a child publisher and the test's subscriber -----------------------
# ZeroMQ PUB drops what it sends before a subscription has arrived ("slow joiner"). A child
# publisher therefore publishes on its ``sync`` stream until the test has seen one of those
# messages and set ``go``; only then does it publish what the test checks.


def child_sync(pub: Publisher, go: Flag) -> None:
    """Child side: publish on ``sync`` until the parent sets ``go``."""
    deadline = time.monotonic() + PATIENCE_S
    while not go.wait(0.02):
        pub.publish("sync", [], t_sensor_ns=0)
        if time.monotonic() > deadline:
            raise TimeoutError("the test never answered the sync messages")


def parent_sync(sub: Subscriber, go: Flag) -> None:
    """Test side: wait for a ``sync`` message from the child, then set ``go``."""
    deadline = time.monotonic() + PATIENCE_S
    while time.monotonic() < deadline:
        msg = sub.recv(100)
        if msg is not None and msg.topic.endswith("/sync"):
            go.set()
            return
    raise AssertionError("no sync message from the child publisher")


def recv_topic(sub: Subscriber, topic: str, timeout_s: float = PATIENCE_S) -> Message | None:
    """The next message on ``topic`` (skipping late sync messages), or None on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        msg = sub.recv(max(1, int(left * 1000)))
        if msg is not None and msg.topic == topic:
            return msg
