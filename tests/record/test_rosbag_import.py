"""``edgefuse import``: real ROS 1 and ROS 2 (sqlite3, mcap) bags written here with the
``rosbags`` writers, imported, and read back with ``SessionReader``, values checked exactly."""

from __future__ import annotations

import argparse
import math
import re
import struct
from pathlib import Path
from types import SimpleNamespace as Msg
from typing import Any

import cv2
import numpy as np
import pytest

pytest.importorskip("rosbags")

from rosbags.rosbag1 import Writer as Writer1
from rosbags.rosbag2 import StoragePlugin
from rosbags.rosbag2 import Writer as Writer2

from edgefuse.calib.model import load_calibration
from edgefuse.errors import ConfigError, EdgefuseError
from edgefuse.record import SessionReader
from edgefuse.record.import_cli import default_out, register
from edgefuse.record.ros_msgs import (
    AudioFormat,
    Skip,
    camera_calibration,
    convert_audio,
    convert_compressed,
    convert_image,
    make_typestore,
)
from edgefuse.record.rosbag import BagError, auto_topic, import_bag

T0 = 1_700_000_000_000_000_000  # log times: ns since the epoch, as a recorder writes them
S0 = 1_699_999_999_900_000_000  # header stamps: the sensors' own clock
FRAME_NS = 33_333_333
KINDS = ("ros1", "sqlite3", "mcap")

RGB = np.arange(3 * 4 * 3, dtype=np.uint8).reshape(3, 4, 3) * 7  # h=3, w=4
K = [600.5, 0.0, 320.25, 0.0, 601.0, 240.75, 0.0, 0.0, 1.0]
D = [-0.25, 0.125, 0.001, -0.002, 0.03]
VELO = [
    (1.5, -2.25, 0.125, 17.0, 0, 0.0),
    (float("nan"), float("nan"), float("nan"), 0.0, 1, 0.01),
    (-3.0, 4.0, -1.0, 255.0, 15, 0.05),
]
AUDIO = [np.arange(8, dtype=np.int16).reshape(4, 2) * (k + 1) - 3 for k in range(3)]


class Bag:
    """Writes messages of either ROS version; ``msg(type, **fields)`` builds one."""

    def __init__(self, path: Path, kind: str) -> None:
        self.ros1 = kind == "ros1"
        self.ts = make_typestore(ros1=self.ros1)
        if self.ros1:
            self.writer: Any = Writer1(path)
        else:
            plugin = StoragePlugin.SQLITE3 if kind == "sqlite3" else StoragePlugin.MCAP
            self.writer = Writer2(path, version=9, storage_plugin=plugin)
        self.writer.open()
        self.conns: dict[str, Any] = {}

    def header(self, stamp: int, frame_id: str) -> Any:
        sec, nsec = divmod(stamp, 1_000_000_000)
        t = self.ts.types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nsec)
        H = self.ts.types["std_msgs/msg/Header"]
        return H(seq=0, stamp=t, frame_id=frame_id) if self.ros1 else H(stamp=t, frame_id=frame_id)

    def msg(self, typ: str, **kw: Any) -> Any:
        if self.ros1 and typ == "sensor_msgs/msg/CameraInfo":
            kw = {k.upper() if k in "dkrp" else k: v for k, v in kw.items()}
        if "data" in kw and isinstance(kw["data"], bytes):
            kw["data"] = np.frombuffer(kw["data"], np.uint8)
        return self.ts.types[typ](**kw)

    def write(self, topic: str, typ: str, log_ns: int, message: Any) -> None:
        if topic not in self.conns:
            self.conns[topic] = self.writer.add_connection(topic, typ, typestore=self.ts)
        ser = self.ts.serialize_ros1 if self.ros1 else self.ts.serialize_cdr
        self.writer.write(self.conns[topic], log_ns, bytes(ser(message, typ)))

    def close(self) -> None:
        self.writer.close()


def image(b: Bag, stamp: int, enc: str, arr: np.ndarray, *, pad: int = 0, big: bool = False) -> Any:
    h, w = arr.shape[:2]
    rows = arr.astype(arr.dtype.newbyteorder(">" if big else "<")).reshape(h, -1).view(np.uint8)
    data = np.concatenate([rows, np.full((h, pad), 0xAB, np.uint8)], axis=1)
    return b.msg(
        "sensor_msgs/msg/Image",
        header=b.header(stamp, "cam_optical"),
        height=h,
        width=w,
        encoding=enc,
        is_bigendian=int(big),
        step=rows.shape[1] + pad,
        data=data.tobytes(),
    )


