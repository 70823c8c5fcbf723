"""Recording: session files of edgefuse envelopes in MCAP (see ``session.py`` for the format)."""

from __future__ import annotations

from edgefuse.record.errors import SessionError
from edgefuse.record.session import ENVELOPE_ENCODING, SessionReader, SessionWriter

__all__ = ["ENVELOPE_ENCODING", "SessionError", "SessionReader", "SessionWriter"]
