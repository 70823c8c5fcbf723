"""The aligned set: what the aligner publishes on ``sync/set`` and what inference consumes.

One set describes one instant ``t_ns`` (the reference frame's corrected time, host timeline).
It carries, per stream of the aligner and in the configured order, a *member*: the chosen
message(s) of that stream, re-expressed on the host timeline, or the reason it is missing. The
modality mask says which streams are present, so a consumer never guesses.

On the wire a set is one envelope (encoding ``aligned_set``): the members' payloads are the
message's arrays, in stream order, and ``meta`` holds, per stream, which arrays are its own
plus its stamps and policy details (for audio: the window's first sample, sample period and
missing samples; for lidar: each sweep's start time and slope, so per-point times can be
deskewed). ``AlignedSet.from_message`` turns it back into objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgefuse.envelope import Header, Message
from edgefuse.errors import EnvelopeError

ENCODING = "aligned_set"
#: Version of the ``meta`` layout below, so that a consumer can refuse what it does not know.
SET_VERSION = 1


@dataclass(slots=True)
class Member:
    """One stream's contribution to a set: present (with arrays) or missing (with a reason)."""

    stream: str
    present: bool
    #: The payload arrays (the chosen message's, or the assembled audio window, ...).
    arrays: list[np.ndarray] = field(default_factory=list)
    #: JSON-ready details: ``t_ns``, ``skew_ns`` (member time - set time), ``seq``,
    #: ``t_sensor_ns``, ``t_host_ns``, ``bound_ns``, ``encoding``, ``frame_id``, ``meta`` (the
    #: source message's), and the policy's own keys.
    info: dict[str, Any] = field(default_factory=dict)
    #: Why the stream is missing ("" when present).
    reason: str = ""
    #: The messages the arrays come from (to re-check shared-memory payloads before use).
    sources: list[Message] = field(default_factory=list, repr=False)

    @property
    def skew_ns(self) -> int:
        """Member time minus set time (0 when missing)."""
        return int(self.info.get("skew_ns", 0))


@dataclass(slots=True)
class AlignedSet:
    """A time-aligned set of the aligner's streams at one instant."""

    #: The instant the set describes, on the host timeline (ns).
    t_ns: int
    #: Members in the aligner's stream order (the reference first).
    members: dict[str, Member]
    reference: str
    #: Host arrival time of the reference message: the capture end of latency accounting.
    t_host_ns: int = 0
    t_sensor_ns: int = 0
    #: True when the set was emitted at its deadline rather than complete.
    timed_out: bool = False
    #: Event time (host ns) at which the set was decided, minus ``t_ns``.
    wait_ns: int = 0
    #: Messages that came after the set they belonged to had been emitted, since the last set.
    late: int = 0
    seq: int = 0

    @property
    def mask(self) -> dict[str, bool]:
        """Stream → present, in stream order."""
        return {name: m.present for name, m in self.members.items()}

    @property
    def missing(self) -> list[str]:
        """The streams absent from this set."""
        return [name for name, m in self.members.items() if not m.present]

    @property
    def complete(self) -> bool:
        """Every stream is present."""
        return all(m.present for m in self.members.values())

    def to_payload(self) -> tuple[list[np.ndarray], dict[str, Any]]:
        """The arrays and ``meta`` of the set's envelope."""
        arrays: list[np.ndarray] = []
        members: dict[str, Any] = {}
        for name, m in self.members.items():
            first = len(arrays)
            arrays.extend(m.arrays)
            entry: dict[str, Any] = {
                "present": m.present,
                "arrays": [first, len(arrays)],
                **m.info,
            }
            if not m.present:
                entry["reason"] = m.reason
            members[name] = entry
        meta = {
            "set_version": SET_VERSION,
            "reference": self.reference,
            "order": list(self.members),
            "mask": [m.present for m in self.members.values()],
            "missing": self.missing,
            "timed_out": self.timed_out,
            "wait_ns": self.wait_ns,
            "late": self.late,
            "members": members,
        }
        return arrays, meta

    def header(self, *, frame_id: str = "base_link") -> Header:
        """An envelope header for this set (``seq`` is stamped again by the publisher)."""
        _, meta = self.to_payload()
        return Header(
            stream="set",
            seq=self.seq,
            t_sensor_ns=self.t_sensor_ns,
            t_host_ns=self.t_host_ns,
            t_ns=self.t_ns,
            frame_id=frame_id,
            encoding=ENCODING,
            meta=meta,
        )

    @classmethod
    def from_message(cls, msg: Message) -> AlignedSet:
        """Decode a ``sync/set`` message; raises ``EnvelopeError`` if it is not one."""
        h = msg.header
        if h.encoding != ENCODING:
            raise EnvelopeError("not_a_set", f"expected {ENCODING!r}, got {h.encoding!r}")
        meta = h.meta
        if meta.get("set_version") != SET_VERSION:
            raise EnvelopeError(
                "unknown_version",
                f"aligned set version {meta.get('set_version')!r} is not supported",
            )
        if h.t_ns is None:
            raise EnvelopeError("bad_set", "an aligned set without t_ns")
        try:
            members: dict[str, Member] = {}
            raw: Mapping[str, Any] = meta["members"]
            for name in meta["order"]:
                entry = dict(raw[name])
                lo, hi = entry.pop("arrays")
                if not 0 <= lo <= hi <= len(msg.arrays):
                    raise EnvelopeError("bad_set", f"member {name}: arrays {lo}:{hi} out of range")
                present = bool(entry.pop("present"))
                reason = str(entry.pop("reason", ""))
                members[name] = Member(
                    stream=name,
                    present=present,
                    arrays=list(msg.arrays[lo:hi]),
                    info=entry,
                    reason=reason,
                    sources=[msg],
                )
            return cls(
                t_ns=h.t_ns,
                members=members,
                reference=str(meta["reference"]),
                t_host_ns=h.t_host_ns,
                t_sensor_ns=h.t_sensor_ns,
                timed_out=bool(meta["timed_out"]),
                wait_ns=int(meta["wait_ns"]),
                late=int(meta["late"]),
                seq=h.seq,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise EnvelopeError("bad_set", f"malformed aligned set: {exc!r}") from None