def velodyne(b: Bag, stamp: int) -> Any:
    fmt = struct.Struct("<fff4xfH2xf4x")
    PF = b.ts.types["sensor_msgs/msg/PointField"]
    fields = [PF(name=n, offset=o, datatype=t, count=1) for n, o, t in
              [("x", 0, 7), ("y", 4, 7), ("z", 8, 7), ("intensity", 16, 7), ("ring", 20, 4),
               ("time", 24, 7)]]  # fmt: skip
    return b.msg(
        "sensor_msgs/msg/PointCloud2",
        header=b.header(stamp, "velodyne"),
        height=1,
        width=len(VELO),
        fields=fields,
        is_bigendian=False,
        point_step=32,
        row_step=32 * len(VELO),
        data=b"".join(fmt.pack(*p) for p in VELO),
        is_dense=False,
    )


def write_bag(path: Path, kind: str) -> Path:
    """A bag holding every supported type, plus things to skip; returns its path."""
    b = Bag(path, kind)
    camera_info = dict(
        height=3, width=4, distortion_model="plumb_bob", d=np.array(D), k=np.array(K),
        r=np.eye(3).ravel(), p=np.zeros(12), binning_x=0, binning_y=0,
        roi=b.msg("sensor_msgs/msg/RegionOfInterest", x_offset=0, y_offset=0, height=0, width=0,
                  do_rectify=False),
    )  # fmt: skip
    b.write(
        "/audio/audio_info",
        "audio_common_msgs/msg/AudioInfo",
        T0,
        b.msg(
            "audio_common_msgs/msg/AudioInfo",
            channels=2,
            sample_rate=48000,
            sample_format="S16LE",
            bitrate=0,
            coding_format="wave",
        ),
    )
    png = cv2.imencode(".png", RGB[:, :, ::-1])[1].tobytes()
    jpeg = cv2.imencode(".jpg", np.full((8, 8), 200, np.uint8))[1].tobytes()
    depth_f = np.array([[np.nan, 1.25, -1.0], [np.inf, 70.0, 0.002]], np.float32)
    for k in range(3):
        stamp, log = S0 + k * FRAME_NS, T0 + k * FRAME_NS + 7_000_000
        b.write("/camera/color/image_raw", "sensor_msgs/msg/Image", log,
                image(b, stamp, "rgb8", RGB + k, pad=4))  # fmt: skip
        info = b.msg("sensor_msgs/msg/CameraInfo", header=b.header(stamp, "cam_optical"),
                     **camera_info)  # fmt: skip
        b.write("/camera/color/camera_info", "sensor_msgs/msg/CameraInfo", log + 1, info)
        comp = b.msg("sensor_msgs/msg/CompressedImage", header=b.header(stamp, "cam_optical"),
                     format="rgb8; png compressed bgr8", data=png)  # fmt: skip
        b.write("/camera/color/image_raw/compressed", "sensor_msgs/msg/CompressedImage",
                log + 2, comp)  # fmt: skip
        b.write("/audio/audio", "audio_common_msgs/msg/AudioData", log + 3,
                b.msg("audio_common_msgs/msg/AudioData", data=AUDIO[k].tobytes()))  # fmt: skip
    b.write("/camera/depth/image_rect_raw", "sensor_msgs/msg/Image", T0 + 10,
            image(b, S0 + 10, "16UC1", np.array([[0, 1000, 65535], [1, 2, 3]], np.uint16),
                  big=True))  # fmt: skip
    b.write("/camera/depth_f/image", "sensor_msgs/msg/Image", T0 + 11,
            image(b, S0 + 11, "32FC1", depth_f))  # fmt: skip
    b.write(
        "/gray/image_raw",
        "sensor_msgs/msg/Image",
        T0 + 12,
        image(b, S0 + 12, "mono8", np.array([[0, 128], [255, 7]], np.uint8), pad=2),
    )
    b.write(
        "/ir16/image_raw",
        "sensor_msgs/msg/Image",
        T0 + 13,
        image(b, S0 + 13, "mono16", np.array([[0, 40000]], np.uint16)),
    )
    b.write(
        "/ir/image_raw",
        "sensor_msgs/msg/Image",
        T0 + 14,
        image(b, S0 + 14, "yuv422", np.zeros((2, 4), np.uint8)),
    )
    b.write("/cam2/image/compressed", "sensor_msgs/msg/CompressedImage", T0 + 15,
            b.msg("sensor_msgs/msg/CompressedImage", header=b.header(S0 + 15, "c2"),
                  format="jpeg", data=jpeg))  # fmt: skip
    b.write("/cam2/image/compressed", "sensor_msgs/msg/CompressedImage", T0 + 16,
            b.msg("sensor_msgs/msg/CompressedImage", header=b.header(S0 + 16, "c2"),
                  format="jpeg", data=b"not a jpeg"))  # fmt: skip
    b.write("/velodyne_points", "sensor_msgs/msg/PointCloud2", T0 + 20, velodyne(b, S0 + 20))
    b.write(
        "/mic/audio_stamped",
        "audio_common_msgs/msg/AudioDataStamped",
        T0 + 30,
        b.msg(
            "audio_common_msgs/msg/AudioDataStamped",
            header=b.header(S0 + 30, "mic"),
            audio=b.msg("audio_common_msgs/msg/AudioData", data=AUDIO[0].tobytes()),
        ),
    )
    b.write("/chatter", "std_msgs/msg/String", T0 + 40, b.msg("std_msgs/msg/String", data="hi"))
    b.close()
    return path


