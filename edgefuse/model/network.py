"""The encoder-fusion network: one encoder per modality, a fusion module, a detection head.

Everything meets on one bird's-eye-view (BEV) grid of ``base_link`` (the head's grid: the input
grid of :class:`~edgefuse.runtime.preprocess.FeatureSpec` at half resolution, 1 m cells by
default), because detections live on the ground plane and the center-distance metric is
measured there:

- **lidar** and **depth** arrive as BEV grids (binned points; see ``runtime/preprocess.py``) and
  go through a small strided CNN. A BEV grid rather than a range image: objects keep their size
  at every distance, do not overlap, and need no view change before fusion.
- **camera**: a CNN on the image; its features reach the grid through the calibrated camera
  (constant gathers in the graph): the feature where each cell's ground point projects (inverse
  perspective: distance from where an object touches the ground) and the feature of the image
  column at the cell's bearing, pooled over rows with learned weights (what is in that direction).
- **audio**: a CNN on the log-mel window pooled to one vector (one microphone has no bearing),
  lifted onto the grid along range rings (the vector combined with each cell's range), so a
  loud engine or a faint EV tone speaks for the vehicles at the range its loudness suggests.
  In training an auxiliary head reads the acoustic scene (which classes in which distance ring,
  ``labels.audio_scene``) from the vector, so the audio branch learns what it hears directly.
  Besides joining the fusion, the lifted audio features add to the class logits through a 1x1
  conv (log-odds evidence on whatever the other sensors found at the cell): sound says what,
  not where. Without that path the fused features lost the audio's car/ev evidence (a linear
  probe read it from the audio encoder at 95-99 %, from the fused cell at ~50 %) and the
  trained network's vehicle classes did not depend on the audio at all.

Fusion modules (``FusionConfig.kind``): ``concat`` (features concatenated, 1x1 conv), ``gated``
(a learned weight per modality and cell, softmax over the modalities present), ``attention``
(per cell, a query attends over the modality tokens, multi-head) and ``late`` (one head per
modality, decisions averaged with learned per-class weights: the decision-level baseline).
Absent modalities (``mask`` 0) are zeroed and excluded from gates, attention and averages, so one
network runs with any subset; training drops modalities at random so it learns to.

Outputs: ``heatmap`` (1, classes, X, Y) object-centre probabilities per class and ``boxes``
(1, 8, X, Y): cell offset dx, dy (cells), z (m), log length, width, height (m), sin and cos yaw.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from edgefuse.calib.model import RigCalibration
from edgefuse.model.labels import AUDIO_RINGS_M, project_grid
from edgefuse.runtime.postprocess import GridSpec
from edgefuse.runtime.preprocess import MODALITIES, FeatureSpec

FusionKind = Literal["concat", "gated", "attention", "late"]
FUSIONS: tuple[FusionKind, ...] = ("concat", "gated", "attention", "late")
#: Channels of the ``boxes`` output.
BOX_CHANNELS = ("dx", "dy", "z_m", "log_l", "log_w", "log_h", "sin_yaw", "cos_yaw")
#: Spacing and width (m) of the range bumps the audio vector is lifted onto the grid with.
AUDIO_BUMP_M = 5.0


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """What a network is made of (stored with checkpoints and in the exported metadata)."""

    #: The modalities this network has encoders for (a single-modality baseline has one).
    modalities: tuple[str, ...] = MODALITIES
    fusion: FusionKind = "attention"
    class_names: tuple[str, ...] = ("car", "ev", "pedestrian", "cyclist")
    #: Feature channels on the BEV grid.
    channels: int = 32
    heads: int = 4
    spec: FeatureSpec = field(default_factory=FeatureSpec)

    def __post_init__(self) -> None:
        unknown = [m for m in self.modalities if m not in MODALITIES]
        if unknown or not self.modalities:
            raise ValueError(f"modalities {list(self.modalities)}: expected some of {MODALITIES}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion {self.fusion!r}: expected one of {FUSIONS}")
        if self.channels % self.heads:
            raise ValueError(f"channels ({self.channels}) must be a multiple of heads")

    @property
    def grid_shape(self) -> tuple[int, int]:
        """Rows (x) and columns (y) of the head's grid."""
        x, y = self.spec.bev_shape
        return x // 2, y // 2

    @property
    def grid_cell_m(self) -> float:
        """Cell size of the head's grid (m)."""
        return self.spec.bev_cell_m * 2

    @property
    def grid(self) -> GridSpec:
        """The head's grid and class names, as the runtime's decoder takes them."""
        return GridSpec(
            x_min_m=self.spec.bev_x_m[0],
            y_min_m=self.spec.bev_y_m[0],
            cell_m=self.grid_cell_m,
            shape=self.grid_shape,
            class_names=self.class_names,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        d = asdict(self)
        d["spec"] = self.spec.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        spec = FeatureSpec.from_dict(d.pop("spec", {}))
        kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(spec=spec, **kwargs)


def _conv(cin: int, cout: int, *, stride: int = 1, k: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class _Residual(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.a = _conv(c, c)
        self.b = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x + self.b(self.a(x)))


class BevEncoder(nn.Module):
    """Lidar or depth BEV grid (input resolution) -> features on the head's grid."""

    def __init__(self, cin: int, c: int) -> None:
        super().__init__()
        self.net = nn.Sequential(_conv(cin, c // 2), _conv(c // 2, c, stride=2), _Residual(c))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # type: ignore[no-any-return]


def camera_lift_tables(
    rig: RigCalibration, cfg: ModelConfig, *, feat_hw: tuple[int, int], camera: str = "camera"
) -> dict[str, np.ndarray]:
    """Constant gather tables from camera features (``feat_hw``, flattened) to the head's grid.

    ``ipm_index``/``ipm_weight`` (cells, 4): bilinear taps where each cell's ground point
    projects; ``col_index``/``col_weight`` (cells, 2): the feature columns at each cell's bearing
    (its point 1 m above the ground); ``in_view`` (cells,): 1 where the cell is in the image."""
    cam = rig.sensor(camera).camera
    assert cam is not None, "the camera has no intrinsics"
    fh, fw = feat_hw
    grid = cfg.grid

    def project(z_m: float) -> tuple[np.ndarray, np.ndarray]:
        uv, inside = project_grid(rig, grid, z_m=z_m, camera=camera)
        # Feature coordinates: pixel centres of the feature map cover the image evenly.
        fu = (uv[:, 0] + 0.5) * fw / cam.width - 0.5
        fv = (uv[:, 1] + 0.5) * fh / cam.height - 0.5
        return np.stack([fu, fv], -1), inside

    fuv, inside_ground = project(0.0)
    inside_ground &= (fuv[:, 1] >= -0.5) & (fuv[:, 1] <= fh - 0.5)
    u = np.clip(fuv[:, 0], 0, fw - 1)
    v = np.clip(fuv[:, 1], 0, fh - 1)
    u0, v0 = np.minimum(np.floor(u), fw - 2).astype(np.int64), np.minimum(np.floor(v), fh - 2)
    v0 = v0.astype(np.int64)
    au, av = u - u0, v - v0
    ipm_index = np.stack(
        [v0 * fw + u0, v0 * fw + u0 + 1, (v0 + 1) * fw + u0, (v0 + 1) * fw + u0 + 1], -1
    )
    ipm_weight = np.stack([(1 - au) * (1 - av), au * (1 - av), (1 - au) * av, au * av], -1)
    ipm_weight *= inside_ground[:, None]
    fuv1, inside_col = project(1.0)
    u = np.clip(fuv1[:, 0], 0, fw - 1)
    u0 = np.minimum(np.floor(u), fw - 2).astype(np.int64)
    au = u - u0
    col_index = np.stack([u0, u0 + 1], -1)
    col_weight = np.stack([1 - au, au], -1) * inside_col[:, None]
    return {
        "ipm_index": ipm_index,
        "ipm_weight": ipm_weight.astype(np.float32),
        "col_index": col_index,
        "col_weight": col_weight.astype(np.float32),
        "in_view": inside_col.astype(np.float32),
    }


class CameraEncoder(nn.Module):
    """Image -> features on the head's grid through the calibrated camera (see module doc)."""

    ipm_index: Tensor
    ipm_weight: Tensor
    col_index: Tensor
    col_weight: Tensor
    in_view: Tensor

    def __init__(self, c: int, rig: RigCalibration, cfg: ModelConfig) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv(3, 16, stride=2), _conv(16, c, stride=2), _Residual(c))
        self.down = nn.Sequential(_conv(c, c * 3 // 2, stride=2), _conv(c * 3 // 2, c, k=1))
        h, w = cfg.spec.camera_hw
        self.feat_hw = (h // 4, w // 4)
        t = camera_lift_tables(rig, cfg, feat_hw=self.feat_hw)
        self.register_buffer("ipm_index", torch.from_numpy(t["ipm_index"].reshape(-1)))
        self.register_buffer("ipm_weight", torch.from_numpy(t["ipm_weight"]))
        self.register_buffer("col_index", torch.from_numpy(t["col_index"].reshape(-1)))
        self.register_buffer("col_weight", torch.from_numpy(t["col_weight"]))
        self.register_buffer("in_view", torch.from_numpy(t["in_view"]).view(1, 1, *cfg.grid_shape))
        self.row_logits = nn.Conv2d(c, 1, 1)
        self.mix = _conv(2 * c + 1, c, k=1)
        self.grid = cfg.grid_shape

    def forward(self, x: Tensor) -> Tensor:
        f = self.stem(x)
        coarse = self.down(f)
        f = f + nn.functional.interpolate(coarse, size=self.feat_hw, mode="nearest")
        b, c = f.shape[:2]
        cells = self.grid[0] * self.grid[1]
        flat = f.flatten(2)
        ipm = flat[:, :, self.ipm_index].view(b, c, cells, 4)
        ipm = (ipm * self.ipm_weight).sum(-1)
        # Each column pooled over its rows by a learned softmax: what lies in that direction.
        a = torch.softmax(self.row_logits(f), dim=2)
        columns = (f * a).sum(2)  # (b, c, fw)
        col = columns[:, :, self.col_index].view(b, c, cells, 2)
        col = (col * self.col_weight).sum(-1)
        lifted = torch.cat([ipm, col], 1).view(b, 2 * c, *self.grid)
        out: Tensor = self.mix(torch.cat([lifted, self.in_view.expand(b, 1, *self.grid)], 1))
        return out


class AudioEncoder(nn.Module):
    """Log-mel window -> one vector -> lifted onto the grid along range rings.

    One microphone hears what and how near, not where: the vector is combined in every cell
    with a soft encoding of the cell's range (Gaussian bumps every :data:`AUDIO_BUMP_M`), so
    the grid feature can say "an EV tone loud enough for 10-15 m" in the cells at that range
    and nothing elsewhere. Fusion then only has to add it to a vehicle found by the other
    sensors; broadcasting the bare vector left that interaction to the head, which in training
    did not learn it (the car/ev logits ignored the audio)."""

    rings: Tensor

    def __init__(self, c: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.net = nn.Sequential(
            _conv(1, 16, stride=2), _conv(16, 32, stride=2), _conv(32, 32, stride=2)
        )
        mels = cfg.spec.audio_mels
        for _ in range(3):
            mels = (mels + 1) // 2
        self.fc = nn.Sequential(
            nn.Linear(2 * 32 * mels, 2 * c), nn.ReLU(inplace=True), nn.Linear(2 * c, c)
        )
        rows, cols = cfg.grid_shape
        sp = cfg.spec
        xs = sp.bev_x_m[0] + (torch.arange(rows) + 0.5) * cfg.grid_cell_m
        ys = sp.bev_y_m[0] + (torch.arange(cols) + 0.5) * cfg.grid_cell_m
        gx, gy = torch.meshgrid(xs, ys, indexing="ij")
        r = torch.sqrt(gx**2 + gy**2)
        centres = torch.arange(0.0, float(r.max()) + AUDIO_BUMP_M, AUDIO_BUMP_M)
        bumps = torch.exp(-0.5 * ((r[None] - centres[:, None, None]) / AUDIO_BUMP_M) ** 2)
        self.register_buffer("rings", bumps[None].float())  # (1, R, X, Y)
        self.lift_vector = nn.Linear(c, c)
        self.lift_ring = nn.Conv2d(len(centres), c, 1, bias=False)
        # Normalised like every other encoder's output: at a smaller scale the audio part of a
        # fused cell is drowned by the others' variance and the head never learns to read it.
        self.out = _conv(c, c, k=1)

    def embed(self, x: Tensor) -> Tensor:
        """(b, c): the window's vector before it is lifted onto the grid."""
        f = self.net(x)  # (b, 32, mels', frames')
        # Mean and max over time, per frequency band: steady tones and transient clicks.
        pooled = torch.cat([f.mean(3), f.amax(3)], 1).flatten(1)
        v: Tensor = self.fc(pooled)
        return v

    def forward(self, x: Tensor) -> Tensor:
        v = self.lift_vector(self.embed(x))[:, :, None, None]
        out: Tensor = self.out(torch.relu(v + self.lift_ring(self.rings)))
        return out


class Head(nn.Module):
    """Shared conv trunk, a heatmap per class and the box regression."""

    def __init__(self, cin: int, c: int, classes: int) -> None:
        super().__init__()
        self.trunk = nn.Sequential(_conv(cin, c), _conv(c, c))
        self.heatmap = nn.Conv2d(c, classes, 1)
        self.boxes = nn.Conv2d(c, len(BOX_CHANNELS), 1)
        # Start from a low prior (CenterNet), so the focal loss is not swamped at step 0.
        assert self.heatmap.bias is not None
        nn.init.constant_(self.heatmap.bias, -2.19)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        t = self.trunk(x)
        return self.heatmap(t), self.boxes(t)


class ConcatFusion(nn.Module):
    def __init__(self, n: int, c: int) -> None:
        super().__init__()
        self.mix = _conv(n * c, c, k=1)

    def forward(self, feats: list[Tensor], mask: Tensor) -> Tensor:
        out: Tensor = self.mix(
            torch.cat([f * mask[:, i, None, None, None] for i, f in enumerate(feats)], 1)
        )
        return out  # type: ignore[no-any-return]


class GatedFusion(nn.Module):
    def __init__(self, n: int, c: int) -> None:
        super().__init__()
        self.gates = nn.ModuleList(nn.Conv2d(c, 1, 1) for _ in range(n))
        self.out = _conv(c, c, k=1)

    def forward(self, feats: list[Tensor], mask: Tensor) -> Tensor:
        logits = torch.cat([g(f) for g, f in zip(self.gates, feats, strict=True)], 1)
        logits = logits + (mask[:, :, None, None] - 1.0) * 1e4  # absent: weight 0
        w = torch.softmax(logits, dim=1)
        fused = sum(w[:, i : i + 1] * f for i, f in enumerate(feats))
        return self.out(fused)  # type: ignore[no-any-return]


class AttentionFusion(nn.Module):
    """Per cell: a query (learned, plus the mean of the present tokens) attends over the
    modality tokens (features + a modality embedding) with multi-head dot-product attention."""

    def __init__(self, n: int, c: int, heads: int) -> None:
        super().__init__()
        self.heads, self.d = heads, c // heads
        self.embed = nn.Parameter(torch.zeros(n, c, 1, 1))
        nn.init.normal_(self.embed, std=0.02)
        self.query0 = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.q = nn.Conv2d(c, c, 1)
        self.k = nn.Conv2d(c, c, 1)
        self.v = nn.Conv2d(c, c, 1)
        self.o = nn.Conv2d(c, c, 1)
        self.norm = nn.BatchNorm2d(c)
        self.ffn = nn.Sequential(_conv(c, 2 * c, k=1), nn.Conv2d(2 * c, c, 1), nn.BatchNorm2d(c))

    def forward(self, feats: list[Tensor], mask: Tensor) -> Tensor:
        b, c, h, w = feats[0].shape
        tokens = [f + self.embed[i] for i, f in enumerate(feats)]
        present = mask[:, :, None, None]  # (b, n, 1, 1)
        count = present.sum(1, keepdim=True).clamp(min=1.0)
        mean = sum(t * present[:, i : i + 1] for i, t in enumerate(tokens)) / count
        q = self.q(mean + self.query0).view(b, self.heads, self.d, h, w)
        scale = 1.0 / math.sqrt(self.d)
        logits, values = [], []
        for i, t in enumerate(tokens):
            k = self.k(t).view(b, self.heads, self.d, h, w)
            logits.append((q * k).sum(2) * scale + (present[:, i : i + 1] - 1.0) * 1e4)
            values.append(self.v(t).view(b, self.heads, self.d, h, w))
        a = torch.softmax(torch.stack(logits, 1), dim=1)  # (b, n, heads, h, w)
        out = sum(a[:, i, :, None] * v for i, v in enumerate(values)).view(b, c, h, w)
        x = self.norm(mean + self.o(out))
        return torch.relu(x + self.ffn(x))


class FusionNet(nn.Module):
    """The whole network; inputs as :meth:`FeatureSpec.input_shapes`, outputs (heatmap, boxes)."""

    coords: Tensor

    def __init__(self, cfg: ModelConfig, rig: RigCalibration) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.channels
        encoders: dict[str, nn.Module] = {}
        for m in cfg.modalities:
            if m == "camera":
                encoders[m] = CameraEncoder(c, rig, cfg)
            elif m == "depth":
                encoders[m] = BevEncoder(3, c)
            elif m == "lidar":
                encoders[m] = BevEncoder(4, c)
            else:
                encoders[m] = AudioEncoder(c, cfg)
        self.encoders = nn.ModuleDict(encoders)
        #: Index of each of this network's modalities in the ``mask`` input.
        self.mask_index = [MODALITIES.index(m) for m in cfg.modalities]
        n = len(cfg.modalities)
        k = len(cfg.class_names)
        rows, cols = cfg.grid_shape
        sp = cfg.spec
        xs = sp.bev_x_m[0] + (torch.arange(rows) + 0.5) * cfg.grid_cell_m
        ys = sp.bev_y_m[0] + (torch.arange(cols) + 0.5) * cfg.grid_cell_m
        gx, gy = torch.meshgrid(xs, ys, indexing="ij")
        half = max(abs(v) for v in (*sp.bev_x_m, *sp.bev_y_m))
        coords = torch.stack([gx / half, gy / half, torch.sqrt(gx**2 + gy**2) / half])
        self.register_buffer("coords", coords[None].float())
        self.fusion: nn.Module | None
        if cfg.fusion == "late" and n > 1:
            self.fusion = None
            self.heads = nn.ModuleList(Head(c + 3, c, k) for _ in range(n))
            self.late_weight = nn.Parameter(torch.zeros(n, k))
        else:
            if n == 1:
                self.fusion = None
            elif cfg.fusion == "concat":
                self.fusion = ConcatFusion(n, c)
            elif cfg.fusion == "gated":
                self.fusion = GatedFusion(n, c)
            else:
                self.fusion = AttentionFusion(n, c, cfg.heads)
            self.heads = nn.ModuleList([Head(c + 3, c, k)])
        #: Sound says what, not where: the lifted audio features also reach the class logits
        #: directly (a 1x1 conv, no bias, zero at start), so "this vehicle is an EV" is an
        #: additive log-odds term on whatever the other sensors found at the cell.
        self.audio_evidence: nn.Module | None = None
        if "audio" in cfg.modalities and not self.late:
            self.audio_evidence = nn.Conv2d(c, k, 1, bias=False)
            nn.init.zeros_(self.audio_evidence.weight)
        #: Training only, not in the exported graph: the acoustic scene (which classes in which
        #: distance ring, ``labels.audio_scene``) read from the audio vector.
        self.audio_scene: nn.Module | None = None
        if "audio" in cfg.modalities:
            self.audio_scene = nn.Linear(c, k * len(AUDIO_RINGS_M))

    @property
    def late(self) -> bool:
        """Decision-level fusion: one head per modality."""
        return len(self.heads) > 1

    def input_names(self) -> list[str]:
        """The graph's inputs, in order: this network's modalities, then ``mask``."""
        return [*self.cfg.modalities, "mask"]

    def audio_scene_logits(self, audio: Tensor) -> Tensor:
        """(b, classes * rings) logits of the acoustic-scene target from the audio input."""
        if self.audio_scene is None:
            raise ValueError("this network has no audio input")
        enc = self.encoders["audio"]
        assert isinstance(enc, AudioEncoder)
        out: Tensor = self.audio_scene(enc.embed(audio))
        return out

    def forward(self, *inputs: Tensor) -> tuple[Tensor, Tensor]:
        """``inputs`` in :meth:`input_names` order -> (heatmap probabilities, boxes)."""
        logits, boxes = self.forward_logits(*inputs)
        return torch.sigmoid(logits), boxes

    def forward_logits(
        self, *inputs: Tensor, per_modality: list[tuple[Tensor, Tensor]] | None = None
    ) -> tuple[Tensor, Tensor]:
        """Heatmap logits and boxes; for late fusion, ``per_modality`` (if given) receives each
        modality head's own outputs (trained too, so each decision stands on its own)."""
        *xs, full_mask = inputs
        mask = full_mask[:, self.mask_index]
        feats = [
            enc(x) * mask[:, i, None, None, None]
            for i, (enc, x) in enumerate(zip(self.encoders.values(), xs, strict=True))
        ]
        b = feats[0].shape[0]
        coords = self.coords.expand(b, -1, -1, -1)
        if not self.late:
            fused = feats[0] if self.fusion is None else self.fusion(feats, mask)
            logits, boxes = self.heads[0](torch.cat([fused, coords], 1))
            if self.audio_evidence is not None:
                audio = feats[list(self.cfg.modalities).index("audio")]  # zero when absent
                logits = logits + self.audio_evidence(audio)
            return logits, boxes
        outs = [head(torch.cat([f, coords], 1)) for head, f in zip(self.heads, feats, strict=True)]
        if per_modality is not None:
            per_modality.extend(outs)
        # Decisions averaged over the modalities present, with learned per-class weights;
        # boxes from each modality weighted by its confidence at the cell.
        w = (
            nn.functional.softplus(self.late_weight)[None, :, :, None, None]
            * mask[:, :, None, None, None]
        )
        hm = torch.stack([o[0] for o in outs], 1)  # (b, n, k, h, w)
        total = w.sum(1).clamp(min=1e-6)
        logits = (hm * w).sum(1) / total
        conf = torch.sigmoid(hm).amax(2, keepdim=True) * mask[:, :, None, None, None] + 1e-6
        bx = torch.stack([o[1] for o in outs], 1)  # (b, n, 8, h, w)
        boxes = (bx * conf).sum(1) / conf.sum(1)
        return logits, boxes


def count_parameters(net: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)
