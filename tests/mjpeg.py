"""A multipart/x-mixed-replace MJPEG server on loopback, as IP cameras and ESP32-CAMs serve:
a real HTTP stream for OpenCV's ``VideoCapture`` (the camera driver, live calibration)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import cv2
import numpy as np


class MjpegServer:
    """Each connection streams ``frames`` (BGR images, JPEG quality 95) at ``fps``, ``loops``
    times over, then ends, as when a camera drops. ``connections`` and ``sent`` count."""

    def __init__(self, frames: Sequence[np.ndarray], fps: float, loops: int = 1) -> None:
        jpegs = [
            cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes() for f in frames
        ]
        self.connections = 0
        self.sent = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.connections += 1
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    for _ in range(loops):
                        for j in jpegs:
                            head = b"--frame\r\nContent-Type: image/jpeg\r\n"
                            self.wfile.write(head + b"Content-Length: %d\r\n\r\n" % len(j))
                            self.wfile.write(j + b"\r\n")
                            self.wfile.flush()
                            server.sent += 1
                            time.sleep(1 / fps)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/video.mjpg"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop serving and close the socket."""
        self.httpd.shutdown()
        self.httpd.server_close()
