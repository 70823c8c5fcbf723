"""Training: seeded and reproducible, with progress bars, checkpoints every epoch and resume.

Loss (CenterPoint): a focal loss on the class heatmaps (CenterNet's penalty-reduced variant,
alpha 2, beta 4, normalised by the number of objects) plus an L1 loss on the box channels at
the object centres; a weight map leaves out cells outside the camera's view and around objects
nobody can see (see :mod:`edgefuse.model.labels`). Late fusion also trains each modality's
own head on the same targets, so each decision stands on its own before they are averaged.

Modality dropout: each modality of a multi-modal network is dropped from a sample with
probability ``modality_dropout`` (never all of them), so the network works with any subset and
learns not to lean on one sensor.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from edgefuse.calib.model import RigCalibration
from edgefuse.model.dataset import Frames, iter_batches
from edgefuse.model.labels import LabelRules, audio_scene
from edgefuse.model.network import FusionNet, ModelConfig
from edgefuse.runtime.preprocess import MODALITIES

CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How a network is trained."""

    epochs: int = 10
    batch: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    modality_dropout: float = 0.2
    #: Weight of the box loss against the heatmap loss.
    box_weight: float = 1.0
    #: Weight of the audio encoder's acoustic-scene loss (``labels.audio_scene``); 0 = off.
    audio_scene_weight: float = 1.0
    threads: int = 2

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch < 1:
            raise ValueError("epochs and batch must be >= 1")
        if not 0 <= self.modality_dropout < 1:
            raise ValueError(f"modality_dropout must be in [0, 1), got {self.modality_dropout}")


def label_rules(cfg: ModelConfig, rig: RigCalibration) -> LabelRules:
    """The counting rule for ``cfg``'s grid and ``rig``'s camera."""
    return LabelRules.for_rig(cfg.grid, rig)


