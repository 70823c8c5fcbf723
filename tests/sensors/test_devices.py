"""``edgefuse devices`` for real: an ALSA capture device the test configures, real UDP Velodyne
packets on loopback, librealsense's own enumeration, OpenCV on whatever /dev/video* exists."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from edgefuse.sensors.devices import (
    VELODYNE_DATA_BYTES,
    format_text,
    listen_velodyne,
    register,
)
from tests.conftest import REPO

ASOUNDRC = """
pcm.filecap {{
    type file
    slave.pcm "null"
    file "/dev/null"
    infile "{infile}"
    format "raw"
}}
pcm.!default {{
    type asym
    capture.pcm "filecap"
    playback.pcm "null"
}}
"""


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def velodyne_packet(product_id: int, return_mode: int = 0x37, stamp_us: int = 0) -> bytes:
    """A data packet laid out as the manuals give it: 12 blocks of flag 0xFFEE, azimuth and
    32 channels (distance, reflectivity), then the µs stamp, return mode and product id."""
    block = bytearray(b"\xff\xee")
    block += (1234).to_bytes(2, "little") + bytes(96)
    body = bytes(block) * 12 + stamp_us.to_bytes(4, "little") + bytes([return_mode, product_id])
    assert len(body) == VELODYNE_DATA_BYTES
    return body


def send_packets(port: int, payloads: list[bytes], *, duration_s: float, rate_hz: float) -> None:
    """Send ``payloads`` in turn to 127.0.0.1:``port`` at ``rate_hz`` for ``duration_s``."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        t_end = time.monotonic() + duration_s
        i = 0
        while time.monotonic() < t_end:
            s.sendto(payloads[i % len(payloads)], ("127.0.0.1", port))
            i += 1
            time.sleep(1 / rate_hz)


def run_devices(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgefuse.sensors.devices", *args],
        cwd=REPO,
        env={**os.environ, "HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def alsa_home(tmp_path: Path) -> Path:
    """A HOME whose .asoundrc defines a capture device reading a raw file (TESTING.md)."""
    raw = tmp_path / "input.raw"
    raw.write_bytes(bytes(32000))
    (tmp_path / ".asoundrc").write_text(ASOUNDRC.format(infile=raw))
    return tmp_path


def test_devices_json_lists_alsa_input_realsense_and_a_velodyne_vlp32c(alsa_home: Path) -> None:
    pytest.importorskip("pyaudio")
    pytest.importorskip("pyrealsense2")
    data_port, pos_port = free_udp_port(), free_udp_port()
    packets = [velodyne_packet(0x28, 0x37, stamp_us=k * 553) for k in range(10)]
    senders = [
        threading.Thread(
            target=send_packets, args=(data_port, packets), kwargs=dict(duration_s=4, rate_hz=300)
        ),
        threading.Thread(
            target=send_packets,
            args=(pos_port, [bytes(512)]),
            kwargs=dict(duration_s=4, rate_hz=20),
        ),
    ]
    for t in senders:
        t.start()
    try:
        r = run_devices(
            alsa_home,
            "--json",
            "--listen-s",
            "1.5",
            "--velodyne-port",
            str(data_port),
            "--velodyne-position-port",
            str(pos_port),
        )
    finally:
        for t in senders:
            t.join()
    assert r.returncode == 0, r.stderr
    found: dict[str, Any] = json.loads(r.stdout)
    assert set(found) == {"cameras", "audio_inputs", "realsense", "velodyne"}
    # Audio: the ALSA file plugin is a real PortAudio input device.
    audio = found["audio_inputs"]
    assert audio["ok"], audio
    names = {a["name"]: a for a in audio["devices"]}
    assert "filecap" in names, names
    cap = names["filecap"]
    assert cap["channels"] >= 1 and cap["default_rate_hz"] > 0 and cap["host_api"] == "ALSA"
    assert any(a["default"] for a in audio["devices"])
    # RealSense: librealsense's enumeration ran and found none on this machine.
    assert found["realsense"] == {"ok": True, "devices": []}
    # Cameras: whatever /dev/video* holds here (usually nothing) was probed without error.
    assert found["cameras"]["ok"]
    # Velodyne: one sender, its model from the product id byte, rate from arrival times.
    vel = found["velodyne"]
    assert vel["ok"], vel
    (lidar,) = vel["devices"]
    assert lidar["address"] == "127.0.0.1"
    assert lidar["model"] == "VLP-32C" and lidar["product_id"] == "0x28"
    assert lidar["return_mode"] == "strongest"
    assert lidar["data_packets"] > 100 and 100 < lidar["packet_rate_hz"] < 400
    assert lidar["position_packets"] >= 10 and lidar["other_packets"] == 0


def test_devices_text_output_says_what_is_missing_or_found(alsa_home: Path) -> None:
    r = run_devices(alsa_home, "--listen-s", "0")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for title in ("Cameras:", "Audio inputs:", "RealSense:", "Velodyne"):
        assert title in out
    if "filecap" not in out:  # pyaudio missing: the section says which extra to install
        assert "edgefuse[audio]" in out
    assert "not listened (--listen-s 0)" in out
    # ALSA's noise about missing cards is kept off the terminal.
    assert "ALSA lib" not in r.stderr


def test_listener_reports_models_return_modes_and_stray_packets() -> None:
    port, pos = free_udp_port(), free_udp_port()
    out: list[Any] = []
    t = threading.Thread(
        target=lambda: out.append(listen_velodyne(data_port=port, position_port=pos, listen_s=1.0))
    )
    t.start()
    time.sleep(0.2)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(5):
            s.sendto(velodyne_packet(0x22, 0x39), ("127.0.0.1", port))
            s.sendto(b"\x00" * 100, ("127.0.0.1", port))  # not a data packet
        s.sendto(velodyne_packet(0x77, 0x40), ("127.0.0.1", port))
    t.join()
    (lidar,) = out[0]
    # The last data packet decides: an unknown product id and return mode are shown as such.
    assert lidar["data_packets"] == 6 and lidar["other_packets"] == 5
    assert lidar["model"] == "unknown" and lidar["product_id"] == "0x77"
    assert lidar["return_mode"] == "unknown (0x40)"
    text = format_text(
        {
            "cameras": {"ok": True, "devices": []},
            "audio_inputs": {"ok": False, "error": "pyaudio is not installed", "devices": []},
            "realsense": {"ok": True, "devices": []},
            "velodyne": {"ok": True, "devices": out[0]},
        },
        listen_s=1.0,
        port=port,
    )
    assert "unavailable: pyaudio is not installed" in text and "127.0.0.1  unknown" in text


def test_busy_port_is_reported_not_raised(alsa_home: Path) -> None:
    port = free_udp_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("0.0.0.0", port))  # a lidar node already listening, without SO_REUSEADDR
        r = run_devices(alsa_home, "--json", "--listen-s", "0.2", "--velodyne-port", str(port))
    assert r.returncode == 0, r.stderr
    vel = json.loads(r.stdout)["velodyne"]
    assert not vel["ok"] and f"cannot listen on UDP port {port} (data)" in vel["error"]


def test_register_adds_the_devices_verb(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("pyrealsense2")
    parser = argparse.ArgumentParser(prog="edgefuse")
    register(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(["devices", "--json", "--listen-s", "0"])
    assert args.fn(args) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["velodyne"]["ok"] is False and found["realsense"]["ok"] is True
