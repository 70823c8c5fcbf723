"""``edgefuse devices``: what is attached to this machine, so a user knows what to configure.

Like ``v4l2-ctl --list-devices``, ``arecord -l`` and ``rs-enumerate-devices`` together, plus a
short listen for Velodyne lidars: cameras (``/dev/video*`` opened with OpenCV, with the size they
deliver), audio inputs (PyAudio: index, name, channels, default rate), RealSense devices (name,
serial, firmware) and Velodyne packets on UDP (data port 2368, position port 8308: source
address, packet rate, model from the product id byte, return mode). Each section stands alone:
a missing library says which extra to install, and the other sections are still listed.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import re
import select
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgefuse.errors import MissingExtraError, require_extra

#: Size of a Velodyne data packet's UDP payload (12 blocks of 100 bytes, stamp, two bytes).
VELODYNE_DATA_BYTES = 1206
#: Size of a Velodyne position (GPS/PPS) packet's UDP payload.
VELODYNE_POSITION_BYTES = 512
#: The last byte of a data packet: product id (Velodyne user manuals, "factory bytes").
VELODYNE_MODELS = {
    0x21: "HDL-32E",
    0x22: "VLP-16",
    0x24: "VLP-16 Hi-Res",
    0x28: "VLP-32C",
    0x31: "Velarray",
    0xA1: "VLS-128",
}
#: The byte before it: return mode.
VELODYNE_RETURN_MODES = {0x37: "strongest", 0x38: "last", 0x39: "dual"}


def _section(fn: Any, *args: Any) -> dict[str, Any]:
    """Run one probe; a missing library or a failure becomes the section's ``error``."""
    try:
        return {"ok": True, "devices": fn(*args)}
    except MissingExtraError as exc:
        return {"ok": False, "error": str(exc), "devices": []}
    except Exception as exc:  # a broken driver must not hide the other sections
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "devices": []}


def _video_index(path: str) -> int:
    m = re.search(r"(\d+)$", path)
    return int(m.group(1)) if m else -1


def list_cameras(pattern: str = "/dev/video*") -> list[dict[str, Any]]:
    """Video devices matching ``pattern``, each opened with OpenCV (V4L2) to read the size and
    rate it delivers by default; ``opens`` is false for metadata nodes and busy devices."""
    import cv2

    out: list[dict[str, Any]] = []
    for path in sorted(glob.glob(pattern), key=_video_index):
        name_file = Path("/sys/class/video4linux") / Path(path).name / "name"
        name = name_file.read_text().strip() if name_file.is_file() else ""
        cam: dict[str, Any] = {"path": path, "index": _video_index(path), "name": name}
        cap = cv2.VideoCapture(path, cv2.CAP_V4L2)
        try:
            cam["opens"] = bool(cap.isOpened())
            if cam["opens"]:
                ok, frame = cap.read()
                cam["width"] = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
                cam["height"] = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
                cam["fps"] = float(cap.get(cv2.CAP_PROP_FPS))
                cam["reads"] = bool(ok and frame is not None)
        finally:
            cap.release()
        out.append(cam)
    return out


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence C libraries' stderr (ALSA lists every card it cannot find while PortAudio
    starts); Python's own errors are raised, not printed, so nothing useful is lost."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def list_audio_inputs() -> list[dict[str, Any]]:
    """PortAudio devices with input channels (extra ``audio``): index, name, channels, default
    rate (Hz), host API, and which one is the default input."""
    pyaudio: Any = require_extra("pyaudio", "audio")
    with _quiet_stderr():
        pa = pyaudio.PyAudio()
    try:
        try:
            default = int(pa.get_default_input_device_info()["index"])
        except OSError:  # no default input device
            default = -1
        out: list[dict[str, Any]] = []
        for i in range(pa.get_device_count()):
            info = pa.get_device_info_by_index(i)
            channels = int(info.get("maxInputChannels", 0))
            if channels <= 0:
                continue
            api = pa.get_host_api_info_by_index(int(info["hostApi"]))["name"]
            out.append(
                {
                    "index": i,
                    "name": str(info["name"]),
                    "channels": channels,
                    "default_rate_hz": float(info["defaultSampleRate"]),
                    "host_api": str(api),
                    "default": i == default,
                }
            )
        return out
    finally:
        pa.terminate()


def list_realsense() -> list[dict[str, str]]:
    """RealSense devices (extra ``depth``): name, serial, firmware, product line, USB type."""
    from edgefuse.sensors._realsense import list_devices

    return list_devices()


def listen_velodyne(
    *, data_port: int = 2368, position_port: int = 8308, listen_s: float = 1.0, host: str = ""
) -> list[dict[str, Any]]:
    """Listen ``listen_s`` seconds for Velodyne packets; one entry per sending address.

    Each entry: source address, data packets and their rate (Hz), model (from the product id
    byte) and return mode (from the byte before it) of the last data packet, position packets,
    and ``other`` packets (wrong size on the data port). A port that cannot be bound (a lidar
    node already listening) raises ``OSError`` naming it.
    """
    socks: dict[socket.socket, str] = {}
    try:
        for port, kind in ((data_port, "data"), (position_port, "position")):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks[s] = kind
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError as exc:
                raise OSError(f"cannot listen on UDP port {port} ({kind}): {exc.strerror}") from exc
            s.setblocking(False)
        seen: dict[str, dict[str, Any]] = {}
        t_end = time.monotonic() + listen_s
        while (left := t_end - time.monotonic()) > 0:
            ready, _, _ = select.select(list(socks), [], [], left)
            for s in ready:
                with contextlib.suppress(BlockingIOError):
                    while True:
                        data, (addr, _) = s.recvfrom(2048)
                        _count_packet(seen, socks[s], addr, data, time.monotonic_ns())
        return [_summarise(addr, v) for addr, v in sorted(seen.items())]
    finally:
        for s in socks:
            s.close()


