"""Import ROS bags into a session file (``edgefuse import BAG``), with the ``rosbags`` library.

Reads ROS 1 ``.bag`` files and ROS 2 bags (a folder with ``metadata.yaml``, or a single
``.db3`` / ``.mcap`` file) and writes a session of edgefuse envelopes (``session.py``) that the
pipeline replays like a live rig. Per message: ``t_sensor_ns`` is ``header.stamp``, ``t_host_ns``
the bag's receive (log) time -- so the session's host timeline is the recording machine's wall
clock, ns since the Unix epoch -- ``frame_id`` is ``header.frame_id`` and ``seq`` the message's
index on its ROS topic (a skipped message leaves a gap, as a drop does live). Conversions:

- ``sensor_msgs/Image``: ``bgr8`` as is, ``rgb8`` (channels swapped), ``rgba8``/``bgra8``
  (alpha dropped), ``mono8`` (grey copied to the three channels) and ``8UC1``/``8UC3`` ->
  ``bgr8`` (H, W, 3) uint8; ``mono16`` -> ``mono16`` (H, W) uint16; depth per REP 118:
  ``16UC1`` (mm) -> ``z16`` as is and ``32FC1`` (m) -> ``z16`` rounded to mm, with NaN, inf,
  <= 0 and > 65.535 m becoming 0 (no return); both carry ``meta.depth_scale_m = 0.001``.
  Row padding (``step``) and big-endian data are handled; other encodings are skipped.
- ``sensor_msgs/CompressedImage``: decoded with OpenCV into the same encodings (JPEG and PNG
  colour -> ``bgr8``, grey -> ``bgr8``, 16-bit PNG -> ``mono16``, or ``z16`` when the format
  names ``16UC1``; ``compressedDepth`` 16UC1 PNG -> ``z16``). Decoding, rather than keeping the
  JPEG bytes, is what makes an imported camera indistinguishable from a live one downstream.
- ``sensor_msgs/PointCloud2`` -> ``xyzit_f32`` as ``pointcloud2.to_lidar`` describes (points
  with non-finite x/y/z dropped unless ``drop_nan=False``).
- ``sensor_msgs/CameraInfo`` -> the rig calibration (``calib/model.py``): per camera the
  resolution, ``K``, distortion model and coefficients, attached to the session as
  ``calibration/<rig>.yaml``. CameraInfo holds no extrinsics: ``T_base_link_sensor`` is the
  identity and ``time_offset_ns`` 0. The sensor is named after the image topic in the same
  namespace (``/cam/camera_info`` goes with ``/cam/image_raw``); the first message is used.
- ``audio_common_msgs/AudioData`` and ``AudioDataStamped`` -> ``s16le`` (n, channels) int16,
  with ``meta.rate_hz``, ``channels``, ``first_sample``. The format comes from an ``AudioInfo``
  topic in the same namespace (or the only one in the bag), else from the defaults given.
  ``AudioData`` has no stamp: ``t_sensor_ns`` is then the sample counter over the rate, from the
  first chunk's log time -- a sample clock, as a sound card gives. The audio_common message
  definitions are registered with the typestore, for bags that do not carry them.

Topics become ``<node>/<stream>``: ``/camera/color/image_raw`` -> ``camera_color/image``
(trailing names such as ``image_raw``, ``compressed``, ``points`` dropped, the rest joined by
``_``); ``topic_map`` overrides. A bag that cannot be read is a :class:`BagError`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from edgefuse import __version__
from edgefuse.calib.model import RigCalibration, SensorCalibration, dump_calibration
from edgefuse.envelope import Header
from edgefuse.errors import ConfigError, EdgefuseError, require_extra
from edgefuse.record import pointcloud2
from edgefuse.record.ros_msgs import (
    AUDIO,
    AUDIO_INFO,
    AUDIO_STAMPED,
    CAMERA_INFO,
    CLOUD,
    COMPRESSED,
    DEFAULT_AUDIO,
    IMAGE,
    AudioFormat,
    Skip,
    audio_format,
    camera_calibration,
    convert_audio,
    convert_compressed,
    convert_image,
    make_typestore,
    stamp_ns,
)
from edgefuse.record.session import SessionWriter

_STREAMS: Final = {
    IMAGE: "image",
    COMPRESSED: "image",
    CLOUD: "points",
    AUDIO: "audio",
    AUDIO_STAMPED: "audio",
}
#: Trailing topic names that say what a topic carries, not whose it is: dropped from node names.
_LEAVES: Final = frozenset(
    {
        "image_raw",
        "image_rect",
        "image_rect_raw",
        "image_rect_color",
        "image_color",
        "image_mono",
        "image",
        "compressed",
        "compresseddepth",
        "points",
        "cloud",
        "pointcloud",
        "point_cloud",
        "audio",
        "audio_stamped",
        "audio_info",
        "camera_info",
        "data",
    }
)


class BagError(EdgefuseError):
    """A bag that cannot be read (missing, garbage, truncated, unindexed): names the bag."""


@dataclass(slots=True)
class TopicReport:
    """What happened to one ROS topic: messages seen, converted, and skipped by reason."""

    ros_topic: str
    msgtype: str
    out_topic: str | None
    count: int = 0
    converted: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str, n: int = 1) -> None:
        """Count ``n`` messages skipped for ``reason``."""
        self.skipped[reason] = self.skipped.get(reason, 0) + n


@dataclass(slots=True)
class ImportReport:
    """The outcome of an import: per ROS topic counts, and the calibration found."""

    bag: Path
    out: Path
    topics: dict[str, TopicReport] = field(default_factory=dict)
    calibration: RigCalibration | None = None
    notes: list[str] = field(default_factory=list)
    #: Messages written to the session, per output topic.
    written: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """The report as text lines, one per topic plus one per skip reason."""
        rows = [("ROS topic", "type", "-> topic", "count", "converted", "skipped")]
        reasons: dict[str, list[str]] = {}
        for name in sorted(self.topics):
            r = self.topics[name]
            n_skip = sum(r.skipped.values())
            rows.append(
                (name, r.msgtype, r.out_topic or "-", str(r.count), str(r.converted), str(n_skip))
            )
            reasons[name] = [f"    skipped {n:d}: {why}" for why, n in sorted(r.skipped.items())]
        widths = [max(len(row[i]) for row in rows) for i in range(6)]
        out: list[str] = []
        for row in rows:
            left = " ".join(c.ljust(w) for c, w in zip(row[:3], widths[:3], strict=True))
            right = " ".join(c.rjust(w) for c, w in zip(row[3:], widths[3:], strict=True))
            out.append(f"{left} {right}")
            out.extend(reasons.get(row[0], []))
        if self.calibration is not None:
            names = ", ".join(sorted(self.calibration.sensors))
            out.append(f"calibration: rig {self.calibration.rig!r} ({names}) attached")
        out.extend(self.notes)
        return out


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "topic"


def auto_topic(ros_topic: str, msgtype: str) -> str:
    """The default ``<node>/<stream>`` of a ROS topic (see the module docstring)."""
    parts = [p for p in ros_topic.split("/") if p] or ["topic"]
    while len(parts) > 1 and parts[-1].lower() in _LEAVES:
        parts.pop()
    return f"{_safe('_'.join(parts))}/{_STREAMS.get(msgtype, 'data')}"


def _namespace(ros_topic: str) -> str:
    return ros_topic.rstrip("/").rpartition("/")[0]


def plan_topics(msgtypes: Mapping[str, str], topic_map: Mapping[str, str]) -> dict[str, str]:
    """Output topics of the convertible ROS topics: ``topic_map`` first, then automatic names,
    raw images before compressed ones, clashes resolved by ``_compressed`` or ``_2``, ``_3``."""
    for ros, out in topic_map.items():
        if ros not in msgtypes:
            raise ConfigError(f"--map names {ros!r}, which is not in the bag (or not selected)")
        node, sep, stream = out.partition("/")
        if not (sep and node and stream) or "/" in stream:
            raise ConfigError(f"--map {ros}={out}: the target must be <node>/<stream>")
        if msgtypes[ros] not in _STREAMS:
            raise ConfigError(f"--map {ros}: its type {msgtypes[ros]} is not imported")
    taken = list(topic_map.values())
    if len(set(taken)) != len(taken):
        raise ConfigError(f"--map sends two ROS topics to one topic: {sorted(taken)}")
    plan = dict(topic_map)
    used = set(taken)
    order = sorted(
        (t for t, ty in msgtypes.items() if ty in _STREAMS and t not in plan),
        key=lambda t: (msgtypes[t] == COMPRESSED, t),
    )
    for ros in order:
        name = auto_topic(ros, msgtypes[ros])
        node, _, stream = name.partition("/")
        candidates = [name]
        if msgtypes[ros] == COMPRESSED:
            candidates.append(f"{node}_compressed/{stream}")
        candidates += [f"{node}_{i}/{stream}" for i in range(2, 1000)]
        plan[ros] = next(c for c in candidates if c not in used)
        used.add(plan[ros])
    return plan


def choose_audio_format(
    ros_topic: str, formats: Mapping[str, AudioFormat], default: AudioFormat
) -> AudioFormat:
    """The format of an audio topic: the AudioInfo topic in its namespace, else the bag's only
    AudioInfo topic, else ``default`` (returned as the same object)."""
    same_ns = [f for t, f in sorted(formats.items()) if _namespace(t) == _namespace(ros_topic)]
    if same_ns:
        return same_ns[0]
    if len(formats) == 1:
        return next(iter(formats.values()))
    return default


# --- the import -----------------------------------------------------------------------------


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


def _one_line(exc: BaseException) -> str:
    """An exception's text on one line (YAML errors span several), its type when empty."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _open_reader(bag: Path) -> Any:
    from rosbags.highlevel import AnyReader

    if not bag.exists():
        raise BagError(f"{bag}: no such file or folder")
    ros1 = bag.suffix == ".bag" and not bag.is_dir()
    if bag.is_file() and bag.suffix not in (".bag", ".db3", ".mcap"):
        raise BagError(f"{bag}: not a ROS bag (expected .bag, .db3, .mcap or a bag folder)")
    if ros1 and bag.is_file():
        try:
            with open(bag, "rb") as f:
                magic = f.read(13)
        except OSError as exc:
            raise BagError(f"{bag}: cannot read: {exc.strerror}") from exc
        if magic != b"#ROSBAG V2.0\n":
            raise BagError(f"{bag}: not a ROS 1 bag (no '#ROSBAG V2.0' at its start)")
    default = make_typestore(ros1=ros1)
    try:
        reader = AnyReader([bag], default_typestore=default)
        reader.open()
    except Exception as exc:  # rosbags, sqlite3, yaml and struct errors alike: one clear error
        detail = _one_line(exc)
        if "index" in detail.lower():
            detail += " (truncated, or the recorder was killed? `rosbag reindex` repairs it)"
        elif "end magic" in detail:
            detail += " (truncated? `mcap recover` repairs an MCAP file)"
        raise BagError(f"{bag}: not a readable ROS bag: {detail}") from exc
    # A bag may carry definitions for some types only: the defaults fill in the rest.
    missing = {k: v for k, v in default.fielddefs.items() if k not in reader.typestore.fielddefs}
    reader.typestore.register(missing)
    return reader


