"""Pipeline files: the YAML that says which nodes run, with which parameters, wired how.

::

    name: sim
    transport:            # optional; these are the defaults
      mode: ipc           # ipc: same host, shared memory for large payloads; tcp: inline
      bind_host: 127.0.0.1
      queue_depth: 16
      shm_slots: 16
      keys: null          # a folder from `edgefuse keys generate` turns on CURVE for tcp
    params:               # optional; shared: to every node whose Params has the field
      rate_hz: 30
    nodes:
      camera:
        type: test_pattern        # built-in name, entry point, or package.module:Class
        params: {width: 320}      # a node's own value wins over a shared one
      check:
        type: pattern_check
        inputs: {image: camera/image}   # input port -> topic <node>/<stream>

Everything is checked before a process starts: unknown keys, wrong types, unknown node
types, parameters, ports and topics, each error naming the file, the line and the key. A
shared parameter that no node declares is an error, and a shared value of the wrong type is
reported at its line in the shared ``params:`` block.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edgefuse import config
from edgefuse.errors import ConfigError
from edgefuse.node import Node, resolve_node_type

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


@dataclass(frozen=True, kw_only=True)
class TransportConfig:
    """How the pipeline's nodes talk to each other."""

    mode: Literal["ipc", "tcp"] = "ipc"
    #: Address tcp publishers bind to. Loopback unless you mean to expose the pipeline.
    bind_host: str = "127.0.0.1"
    #: First tcp port (one per publishing node); 0 picks free ports.
    base_port: int = 0
    queue_depth: int = 16
    shm_slots: int = 16
    keys: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.queue_depth <= 100_000:
            raise ValueError(f"queue_depth must be in 1..100000, got {self.queue_depth}")
        if not 2 <= self.shm_slots <= 500:
            raise ValueError(f"shm_slots must be in 2..500, got {self.shm_slots}")
        if not 0 <= self.base_port <= 65535:
            raise ValueError(f"base_port must be in 0..65535, got {self.base_port}")


@dataclass(frozen=True, kw_only=True)
class NodeConfig:
    """One node of the pipeline as written in the file."""

    type: str
    params: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)
    #: Restart policy: ``on-failure`` (non-zero exit), ``always``, ``never``.
    restart: Literal["on-failure", "always", "never"] = "on-failure"
    #: Scheduling niceness added to the node's process (-20..19, like ``nice -n``): a node that
    #: may wait (a scorer, a recorder with a deep queue) leaves the CPU to the ones on the
    #: latency path when the machine is full (positive); a node on the latency path goes
    #: ahead of the rest (negative: needs root or CAP_SYS_NICE, else it runs at 0 with a
    #: warning, as ROS 2 nodes asking for real-time priority do).
    nice: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.nice, bool) or not isinstance(self.nice, int):
            raise ValueError(f"nice must be an integer in -20..19, got {self.nice!r}")
        if not -20 <= self.nice <= 19:
            raise ValueError(f"nice must be in -20..19, got {self.nice}")


@dataclass(frozen=True, kw_only=True)
class _PipelineFile:
    name: str = ""
    transport: TransportConfig = field(default_factory=TransportConfig)
    #: Shared parameters: each goes to every node whose Params declares a field of its name.
    params: dict[str, Any] = field(default_factory=dict)
    nodes: dict[str, NodeConfig] = field(default_factory=dict)


@dataclass(frozen=True)
class ResolvedNode:
    """A node checked against its class: its parameters built, its inputs resolved."""

    name: str
    config: NodeConfig
    cls: type[Node]
    params: Any
    #: Input port -> topic.
    inputs: dict[str, str]
    #: The mapping ``params`` was built from: the shared ``params:`` the node's Params
    #: declares, overridden by the node's own. The launcher sends this to the node process.
    merged_params: dict[str, Any]
    #: Output stream -> encoding (``cls.output_streams(params)``).
    outputs: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclass(slots=True)
class _SharedSource(config.Source):
    """A node's view of the file in which its shared values are located in the shared block.

    :func:`config.build` locates errors by key path; a value the node took from the shared
    ``params:`` block is not under ``nodes.<name>.params``, so errors about it (wrong type,
    bad item) are redirected to ``params.<key>``, naming the node whose field declared it.
    """

    node: str = ""
    shared: frozenset[str] = frozenset()

    def where(self, path: config.KeyPath) -> str:
        """As :meth:`config.Source.where`, for shared keys at their line in ``params:``."""
        base = ("nodes", self.node, "params")
        if path[:3] == base and len(path) > 3 and path[3] in self.shared:
            loc = config.Source.where(self, ("params", *path[3:]))
            return f"{loc} (shared, for node {self.node!r})"
        loc = config.Source.where(self, path)
        if path == base and self.shared:
            # The Params class rejected the combination (its own check); it may be the
            # shared values that are wrong, so say where they came from.
            keys = ", ".join(
                f"params.{k} from line {self.lines.get(('params', k), '?')}"
                for k in sorted(self.shared)
            )
            return f"{loc} (with shared {keys})"
        return loc


