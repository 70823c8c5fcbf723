"""The model's whole path on real data: a simulated session -> shard -> training -> checkpoint,
resume, ONNX export (checker, parity), evaluation through ONNX Runtime and PyTorch, and the CLI.

One short session is simulated once per module (the same arguments give the same bytes), so
every step below works on what ``edgefuse sim generate`` really writes.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from edgefuse.calib.model import find_calibration, load_calibration  # noqa: E402
from edgefuse.model.dataset import (  # noqa: E402
    DatasetError,
    Frames,
    build_shard,
    shard_info,
    with_labels_required,
)
from edgefuse.model.evaluate import (  # noqa: E402
    detect,
    onnx_predictor,
    plot_view,
    score,
    torch_predictor,
)
from edgefuse.model.export import export_onnx, read_metadata  # noqa: E402
from edgefuse.model.network import ModelConfig  # noqa: E402
from edgefuse.model.train import TrainConfig, Trainer, label_rules, load_checkpoint  # noqa: E402
from edgefuse.record import SessionReader  # noqa: E402
from edgefuse.runtime.postprocess import GridSpec  # noqa: E402
from edgefuse.sim.generate import generate  # noqa: E402
from edgefuse.sim.rig import sim_params_of_pipeline  # noqa: E402
from edgefuse.sync.offline import align_messages, aligner_from_pipeline  # noqa: E402
from tests.conftest import REPO, edgefuse_cli  # noqa: E402

pytestmark = pytest.mark.slow

SMALL = ModelConfig(channels=8, heads=4)


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("session") / "night_3.mcap"
    params = sim_params_of_pipeline(REPO / "pipelines/sim.yaml", scenario="night", seed=3)
    generate(path, params, duration_s=2.5)
    return path


@pytest.fixture(scope="module")
def shard(session: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "night_3.npz"
    aligner = aligner_from_pipeline(REPO / "pipelines/sim.yaml")
    build_shard(session, out, aligner, spec=SMALL.spec, every=3, skip_s=0.5)
    return out


@pytest.fixture(scope="module")
def rig():  # type: ignore[no-untyped-def]
    return load_calibration(find_calibration("calibration/sim_rig.yaml"))


def test_shard_holds_the_sets_inputs_and_truth(session: Path, shard: Path) -> None:
    """The shard's labels are the truth members of exactly the kept sets, in order."""
    info = shard_info(shard)
    assert info["scenario"] == "night" and info["kept"] > 5
    frames = Frames.load([shard], spec=SMALL.spec)
    assert len(frames) == info["kept"]
    aligner = with_labels_required(aligner_from_pipeline(REPO / "pipelines/sim.yaml"))
    with SessionReader(session) as r:
        sets = list(align_messages(r.messages(), aligner))
    t0 = sets[0].t_ns
    kept = [
        s for i, s in enumerate(sets) if s.t_ns - t0 >= 0.5e9 and i % 3 == 0
    ]  # build_shard's rule
    assert [s.t_ns for s in kept] == frames.t_ns.tolist()
    for s, objs in zip(kept, frames.objects, strict=True):
        names = s.members["truth"].info["meta"]["arrays"]
        truth = dict(zip(names, s.members["truth"].arrays, strict=True))
        np.testing.assert_array_equal(objs.class_id, truth["class_id"])
        np.testing.assert_allclose(objs.box3d, truth["box3d"], rtol=1e-6)
    # Grids are stored in float16: the inputs come back within its precision.
    assert frames.mask.min() == 1  # every modality arrived in a simulated session


def test_a_session_without_labels_is_refused(session: Path, tmp_path: Path) -> None:
    aligner = aligner_from_pipeline(REPO / "pipelines/sim.yaml")
    no_truth = type(aligner)(
        params=aligner.params,
        topics={t: s for t, s in aligner.topics.items() if s != "truth"},
    )
    with pytest.raises(DatasetError, match="no labelled sets"):
        build_shard(session, tmp_path / "x.npz", no_truth, spec=SMALL.spec)
    assert not (tmp_path / "x.npz").exists()


def test_a_corrupt_shard_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="not a readable shard"):
        Frames.load([bad], spec=SMALL.spec)


