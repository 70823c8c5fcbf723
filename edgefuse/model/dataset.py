"""Training and evaluation data: sessions -> aligned sets -> network inputs and labels.

A session (simulated by ``edgefuse sim generate`` or recorded live) is aligned offline exactly
as the pipeline's aligner node aligns it live (:mod:`edgefuse.sync.offline`), every
``every``-th set is turned into network inputs by the runtime's own preprocessing, and the
labels come from the set's ``truth`` member (the ``sim/truth`` topic, or any recorded topic of
that encoding). The result is a *shard*: one compressed ``.npz`` per session, small enough to
keep (a few MB against the session's hundreds), so training does not re-read sessions.

Shards hold the camera input as bytes and the grids in float16; :class:`Frames` puts shards
together in memory and serves float32 tensors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgefuse import config
from edgefuse.calib.model import RigCalibration
from edgefuse.errors import EdgefuseError
from edgefuse.model.labels import Objects
from edgefuse.record import SessionReader
from edgefuse.runtime.preprocess import FeatureSpec, Preprocessor
from edgefuse.sync.offline import OfflineAligner, align_messages

#: Version of the shard layout; a shard of another version is rebuilt.
SHARD_VERSION = 1
DEFAULT_PIPELINE = "pipelines/sim.yaml"


class DatasetError(EdgefuseError):
    """A session or shard that cannot be used for training or evaluation."""


def rig_of_session(reader: SessionReader) -> RigCalibration:
    """The rig calibration attached to a session (``calibration/<rig>.yaml``)."""
    for name, data in reader.attachments().items():
        if name.startswith("calibration/") and name.endswith(".yaml"):
            parsed, src = config.parse_yaml(data.decode(), file=f"{reader.path}:{name}")
            return config.build(RigCalibration, parsed, src=src)
    raise DatasetError(f"{reader.path}: no calibration/*.yaml attachment (which rig recorded it?)")


def with_labels_required(aligner: OfflineAligner) -> OfflineAligner:
    """``aligner`` with its ``truth`` stream required. Live, the labels join a set only when
    they happen to be there (they are not on the detection path, and a set that completes
    early leaves without them); offline nothing is lost by waiting for them, and a set
    without labels would be thrown away. Sets are what :func:`build_shard` labels."""
    streams = aligner.params.streams
    cfg = streams.get("truth")
    if cfg is None or cfg.required or "truth" not in aligner.topics.values():
        return aligner
    params = dataclasses.replace(
        aligner.params, streams={**streams, "truth": dataclasses.replace(cfg, required=True)}
    )
    return dataclasses.replace(aligner, params=params)


def build_shard(
    session: str | Path,
    out: str | Path,
    aligner: OfflineAligner,
    *,
    spec: FeatureSpec,
    every: int = 5,
    skip_s: float = 1.0,
) -> dict[str, Any]:
    """Write the shard of ``session`` to ``out`` (``.npz``); return its summary.

    Sets from the first ``skip_s`` (clock models still converging) and sets without labels
    are left out; of the rest every ``every``-th is kept."""
    session = Path(session)
    cols: dict[str, list[Any]] = {k: [] for k in ("camera", "depth", "lidar", "audio", "mask")}
    objs: dict[str, list[np.ndarray]] = {
        k: [] for k in ("class_id", "box3d", "visibility", "object_id")
    }
    counts, t_ns = [], []
    sets = kept = unlabelled = 0
    aligner = with_labels_required(aligner)
    with SessionReader(session) as reader:
        rig = rig_of_session(reader)
        meta = reader.metadata()
        pre = Preprocessor(rig, spec)
        t0: int | None = None
        for s in align_messages(reader.messages(), aligner):
            sets += 1
            t0 = s.t_ns if t0 is None else t0
            if s.t_ns - t0 < skip_s * 1e9 or (sets - 1) % every:
                continue
            truth = s.members.get("truth")
            if truth is None or not truth.present:
                unlabelled += 1
                continue
            x = pre(s)
            cols["camera"].append(np.round(x["camera"][0] * 255).astype(np.uint8))
            for k in ("depth", "lidar", "audio"):
                cols[k].append(x[k][0].astype(np.float16))
            cols["mask"].append(x["mask"][0].astype(np.uint8))
            names = truth.info.get("meta", {}).get("arrays")
            arrays = dict(zip(names, truth.arrays, strict=True)) if names else {}
            if not {"class_id", "box3d", "visibility", "object_id"} <= set(arrays):
                raise DatasetError(f"{session}: the truth member lacks class_id/box3d/visibility")
            objs["class_id"].append(np.asarray(arrays["class_id"], np.int16))
            objs["box3d"].append(np.asarray(arrays["box3d"], np.float32).reshape(-1, 7))
            objs["visibility"].append(np.asarray(arrays["visibility"], np.float32))
            objs["object_id"].append(np.asarray(arrays["object_id"], np.int32))
            counts.append(len(arrays["class_id"]))
            t_ns.append(s.t_ns)
            kept += 1
    if not kept:
        raise DatasetError(
            f"{session}: no labelled sets ({sets} sets, {unlabelled} without a truth member)"
        )
    session_meta = meta.get("session", {})
    info = {
        "shard_version": SHARD_VERSION,
        "session": str(session),
        "scenario": session_meta.get("scenario", "unknown"),
        "seed": session_meta.get("seed", ""),
        "sets": sets,
        "kept": kept,
        "spec": spec.to_dict(),
        "rig": rig.rig,
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npz")
    columns: dict[str, Any] = {k: np.stack(v) for k, v in cols.items()}
    columns.update({k: np.concatenate(v) for k, v in objs.items()})
    columns["offsets"] = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    columns["t_ns"] = np.asarray(t_ns, np.int64)
    columns["info"] = np.frombuffer(json.dumps(info).encode(), np.uint8)
    np.savez_compressed(tmp, **columns)
    tmp.replace(out)  # a shard is whole or absent
    return info


def shard_info(path: str | Path) -> dict[str, Any]:
    """The summary stored in a shard."""
    with np.load(path) as z:
        return dict(json.loads(bytes(z["info"]).decode()))


@dataclass
class Frames:
    """Shards in memory: network inputs (float32 on access) and labelled objects per frame."""

    camera: np.ndarray  # (N, 3, H, W) uint8
    depth: np.ndarray  # float16 grids
    lidar: np.ndarray
    audio: np.ndarray
    mask: np.ndarray  # (N, 4) uint8
    objects: list[Objects]
    scenario: np.ndarray  # (N,) str
    t_ns: np.ndarray
    #: sha256 over the shards' bytes: which data a model saw.
    digest: str

    def __len__(self) -> int:
        return len(self.camera)

    def inputs(
        self, idx: np.ndarray | Sequence[int], names: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """float32 inputs of frames ``idx`` for the graph inputs ``names``."""
        idx = np.asarray(idx)
        out: dict[str, np.ndarray] = {}
        for n in names:
            a = getattr(self, n)[idx]
            out[n] = a.astype(np.float32) / 255.0 if n == "camera" else a.astype(np.float32)
        return out

    @classmethod
    def load(cls, paths: Sequence[str | Path], *, spec: FeatureSpec) -> Frames:
        """Read shards (all of ``spec``'s shapes; otherwise ``DatasetError`` naming the file)."""
        if not paths:
            raise DatasetError("no shards given")
        parts: dict[str, list[np.ndarray]] = {
            k: [] for k in ("camera", "depth", "lidar", "audio", "mask")
        }
        objects: list[Objects] = []
        scenario: list[str] = []
        t_ns: list[np.ndarray] = []
        h = hashlib.sha256()
        for p in sorted(Path(x) for x in paths):
            h.update(p.read_bytes())
            try:
                z = np.load(p)
            except (OSError, ValueError) as exc:
                raise DatasetError(f"{p}: not a readable shard ({exc})") from None
            with z:
                info = json.loads(bytes(z["info"]).decode())
                if info.get("shard_version") != SHARD_VERSION:
                    raise DatasetError(
                        f"{p}: shard version {info.get('shard_version')}, "
                        f"expected {SHARD_VERSION}; rebuild it"
                    )
                if FeatureSpec.from_dict(info["spec"]) != spec:
                    raise DatasetError(f"{p}: built with another feature spec; rebuild it")
                for k in parts:
                    parts[k].append(z[k])
                off = z["offsets"]
                for i in range(len(off) - 1):
                    sl = slice(int(off[i]), int(off[i + 1]))
                    objects.append(
                        Objects(
                            class_id=z["class_id"][sl].astype(np.int64),
                            box3d=z["box3d"][sl].astype(np.float64),
                            visibility=z["visibility"][sl],
                        )
                    )
                scenario += [info["scenario"]] * (len(off) - 1)
                t_ns.append(z["t_ns"])
        return cls(
            **{k: np.concatenate(v) for k, v in parts.items()},
            objects=objects,
            scenario=np.asarray(scenario),
            t_ns=np.concatenate(t_ns),
            digest=h.hexdigest(),
        )


def iter_batches(n: int, batch: int, rng: np.random.Generator | None) -> Iterator[np.ndarray]:
    """Indices ``0..n`` in batches, shuffled when ``rng`` is given (last batch may be short)."""
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for i in range(0, n, batch):
        yield order[i : i + batch]
