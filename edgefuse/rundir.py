"""Where running pipelines live on the host, so that ``edgefuse topics``/``echo``/``hz`` can
find them: one folder per run holding its ipc sockets, ``graph.json`` and node logs."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def base_dir() -> Path:
    """The folder holding one sub-folder per running pipeline (``EDGEFUSE_RUN_DIR`` overrides)."""
    env = os.environ.get("EDGEFUSE_RUN_DIR")
    return Path(env) if env else Path(tempfile.gettempdir()) / f"edgefuse-{os.getuid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_pipelines() -> list[dict[str, Any]]:
    """The ``graph.json`` of every pipeline whose launcher is still alive, newest first."""
    graphs = []
    root = base_dir()
    if not root.is_dir():
        return []
    for g in root.glob("*/graph.json"):
        try:
            data = json.loads(g.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and _alive(int(data.get("pid", 0))):
            data["_run_dir"] = str(g.parent)
            graphs.append(data)
    graphs.sort(key=lambda d: d.get("started_unix", 0), reverse=True)
    return graphs
