"""Errors of the time-synchronisation package (``edgefuse.sync``)."""

from __future__ import annotations

from edgefuse.errors import EdgefuseError


class SyncError(EdgefuseError):
    """Base class of the errors ``edgefuse.sync`` raises on purpose (bad input or settings)."""


class AssociateError(SyncError):
    """A stamp file or an association request that cannot be honoured.

    The message names the file (and the line, for an unparsable one) so that the command line
    can print it as is.
    """
