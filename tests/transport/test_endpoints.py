"""Endpoint strings: what parses, what does not and why, and which endpoints are local."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefuse.transport import Endpoint, Publisher, Subscriber, TransportError
from edgefuse.transport.endpoints import free_tcp_port


@pytest.mark.parametrize(
    ("text", "scheme", "address", "host"),
    [
        ("ipc:///run/ef/cam.ipc", "ipc", "/run/ef/cam.ipc", ""),
        ("ipc://@abstract", "ipc", "@abstract", ""),
        ("tcp://127.0.0.1:5555", "tcp", "127.0.0.1:5555", "127.0.0.1"),
        ("tcp://*:*", "tcp", "*:*", "*"),
        ("tcp://localhost:0", "tcp", "localhost:0", "localhost"),
        ("tcp://[::1]:65535", "tcp", "[::1]:65535", "::1"),
        ("tcp://eth0:80", "tcp", "eth0:80", "eth0"),
    ],
)
def test_valid_endpoints_parse_and_print_back(
    text: str, scheme: str, address: str, host: str
) -> None:
    ep = Endpoint.parse(text)
    assert (ep.scheme, ep.address, ep.host) == (scheme, address, host)
    assert str(ep) == text
    assert Endpoint.parse(str(ep)) == ep


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "expected ipc://PATH or tcp://HOST:PORT"),
        ("camera", "expected ipc://PATH or tcp://HOST:PORT"),
        ("udp://127.0.0.1:5555", "expected ipc://PATH or tcp://HOST:PORT"),
        ("TCP://127.0.0.1:5555", "expected ipc://PATH or tcp://HOST:PORT"),
        ("ipc://", "expected ipc://PATH or tcp://HOST:PORT"),
        ("tcp://", "expected ipc://PATH or tcp://HOST:PORT"),
        ("tcp://127.0.0.1", "expected tcp://HOST:PORT"),
        ("tcp://:5555", "expected tcp://HOST:PORT"),
        ("tcp://127.0.0.1:", "expected tcp://HOST:PORT"),
        ("tcp://127.0.0.1:http", "expected tcp://HOST:PORT"),
        ("tcp://127.0.0.1:-1", "expected tcp://HOST:PORT"),
        ("tcp://127.0.0.1:65536", "expected tcp://HOST:PORT"),
        ("tcp://127.0.0.1:\u00b2", "expected tcp://HOST:PORT"),  # "²".isdigit() is True
        ("tcp://127.0.0.1:" + "9" * 5000, "expected tcp://HOST:PORT"),
    ],
)
def test_invalid_endpoints_say_what_was_expected(text: str, expected: str) -> None:
    with pytest.raises(TransportError) as err:
        Endpoint.parse(text)
    assert expected in str(err.value)
    assert repr(text[:20])[:-1] in str(err.value)  # and quote what they got


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=40) | st.text(max_size=30).map(lambda t: "tcp://" + t))
def test_parse_raises_only_transport_error(text: str) -> None:
    try:
        ep = Endpoint.parse(text)
    except TransportError:
        return
    assert ep.scheme in ("ipc", "tcp") and str(ep) == text


@pytest.mark.parametrize(
    ("text", "same_host", "loopback"),
    [
        ("ipc:///tmp/x.ipc", True, True),
        ("tcp://127.0.0.1:1", False, True),
        ("tcp://127.5.6.7:1", False, True),
        ("tcp://localhost:1", False, True),
        ("tcp://[::1]:1", False, True),
        ("tcp://*:1", False, False),
        ("tcp://0.0.0.0:1", False, False),
        ("tcp://192.168.1.20:1", False, False),
        ("tcp://[fe80::1]:1", False, False),
        ("tcp://jetson.local:1", False, False),
    ],
)
def test_same_host_and_loopback(text: str, same_host: bool, loopback: bool) -> None:
    ep = Endpoint.parse(text)
    # Only ipc is sure to be on this host: shared memory is never used over tcp.
    assert ep.same_host is same_host
    assert ep.loopback is loopback


def test_free_tcp_port_can_be_bound() -> None:
    port = free_tcp_port()
    assert 0 < port < 65536
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", port))


def test_publisher_reports_where_it_bound() -> None:
    with Publisher("tcp://127.0.0.1:*", node="n") as pub:
        assert pub.bound.scheme == "tcp" and pub.bound.host == "127.0.0.1"
        port = pub.bound.address.rpartition(":")[2]
        assert port.isdigit() and int(port) > 0


def test_bad_endpoints_fail_clearly_in_publisher_and_subscriber(tmp_path: Path) -> None:
    with pytest.raises(TransportError, match="expected ipc://PATH or tcp://HOST:PORT"):
        Publisher("camera", node="n")
    with pytest.raises(TransportError, match="expected tcp://HOST:PORT"):
        Subscriber(["ipc:///tmp/x.ipc", "tcp://nowhere"], ["n/x"])
    with pytest.raises(TransportError, match="cannot bind ipc://"):
        Publisher(f"ipc://{tmp_path}/no/such/dir/x.ipc", node="n")
    # A unix socket path holds 107 bytes: too long a path is a TransportError, not a ZMQError.
    with pytest.raises(TransportError, match="cannot connect"):
        Subscriber(f"ipc://{tmp_path}/{'x' * 200}.ipc", ["n/x"])
