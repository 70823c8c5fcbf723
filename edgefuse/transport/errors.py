"""Errors of the transport layer."""

from __future__ import annotations

from edgefuse.errors import EdgefuseError


class TransportError(EdgefuseError):
    """A socket, endpoint or key problem that stops a publisher or subscriber from working."""


class ShmUnavailableError(TransportError):
    """Shared memory could not be allocated (``/dev/shm`` full or missing); send inline instead."""
