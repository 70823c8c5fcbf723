"""Errors shared across edgefuse: one base class, one subclass per concern."""

from __future__ import annotations


class EdgefuseError(Exception):
    """Base class of every error edgefuse raises on purpose."""


class EnvelopeError(EdgefuseError):
    """A message that cannot be decoded.

    ``kind`` is a short, stable label (``bad_header``, ``unknown_version``, ``size_mismatch``,
    ...) used to count drops per kind and to log each kind once.
    """

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


class ConfigError(EdgefuseError):
    """A pipeline or node configuration that fails validation (names the file and key)."""


class MissingExtraError(EdgefuseError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


def require_extra(module: str, extra: str) -> object:
    """Import ``module`` or raise :class:`MissingExtraError` naming the pip extra to install.

    Optional hardware and training libraries are imported through this so that the edge
    runtime stays importable without them and the user learns exactly what to install.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{module} is not installed: pip install 'edgefuse[{extra}]' ({exc})"
        ) from exc
