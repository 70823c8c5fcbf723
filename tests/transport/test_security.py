"""CURVE keys and the allow-list: real key files, real encrypted tcp, a real child publisher."""

from __future__ import annotations

import shutil
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zmq.auth

from edgefuse.transport import (
    CurveKeys,
    Publisher,
    Subscriber,
    TransportError,
    TransportOptions,
    generate_keys,
)

from .conftest import PATIENCE_S, Children, Flag

NODE = "secure"
TOPIC = f"{NODE}/data"


def payload(seq: int) -> np.ndarray:
    return ((np.arange(5000, dtype=np.int64) * 3 + seq) % 251).astype(np.uint8)


def test_generate_keys_layout(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    written = generate_keys(keys)
    names = [str(p.relative_to(keys)) for p in written]
    assert names == [
        "server.key",
        "server.key_secret",
        "client.key",
        "client.key_secret",
        "authorized/client.key",
    ]
    assert all(p.is_file() for p in written)
    for name in ("server", "client"):
        public, secret = zmq.auth.load_certificate(keys / f"{name}.key")
        assert secret is None  # the .key file is the public half only
        public2, secret2 = zmq.auth.load_certificate(keys / f"{name}.key_secret")
        assert public2 == public and secret2 is not None and len(secret2) == 40
        # Secret keys are readable by their owner alone.
        mode = stat.S_IMODE((keys / f"{name}.key_secret").stat().st_mode)
        assert mode & 0o077 == 0, f"{name}.key_secret is {oct(mode)}"
    authorized = zmq.auth.load_certificate(keys / "authorized" / "client.key")[0]
    assert authorized == zmq.auth.load_certificate(keys / "client.key")[0]
    loaded = CurveKeys.load(keys)
    assert loaded.server_public == zmq.auth.load_certificate(keys / "server.key")[0]
    assert loaded.client_public == authorized and loaded.client_secret is not None
    assert loaded.authorized_dir == keys / "authorized"


def test_adding_a_client_keeps_the_existing_keys(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    generate_keys(keys)
    before = {p.name: p.read_bytes() for p in keys.iterdir() if p.is_file()}
    with pytest.raises(TransportError, match="already exists"):
        generate_keys(keys)  # the default client is there already
    written = generate_keys(keys, client="viewer")
    assert [str(p.relative_to(keys)) for p in written] == [
        "viewer.key",
        "viewer.key_secret",
        "authorized/viewer.key",
    ]
    assert {p.name: p.read_bytes() for p in keys.iterdir() if p.name in before} == before
    viewer = CurveKeys.load(keys, client="viewer")
    client = CurveKeys.load(keys)
    assert viewer.server_public == client.server_public
    assert viewer.client_public != client.client_public
    assert sorted(p.name for p in (keys / "authorized").iterdir()) == ["client.key", "viewer.key"]


def test_loading_keys_says_how_to_make_them(tmp_path: Path) -> None:
    with pytest.raises(TransportError, match="edgefuse keys generate"):
        CurveKeys.load(tmp_path / "nothing-here")
    generate_keys(tmp_path / "keys")
    with pytest.raises(TransportError, match="cannot read CURVE keys"):
        CurveKeys.load(tmp_path / "keys", client="nobody")


def test_a_remote_subscriber_needs_only_the_server_public_key(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    generate_keys(keys)
    generate_keys(keys, client="remote")
    remote = tmp_path / "remote"
    remote.mkdir()
    for name in ("server.key", "remote.key", "remote.key_secret"):
        shutil.copy(keys / name, remote / name)
    loaded = CurveKeys.load(remote, client="remote")
    assert loaded.server_secret is None
    assert loaded.server_public == CurveKeys.load(keys).server_public
    with pytest.raises(TransportError, match="no secret key"):
        Publisher("tcp://127.0.0.1:*", node="x", options=TransportOptions(keys=loaded))


def _curve_publisher(endpoint: str, keys_dir: str, run_id: str, stop: Flag) -> None:
    options = TransportOptions(keys=CurveKeys.load(keys_dir), run_id=run_id)
    with Publisher(endpoint, node=NODE, options=options) as pub:
        deadline = time.monotonic() + PATIENCE_S
        seq = 0
        while not stop.wait(0.01) and time.monotonic() < deadline:
            pub.publish("data", [payload(seq)], t_sensor_ns=seq)
            seq += 1


def test_curve_admits_authorized_clients_only(
    tmp_path: Path, tcp: Callable[[], str], run_id: str, children: Children
) -> None:
    keys = tmp_path / "keys"
    generate_keys(keys)
    generate_keys(keys, client="viewer")  # a second client, added before the publisher starts
    generate_keys(keys, client="remote")
    remote = tmp_path / "remote"  # a viewer on another host holds no server secret
    remote.mkdir()
    for name in ("server.key", "remote.key", "remote.key_secret"):
        shutil.copy(keys / name, remote / name)
    stranger = CurveKeys.load(generate_keys(tmp_path / "other")[0].parent)  # not authorized
    server = CurveKeys.load(keys)
    rogue = CurveKeys(
        server_public=server.server_public,
        server_secret=None,
        client_public=stranger.client_public,
        client_secret=stranger.client_secret,
        authorized_dir=stranger.authorized_dir,
    )
    endpoint = tcp()

    def sub(keys: CurveKeys | None) -> Subscriber:
        return Subscriber(endpoint, [TOPIC], options=TransportOptions(keys=keys, run_id=run_id))

    subs = {
        "client": sub(server),
        "viewer": sub(CurveKeys.load(keys, client="viewer")),
        "remote": sub(CurveKeys.load(remote, client="remote")),
        "rogue": sub(rogue),
        "plain": sub(None),
    }
    allowed = ("client", "viewer", "remote")
    stop = Flag()
    try:
        proc = children.start(_curve_publisher, endpoint, str(keys), run_id, stop)
        got = {name: 0 for name in subs}
        deadline = time.monotonic() + PATIENCE_S
        started = time.monotonic()
        # Read until every authorized client has had several messages, and for a while at
        # least, so that the others had every chance to receive something.
        while time.monotonic() < deadline and (
            min(got[n] for n in allowed) < 5 or time.monotonic() - started < 1.0
        ):
            for name, s in subs.items():
                msg = s.recv(0)
                if msg is not None:
                    assert np.array_equal(msg.arrays[0], payload(msg.header.seq))
                    got[name] += 1
            time.sleep(0.005)
        stop.set()
        children.join(proc)
        assert all(got[n] >= 5 for n in allowed), got
        assert got["rogue"] == 0 and got["plain"] == 0, got
        for name in ("rogue", "plain"):  # not even a malformed message got through
            assert subs[name].stats[TOPIC].snapshot()["malformed"] == {}
            assert sum(subs[name].unattributed.malformed.values()) == 0
    finally:
        for s in subs.values():
            s.close()


def test_two_curve_publishers_share_one_process(tmp_path: Path, tcp: Callable[[], str]) -> None:
    # ZeroMQ allows one ZAP handler per context: both publishers must use it, and closing one
    # must leave the other working.
    keys_dir = tmp_path / "keys"
    generate_keys(keys_dir)
    options = TransportOptions(keys=CurveKeys.load(keys_dir))
    threads = threading.active_count()
    ep_a, ep_b = tcp(), tcp()
    pub_a = Publisher(ep_a, node="a", options=options)
    pub_b = Publisher(ep_b, node="b", options=options)
    with Subscriber([ep_a, ep_b], ["a/x", "b/x"], options=options) as sub:

        def hears(*pubs: Publisher) -> bool:
            want = {pub.topic("x") for pub in pubs}
            deadline = time.monotonic() + PATIENCE_S
            while time.monotonic() < deadline:
                for pub in pubs:
                    pub.publish("x", [np.arange(3)], t_sensor_ns=0)
                msg = sub.recv(20)
                if msg is not None:
                    want.discard(msg.topic)
                    if not want:
                        return True
            return False

        assert hears(pub_a, pub_b)
        pub_a.close()
        assert hears(pub_b)
        # A publisher that fails to start gives its share of the authenticator back and
        # leaves the running one alone.
        with pytest.raises(TransportError, match="cannot bind"):
            Publisher(ep_b, node="c", options=options)  # the port is taken
        assert hears(pub_b)
        pub_b.close()
    # With the last one closed the authenticator is gone, and a new one starts cleanly.
    assert threading.active_count() == threads
    with Publisher(tcp(), node="c", options=options):
        assert threading.active_count() > threads
    assert threading.active_count() == threads
