"""``edgefuse dataset``, ``edgefuse train``, ``edgefuse eval`` and ``edgefuse export``.

These need the ``train`` extra (PyTorch, ONNX, matplotlib, tqdm); the edge runtime does not.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from edgefuse.errors import ConfigError, require_extra


def _seeds(text: str) -> list[int]:
    """``3``, ``0:10`` (end exclusive) or ``1,4,9``."""
    try:
        if ":" in text:
            a, b = text.split(":")
            return list(range(int(a), int(b)))
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds {text!r}: expected N, A:B or N,M,...") from None


def _shard_paths(items: list[str]) -> list[Path]:
    out: list[Path] = []
    for it in items:
        p = Path(it)
        if p.is_dir():
            out += sorted(p.glob("*.npz"))
        elif p.suffix == ".npz" and p.is_file():
            out.append(p)
        else:
            raise ConfigError(
                f"{it}: not a shard (.npz) or a folder of shards "
                "(build them with 'edgefuse dataset build')"
            )
    if not out:
        raise ConfigError(f"no shards in {' '.join(items)}")
    return out


def _build_one(job: tuple[str, str, str, int, float]) -> dict[str, Any]:
    from edgefuse.model.dataset import build_shard
    from edgefuse.runtime.preprocess import FeatureSpec
    from edgefuse.sync.offline import aligner_from_pipeline

    session, out, pipeline, every, skip_s = job
    return build_shard(
        session,
        out,
        aligner_from_pipeline(pipeline),
        spec=FeatureSpec(),
        every=every,
        skip_s=skip_s,
    )


def _sim_one(job: tuple[str, int, float, str, str, int, float, bool]) -> dict[str, Any]:
    from edgefuse.sim.generate import generate
    from edgefuse.sim.rig import sim_params_of_pipeline

    scenario, seed, duration, out, pipeline, every, skip_s, keep = job
    with tempfile.TemporaryDirectory() as d:
        session = Path(out).with_suffix(".mcap") if keep else Path(d) / "session.mcap"
        params = sim_params_of_pipeline(pipeline, scenario=scenario, seed=seed)
        generate(session, params, duration_s=duration)
        return _build_one((str(session), out, pipeline, every, skip_s))


def _run_jobs(fn: Any, jobs: list[Any], workers: int) -> None:
    from tqdm import tqdm

    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        for info in tqdm(pool.map(fn, jobs), total=len(jobs), desc="shards", unit="shard"):
            print(f"{info['session']}: {info['kept']} of {info['sets']} sets", file=sys.stderr)


def _cmd_dataset_build(args: argparse.Namespace) -> int:
    out = Path(args.out)
    jobs = []
    for s in args.sessions:
        target = out / (Path(s).stem + ".npz")
        if target.exists() and not args.force:
            continue
        if not Path(s).is_file():
            raise ConfigError(f"{s}: no such session file")
        jobs.append((s, str(target), args.pipeline, args.every, args.skip_s))
    _run_jobs(_build_one, jobs, args.jobs)
    return 0


def _cmd_dataset_sim(args: argparse.Namespace) -> int:
    out = Path(args.out)
    jobs = []
    for scenario in args.scenario.split(","):
        for seed in args.seeds:
            target = out / f"{scenario}_{seed}.npz"
            if target.exists() and not args.force:
                continue
            jobs.append(
                (
                    scenario,
                    seed,
                    args.duration,
                    str(target),
                    args.pipeline,
                    args.every,
                    args.skip_s,
                    args.keep_sessions,
                )
            )
    _run_jobs(_sim_one, jobs, args.jobs)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    require_extra("torch", "train")
    from edgefuse.calib.model import find_calibration, load_calibration
    from edgefuse.model.dataset import Frames
    from edgefuse.model.network import ModelConfig
    from edgefuse.model.train import TrainConfig, Trainer

    cfg = ModelConfig(
        modalities=tuple(args.modalities.split(",")), fusion=args.fusion, channels=args.channels
    )
    tc = TrainConfig(
        epochs=args.epochs,
        batch=args.batch,
        lr=args.lr,
        seed=args.seed,
        modality_dropout=args.modality_dropout,
        audio_scene_weight=args.audio_scene_weight,
        threads=args.threads,
    )
    rig = load_calibration(find_calibration(args.rig))
    frames = Frames.load(_shard_paths(args.data), spec=cfg.spec)
    print(
        f"{len(frames)} frames from {len(set(frames.scenario.tolist()))} scenario(s); "
        f"data sha256 {frames.digest[:12]}",
        file=sys.stderr,
    )
    trainer = Trainer(cfg, rig, frames, out_dir=args.out, train=tc)
    if args.resume and trainer.resume():
        print(f"resumed at epoch {trainer.epoch}", file=sys.stderr)
    elif (Path(args.out) / "checkpoint.pt").exists() and not args.resume:
        raise ConfigError(
            f"{args.out} holds a checkpoint already: --resume to continue it, or another --out"
        )
    path = trainer.fit(
        progress=not args.quiet,
        on_epoch=lambda e, s: print(
            f"epoch {e}/{tc.epochs}: heatmap {s['heatmap']:.3f} box {s['box']:.3f} "
            f"audio scene {s['audio_scene']:.3f} ({s['seconds']:.0f} s)",
            file=sys.stderr,
        ),
    )
    print(path)
    return 0


def _load_predictor(
    model: str, rig_path: str, threads: int
) -> tuple[Any, list[str], Any, Any, dict[str, Any]]:
    from edgefuse.calib.model import find_calibration, load_calibration
    from edgefuse.model.evaluate import onnx_predictor, torch_predictor
    from edgefuse.model.network import ModelConfig
    from edgefuse.model.train import label_rules, load_checkpoint

    rig = load_calibration(find_calibration(rig_path))
    if model.endswith(".onnx"):
        import onnxruntime as ort

        from edgefuse.model.export import read_metadata

        meta = read_metadata(model)
        cfg = ModelConfig.from_dict(meta["model_config"])
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        predictor = onnx_predictor(sess)
        names = [i.name for i in sess.get_inputs()]
    else:
        require_extra("torch", "train")
        import torch

        torch.set_num_threads(threads)
        net, meta = load_checkpoint(model, rig)
        cfg = net.cfg
        predictor = torch_predictor(net)
        names = net.input_names()
    grid = cfg.grid
    return predictor, names, cfg, (grid, label_rules(cfg, rig)), meta


def _cmd_eval(args: argparse.Namespace) -> int:
    from edgefuse.model.dataset import Frames
    from edgefuse.model.evaluate import all_subsets, evaluate, format_report

    predictor, names, cfg, (grid, rules), _ = _load_predictor(args.model, args.rig, args.threads)
    frames = Frames.load(_shard_paths(args.data), spec=cfg.spec)
    subsets: list[tuple[str, ...]] = []
    for item in args.subsets.split(","):
        if item == "all":
            subsets += all_subsets(cfg.modalities)
        elif item == "full":
            subsets.append(tuple(cfg.modalities))
        else:
            subset = tuple(item.split("+"))
            unknown = [m for m in subset if m not in cfg.modalities]
            if unknown:
                raise ConfigError(
                    f"--subsets {item!r}: {', '.join(unknown)} not among the model's "
                    f"modalities ({', '.join(cfg.modalities)})"
                )
            subsets.append(subset)
    report = evaluate(
        frames,
        predictor,
        input_names=names,
        modalities=cfg.modalities,
        grid=grid,
        rules=rules,
        subsets=subsets,
        progress=not args.quiet,
    )
    # The file's name and hash, not its path: reports end up in shipped model metadata.
    report["model"] = Path(args.model).name
    report["model_sha256"] = hashlib.sha256(Path(args.model).read_bytes()).hexdigest()
    report["model_config"] = cfg.to_dict()
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    if args.plot:
        from edgefuse.model.evaluate import plot_view
        from edgefuse.model.plots import plot_report

        plot_report(
            plot_view(report),
            args.plot,
            title=f"{Path(args.model).name}: {len(frames)} frames; by scenario: {report['full']}",
        )
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    require_extra("torch", "train")
    from edgefuse.calib.model import find_calibration, load_calibration
    from edgefuse.model.export import export_onnx
    from edgefuse.model.train import load_checkpoint

    rig_path = find_calibration(args.rig)
    net, info = load_checkpoint(args.checkpoint, load_calibration(rig_path))
    metrics = json.loads(Path(args.metrics).read_text()) if args.metrics else None
    out = export_onnx(net, args.out, checkpoint_info=info, rig_path=rig_path, metrics=metrics)
    for k, v in out.items():
        print(f"{k}: {v}")
    return 0


def register(sub: Any) -> None:
    """Add the model verbs to the ``edgefuse`` parser."""
    threads = max(1, min(2, os.cpu_count() or 1))
    ds = sub.add_parser(
        "dataset", help="training data: sessions -> shards of network inputs and labels"
    )
    ds_sub = ds.add_subparsers(dest="dataset_verb", required=True, metavar="ACTION")
    for name, help_ in (
        ("build", "shards from recorded or simulated sessions"),
        ("sim", "simulate sessions and shard them"),
    ):
        p = ds_sub.add_parser(name, help=help_)
        if name == "build":
            p.add_argument("sessions", nargs="+", metavar="SESSION.mcap")
            p.set_defaults(fn=_cmd_dataset_build)
        else:
            p.add_argument("--scenario", default="day", help="comma list of scenarios")
            p.add_argument(
                "--seeds", type=_seeds, required=True, help="N, A:B (end exclusive) or N,M"
            )
            p.add_argument("--duration", type=float, default=10.0, metavar="S")
            p.add_argument(
                "--keep-sessions", action="store_true", help="keep each .mcap beside its shard"
            )
            p.set_defaults(fn=_cmd_dataset_sim)
        p.add_argument("-o", "--out", required=True, metavar="DIR")
        p.add_argument(
            "--pipeline", default="pipelines/sim.yaml", help="whose aligner makes the sets"
        )
        p.add_argument("--every", type=int, default=5, help="keep every N-th set (default 5: 6 Hz)")
        p.add_argument("--skip-s", type=float, default=1.0, help="leave out the first S seconds")
        p.add_argument("-j", "--jobs", type=int, default=threads)
        p.add_argument("--force", action="store_true", help="rebuild shards that exist")

    tr = sub.add_parser("train", help="train the encoder-fusion network on shards")
    tr.add_argument("data", nargs="+", metavar="SHARDS", help="shard files or folders")
    tr.add_argument("-o", "--out", required=True, metavar="RUN_DIR")
    tr.add_argument(
        "--fusion", default="attention", choices=["concat", "gated", "attention", "late"]
    )
    tr.add_argument(
        "--modalities",
        default="camera,depth,lidar,audio",
        help="encoders to build (a baseline: one)",
    )
    tr.add_argument("--channels", type=int, default=32)
    tr.add_argument("--epochs", type=int, default=10)
    tr.add_argument("--batch", type=int, default=16)
    tr.add_argument("--lr", type=float, default=2e-3)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--modality-dropout", type=float, default=0.2)
    tr.add_argument(
        "--audio-scene-weight",
        type=float,
        default=1.0,
        help="weight of the audio encoder's auxiliary acoustic-scene loss (0: off)",
    )
    tr.add_argument("--threads", type=int, default=threads)
    tr.add_argument("--rig", default="calibration/sim_rig.yaml")
    tr.add_argument("--resume", action="store_true", help="continue RUN_DIR's checkpoint")
    tr.add_argument("--quiet", action="store_true", help="no progress bars")
    tr.set_defaults(fn=_cmd_train)

    ev = sub.add_parser("eval", help="center-distance mAP of a checkpoint or an exported model")
    ev.add_argument("model", metavar="MODEL", help="checkpoint.pt or model.onnx")
    ev.add_argument("data", nargs="+", metavar="SHARDS")
    ev.add_argument("--subsets", default="all", help="all | full | camera+lidar,lidar,...")
    ev.add_argument("--json", action="store_true", help="print the report as JSON")
    ev.add_argument("--out", metavar="REPORT.json")
    ev.add_argument("--plot", metavar="REPORT.png")
    ev.add_argument("--threads", type=int, default=threads)
    ev.add_argument("--rig", default="calibration/sim_rig.yaml")
    ev.add_argument("--quiet", action="store_true")
    ev.set_defaults(fn=_cmd_eval)

    ex = sub.add_parser(
        "export", help="ONNX (opset 17, static shapes) + metadata from a checkpoint"
    )
    ex.add_argument("checkpoint")
    ex.add_argument("-o", "--out", required=True, metavar="MODEL.onnx")
    ex.add_argument(
        "--metrics", metavar="REPORT.json", help="an eval report to store in the metadata"
    )
    ex.add_argument("--rig", default="calibration/sim_rig.yaml")
    ex.set_defaults(fn=_cmd_export)