def test_training_is_reproducible_and_resumes_exactly(shard: Path, rig, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Two epochs straight equal one epoch, a restart from the checkpoint, and one more."""
    frames = Frames.load([shard], spec=SMALL.spec)
    tc = TrainConfig(epochs=2, batch=4, threads=1)
    a = Trainer(SMALL, rig, frames, out_dir=tmp_path / "a", train=tc)
    a.fit(progress=False)
    b = Trainer(SMALL, rig, frames, out_dir=tmp_path / "b", train=tc)
    b.fit(progress=False, until_epoch=1)  # stops after one epoch, as if killed there
    c = Trainer(SMALL, rig, frames, out_dir=tmp_path / "b", train=tc)
    assert c.resume() and c.epoch == 1
    c.fit(progress=False)
    for (k, va), vc in zip(a.net.state_dict().items(), c.net.state_dict().values(), strict=True):
        torch.testing.assert_close(va, vc, rtol=0, atol=0, msg=k)
    assert a.history[1]["heatmap"] == c.history[1]["heatmap"]
    # The losses went down on the training data (the audio encoder's acoustic scene too:
    # over a few epochs, as on a handful of frames one epoch may not move it).
    assert a.history[1]["heatmap"] < a.history[0]["heatmap"]
    d = Trainer(SMALL, rig, frames, out_dir=tmp_path / "d", train=dataclasses.replace(tc, epochs=4))
    d.fit(progress=False)
    assert 0 < d.history[-1]["audio_scene"] < d.history[0]["audio_scene"]


def test_export_checks_and_scores_like_pytorch(shard: Path, rig, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The exported graph passes the checker, is opset 17 with static fp32 shapes, records
    parity <= 1e-4 and its metadata, and scores the same detections as PyTorch."""
    import onnxruntime as ort

    frames = Frames.load([shard], spec=SMALL.spec)
    tr = Trainer(
        SMALL, rig, frames, out_dir=tmp_path / "run", train=TrainConfig(epochs=1, threads=1)
    )
    ck = tr.fit(progress=False)
    net, info = load_checkpoint(ck, rig)
    out = export_onnx(
        net, tmp_path / "m.onnx", checkpoint_info=info, rig_path=find_calibration(SMALL_RIG)
    )
    assert out["parity_max_rel"] <= 1e-4
    model = onnx.load(out["onnx"])
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17
    for vi in [*model.graph.input, *model.graph.output]:
        assert vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert all(d.dim_value > 0 for d in vi.type.tensor_type.shape.dim), vi.name
    meta = read_metadata(out["onnx"])
    assert meta["classes"] == list(SMALL.class_names)
    assert meta["training"]["data_sha256"] == frames.digest
    assert meta["inputs"]["camera"]["shape"] == [1, 3, 96, 128]
    sess = ort.InferenceSession(out["onnx"], providers=["CPUExecutionProvider"])
    cfg = net.cfg
    grid = GridSpec.from_dict(meta["grid"])
    rules = label_rules(cfg, rig)
    names = net.input_names()
    x = frames.inputs(np.arange(len(frames)), names)
    for want, got in zip(torch_predictor(net)(x), onnx_predictor(sess)(x), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    for subset in (cfg.modalities, ("lidar",), ("camera", "audio")):
        a = detect(frames, torch_predictor(net), names, grid, subset=subset)
        b = detect(frames, onnx_predictor(sess), names, grid, subset=subset)
        # An untrained network has peaks at the threshold, where 1e-6 can flip one; the
        # scores agree.
        assert score(frames, a, rules, cfg.class_names)["map"] == pytest.approx(
            score(frames, b, rules, cfg.class_names)["map"], abs=0.01
        )


SMALL_RIG = "calibration/sim_rig.yaml"


def test_cli_train_eval_export(shard: Path, tmp_path: Path) -> None:
    """The documented commands, end to end, with errors that say what to do."""
    run = tmp_path / "run"
    r = edgefuse_cli(
        "train", str(shard), "-o", str(run), "--channels", "8", "--epochs", "1", "--quiet",
        timeout_s=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (run / "checkpoint.pt").exists()
    again = edgefuse_cli("train", str(shard), "-o", str(run), "--channels", "8", "--quiet")
    assert again.returncode == 2 and "--resume" in again.stderr
    onnx_path = tmp_path / "m.onnx"
    r = edgefuse_cli("export", str(run / "checkpoint.pt"), "-o", str(onnx_path), timeout_s=300)
    assert r.returncode == 0, r.stderr
    report = tmp_path / "r.json"
    plot = tmp_path / "r.png"
    r = edgefuse_cli(
        "eval", str(onnx_path), str(shard), "--subsets", "full,lidar", "--out", str(report),
        "--plot", str(plot), "--quiet", timeout_s=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "camera+depth+lidar+audio" in r.stdout and "lidar" in r.stdout
    rep = json.loads(report.read_text())
    assert set(rep["subsets"]) == {"camera+depth+lidar+audio", "lidar"}
    assert set(rep["scenarios"]) == {"night"}
    # The plot's scenario panel reads the full model's scores, not n/a.
    view = plot_view(rep)
    assert view["scenarios"]["night"]["map"] == rep["scenarios"]["night"][rep["full"]]["map"]
    assert plot.stat().st_size > 10_000
    missing = edgefuse_cli("eval", str(onnx_path), str(tmp_path / "nope"))
    assert missing.returncode == 2 and "nope" in missing.stderr