def _count_packet(
    seen: dict[str, dict[str, Any]], kind: str, addr: str, data: bytes, t_ns: int
) -> None:
    e = seen.setdefault(addr, {"data": [], "position": 0, "other": 0, "last": b""})
    if kind == "position":
        e["position"] += 1
    elif len(data) == VELODYNE_DATA_BYTES:
        e["data"].append(t_ns)
        e["last"] = data[-2:]
    else:
        e["other"] += 1


def _summarise(addr: str, e: dict[str, Any]) -> dict[str, Any]:
    times: list[int] = e["data"]
    rate_hz = (len(times) - 1) / ((times[-1] - times[0]) * 1e-9) if len(times) > 1 else 0.0
    out: dict[str, Any] = {
        "address": addr,
        "data_packets": len(times),
        "packet_rate_hz": round(rate_hz, 1),
        "position_packets": e["position"],
        "other_packets": e["other"],
    }
    if e["last"]:
        mode, pid = e["last"][0], e["last"][1]
        out["product_id"] = f"0x{pid:02x}"
        out["model"] = VELODYNE_MODELS.get(pid, "unknown")
        out["return_mode"] = VELODYNE_RETURN_MODES.get(mode, f"unknown (0x{mode:02x})")
    return out


def discover(
    *, listen_s: float = 1.0, data_port: int = 2368, position_port: int = 8308, host: str = ""
) -> dict[str, dict[str, Any]]:
    """Every section: ``cameras``, ``audio_inputs``, ``realsense``, ``velodyne``; each
    ``{"ok": bool, "devices": [...], "error": "..."}`` (error only when not ok). With
    ``listen_s`` 0 the Velodyne section is skipped (not ok, saying so)."""
    found = {
        "cameras": _section(list_cameras),
        "audio_inputs": _section(list_audio_inputs),
        "realsense": _section(list_realsense),
    }
    if listen_s > 0:
        found["velodyne"] = _section(
            lambda: listen_velodyne(
                data_port=data_port, position_port=position_port, listen_s=listen_s, host=host
            )
        )
    else:
        found["velodyne"] = {"ok": False, "error": "not listened (--listen-s 0)", "devices": []}
    return found


def format_text(found: dict[str, dict[str, Any]], *, listen_s: float, port: int) -> str:
    """The human-readable listing of :func:`discover`'s result."""
    lines: list[str] = []

    def head(title: str, key: str) -> list[dict[str, Any]] | None:
        sec = found[key]
        lines.append(f"{title}:")
        if not sec["ok"]:
            lines.append(f"  unavailable: {sec['error']}")
            return None
        if not sec["devices"]:
            lines.append("  none found")
        return list(sec["devices"])

    for c in head("Cameras", "cameras") or []:
        size = (
            f"{c['width']}x{c['height']} @ {c['fps']:g} fps" if c.get("opens") else "does not open"
        )
        lines.append(f"  {c['path']}  {c['name'] or '?'}  {size}")
    for a in head("Audio inputs", "audio_inputs") or []:
        star = " (default)" if a["default"] else ""
        lines.append(
            f"  [{a['index']}] {a['name']}{star}  {a['channels']} ch, "
            f"{a['default_rate_hz']:g} Hz, {a['host_api']}"
        )
    for r in head("RealSense", "realsense") or []:
        lines.append(f"  {r['name']}  serial {r['serial']}  firmware {r['firmware']}")
    for v in head(f"Velodyne (listened {listen_s:g} s on UDP {port})", "velodyne") or []:
        model = v.get("model", "?")
        if "product_id" in v:
            model += f" ({v['product_id']}), {v['return_mode']} return"
        lines.append(
            f"  {v['address']}  {model}  {v['data_packets']} data packets "
            f"({v['packet_rate_hz']:g}/s), {v['position_packets']} position packets"
        )
    return "\n".join(lines)


def register(sub: Any) -> None:
    """Add the ``devices`` verb to the top-level subparsers ``sub``."""
    p = sub.add_parser(
        "devices",
        help="list attached cameras, audio inputs, RealSense devices and Velodyne lidars",
        description="List what is attached: cameras (/dev/video*), audio inputs (PortAudio), "
        "RealSense devices, and Velodyne lidars heard on UDP during --listen-s seconds.",
    )
    add_arguments(p)
    p.set_defaults(fn=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``edgefuse devices``."""
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument(
        "--listen-s",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds to listen for Velodyne packets (0: skip; default 1)",
    )
    p.add_argument("--velodyne-port", type=int, default=2368, metavar="PORT", help="data port")
    p.add_argument(
        "--velodyne-position-port", type=int, default=8308, metavar="PORT", help="position port"
    )
    p.add_argument("--bind", default="", metavar="HOST", help="address to listen on (default all)")


def run(args: argparse.Namespace) -> int:
    """Run the ``devices`` verb; 0 always (finding nothing is an answer, not an error)."""
    if args.listen_s < 0:
        print("edgefuse devices: --listen-s must be >= 0", file=sys.stderr)
        return 2
    found = discover(
        listen_s=args.listen_s,
        data_port=args.velodyne_port,
        position_port=args.velodyne_position_port,
        host=args.bind,
    )
    if args.json:
        print(json.dumps(found, indent=2))
    else:
        print(format_text(found, listen_s=args.listen_s, port=args.velodyne_port))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m edgefuse.sensors.devices``: the same as ``edgefuse devices``."""
    p = argparse.ArgumentParser(prog="edgefuse devices", description=__doc__)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