def bag_path(tmp_path: Path, kind: str) -> Path:
    return tmp_path / ("in.bag" if kind == "ros1" else f"in_{kind}")


@pytest.fixture(scope="module", params=KINDS)
def imported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp(request.param)
    bag = write_bag(bag_path(tmp, request.param), request.param)
    out = tmp / "out.mcap"
    report = import_bag(bag, out, rig="test_rig")
    with SessionReader(out) as r:
        msgs: dict[str, list[Any]] = {}
        for m in r.messages():
            msgs.setdefault(m.topic, []).append(m)
        return report, msgs, r.topics(), r.attachments(), r.metadata(), tmp


def test_topics_counts_and_skips(imported: Any) -> None:
    report, _, topics, _, metadata, _ = imported
    assert topics == {
        "camera_color/image": 3,
        "camera_color_compressed/image": 3,
        "audio/audio": 3,
        "camera_depth/image": 1,
        "camera_depth_f/image": 1,
        "gray/image": 1,
        "ir16/image": 1,
        "cam2/image": 1,
        "velodyne_points/points": 1,
        "mic/audio": 1,
    }
    assert report.written == topics
    r = report.topics
    assert (r["/chatter"].count, r["/chatter"].converted) == (1, 0)
    assert r["/chatter"].skipped == {"unsupported type std_msgs/msg/String": 1}
    assert r["/ir/image_raw"].skipped == {"unsupported encoding 'yuv422'": 1}
    assert r["/cam2/image/compressed"].skipped == {"undecodable image (format 'jpeg')": 1}
    assert (r["/cam2/image/compressed"].count, r["/cam2/image/compressed"].converted) == (2, 1)
    assert (r["/camera/color/camera_info"].count, r["/camera/color/camera_info"].converted) == (
        3,
        3,
    )
    assert r["/camera/color/camera_info"].out_topic == "calibration:camera_color"
    text = "\n".join(report.lines())
    assert "skipped 1: unsupported encoding 'yuv422'" in text
    assert "calibration: rig 'test_rig' (camera_color) attached" in text
    assert metadata["session"]["source"] == "edgefuse import"
    assert metadata["session"]["start_wall_ns"] == metadata["session"]["start_host_ns"] == str(T0)
    assert metadata["ros_topics"]["camera_color/image"] == "/camera/color/image_raw"


