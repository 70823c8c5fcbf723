"""One end of one benchmark cell in its own process: ``python -m edgefuse.bench._worker ROLE SPEC``.

``ROLE`` is ``pub`` or ``sub``; ``SPEC`` a :class:`~edgefuse.bench._peers.CellSpec` as JSON.
The worker talks to the orchestrator in JSON lines on its stdout (``listening``, ``ready``,
then ``result`` or ``error``) and, as publisher, reads ``go`` and ``stop`` on its stdin:

1. both start; the subscriber sets up and says ``listening``; the orchestrator tells the
   publisher ``start`` and it sets up;
2. the publisher sends probe messages until told ``go``; the subscriber says ``ready`` on
   the first probe it receives (so nothing measured is sent before it is connected);
3. the publisher sends the warm-up messages, the measured ones, then end markers until told
   ``stop``; the subscriber reports when it sees an end marker (or goes idle).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import sys
import time
import traceback
from typing import Any, Final, TextIO

from edgefuse.bench._payload import KIND_END, KIND_MEASURED, KIND_PROBE, KIND_WARMUP, check
from edgefuse.bench._peers import CellSpec, make_receiver, make_sender
from edgefuse.transport.stats import percentiles_ms

_PROBE_INTERVAL_S: Final = 0.02
_END_INTERVAL_S: Final = 0.05
_END_WAIT_S: Final = 10.0
#: A subscriber that has heard nothing for this long after its first message stops waiting.
IDLE_S: Final = 3.0
#: Measured messages of a max-rate cell never exceed this (bounds the latency list).
MAX_RATE_CAP: Final = 200_000
_PR_SET_PDEATHSIG: Final = 1


class _Stdin:
    """Line reader over fd 0 with a timeout; end of file means the orchestrator is gone."""

    def __init__(self) -> None:
        self.buf = b""

    def poll(self, timeout_s: float) -> str | None:
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self.buf:
            remaining = max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([0], [], [], remaining)
            if not ready:
                return None
            chunk = os.read(0, 4096)
            if not chunk:
                raise SystemExit("orchestrator closed stdin")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode().strip()


def _sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def run_pub(spec: CellSpec, emit: Any, stdin: _Stdin) -> dict[str, Any]:
    """Publisher side of a cell: wait for ``start``, probe until ``go``, warm up, send, end."""
    # The process is started together with the subscriber's (imports overlap) but sets up
    # only once the subscriber listens: a zenoh peer, for one, cannot connect before that.
    if stdin.poll(spec.timeout_s) != "start":
        raise TimeoutError("no 'start' from the orchestrator")
    sender = make_sender(spec)
    try:
        seq = probes = 0
        give_up = time.monotonic() + spec.timeout_s
        while True:
            sender.send(KIND_PROBE, seq)
            seq += 1
            probes += 1
            if stdin.poll(_PROBE_INTERVAL_S) == "go":
                break
            if time.monotonic() > give_up:
                raise TimeoutError("the subscriber never confirmed a probe")
        period_s = 1.0 / spec.rate_hz if spec.rate_hz else 0.0
        next_s = time.monotonic()
        for _ in range(spec.warmup):
            _sleep_until(next_s)
            sender.send(KIND_WARMUP, seq)
            seq += 1
            next_s = max(next_s + period_s, time.monotonic())
        limit = spec.messages if spec.rate_hz else MAX_RATE_CAP
        stop_s = time.monotonic() + spec.max_seconds
        sent = 0
        t_first_ns = t_last_ns = 0
        while sent < limit:
            if period_s:
                _sleep_until(next_s)
                # A send that overran its period is followed at once, never by a burst.
                next_s = max(next_s + period_s, time.monotonic())
            elif time.monotonic() >= stop_s:
                break
            t_last_ns = sender.send(KIND_MEASURED, seq)
            seq += 1
            sent += 1
            if sent == 1:
                t_first_ns = t_last_ns
        # End markers, repeated: a lossy queue may drop some, the orchestrator says when one got
        # through (or the subscriber gave up).
        end_by = time.monotonic() + _END_WAIT_S
        while time.monotonic() < end_by:
            sender.send(KIND_END, seq)
            seq += 1
            if stdin.poll(_END_INTERVAL_S) == "stop":
                break
        send_s = (t_last_ns - t_first_ns) / 1e9
        return {
            "sent": sent,
            "warmup": spec.warmup,
            "probes": probes,
            "send_s": send_s,
            "send_msg_s": (sent - 1) / send_s if sent > 1 and send_s > 0 else None,
            "note": sender.describe(),
        }
    finally:
        sender.close()


def run_sub(spec: CellSpec, emit: Any) -> dict[str, Any]:
    """Subscriber side of a cell: receive, check every payload, time the measured ones."""
    receiver = make_receiver(spec)
    try:
        emit({"event": "listening"})
        give_up = time.monotonic() + spec.timeout_s
        ready = False
        last_seq = -1
        latencies_ns: list[int] = []
        corrupt = overrun_late = 0
        t_first_ns = t_last_ns = 0
        last_heard = time.monotonic()
        ended = "deadline"
        while True:
            now = time.monotonic()
            if now > give_up:
                break
            if ready and now - last_heard > IDLE_S:
                ended = "idle"
                break
            got = receiver.recv(100)
            if got is None:
                continue
            last_heard = time.monotonic()
            marker = check(got.words)
            if got.intact is not None and not got.intact():
                # edgefuse's seqlock: the slot was reused while it was read. The transport
                # says so, the reader drops it: an overrun (lost), not corruption.
                overrun_late += 1
                continue
            if marker is None or (got.header_seq is not None and marker[1] != got.header_seq):
                corrupt += 1
                continue
            kind, seq, t_payload_ns = marker
            if seq <= last_seq:  # an older message again: a stale buffer
                corrupt += 1
                continue
            last_seq = seq
            if not ready:
                emit({"event": "ready"})
                ready = True
            if kind == KIND_MEASURED:
                t_send_ns = got.t_send_ns if got.t_send_ns is not None else t_payload_ns
                latencies_ns.append(got.t_recv_ns - t_send_ns)
                if not t_first_ns:
                    t_first_ns = got.t_recv_ns
                t_last_ns = got.t_recv_ns
            elif kind == KIND_END:
                ended = "end"
                break
            elif kind not in (KIND_PROBE, KIND_WARMUP):  # check() admits no other kind
                corrupt += 1
        recv_s = (t_last_ns - t_first_ns) / 1e9
        n = len(latencies_ns)
        return {
            "received": n,
            "corrupt": corrupt,
            "overrun_late": overrun_late,
            "latency_ms": percentiles_ms(latencies_ns),
            "recv_s": recv_s,
            "recv_msg_s": (n - 1) / recv_s if n > 1 and recv_s > 0 else None,
            "ended": ended,
            "note": receiver.describe(),
            "detail": receiver.detail(),
        }
    finally:
        receiver.close()


def _die_with_parent() -> None:
    # If the orchestrator dies without stopping us, the kernel sends SIGTERM, which the
    # handler below turns into a clean exit (sockets closed, shared memory unlinked).
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str]) -> int:
    """Run one role of one cell; report on the protocol channel; return the exit status."""
    # The protocol channel is a private copy of stdout; fd 1 then points at stderr, so that a
    # library printing to stdout cannot garble it.
    out: TextIO = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    signal.signal(signal.SIGTERM, _on_sigterm)
    _die_with_parent()

    def emit(obj: dict[str, Any]) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    try:
        role, spec = argv[0], CellSpec.from_json(argv[1])
        if role == "pub":
            result = run_pub(spec, emit, _Stdin())
        elif role == "sub":
            result = run_sub(spec, emit)
        else:
            raise ValueError(f"unknown role {role!r}")
    except ImportError as exc:
        emit({"event": "error", "kind": "unavailable", "error": f"{type(exc).__name__}: {exc}"})
        return 3
    except Exception as exc:
        traceback.print_exc()
        emit({"event": "error", "kind": "failed", "error": f"{type(exc).__name__}: {exc}"})
        return 1
    emit({"event": "result", **result})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
