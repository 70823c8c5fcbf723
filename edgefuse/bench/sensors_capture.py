"""Camera and microphone driver costs, for ``edgefuse bench sensors``.

:func:`bench_camera_publish` measures what the camera node does per frame on the node loop:
take a shared-memory loan, copy the decoded frame into it and publish it on a same-host
(``ipc://``, shared memory) endpoint, with a subscriber reading every frame back to check it
arrived. It also times the capture thread's grab + retrieve (MJPEG decode) of the same size
from a video file that :mod:`cv2` writes first, since that is the other cost of a frame.

:func:`bench_microphone` measures the CPU time per chunk of the microphone node's path from
PortAudio's callback to the wire (buffer view, sample clock, hand-over, publish), without a
sound card: the samples are synthetic, the code path after PortAudio is the node's.
"""

from __future__ import annotations

import collections
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgefuse.sensors.camera import CameraParams, Capture
from edgefuse.sensors.microphone import SampleClock
from edgefuse.transport import Publisher, Subscriber, TransportOptions
from edgefuse.transport.stats import percentiles_ms


def _decode_ms(tmp: Path, width: int, height: int, frames: int) -> dict[str, float]:
    import cv2

    path = tmp / "bench.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 30.0, (width, height))
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (height // 8, width // 8, 3), dtype=np.uint8)
    img = cv2.resize(base, (width, height), interpolation=cv2.INTER_LINEAR)  # camera-like detail
    for k in range(frames):
        writer.write(np.roll(img, 4 * k, axis=1))
    writer.release()
    cap = Capture(CameraParams(source=str(path)))
    cap.open()
    buf: np.ndarray | None = None
    samples = []
    while True:
        t0 = time.perf_counter_ns()
        if not cap.grab():
            break
        buf = cap.retrieve(buf)
        samples.append(time.perf_counter_ns() - t0)
    cap.release()
    return percentiles_ms(samples)


def bench_camera_publish(
    width: int = 1920, height: int = 1080, fps: float = 30.0, seconds: float = 3.0
) -> dict[str, Any]:
    """Per-frame publish cost (ms) of the camera node at ``width`` x ``height`` bgr8 and ``fps``
    over shared memory, and the grab + MJPEG decode cost of such a frame; returns a JSON-ready
    dict (percentiles p50/p90/p99/max, CPU time per frame, frames checked)."""
    frames = max(1, round(seconds * fps))
    with tempfile.TemporaryDirectory(prefix="edgefuse-bench-cam-") as tmp:
        endpoint = f"ipc://{tmp}/cam.sock"
        options = TransportOptions(run_id=f"benchcam{os.getpid()}", queue_depth=64)
        pub = Publisher(endpoint, node="cam", options=options)
        sub = Subscriber(endpoint, ["cam/image"], options=options)
        try:
            frame = np.random.default_rng(1).integers(0, 255, (height, width, 3), np.uint8)
            # Wait until the subscription is in place, so every measured frame is delivered.
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline:
                pub.publish("image", [np.zeros((1,), np.uint8)], t_sensor_ns=0)
                if sub.recv(timeout_ms=20) is not None:
                    break
            # Warm-up: every ring slot written once (first writes fault its pages in).
            for _ in range(options.shm_slots + 4):
                out = pub.loan("image", frame.shape, np.uint8)
                np.copyto(out, frame)
                pub.publish("image", [out], t_sensor_ns=0)
                sub.recv(timeout_ms=1000)
            costs: list[int] = []
            cpu_ns = 0
            received = corrupt = 0
            period_ns = round(1e9 / fps)
            next_ns = time.monotonic_ns()
            for k in range(frames):
                delay = next_ns - time.monotonic_ns()
                if delay > 0:
                    time.sleep(delay / 1e9)
                next_ns += period_ns
                frame[0, 0, 0] = k % 256  # a marker the subscriber checks
                c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
                out = pub.loan("image", frame.shape, np.uint8)
                np.copyto(out, frame)
                pub.publish("image", [out], t_sensor_ns=k * period_ns, frame_id="camera_optical")
                costs.append(time.perf_counter_ns() - t0)
                cpu_ns += time.thread_time_ns() - c0
                msg = sub.recv(timeout_ms=1000)
                if msg is not None:
                    received += 1
                    if int(msg.arrays[0][0, 0, 0]) != k % 256 or not msg.intact():
                        corrupt += 1
            decode = _decode_ms(Path(tmp), width, height, frames=min(frames, 30))
        finally:
            sub.close()
            pub.close()
    return {
        "driver": "camera",
        "transport": "shared memory (ipc://)",
        "width": width,
        "height": height,
        "fps": fps,
        "frames": frames,
        "received": received,
        "corrupt": corrupt,
        "publish_ms": percentiles_ms(costs),
        "publish_cpu_ms_per_frame": round(cpu_ns / frames / 1e6, 4),
        "grab_decode_mjpeg_ms": decode,
        "warmup_frames": options.shm_slots + 4,
        "goal": "publish <= 2 ms per 1080p frame",
    }


def bench_microphone(
    rate_hz: int = 16000, channels: int = 1, chunk_ms: float = 10.0, chunks: int = 3000
) -> dict[str, Any]:
    """CPU time per chunk (µs) of the microphone node from PortAudio's callback to the wire,
    over ``chunks`` chunks published back to back, and what that is as a share of one core at
    the real chunk rate."""
    n = round(chunk_ms * rate_hz / 1000)
    data = (np.arange(n * channels) % 32768).astype(np.int16).tobytes()
    clock = SampleClock(rate_hz)
    queue: collections.deque[tuple[int, np.ndarray, int]] = collections.deque()
    with tempfile.TemporaryDirectory(prefix="edgefuse-bench-mic-") as tmp:
        options = TransportOptions(run_id=f"benchmic{os.getpid()}", queue_depth=chunks + 10)
        pub = Publisher(f"ipc://{tmp}/mic.sock", node="mic", options=options)
        try:
            c0 = time.thread_time_ns()
            t0 = time.perf_counter_ns()
            for _ in range(chunks):
                # What the PortAudio callback does ...
                t_host = time.monotonic_ns()
                samples = np.frombuffer(data, np.int16).reshape(n, channels)
                first = clock.chunk(n, overflow=False, adc_time_s=0.0, t_host_ns=t_host)
                queue.append((first, samples, t_host))
                # ... and what the node loop does with it.
                first, samples, t_host = queue.popleft()
                pub.publish(
                    "audio",
                    [samples],
                    t_sensor_ns=first * 1_000_000_000 // rate_hz,
                    t_host_ns=t_host,
                    frame_id="mic",
                    encoding="s16le",
                    meta={"rate_hz": rate_hz, "channels": channels, "first_sample": first},
                )
            wall_ns = time.perf_counter_ns() - t0
            cpu_ns = time.thread_time_ns() - c0
        finally:
            pub.close()
    per_chunk_us = cpu_ns / chunks / 1e3
    return {
        "driver": "microphone",
        "rate_hz": rate_hz,
        "channels": channels,
        "chunk_ms": chunk_ms,
        "chunks": chunks,
        "cpu_us_per_chunk": round(per_chunk_us, 2),
        "wall_us_per_chunk": round(wall_ns / chunks / 1e3, 2),
        "cpu_percent_of_core": round(per_chunk_us / (chunk_ms * 1e3) * 100, 3),
    }