def test_images_exact(imported: Any) -> None:
    _, msgs, *_ = imported
    for k, m in enumerate(msgs["camera_color/image"]):
        h = m.header
        assert (h.seq, h.t_sensor_ns, h.t_host_ns) == (
            k,
            S0 + k * FRAME_NS,
            T0 + k * FRAME_NS + 7_000_000,
        )
        assert (h.encoding, h.frame_id, h.stream) == ("bgr8", "cam_optical", "image")
        np.testing.assert_array_equal(m.arrays[0], (RGB + k)[:, :, ::-1])  # rgb8 -> bgr8
    for m in msgs["camera_color_compressed/image"]:  # PNG: lossless, decoded to bgr8
        assert m.header.encoding == "bgr8"
        np.testing.assert_array_equal(m.arrays[0], RGB[:, :, ::-1])
    (depth,) = msgs["camera_depth/image"]  # big-endian 16UC1 -> z16
    assert depth.header.encoding == "z16" and depth.header.meta["depth_scale_m"] == 0.001
    np.testing.assert_array_equal(depth.arrays[0], [[0, 1000, 65535], [1, 2, 3]])
    assert depth.arrays[0].dtype == np.uint16
    (depth_f,) = msgs["camera_depth_f/image"]  # metres -> mm, invalid -> 0
    np.testing.assert_array_equal(depth_f.arrays[0], [[0, 1250, 0], [0, 0, 2]])
    (gray,) = msgs["gray/image"]
    np.testing.assert_array_equal(gray.arrays[0][:, :, 0], [[0, 128], [255, 7]])
    assert gray.arrays[0].shape == (2, 2, 3) and (gray.arrays[0] == gray.arrays[0][:, :, :1]).all()
    (ir16,) = msgs["ir16/image"]
    assert ir16.header.encoding == "mono16"
    np.testing.assert_array_equal(ir16.arrays[0], [[0, 40000]])
    (jpeg,) = msgs["cam2/image"]
    assert jpeg.arrays[0].shape == (8, 8, 3) and np.abs(jpeg.arrays[0].astype(int) - 200).max() <= 2
    assert jpeg.header.seq == 0 and jpeg.header.frame_id == "c2"


def test_points_exact(imported: Any) -> None:
    _, msgs, *_ = imported
    (cloud,) = msgs["velodyne_points/points"]
    h = cloud.header
    assert (h.encoding, h.frame_id, h.t_sensor_ns, h.t_host_ns) == (
        "xyzit_f32",
        "velodyne",
        S0 + 20,
        T0 + 20,
    )
    assert h.meta["fields"] == ["x", "y", "z", "intensity", "t_offset_s"]
    pts, ring = cloud.arrays
    valid = [p for p in VELO if not math.isnan(p[0])]  # the NaN point is dropped
    np.testing.assert_array_equal(pts, np.array([(*p[:4], p[5]) for p in valid], np.float32))
    np.testing.assert_array_equal(ring, [0, 15])
    assert ring.dtype == np.uint8


def test_audio_exact(imported: Any) -> None:
    _, msgs, *_ = imported
    chunks = msgs["audio/audio"]
    for k, m in enumerate(chunks):
        np.testing.assert_array_equal(m.arrays[0], AUDIO[k])
        assert m.header.encoding == "s16le"
        assert m.header.meta == {"rate_hz": 48000, "channels": 2, "first_sample": 4 * k}
        # No stamp in AudioData: a sample clock anchored at the first chunk's arrival.
        first_log = T0 + 7_000_000 + 3
        assert m.header.t_sensor_ns == first_log + 4 * k * 1_000_000_000 // 48000
    (stamped,) = msgs["mic/audio"]
    assert stamped.header.t_sensor_ns == S0 + 30 and stamped.header.frame_id == "mic"
    np.testing.assert_array_equal(stamped.arrays[0], AUDIO[0])


def test_calibration_attached(imported: Any) -> None:
    _, _, _, attachments, _, tmp = imported
    assert list(attachments) == ["calibration/test_rig.yaml"]
    path = tmp / "rig.yaml"
    path.write_bytes(attachments["calibration/test_rig.yaml"])
    cal = load_calibration(path)
    assert cal.rig == "test_rig" and list(cal.sensors) == ["camera_color"]
    cam = cal.sensor("camera_color")
    assert cam.frame_id == "cam_optical"
    assert cam.camera is not None
    assert (cam.camera.width, cam.camera.height) == (4, 3)
    np.testing.assert_array_equal(cam.camera.K.ravel(), K)
    assert cam.camera.distortion_model == "plumb_bob"
    assert list(cam.camera.distortion) == D
    np.testing.assert_array_equal(cam.T, np.eye(4))


