"""Worker processes of the transport benchmark, and the shared-memory hygiene around them.

A :class:`Child` is one ``edgefuse.bench._worker`` process with its JSON-line protocol; it is
always reaped (terminated, then killed) by :meth:`Child.close`. The hygiene helpers find what
a run left in ``/dev/shm`` and remove only what is provably orphaned.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from typing import Any, Final

SHM_DIR: Final = "/dev/shm"
#: Names of the segments zenoh and iceoryx2 leave behind on purpose (process-wide state).
FOREIGN_SHM_MARKERS: Final = (".zenoh", "iox2_")
_CLOSE_WAIT_S: Final = 5.0


class CellError(Exception):
    """A cell could not be measured; ``kind`` is ``unavailable`` (peer not installed),
    ``failed`` (a worker raised) or ``timeout`` (a worker went silent)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Child:
    """One worker process: ``python -m edgefuse.bench._worker ROLE SPEC``."""

    def __init__(self, role: str, spec_json: str) -> None:
        self.role = role
        # Closed by close(): the file outlives this call, holding what the worker said.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        self._buf = b""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgefuse.bench._worker", role, spec_json],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )

    def stderr_tail(self, nbytes: int = 1500) -> str:
        """The end of what the worker wrote on stderr (for error messages)."""
        with contextlib.suppress(OSError, ValueError):
            self._stderr.seek(0, os.SEEK_END)
            size = self._stderr.tell()
            self._stderr.seek(max(0, size - nbytes))
            return self._stderr.read().decode(errors="replace").strip()
        return ""

    def _line(self, timeout_s: float) -> dict[str, Any] | None:
        """The next protocol line, None on timeout; ``CellError`` if the worker is gone."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                self.proc.wait()
                raise CellError(
                    "failed",
                    f"{self.role} exited with status {self.proc.returncode}: {self.stderr_tail()}",
                )
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        msg: dict[str, Any] = json.loads(line)
        return msg

    def expect(self, event: str, timeout_s: float, watch: Iterable[Child] = ()) -> dict[str, Any]:
        """Wait for ``event`` from this worker, failing fast if a watched worker reports."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CellError(
                    "timeout",
                    f"{self.role}: no {event!r} within {timeout_s:.0f} s; "
                    f"stderr: {self.stderr_tail()}",
                )
            msg = self._line(min(remaining, 0.25))
            if msg is not None:
                if msg.get("event") == "error":
                    raise CellError(msg.get("kind", "failed"), f"{self.role}: {msg.get('error')}")
                if msg.get("event") == event:
                    return msg
                continue
            for other in watch:
                other.check_alive()

    def check_alive(self) -> None:
        """Raise ``CellError`` with the worker's own report if it has exited."""
        if self.proc.poll() is None:
            return
        with contextlib.suppress(CellError):
            while (msg := self._line(0.5)) is not None:
                if msg.get("event") == "error":
                    raise CellError(msg.get("kind", "failed"), f"{self.role}: {msg.get('error')}")
        raise CellError(
            "failed",
            f"{self.role} exited with status {self.proc.returncode}: {self.stderr_tail()}",
        )

    def tell(self, line: str) -> None:
        """Write one line on the worker's stdin (ignored if it has already exited)."""
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError, OSError):
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()

    def close(self) -> None:
        """Let the worker finish, else terminate it, else kill it; always reap it."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()  # end of file: a publisher stops waiting
        try:
            self.proc.wait(_CLOSE_WAIT_S)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(_CLOSE_WAIT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


def foreign_segments() -> set[str]:
    """Names in ``/dev/shm`` that belong to zenoh or iceoryx2."""
    try:
        names = os.listdir(SHM_DIR)
    except FileNotFoundError:
        return set()
    return {n for n in names if any(m in n for m in FOREIGN_SHM_MARKERS)}


def _mapped_paths() -> set[str]:
    """Every file that a process this user can inspect maps or holds open.

    Processes whose maps cannot be read (another user's, or an init process in a sandbox)
    are skipped: the segments in question are created mode 0600 by this user's workers.
    """
    paths: set[str] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/maps") as f:
                for line in f:
                    parts = line.split(maxsplit=5)
                    if len(parts) == 6:
                        paths.add(parts[5].strip().removesuffix(" (deleted)"))
            for fd in os.listdir(f"/proc/{entry}/fd"):
                with contextlib.suppress(OSError):
                    paths.add(os.readlink(f"/proc/{entry}/fd/{fd}"))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue  # exited meanwhile, or not ours to inspect
    return paths


def remove_orphans(before: set[str]) -> tuple[list[str], list[str]]:
    """Remove zenoh/iceoryx2 segments created since ``before`` that no process uses.

    Both libraries keep process-wide segments that outlive their last user (they tidy them
    at the next start). Only names that appeared during this run and that no live process
    maps or holds open are removed; returns (removed, still there).
    """
    new = sorted(foreign_segments() - before)
    if not new:
        return [], []
    in_use = _mapped_paths()
    removed: list[str] = []
    for name in new:
        path = os.path.join(SHM_DIR, name)
        if path in in_use:
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            removed.append(name)
    left = sorted(set(new) - set(removed))
    return removed, left