def focal_loss(logits: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """CenterNet's penalty-reduced focal loss, summed (normalise by the object count)."""
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target.ge(0.999).float()
    neg = 1.0 - pos
    pos_loss = -torch.log(p) * (1 - p) ** 2 * pos
    neg_loss = -torch.log(1 - p) * p**2 * (1 - target) ** 4 * neg
    return ((pos_loss + neg_loss) * weight[:, None]).sum()


def detection_loss(
    logits: Tensor,
    boxes: Tensor,
    heat: Tensor,
    box_t: Tensor,
    box_mask: Tensor,
    weight: Tensor,
    *,
    box_weight: float,
) -> tuple[Tensor, Tensor]:
    """(heatmap loss, box loss), each normalised by the number of objects in the batch."""
    n = box_mask.sum().clamp(min=1.0)
    hm = focal_loss(logits, heat, weight) / n
    l1 = (torch.abs(boxes - box_t) * box_mask[:, None]).sum() / n
    return hm, box_weight * l1


class Trainer:
    """Trains one network on :class:`Frames` (see the module docstring)."""

    def __init__(
        self,
        cfg: ModelConfig,
        rig: RigCalibration,
        frames: Frames,
        *,
        out_dir: str | Path,
        train: TrainConfig,
    ) -> None:
        self.cfg, self.rig, self.frames, self.tc = cfg, rig, frames, train
        self.out_dir = Path(out_dir)
        torch.set_num_threads(train.threads)
        self._seed_all(train.seed)
        self.net = FusionNet(cfg, rig)
        self.opt = torch.optim.AdamW(
            self.net.parameters(), lr=train.lr, weight_decay=train.weight_decay
        )
        steps = train.epochs * -(-len(frames) // train.batch)
        self.sched = torch.optim.lr_scheduler.OneCycleLR(
            self.opt, max_lr=train.lr, total_steps=steps, pct_start=0.15
        )
        self.epoch = 0
        self.history: list[dict[str, float]] = []
        rules = label_rules(cfg, rig)
        t = [rules.targets(o) for o in frames.objects]
        self.heat = np.stack([x[0] for x in t])
        self.box_t = np.stack([x[1] for x in t])
        self.box_mask = np.stack([x[2] for x in t])
        self.weight = np.stack([x[3] for x in t])
        k = len(cfg.class_names)
        self.scene = np.stack([audio_scene(o, k) for o in frames.objects])
        self.rng = np.random.default_rng(train.seed)

    @staticmethod
    def _seed_all(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def resume(self) -> bool:
        """Continue from the checkpoint in ``out_dir`` if there is one; True if resumed."""
        path = self.out_dir / CHECKPOINT
        if not path.exists():
            return False
        ck = torch.load(path, map_location="cpu", weights_only=False)
        if ck["model_config"] != self.cfg.to_dict():
            raise ValueError(f"{path}: a checkpoint of another model configuration")
        if ck["train_config"] != asdict(self.tc):
            raise ValueError(f"{path}: trained with other settings ({ck['train_config']})")
        self.net.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        self.epoch = int(ck["epoch"])
        self.history = list(ck["history"])
        self.rng.bit_generator.state = ck["rng"]
        torch.set_rng_state(ck["torch_rng"])
        return True

    def save(self) -> Path:
        """Write the checkpoint (atomically) and return its path."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / CHECKPOINT
        tmp = path.with_suffix(".tmp")
        torch.save(
            {
                "model": self.net.state_dict(),
                "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(),
                "epoch": self.epoch,
                "history": self.history,
                "rng": self.rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
                "model_config": self.cfg.to_dict(),
                "train_config": asdict(self.tc),
                "rig": self.rig.rig,
                "data_digest": self.frames.digest,
            },
            tmp,
        )
        tmp.replace(path)
        return path

    def _scene_loss(self, idx: np.ndarray, inputs: list[Tensor]) -> Tensor | None:
        """The acoustic-scene loss over the samples of the batch that have audio."""
        if self.net.audio_scene is None or self.tc.audio_scene_weight <= 0:
            return None
        names = self.net.input_names()
        keep = inputs[-1][:, MODALITIES.index("audio")] > 0
        if not keep.any():
            return None
        logits = self.net.audio_scene_logits(inputs[names.index("audio")][keep])
        target = torch.from_numpy(self.scene[idx][keep.numpy()])
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
        return self.tc.audio_scene_weight * bce

    def _batch(self, idx: np.ndarray) -> tuple[list[Tensor], list[Tensor]]:
        names = self.net.input_names()
        x = self.frames.inputs(idx, names)
        mask = x["mask"]
        own = [MODALITIES.index(m) for m in self.cfg.modalities]
        if len(own) > 1 and self.tc.modality_dropout > 0:
            drop = self.rng.random((len(idx), len(own))) < self.tc.modality_dropout
            all_gone = drop.all(axis=1)
            drop[all_gone, self.rng.integers(len(own), size=int(all_gone.sum()))] = False
            for k, mi in enumerate(own):
                mask[drop[:, k], mi] = 0.0
        for m in self.cfg.modalities:
            gone = mask[:, MODALITIES.index(m)] == 0
            x[m][gone] = 0.0
        inputs = [torch.from_numpy(x[n]) for n in names]
        targets = [
            torch.from_numpy(a[idx]) for a in (self.heat, self.box_t, self.box_mask, self.weight)
        ]
        return inputs, targets

    def fit(
        self,
        *,
        progress: bool = True,
        on_epoch: Callable[[int, dict[str, float]], None] | None = None,
        until_epoch: int | None = None,
    ) -> Path:
        """Train the remaining epochs (or up to ``until_epoch``), checkpointing after each;
        return the checkpoint path."""
        from tqdm import tqdm

        n = len(self.frames)
        steps = -(-n // self.tc.batch)
        path = self.out_dir / CHECKPOINT
        last = self.tc.epochs if until_epoch is None else min(until_epoch, self.tc.epochs)
        while self.epoch < last:
            self.net.train()
            # One generator draw per epoch, so a resumed run takes the same batches.
            order_rng = np.random.default_rng([self.tc.seed, self.epoch])
            sums = {"heatmap": 0.0, "box": 0.0, "audio_scene": 0.0}
            t0 = time.perf_counter()
            bar = tqdm(
                iter_batches(n, self.tc.batch, order_rng),
                total=steps,
                desc=f"epoch {self.epoch + 1}/{self.tc.epochs}",
                disable=not progress,
                leave=False,
                unit="batch",
            )
            for idx in bar:
                inputs, (heat, box_t, box_mask, weight) = self._batch(idx)
                per: list[tuple[Tensor, Tensor]] = []
                logits, boxes = self.net.forward_logits(*inputs, per_modality=per)
                hm, bx = detection_loss(
                    logits, boxes, heat, box_t, box_mask, weight, box_weight=self.tc.box_weight
                )
                loss = hm + bx
                scene = self._scene_loss(idx, inputs)
                if scene is not None:
                    loss = loss + scene
                    sums["audio_scene"] += float(scene.detach()) * len(idx)
                if per:
                    mask = inputs[-1][:, self.net.mask_index]
                    for k, (lg, bo) in enumerate(per):
                        keep = mask[:, k] > 0
                        if keep.any():
                            h2, b2 = detection_loss(
                                lg[keep],
                                bo[keep],
                                heat[keep],
                                box_t[keep],
                                box_mask[keep],
                                weight[keep],
                                box_weight=self.tc.box_weight,
                            )
                            loss = loss + 0.5 * (h2 + b2) / len(per)
                self.opt.zero_grad(set_to_none=True)
                torch.autograd.backward(loss)
                torch.nn.utils.clip_grad_norm_(self.net.parameters(), 5.0)
                self.opt.step()
                self.sched.step()
                sums["heatmap"] += float(hm.detach()) * len(idx)
                sums["box"] += float(bx.detach()) * len(idx)
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
            self.epoch += 1
            stats = {k: v / n for k, v in sums.items()}
            stats["seconds"] = time.perf_counter() - t0
            self.history.append(stats)
            path = self.save()
            if on_epoch is not None:
                on_epoch(self.epoch, stats)
        return path


def load_checkpoint(path: str | Path, rig: RigCalibration) -> tuple[FusionNet, dict[str, Any]]:
    """A trained network (eval mode) and its checkpoint's record."""
    ck = torch.load(path, map_location="cpu", weights_only=False)
    cfg = ModelConfig.from_dict(ck["model_config"])
    net = FusionNet(cfg, rig)
    net.load_state_dict(ck["model"])
    net.eval()
    info = {
        k: v
        for k, v in ck.items()
        if k not in ("model", "optimizer", "scheduler", "rng", "torch_rng")
    }
    return net, json.loads(json.dumps(info, default=str))