def test_topic_map_and_filter(tmp_path: Path) -> None:
    bag = write_bag(tmp_path / "in.bag", "ros1")
    out = tmp_path / "out.mcap"
    report = import_bag(
        bag,
        out,
        topic_map={"/camera/color/image_raw": "camera/image", "/velodyne_points": "lidar/points"},
        topics={"/camera/color/image_raw", "/velodyne_points", "/camera/color/camera_info"},
    )
    with SessionReader(out) as r:
        assert r.topics() == {"camera/image": 3, "lidar/points": 1}
        (name,) = r.attachments()
    assert name == "calibration/in.yaml"  # rig named after the bag
    assert report.calibration is not None and list(report.calibration.sensors) == ["camera"]
    assert "11 topic(s) not selected" in report.notes
    with pytest.raises(ConfigError, match="not in the bag"):
        import_bag(bag, out, topics={"/nope"})
    with pytest.raises(ConfigError, match="not in the bag"):
        import_bag(bag, out, topic_map={"/nope": "a/b"})
    with pytest.raises(ConfigError, match="<node>/<stream>"):
        import_bag(bag, out, topic_map={"/velodyne_points": "lidar"})
    with pytest.raises(ConfigError, match="two ROS topics"):
        import_bag(bag, out, topic_map={"/gray/image_raw": "a/b", "/ir16/image_raw": "a/b"})


@pytest.mark.parametrize("kind", KINDS)
def test_empty_bag_and_unsupported_only(tmp_path: Path, kind: str) -> None:
    b = Bag(bag_path(tmp_path, kind), kind)
    b.close()
    report = import_bag(bag_path(tmp_path, kind), tmp_path / "empty.mcap")
    assert report.topics == {} and report.written == {}
    with SessionReader(tmp_path / "empty.mcap") as r:
        assert r.topics() == {} and r.attachments() == {}
    path = tmp_path / ("only.bag" if kind == "ros1" else "only")
    b = Bag(path, kind)
    for i in range(4):
        b.write("/chatter", "std_msgs/msg/String", T0 + i, b.msg("std_msgs/msg/String", data="x"))
    b.close()
    report = import_bag(path, tmp_path / "only.mcap")
    assert report.topics["/chatter"].skipped == {"unsupported type std_msgs/msg/String": 4}


def test_auto_names() -> None:
    img = "sensor_msgs/msg/Image"
    assert auto_topic("/camera/color/image_raw", img) == "camera_color/image"
    assert auto_topic("/image_raw", img) == "image_raw/image"
    assert auto_topic("/os_cloud_node/points", "sensor_msgs/msg/PointCloud2") == (
        "os_cloud_node/points"
    )
    assert auto_topic("/audio/audio", "audio_common_msgs/msg/AudioData") == "audio/audio"
    assert auto_topic("/a b/c.d/image", img) == "a_b_c_d/image"


