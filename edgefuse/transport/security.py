"""CURVE encryption and client allow-lists for ``tcp://`` endpoints.

A keys folder, made by ``edgefuse keys generate DIR``, holds::

    server.key, server.key_secret      the pipeline's publishers' key pair
    client.key, client.key_secret      the key pair its own subscribers use
    authorized/*.key                   public keys of clients allowed to subscribe

Publishers are CURVE servers and run a ZAP authenticator that admits only clients whose
public key is in ``authorized/``; a subscriber with another key never completes the
handshake and receives nothing. The allow-list is read when the publisher starts.

A subscriber on another host needs only ``server.key`` (public) and its own client pair,
never ``server.key_secret``.
"""

from __future__ import annotations

import itertools
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from edgefuse.transport.errors import TransportError


@dataclass(frozen=True, slots=True)
class CurveKeys:
    """The key material a node needs; loaded from a keys folder."""

    server_public: bytes
    server_secret: bytes | None
    client_public: bytes
    client_secret: bytes
    authorized_dir: Path

    @classmethod
    def load(cls, keys_dir: str | os.PathLike[str], *, client: str = "client") -> CurveKeys:
        """Read a keys folder; ``client`` names the client key pair to use."""
        root = Path(keys_dir)
        # A remote subscriber is given only the server's public key: fall back to it.
        server_file = root / "server.key_secret"
        if not server_file.exists() and (root / "server.key").exists():
            server_file = root / "server.key"
        try:
            server_public, server_secret = zmq.auth.load_certificate(server_file)
            client_public, client_secret = zmq.auth.load_certificate(root / f"{client}.key_secret")
        except (OSError, ValueError) as exc:
            raise TransportError(
                f"cannot read CURVE keys from {root}: {exc} (make them with 'edgefuse keys "
                f"generate {root}')"
            ) from exc
        if client_secret is None:
            raise TransportError(f"{root / (client + '.key_secret')} has no secret key")
        return cls(server_public, server_secret, client_public, client_secret, root / "authorized")


def generate_keys(keys_dir: str | os.PathLike[str], *, client: str = "client") -> list[Path]:
    """Create the server pair (once) and a client pair named ``client``, authorised.

    Running it again with another ``client`` name adds a client (for a remote viewer, say)
    without touching the existing keys. Returns the files written.
    """
    root = Path(keys_dir)
    (root / "authorized").mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if not (root / "server.key_secret").exists():
        pub, sec = zmq.auth.create_certificates(root, "server")
        # pyzmq writes with the process umask (usually world-readable): whoever reads the
        # server secret can impersonate every publisher of the pipeline.
        os.chmod(sec, 0o600)
        written += [Path(pub), Path(sec)]
    if (root / f"{client}.key_secret").exists():
        raise TransportError(f"client key {root / (client + '.key_secret')} already exists")
    pub, sec = zmq.auth.create_certificates(root, client)
    shutil.copy(pub, root / "authorized" / f"{client}.key")
    os.chmod(sec, 0o600)
    written += [Path(pub), Path(sec), root / "authorized" / f"{client}.key"]
    return written


class ServerAuth:
    """One CURVE server's use of its context's ZAP authenticator; :meth:`stop` releases it.

    ZeroMQ allows one ZAP handler per context, so every CURVE server of a context shares one
    authenticator thread (started by the first, stopped with the last), each server under
    its own ZAP domain with its own allow-list.
    """

    _lock = threading.Lock()
    _shared: dict[int, tuple[ThreadAuthenticator, int]] = {}
    _domains = itertools.count()

    def __init__(self, context: zmq.Context[Any], authorized_dir: Path) -> None:
        self._key = id(context)
        self.domain = f"edgefuse-{next(self._domains)}"
        with self._lock:
            auth, users = self._shared.get(self._key, (None, 0))
            if auth is None:
                auth = _start_authenticator(context)
            auth.configure_curve(domain=self.domain, location=str(authorized_dir))
            self._shared[self._key] = (auth, users + 1)
        self._auth: ThreadAuthenticator | None = auth

    def stop(self) -> None:
        """Forget this server's allow-list; stop the thread when no server uses it any more."""
        if self._auth is None:
            return
        with self._lock:
            auth, users = self._shared[self._key]
            auth.certs.pop(self.domain, None)
            if users <= 1:
                del self._shared[self._key]
                auth.stop()
            else:
                self._shared[self._key] = (auth, users - 1)
        self._auth = None


def _start_authenticator(context: zmq.Context[Any]) -> ThreadAuthenticator:
    deadline = time.monotonic() + 2.0
    while True:
        auth = ThreadAuthenticator(context)
        try:
            auth.start()
            return auth
        except (zmq.ZMQError, RuntimeError) as exc:
            auth.stop()
            # ZeroMQ closes sockets asynchronously: the ZAP address of an authenticator stopped
            # a moment ago (the last CURVE publisher closed) may still be taken. Retry briefly.
            busy = isinstance(exc, zmq.ZMQError) and exc.errno == zmq.EADDRINUSE
            if not busy or time.monotonic() > deadline:
                raise TransportError(f"cannot start the CURVE authenticator: {exc}") from exc
            time.sleep(0.01)


def make_server(socket: zmq.Socket[Any], keys: CurveKeys) -> ServerAuth:
    """Turn ``socket`` (not yet bound) into a CURVE server guarded by the allow-list."""
    if keys.server_secret is None:
        raise TransportError("the server key pair has no secret key")
    auth = ServerAuth(socket.context, keys.authorized_dir)
    socket.zap_domain = auth.domain.encode()
    socket.curve_secretkey = keys.server_secret
    socket.curve_publickey = keys.server_public
    socket.curve_server = True
    return auth


def make_client(socket: zmq.Socket[Any], keys: CurveKeys) -> None:
    """Set ``socket`` (not yet connected) up as a CURVE client of the pipeline's server key."""
    socket.curve_secretkey = keys.client_secret
    socket.curve_publickey = keys.client_public
    socket.curve_serverkey = keys.server_public
