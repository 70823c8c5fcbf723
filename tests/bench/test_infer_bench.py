"""``edgefuse bench infer``: both backends measured on a tiny exported model; usage errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgefuse.bench import infer
from edgefuse.bench.cli import main


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained small network exported to ``fusion.onnx``, its checkpoint beside it as
    ``fusion.pt`` (the keys ``load_checkpoint`` reads)."""
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    import torch

    from edgefuse.calib.model import find_calibration, load_calibration
    from edgefuse.model.export import export_onnx
    from edgefuse.model.network import FusionNet, ModelConfig

    d = tmp_path_factory.mktemp("infer")
    rig_path = find_calibration(infer.DEFAULT_RIG)
    torch.manual_seed(0)
    net = FusionNet(ModelConfig(channels=8, heads=4), load_calibration(rig_path)).eval()
    torch.save(
        {"model": net.state_dict(), "model_config": net.cfg.to_dict(), "rig": "sim_rig"},
        d / "fusion.pt",
    )
    export_onnx(net, d / "fusion.onnx", rig_path=rig_path)
    return d / "fusion.onnx"


@pytest.mark.slow
def test_infer_json_both_backends(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "infer.json"
    argv = ["infer", "--json", "--quiet", "--model", str(tiny_model)]
    argv += ["--iterations", "5", "--warmup", "1", "--out", str(out)]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == doc
    assert doc["benchmark"] == "infer" and doc["model"] == str(tiny_model)
    assert doc["checkpoint"] == str(tiny_model.with_suffix(".pt"))  # found beside the graph
    assert len(doc["onnx_sha256"]) == 64 and doc["threads"] == 2
    assert doc["sets"] > 80  # 3 s of camera frames at 30 Hz, one set each
    measured = {n for n, b in doc["backends"].items() if "skipped" not in b}
    assert {"onnxruntime", "torch"} <= measured
    from edgefuse.runtime.backends._tensorrt import tensorrt_usable

    if not tensorrt_usable():  # reported, with the reason, not left out silently
        assert "TensorRT cannot run here" in doc["backends"]["tensorrt"]["skipped"]
    for name in measured:
        b = doc["backends"][name]
        assert set(b) == {f"{s}_ms" for s in infer.STAGES}, name
        for stage, d in b.items():
            assert 0 < d["median"] <= d["p90"] <= d["p99"], (name, stage, d)
    # The two backends run the same network.
    assert doc["backend_max_rel_diff"] < 1e-3
    p = doc["parity_vs_onnxruntime"]["torch"]
    assert p["max_rel"] == doc["backend_max_rel_diff"] and p["cosine"] > 0.9999
    ort = doc["backends"]["onnxruntime"]["network_ms"]["median"]
    eager = doc["backends"]["torch"]["network_ms"]["median"]
    assert doc["speedup_onnxruntime_vs_torch"] == pytest.approx(eager / ort, rel=1e-3)
    goal = doc["goal"]
    assert goal["onnxruntime_network_ms_max"] == 10.0 and goal["speedup_min"] == 2.0
    assert goal["met"] == (ort <= 10.0 and doc["speedup_onnxruntime_vs_torch"] >= 2.0)


@pytest.mark.slow
def test_infer_table_torch_skipped_without_checkpoint(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "alone.onnx"
    shutil.copy(tiny_model, model)
    shutil.copy(tiny_model.with_suffix(".json"), model.with_suffix(".json"))
    argv = ["infer", "--quiet", "--model", str(model), "--iterations", "2", "--warmup", "0"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "onnxruntime" in text and "skipped" in text and "not measured" in text


def test_missing_model_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere" / "model.onnx"
    assert main(["infer", "--json", "--model", str(missing)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and str(missing) in captured.err


def test_missing_default_model_names_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(infer, "DEFAULT_MODEL", tmp_path / "assets" / "fusion.onnx")
    assert main(["infer", "--json"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "assets" / "fusion.onnx") in err and "edgefuse export" in err


def test_torch_backend_needs_a_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "alone.onnx"
    model.write_bytes(b"")  # checked before the graph is read
    assert main(["infer", "--backend", "torch", "--model", str(model)]) == 2
    assert str(model.with_suffix(".pt")) in capsys.readouterr().err


def test_tensorrt_backend_says_why_it_cannot_run(capsys: pytest.CaptureFixture[str]) -> None:
    from edgefuse.runtime.backends._tensorrt import tensorrt_usable

    if tensorrt_usable():
        pytest.skip("TensorRT runs here: measured by the gpu-marked tests")
    assert main(["infer", "--backend", "tensorrt", "--json", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "TensorRT cannot run here" in err
