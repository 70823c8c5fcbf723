"""Aligned sets from recorded messages, offline: the aligner node's lossless mode, no pipeline.

Training, evaluation and tests read sessions and need the very sets the live pipeline would
have published. :func:`align_messages` drives an :class:`~edgefuse.sync.aligner.Aligner` the way
the node does with ``lossless: true``: messages in arrival (log-time) order, decisions on event
time only, the pending sets flushed at the end; so one session always gives the same sets.
:func:`aligner_from_pipeline` takes the configuration from a pipeline file's aligner node, so
offline sets are made exactly as ``pipelines/sim.yaml`` makes them live.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from edgefuse.calib.model import find_calibration, load_calibration
from edgefuse.envelope import Message
from edgefuse.errors import ConfigError, EdgefuseError
from edgefuse.sync.aligned_set import AlignedSet
from edgefuse.sync.aligner import Aligner
from edgefuse.sync.node import AlignerNode, AlignerParams


@dataclass(frozen=True, kw_only=True)
class OfflineAligner:
    """An aligner node's configuration: its parameters and which topic feeds which stream."""

    params: AlignerParams
    #: Topic -> stream (input port).
    topics: dict[str, str]


def aligner_from_pipeline(path: str | Path, *, node: str | None = None) -> OfflineAligner:
    """The aligner configuration of ``node`` in the pipeline file at ``path`` (the only aligner
    node when ``node`` is None); ``ConfigError`` when there is none or the choice is ambiguous."""
    from edgefuse.pipeline import load_pipeline  # the pipeline imports every node type

    pipe = load_pipeline(path)
    aligners = {n: r for n, r in pipe.nodes.items() if issubclass(r.cls, AlignerNode)}
    if node is not None:
        if node not in aligners:
            raise ConfigError(
                f"{path}: no aligner node {node!r} (aligner nodes: {', '.join(aligners) or 'none'})"
            )
        chosen = aligners[node]
    elif len(aligners) == 1:
        chosen = next(iter(aligners.values()))
    else:
        raise ConfigError(
            f"{path}: {len(aligners)} aligner nodes ({', '.join(aligners) or 'none'}); name one"
        )
    return OfflineAligner(
        params=chosen.params, topics={topic: port for port, topic in chosen.inputs.items()}
    )


def align_messages(
    messages: Iterable[Message], config: OfflineAligner, *, strict: bool = False
) -> Iterator[AlignedSet]:
    """The sets ``config``'s aligner makes of ``messages`` (arrival order), in time order.

    Messages of topics the aligner does not take are skipped. A malformed message is dropped
    and counted as the node does (``strict``: raised instead)."""
    p = config.params
    offsets: dict[str, int] = {}
    if p.rig:
        rig = load_calibration(find_calibration(p.rig))
        offsets = {name: s.time_offset_ns for name, s in rig.sensors.items()}
    aligner = Aligner(
        p.streams,
        reference=p.reference,
        max_wait_ns=round(p.max_wait_ms * 1e6),
        idle_ns=round(p.idle_ms * 1e6),
        time_offsets_ns=offsets,
    )
    for msg in messages:
        stream = config.topics.get(msg.topic)
        if stream is None:
            continue
        try:
            sets = aligner.push(stream, msg)
        except (ValueError, TypeError, EdgefuseError):
            if strict:
                raise
            continue
        yield from sets
    yield from aligner.flush()
