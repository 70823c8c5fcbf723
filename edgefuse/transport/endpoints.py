"""Endpoint strings: parsing, the same-host test, and loopback-by-default binding."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from edgefuse.transport.errors import TransportError


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A ZeroMQ endpoint: ``ipc://PATH`` or ``tcp://HOST:PORT``."""

    scheme: str
    address: str

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """Parse and check ``text``; raise ``TransportError`` saying what was expected."""
        scheme, sep, address = text.partition("://")
        if not sep or scheme not in ("ipc", "tcp") or not address:
            raise TransportError(f"endpoint {text!r}: expected ipc://PATH or tcp://HOST:PORT")
        if scheme == "tcp":
            host, colon, port = address.rpartition(":")
            # isdigit() alone accepts "²" and "٣"; a port is ASCII digits in 0..65535 or "*".
            number = port.isascii() and port.isdigit() and len(port) <= 5 and int(port) < 65536
            if not colon or not host or not (port == "*" or number):
                raise TransportError(
                    f"endpoint {text!r}: expected tcp://HOST:PORT (PORT a number up to 65535 or *)"
                )
        return cls(scheme, address)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.address}"

    @property
    def same_host(self) -> bool:
        """True when every peer is on this host, so payloads can go through shared memory."""
        return self.scheme == "ipc"

    @property
    def host(self) -> str:
        """The host part of a tcp endpoint ("" for ipc)."""
        return self.address.rpartition(":")[0].strip("[]") if self.scheme == "tcp" else ""

    @property
    def loopback(self) -> bool:
        """True for ipc and for tcp endpoints on a loopback address."""
        if self.scheme == "ipc":
            return True
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (for the launcher to hand out)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