def bad_bags(tmp: Path) -> dict[str, Path]:
    """Garbage and truncated bags of each kind."""
    rng = np.random.default_rng(0)
    garbage = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    out: dict[str, Path] = {}
    for suffix in (".bag", ".db3", ".mcap"):
        p = tmp / f"garbage{suffix}"
        p.write_bytes(garbage)
        out[f"garbage{suffix}"] = p
    good1 = write_bag(tmp / "good.bag", "ros1")
    cut = tmp / "cut.bag"
    cut.write_bytes(good1.read_bytes()[: good1.stat().st_size // 2])
    out["cut.bag"] = cut
    good2 = write_bag(tmp / "good_mcap", "mcap")
    (storage,) = good2.glob("*.mcap")
    storage.write_bytes(storage.read_bytes()[:300])
    out["cut mcap"] = good2
    good3 = write_bag(tmp / "good_db3", "sqlite3")
    (storage,) = good3.glob("*.db3")
    storage.write_bytes(storage.read_bytes()[:5000])
    out["cut db3"] = good3
    meta = tmp / "bad_meta"
    meta.mkdir()
    (meta / "metadata.yaml").write_text("rosbag2_bagfile_information: [1, 2\n")
    out["bad metadata.yaml"] = meta
    out["missing"] = tmp / "nope.bag"
    other = tmp / "notes.txt"
    other.write_text("hello")
    out["wrong suffix"] = other
    return out


def test_bad_bags_are_clear_errors(tmp_path: Path) -> None:
    for what, bag in bad_bags(tmp_path).items():
        out = tmp_path / f"{bag.name}.out.mcap"
        with pytest.raises(BagError) as exc:
            import_bag(bag, out)
        msg = str(exc.value)
        assert str(bag) in msg, what
        if "damaged after" not in msg:
            assert not out.exists(), what  # nothing written for a bag that does not open
        if what == "cut.bag":
            assert "reindex" in msg


def run_cli(*argv: str) -> int:
    """The ``import`` verb through its own ``register``, as ``edgefuse.cli.main`` runs it."""
    parser = argparse.ArgumentParser(prog="edgefuse")
    register(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(["import", *argv])
    try:
        return int(args.fn(args))
    except EdgefuseError as exc:
        print(f"edgefuse: error: {exc}")
        return 2


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bag = write_bag(tmp_path / "cli_bag", "sqlite3")
    assert default_out(bag) == tmp_path / "cli_bag.mcap"
    assert run_cli(str(bag), "--map", "/camera/color/image_raw=cam/image",
                   "--topics", "/camera/color/image_raw,/chatter") == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "/chatter" in text and "unsupported type std_msgs/msg/String" in text
    assert f"wrote {tmp_path / 'cli_bag.mcap'}: 3 messages" in text
    with SessionReader(tmp_path / "cli_bag.mcap") as r:
        assert r.topics() == {"cam/image": 3}
    garbage = tmp_path / "junk.bag"
    garbage.write_bytes(b"#ROSBAG V2.0\n" + b"\xff" * 100)
    assert run_cli(str(garbage)) == 2
    assert "not a readable ROS bag" in capsys.readouterr().out
    assert run_cli(str(bag), "--map", "oops") == 2
    assert "ROS_TOPIC=NODE/STREAM" in capsys.readouterr().out


def test_damage_inside_a_chunk_keeps_what_came_before(tmp_path: Path) -> None:
    data = bytearray(write_bag(tmp_path / "good.bag", "ros1").read_bytes())
    # Every message record's header starts with its length, then the field "op=\x02": give the
    # last imported message (/mic/audio_stamped; /chatter after it is not read) an impossible
    # header length, as a torn write would.
    marks = [m.start() for m in re.finditer(re.escape(b"\x04\x00\x00\x00op=\x02"), bytes(data))]
    assert len(marks) == 23
    data[marks[-2] - 4 : marks[-2]] = struct.pack("<I", 2**31 - 1)
    bag = tmp_path / "torn.bag"
    bag.write_bytes(bytes(data))
    out = tmp_path / "torn.mcap"
    with pytest.raises(BagError, match=r"damaged after 9 messages .*holds what was imported"):
        import_bag(bag, out)
    with SessionReader(out) as r:
        # In log-time order the 9 messages before it are the info, the one-off images (one
        # skipped, one undecodable) and the cloud; the camera frames come later.
        assert r.topics() == {
            t: 1
            for t in ("camera_depth/image", "camera_depth_f/image", "gray/image", "ir16/image",
                      "cam2/image", "velodyne_points/points")
        }  # fmt: skip


def test_edgefuse_import_verb(tmp_path: Path) -> None:
    """``python -m edgefuse import`` end to end, once the verb is registered in cli.py."""
    from edgefuse.cli import build_parser

    verbs = {
        name
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
        for name in action.choices
    }
    if "import" not in verbs:
        pytest.skip("the import verb is not registered in edgefuse/cli.py yet")
    from tests.conftest import edgefuse_cli

    bag = write_bag(tmp_path / "e2e.bag", "ros1")
    done = edgefuse_cli("import", str(bag), "-o", str(tmp_path / "e2e.mcap"))
    assert done.returncode == 0, done.stderr
    assert "calibration: rig 'e2e' (camera_color) attached" in done.stdout
    bad = tmp_path / "bad.bag"
    bad.write_bytes(b"garbage")
    done = edgefuse_cli("import", str(bad))
    assert done.returncode == 2
    assert "not a ROS 1 bag" in done.stderr and "Traceback" not in done.stderr


def raw_image(enc: str, arr: np.ndarray, step_pad: int = 0) -> Msg:
    h = arr.shape[0]
    rows = arr.reshape(h, -1).view(np.uint8)
    data = np.concatenate([rows, np.zeros((h, step_pad), np.uint8)], axis=1)
    return Msg(encoding=enc, height=h, width=arr.shape[1], step=rows.shape[1] + step_pad,
              is_bigendian=0, data=data.ravel())  # fmt: skip


def test_image_encodings() -> None:
    bgra = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    enc, img, _ = convert_image(raw_image("bgra8", bgra, 3))
    assert enc == "bgr8"
    np.testing.assert_array_equal(img, bgra[:, :, :3])
    enc, img, _ = convert_image(raw_image("rgba8", bgra))
    np.testing.assert_array_equal(img, bgra[:, :, 2::-1])
    enc, img, _ = convert_image(raw_image("8UC3", bgra[:, :, :3].copy()))
    np.testing.assert_array_equal(img, bgra[:, :, :3])
    with pytest.raises(Skip, match="unsupported encoding 'bayer_rggb8'"):
        convert_image(raw_image("bayer_rggb8", bgra[:, :, 0].copy()))
    short = raw_image("bgr8", bgra[:, :, :3].copy())
    short.data = short.data[:-1]
    with pytest.raises(Skip, match="bad image size"):
        convert_image(short)


def test_compressed_depth_and_grey_jpeg() -> None:
    depth = np.array([[0, 500], [1234, 65535]], np.uint16)
    png = cv2.imencode(".png", depth)[1].tobytes()
    config = struct.pack("<iff", 0, 0.0, 0.0)  # compressed_depth_image_transport's header
    enc, img, meta = convert_compressed(Msg(format="16UC1; compressedDepth png", data=config + png))
    assert enc == "z16" and meta["depth_scale_m"] == 0.001
    np.testing.assert_array_equal(img, depth)
    enc, img, _ = convert_compressed(Msg(format="mono16; png compressed ", data=png))
    assert enc == "mono16"
    np.testing.assert_array_equal(img, depth)
    with pytest.raises(Skip, match="unsupported encoding '32FC1; compressedDepth'"):
        convert_compressed(Msg(format="32FC1; compressedDepth", data=config + png))
    grey = cv2.imencode(".png", np.array([[9, 200]], np.uint8))[1].tobytes()
    enc, img, _ = convert_compressed(Msg(format="png", data=grey))
    np.testing.assert_array_equal(img, [[[9, 9, 9], [200, 200, 200]]])


def test_audio_formats() -> None:
    samples = np.array([[1, -2], [300, -32768]], np.int16)
    got = convert_audio(samples.astype(">i2").tobytes(), AudioFormat(8000, 2, "S16BE"))
    np.testing.assert_array_equal(got, samples)
    assert got.dtype == np.int16
    with pytest.raises(Skip, match="unsupported encoding 'mp3'"):
        convert_audio(b"\0" * 4, AudioFormat(8000, 2, "S16LE", "mp3"))
    with pytest.raises(Skip, match="unsupported encoding 'F32LE'"):
        convert_audio(b"\0" * 8, AudioFormat(8000, 2, "F32LE"))
    with pytest.raises(Skip, match="not whole 2-channel frames"):
        convert_audio(b"\0" * 6, AudioFormat(8000, 2))


def camera_info(model: str, d: list[float], k: list[float] | None = None) -> Msg:
    return Msg(header=Msg(frame_id="cam"), width=640, height=480, distortion_model=model,
              d=np.array(d), k=np.array(k or K))  # fmt: skip


def test_camera_info_models() -> None:
    cal = camera_calibration(camera_info("rational_polynomial", [0.1] * 8))
    assert cal.camera is not None and cal.camera.distortion_model == "rational_polynomial"
    cal = camera_calibration(camera_info("equidistant", [0.1, 0.2, 0.3, 0.4]))
    assert cal.camera is not None and cal.camera.distortion == (0.1, 0.2, 0.3, 0.4)
    cal = camera_calibration(camera_info("", []))
    assert cal.camera is not None and cal.camera.distortion_model == "none"
    with pytest.raises(Skip, match="unusable camera_info"):
        camera_calibration(camera_info("plumb_bob", [0.0] * 5, [0.0] * 9))  # uncalibrated
    with pytest.raises(Skip, match="unusable camera_info"):
        camera_calibration(camera_info("plumb_bob", [0.1] * 14))