def _guarded(
    reader: Any, conns: list[Any], bag: Path, after: str = ""
) -> Iterator[tuple[Any, int, bytes]]:
    """``reader.messages(conns)``, a failure to read the bag's bytes (a damaged chunk or
    record) raised as ``BagError`` saying how far it got, ``after`` appended."""
    if not conns:  # rosbags reads every connection when given none
        return
    it = reader.messages(connections=conns)
    n = 0
    while True:
        try:
            item = next(it, None)
        except Exception as exc:
            raise BagError(
                f"{bag}: damaged after {n} messages ({type(exc).__name__}: {_one_line(exc)}){after}"
            ) from exc
        if item is None:
            return
        n += 1
        yield item


def _first_messages(reader: Any, conns: list[Any], bag: Path) -> Iterator[tuple[str, Any]]:
    """The first decodable message of each topic among ``conns``."""
    pending = {c.topic for c in conns}
    if not pending:
        return
    for conn, _, raw in _guarded(reader, conns, bag):
        if conn.topic in pending:
            try:
                msg = reader.deserialize(raw, conn.msgtype)
            except Exception:
                continue
            pending.discard(conn.topic)
            yield conn.topic, msg
            if not pending:
                return


def import_bag(
    bag: str | Path,
    out: str | Path,
    *,
    topic_map: Mapping[str, str] | None = None,
    topics: Collection[str] | None = None,
    rig: str | None = None,
    audio_default: AudioFormat = DEFAULT_AUDIO,
    drop_nan: bool = True,
    compression: Literal["zstd", "lz4", "none"] = "zstd",
) -> ImportReport:
    """Convert ``bag`` into the session file ``out`` (see the module docstring).

    ``topics`` limits the import to those ROS topics; ``topic_map`` maps ROS topics to
    ``<node>/<stream>``; ``rig`` names the calibration (default: the bag's name). Raises
    ``BagError`` for an unreadable bag (``out`` is then not created, or holds what was
    converted before the damage) and ``ConfigError`` for a bad map or topic selection.
    """
    require_extra("rosbags", "ros")
    bag, out = Path(bag), Path(out)
    if out.resolve() == bag.resolve() or (bag.is_dir() and out.resolve().parent == bag.resolve()):
        raise ConfigError(f"output {out} would overwrite or sit inside the bag {bag}")
    reader = _open_reader(bag)
    try:
        return _import(
            reader, bag, out, topic_map or {}, topics, rig, audio_default, drop_nan, compression
        )
    finally:
        reader.close()