def _declared_fields(cls: type[Node]) -> set[str]:
    if not (dataclasses.is_dataclass(cls.Params) and isinstance(cls.Params, type)):
        return set()
    return {f.name for f in dataclasses.fields(cls.Params) if f.init}


@dataclass(frozen=True)
class Pipeline:
    """A validated pipeline, ready to launch."""

    name: str
    path: Path
    transport: TransportConfig
    nodes: dict[str, ResolvedNode]

    def topics(self) -> dict[str, tuple[str, str, str]]:
        """Every output topic -> (node, stream, encoding)."""
        out = {}
        for n in self.nodes.values():
            for stream, encoding in n.outputs.items():
                out[f"{n.name}/{stream}"] = (n.name, stream, encoding)
        return out


def load_pipeline(path: str | Path) -> Pipeline:
    """Read and validate a pipeline file; raise ``ConfigError`` naming file, line and key."""
    data, src = config.load_yaml(path)
    return validate(data, src=src, path=Path(path))


def validate(data: Any, *, src: config.Source, path: Path) -> Pipeline:
    """Validate parsed pipeline data (see :func:`load_pipeline`)."""
    raw = config.build(_PipelineFile, data, src=src)
    if not raw.nodes:
        raise ConfigError(f"{src.where(('nodes',))}: a pipeline needs at least one node")
    if (
        raw.transport.keys is not None
        and not (path.parent / raw.transport.keys).is_dir()
        and (not Path(raw.transport.keys).is_dir())
    ):
        raise ConfigError(
            f"{src.where(('transport', 'keys'))}: keys folder {raw.transport.keys!r} not found "
            "(make it with 'edgefuse keys generate DIR')"
        )
    resolved: dict[str, ResolvedNode] = {}
    classes: dict[str, type[Node]] = {}
    for name, nc in raw.nodes.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(
                f"{src.where(('nodes', name))}: node name {name!r} must start with a letter and "
                "hold only letters, digits, '_' and '-'"
            )
        try:
            classes[name] = resolve_node_type(nc.type)
        except ConfigError as exc:
            raise ConfigError(f"{src.where(('nodes', name, 'type'))}: {exc}") from None
    declared = {name: _declared_fields(cls) for name, cls in classes.items()}
    everywhere = set().union(*declared.values())
    for key in raw.params:
        if key not in everywhere:
            close = difflib.get_close_matches(str(key), sorted(everywhere), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            known = ", ".join(sorted(everywhere)) or "none"
            raise ConfigError(
                f"{src.where(('params', key))}: no node of the pipeline declares shared "
                f"parameter {key!r}{hint}; declared parameters are: {known}"
            )
    built: dict[str, tuple[Any, dict[str, Any]]] = {}
    for name, nc in raw.nodes.items():
        cls = classes[name]
        shared = {k: v for k, v in raw.params.items() if k in declared[name] and k not in nc.params}
        merged = {**shared, **nc.params}
        node_src = _SharedSource(src.file, src.lines, node=name, shared=frozenset(shared))
        params = config.build(cls.Params, merged, src=node_src, path=("nodes", name, "params"))
        built[name] = (params, merged)
    streams = {name: dict(classes[name].output_streams(built[name][0])) for name in raw.nodes}
    outputs = {f"{n}/{s}": n for n, st in streams.items() for s in st}
    for name, nc in raw.nodes.items():
        cls = classes[name]
        params, merged = built[name]
        ports = list(cls.input_ports(params))
        for port, topic in nc.inputs.items():
            where = src.where(("nodes", name, "inputs", port))
            if port not in ports:
                known = ", ".join(ports) or "none"
                raise ConfigError(
                    f"{where}: {nc.type} has no input port {port!r}; expected one of: {known}"
                )
            if topic not in outputs:
                known = ", ".join(sorted(outputs)) or "none"
                raise ConfigError(f"{where}: no node publishes {topic!r}; topics are: {known}")
        missing = [p for p in ports if p not in nc.inputs]
        if missing:
            raise ConfigError(
                f"{src.where(('nodes', name, 'inputs'))}: input port(s) {', '.join(missing)} of "
                f"{nc.type} are not connected"
            )
        resolved[name] = ResolvedNode(
            name, nc, cls, params, dict(nc.inputs), merged, outputs=streams[name]
        )
    return Pipeline(raw.name or path.stem, path, raw.transport, resolved)
