"""Errors of the record package."""

from __future__ import annotations

from edgefuse.errors import EdgefuseError


class SessionError(EdgefuseError):
    """A session file that cannot be written or read: names the file and what is wrong.

    ``kind`` is a short, stable label: an :class:`~edgefuse.errors.EnvelopeError` kind when a
    recorded message does not decode (``bad_header``, ``size_mismatch``, ``truncated``, ...),
    otherwise one of ``missing``, ``io``, ``not_mcap``, ``corrupt``, ``unsupported``,
    ``foreign_encoding``, ``encoding_changed``, ``bad_time``, ``closed``.
    """

    def __init__(self, detail: str, *, kind: str = "corrupt") -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