def _import(
    reader: Any,
    bag: Path,
    out: Path,
    topic_map: Mapping[str, str],
    topics: Collection[str] | None,
    rig: str | None,
    audio_default: AudioFormat,
    drop_nan: bool,
    compression: Literal["zstd", "lz4", "none"],
) -> ImportReport:
    all_types = {c.topic: c.msgtype for c in reader.connections}
    if topics is not None:
        unknown = sorted(set(topics) - set(all_types))
        if unknown:
            raise ConfigError(
                f"--topics {', '.join(unknown)}: not in the bag; it has: "
                f"{', '.join(sorted(all_types)) or 'no topics'}"
            )
    msgtypes = {t: ty for t, ty in all_types.items() if topics is None or t in topics}
    plan = plan_topics(msgtypes, topic_map)
    report = ImportReport(bag, out)
    handled = {*_STREAMS, CAMERA_INFO, AUDIO_INFO}
    for t, ty in msgtypes.items():
        report.topics[t] = TopicReport(t, ty, plan.get(t))
        if ty not in handled:
            n = sum(c.msgcount for c in reader.connections if c.topic == t)
            report.topics[t].count = n
            report.topics[t].skip(f"unsupported type {ty}", n)
    if topics is not None and len(msgtypes) < len(all_types):
        report.notes.append(f"{len(all_types) - len(msgtypes)} topic(s) not selected")
    conns = [c for c in reader.connections if c.topic in msgtypes and c.msgtype in handled]

    # Calibration and audio formats first: the calibration goes at the head of the session.
    rig_name = _safe(rig or bag.name.removesuffix(".bag"))
    info_conns = [c for c in conns if c.msgtype == CAMERA_INFO]
    sensors: dict[str, SensorCalibration] = {}
    info_sensor: dict[str, str] = {}
    for topic, msg in _first_messages(reader, info_conns, bag):
        ns = _namespace(topic)
        images = sorted(
            (msgtypes[t] == COMPRESSED, t)
            for t in plan
            if msgtypes[t] in (IMAGE, COMPRESSED) and _namespace(t) == ns
        )
        base = plan[images[0][1]].partition("/")[0] if images else auto_topic(topic, "")
        name = base.partition("/")[0]
        name = next(n for n in [name, *(f"{name}_{i}" for i in range(2, 1000))] if n not in sensors)
        try:
            sensors[name] = camera_calibration(msg)
            info_sensor[topic] = name
        except (Skip, AttributeError, ValueError) as exc:
            reason = exc.reason if isinstance(exc, Skip) else f"unusable camera_info ({exc})"
            report.notes.append(f"{topic}: no calibration: {reason}")
    formats = dict(_first_messages(reader, [c for c in conns if c.msgtype == AUDIO_INFO], bag))
    audio_formats = {t: audio_format(m) for t, m in formats.items()}
    audio_for: dict[str, AudioFormat] = {}
    for t in plan:
        if msgtypes[t] in (AUDIO, AUDIO_STAMPED):
            audio_for[t] = choose_audio_format(t, audio_formats, audio_default)
            if audio_for[t] is audio_default:
                d = audio_default
                report.notes.append(
                    f"{t}: no AudioInfo for it in the bag, assumed {d.rate_hz} Hz, "
                    f"{d.channels} channel(s), {d.sample_format}"
                )
    calibration = RigCalibration(rig=rig_name, sensors=sensors) if sensors else None
    report.calibration = calibration

    # The host timeline of an imported session is the bag's log time, which ROS takes from the
    # wall clock: start_wall_ns == start_host_ns says so to whoever maps stamps to UTC.
    start_ns = str(reader.start_time if reader.message_count else 0)
    metadata = {
        "session": {
            "source": "edgefuse import",
            "bag": bag.name,
            "rig": rig_name,
            "host_clock": "bag log time (wall clock, ns since the Unix epoch)",
            "start_wall_ns": start_ns,
            "start_host_ns": start_ns,
            "edgefuse": __version__,
            "rosbags": _version("rosbags"),
        },
        "ros_topics": {out_t: ros for ros, out_t in sorted(plan.items())},
    }
    attachments = {}
    if calibration is not None:
        attachments[f"calibration/{rig_name}.yaml"] = dump_calibration(calibration).encode()
    state = _State(plan, audio_for, drop_nan)
    with SessionWriter(
        out, metadata=metadata, attachments=attachments, compression=compression
    ) as writer:
        held = f"; {out} holds what was imported before"
        for conn, log_ns, raw in _guarded(reader, conns, bag, held):
            rep = report.topics[conn.topic]
            rep.count += 1
            try:
                msg = reader.deserialize(raw, conn.msgtype)
            except Exception as exc:
                rep.skip(f"undecodable message ({type(exc).__name__})")
                continue
            if conn.msgtype in (CAMERA_INFO, AUDIO_INFO):
                _check_info(rep, conn.msgtype, msg, sensors.get(info_sensor.get(rep.ros_topic, "")),
                            audio_formats.get(rep.ros_topic))  # fmt: skip
                continue
            state.write(writer, rep, conn.msgtype, msg, int(log_ns), rep.count - 1)
        report.written = writer.counts
    for topic, name in info_sensor.items():
        report.topics[topic].out_topic = f"calibration:{name}"
    for topic in audio_formats:
        report.topics[topic].out_topic = "(audio format)"
    return report


