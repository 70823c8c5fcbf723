"""``edgefuse info FILE``: what a session holds, like ``ros2 bag info``.

Duration, start and end (host timeline, and UTC when the session says when it started),
topics with their encodings, counts, rates, sizes and losses (gaps in ``seq``), compression,
metadata, attachments (a calibration is summarised: rig, sensors, resolutions), and whether
the file was cut short (then ``edgefuse recover`` makes it whole). Every complete chunk is read
once and CRC-checked, so ``info`` also tells whether a file is sound.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from edgefuse.record.errors import SessionError
from edgefuse.record.recover import check_profile
from edgefuse.record.session import ENVELOPE_ENCODING, SessionReader


def _calibration_summary(name: str, data: bytes) -> dict[str, Any]:
    from edgefuse import config
    from edgefuse.calib.model import RigCalibration

    try:
        raw, src = config.parse_yaml(data.decode("utf-8"), file=name)
        cal = config.build(RigCalibration, raw, src=src)
    except Exception as exc:  # an attachment we cannot read is reported, not fatal
        return {"error": f"not a readable calibration: {exc}"}
    sensors: dict[str, str] = {}
    for sname, s in cal.sensors.items():
        if s.camera is not None:
            c = s.camera
            what = f"camera {c.width}x{c.height} {c.distortion_model}"
        elif s.lidar is not None:
            what = f"lidar {len(s.lidar.beam_elevations_deg)} beams"
        else:
            what = "pose only"
        sensors[sname] = f"{s.frame_id}: {what}, time offset {s.time_offset_ns} ns"
    return {"rig": cal.rig, "sensors": sensors}


def session_info(path: str | Path) -> dict[str, Any]:
    """Everything ``edgefuse info`` shows, JSON-ready; ``SessionError`` for a bad file."""
    p = Path(path)
    with SessionReader(p) as r:
        check_profile(r)
        channels = r.channels()
        schemas: dict[int, str] = {}
        per: dict[int, dict[str, Any]] = {}
        last_seq: dict[int, int] = {}
        chunks, compressions, packed, unpacked = 0, set(), 0, 0
        for chunk in r.chunks():
            chunks += 1
            compressions.add(chunk.compression or "none")
            packed += chunk.compressed_size
            unpacked += chunk.uncompressed_size
            for rec in chunk.records:
                kind = type(rec).__name__
                if kind == "Schema":
                    schemas[rec.id] = rec.name  # type: ignore[attr-defined]
                elif kind == "Message":
                    cid = rec.channel_id  # type: ignore[attr-defined]
                    t = int(rec.log_time)  # type: ignore[attr-defined]
                    s = per.setdefault(
                        cid, {"count": 0, "bytes": 0, "start": t, "end": t, "gaps": 0}
                    )
                    s["count"] += 1
                    s["bytes"] += len(rec.data)  # type: ignore[attr-defined]
                    s["start"], s["end"] = min(s["start"], t), max(s["end"], t)
                    seq = int(rec.sequence)  # type: ignore[attr-defined]
                    prev = last_seq.get(cid)
                    if prev is not None and seq > prev + 1:
                        s["gaps"] += seq - prev - 1
                    last_seq[cid] = seq
        metadata = r.metadata()
        attachments = r.attachments()
        truncated, profile, library = r.truncated, r.profile, r.library
    topics = []
    for cid, ch in sorted(channels.items(), key=lambda kv: kv[1].topic):
        s = per.get(cid, {"count": 0, "bytes": 0, "start": None, "end": None, "gaps": 0})
        span = (s["end"] - s["start"]) / 1e9 if s["count"] > 1 else 0.0
        envelope = ch.message_encoding == ENVELOPE_ENCODING
        topics.append(
            {
                "topic": ch.topic,
                "message_encoding": ch.message_encoding,
                "encoding": ch.metadata.get("encoding", "") if envelope else "",
                "schema": schemas.get(ch.schema_id, "") if ch.schema_id else "",
                "count": s["count"],
                "bytes": s["bytes"],
                "rate_hz": round((s["count"] - 1) / span, 3) if span > 0 else 0.0,
                # Foxglove channels carry the envelope's seq too, but only for some messages.
                "gaps": s["gaps"] if envelope else 0,
            }
        )
    starts = [s["start"] for s in per.values()]
    ends = [s["end"] for s in per.values()]
    start, end = (min(starts), max(ends)) if starts else (None, None)
    session = metadata.get("session", {})
    out: dict[str, Any] = {
        "file": str(p),
        "size_bytes": p.stat().st_size,
        "profile": profile,
        "library": library,
        "truncated": truncated,
        "start_ns": start,
        "end_ns": end,
        "duration_s": round((end - start) / 1e9, 6) if start is not None and end is not None else 0,
        "messages": sum(t["count"] for t in topics),
        "chunks": chunks,
        "compression": sorted(compressions),
        "compressed_bytes": packed,
        "uncompressed_bytes": unpacked,
        "topics": topics,
        "metadata": metadata,
        "attachments": [
            {"name": name, "bytes": len(data)}
            | (
                {"calibration": _calibration_summary(name, data)}
                if name.startswith("calibration/")
                else {}
            )
            for name, data in attachments.items()
        ],
    }
    try:  # the host timeline to UTC, when the recorder said when it started
        offset = int(session["start_wall_ns"]) - int(session["start_host_ns"])
    except (KeyError, ValueError):
        offset = None
    if offset is not None and start is not None and end is not None:
        out["start_utc"] = _utc(start + offset)
        out["end_utc"] = _utc(end + offset)
    if "recording" in metadata:
        try:
            out["recording"] = json.loads(metadata["recording"].get("json", "{}"))
        except ValueError:
            out["recording"] = {"error": "unreadable recording report"}
    return out


def _utc(t_ns: int) -> str:
    t = dt.datetime.fromtimestamp(t_ns // 1_000_000_000, tz=dt.timezone.utc)
    return f"{t:%Y-%m-%d %H:%M:%S}.{t_ns % 1_000_000_000:09d} UTC"


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


def format_info(info: dict[str, Any]) -> str:
    """The ``ros2 bag info``-like text of :func:`session_info`'s result."""
    lines = [
        f"File:              {info['file']}",
        f"Size:              {_size(info['size_bytes'])}",
        f"Storage:           mcap (profile {info['profile']!r}, library {info['library']})",
        "Truncated:         "
        + (
            "YES: the writer stopped early; 'edgefuse recover' makes it whole"
            if info["truncated"]
            else "no"
        ),
        f"Duration:          {info['duration_s']:.3f} s",
    ]
    if info["start_ns"] is not None:
        lines.append(f"Start:             {info.get('start_utc', '')} (host {info['start_ns']} ns)")
        lines.append(f"End:               {info.get('end_utc', '')} (host {info['end_ns']} ns)")
    ratio = info["uncompressed_bytes"] / info["compressed_bytes"] if info["compressed_bytes"] else 1
    lines += [
        f"Messages:          {info['messages']}",
        f"Chunks:            {info['chunks']} ({', '.join(info['compression']) or 'none'}; "
        f"{_size(info['uncompressed_bytes'])} -> {_size(info['compressed_bytes'])}, "
        f"ratio {ratio:.2f})",
        "Topics:",
    ]
    width = max((len(t["topic"]) for t in info["topics"]), default=5)
    for t in info["topics"]:
        kind = t["encoding"] or t["schema"] or t["message_encoding"]
        lost = f" | lost {t['gaps']}" if t["gaps"] else ""
        lines.append(
            f"  {t['topic']:<{width}} | {kind:<26} | {t['count']:>7} msgs | "
            f"{t['rate_hz']:>8.2f} Hz | {_size(t['bytes']):>10}{lost}"
        )
    report = info.get("recording")
    if isinstance(report, dict) and "topics" in report:
        losses = {k: v.get("lost", 0) for k, v in report["topics"].items() if v.get("lost")}
        lines.append(
            "Recorder losses:   " + (", ".join(f"{k} {v}" for k, v in losses.items()) or "none")
        )
    lines.append("Metadata:")
    for name, values in info["metadata"].items():
        if name == "recording":
            continue
        body = ", ".join(f"{k}={v}" for k, v in values.items())
        lines.append(f"  {name}: {body[:400]}{'...' if len(body) > 400 else ''}")
    lines.append("Attachments:")
    for a in info["attachments"]:
        lines.append(f"  {a['name']} ({_size(a['bytes'])})")
        cal = a.get("calibration")
        if cal is not None:
            if "error" in cal:
                lines.append(f"    {cal['error']}")
            else:
                lines.append(f"    rig {cal['rig']}")
                lines += [f"    {k}: {v}" for k, v in cal["sensors"].items()]
    return "\n".join(lines)


def info_main(path: str, *, as_json: bool = False) -> int:
    """Print the info of ``path``; return 0 (``SessionError`` propagates for a bad file)."""
    info = session_info(path)
    print(json.dumps(info, indent=2) if as_json else format_info(info))
    return 0


__all__ = ["SessionError", "format_info", "info_main", "session_info"]
