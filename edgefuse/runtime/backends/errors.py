"""Errors of the inference backends."""

from __future__ import annotations

from edgefuse.errors import EdgefuseError


class BackendError(EdgefuseError):
    """A backend that cannot be opened or run as asked (unknown name, missing model, a model
    whose inputs are not what the runtime feeds, no GPU for a GPU backend)."""