def _check_info(
    rep: TopicReport,
    msgtype: str,
    msg: Any,
    first_camera: SensorCalibration | None,
    first_audio: AudioFormat | None,
) -> None:
    """Count a CameraInfo or AudioInfo message as converted when it agrees with the first one
    of its topic (the one used), as skipped when it differs."""
    try:
        if msgtype == CAMERA_INFO:
            same = first_camera is not None and camera_calibration(msg) == first_camera
            what = "camera_info"
        else:
            same = first_audio is not None and audio_format(msg) == first_audio
            what = "audio_info"
    except (Skip, AttributeError, ValueError, TypeError):
        same, what = False, "unusable info"
    if same:
        rep.converted += 1
    else:
        rep.skip(f"{what} differs from the first one of the topic (the first is used)")


class _State:
    """Per output topic state of the main pass: encodings, audio sample counters."""

    def __init__(
        self,
        plan: Mapping[str, str],
        audio_formats: Mapping[str, AudioFormat],
        drop_nan: bool,
    ) -> None:
        self.plan = plan
        self.audio_formats = audio_formats
        self.drop_nan = drop_nan
        self.encodings: dict[str, str] = {}
        self.first_sample: dict[str, int] = {}
        self.anchor_ns: dict[str, int] = {}
        self.convert: dict[str, Callable[[str, Any, int], tuple[Any, ...]]] = {
            IMAGE: self._image,
            COMPRESSED: self._compressed,
            CLOUD: self._cloud,
            AUDIO: self._audio,
            AUDIO_STAMPED: self._audio,
        }

    def write(
        self,
        writer: SessionWriter,
        rep: TopicReport,
        msgtype: str,
        msg: Any,
        log_ns: int,
        seq: int,
    ) -> None:
        """Convert one message and write it, or count it as skipped in ``rep``."""
        topic = self.plan[rep.ros_topic]
        try:
            enc, arrays, meta, t_sensor, frame_id = self.convert[msgtype](
                rep.ros_topic, msg, log_ns
            )
            known = self.encodings.setdefault(topic, enc)
            if known != enc:
                raise Skip(f"encoding changed from {known} to {enc}")
        except Skip as exc:
            rep.skip(exc.reason)
            return
        except (pointcloud2.PointCloudError, AttributeError, ValueError, TypeError) as exc:
            rep.skip(f"bad message ({exc})")
            return
        header = Header(
            stream=topic.partition("/")[2],
            seq=seq,
            t_sensor_ns=t_sensor,
            t_host_ns=log_ns,
            frame_id=frame_id,
            encoding=enc,
            meta=meta,
        )
        writer.write(topic, header, arrays)
        rep.converted += 1

    def _image(self, ros: str, msg: Any, log_ns: int) -> tuple[Any, ...]:
        enc, img, meta = convert_image(msg)
        return enc, [img], meta, stamp_ns(msg), str(msg.header.frame_id)

    def _compressed(self, ros: str, msg: Any, log_ns: int) -> tuple[Any, ...]:
        enc, img, meta = convert_compressed(msg)
        return enc, [img], meta, stamp_ns(msg), str(msg.header.frame_id)

    def _cloud(self, ros: str, msg: Any, log_ns: int) -> tuple[Any, ...]:
        cloud = pointcloud2.PointCloud2.from_msg(msg)
        stamp = stamp_ns(msg)
        lidar = pointcloud2.to_lidar(cloud, stamp_ns=stamp, drop_nan=self.drop_nan)
        meta: dict[str, Any] = {"fields": list(pointcloud2.LIDAR_COLUMNS)}
        if lidar.missing:
            meta["missing"] = list(lidar.missing)
        if cloud.height > 1:
            meta["organized"] = [cloud.height, cloud.width]
        return "xyzit_f32", [lidar.points, lidar.ring], meta, stamp, str(msg.header.frame_id)

    def _audio(self, ros: str, msg: Any, log_ns: int) -> tuple[Any, ...]:
        fmt = self.audio_formats[ros]
        stamped = hasattr(msg, "header")
        samples = convert_audio(msg.audio.data if stamped else msg.data, fmt)
        topic = self.plan[ros]
        n0 = self.first_sample.get(topic, 0)
        self.first_sample[topic] = n0 + len(samples)
        if stamped:
            t_sensor, frame_id = stamp_ns(msg), str(msg.header.frame_id)
        else:
            anchor = self.anchor_ns.setdefault(topic, log_ns)
            t_sensor, frame_id = anchor + n0 * 1_000_000_000 // fmt.rate_hz, ""
        meta = {"rate_hz": fmt.rate_hz, "channels": fmt.channels, "first_sample": n0}
        return "s16le", [samples], meta, t_sensor, frame_id
