"""Pipeline files are validated before any process starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefuse.errors import ConfigError
from edgefuse.pipeline import load_pipeline
from edgefuse.sensors.test_pattern import PatternCheckNode, TestPatternNode
from tests.conftest import REPO
from tests.test_launch import launch


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "p.yaml"
    p.write_text(text)
    return p


GOOD = """\
name: demo
nodes:
  camera:
    type: test_pattern
    params: {width: 320, height: 240, rate_hz: 10}
  check:
    type: pattern_check
    inputs: {image: camera/image}
"""


def test_shipped_pipelines_validate() -> None:
    for path in sorted((REPO / "pipelines").glob("*.yaml")):
        p = load_pipeline(path)
        assert p.nodes, path


def test_good_pipeline_resolves_classes_params_and_topics(tmp_path: Path) -> None:
    p = load_pipeline(write(tmp_path, GOOD))
    assert p.name == "demo"
    assert p.nodes["camera"].cls is TestPatternNode
    assert p.nodes["camera"].params.width == 320
    assert p.nodes["check"].cls is PatternCheckNode
    assert p.topics() == {"camera/image": ("camera", "image", "bgr8")}
    assert p.transport.mode == "ipc" and p.transport.bind_host == "127.0.0.1"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            ("width: 320", "widht: 320"),
            r"p.yaml:5: nodes.camera.params.widht: unknown key \(did you mean 'width'\?\)",
        ),
        (
            ("rate_hz: 10", "rate_hz: fast"),
            r"p.yaml:5: nodes.camera.params.rate_hz: expected float, got str 'fast'",
        ),
        (("rate_hz: 10", "rate_hz: -5"), r"nodes.camera.params: rate_hz must be in"),
        (
            ("type: pattern_check", "type: patern_check"),
            r"p.yaml:7: nodes.check.type: unknown node type 'patern_check'; expected one of: ",
        ),
        (
            ("camera/image", "camera/imag"),
            r"p.yaml:8: nodes.check.inputs.image: no node publishes 'camera/imag'; topics are: "
            r"camera/image",
        ),
        (
            ("{image: camera/image}", "{img: camera/image}"),
            r"nodes.check.inputs.img: pattern_check has no input port 'img'; "
            r"expected one of: image",
        ),
        (
            ("    inputs: {image: camera/image}\n", ""),
            r"nodes.check.inputs: input port\(s\) image of pattern_check are not connected",
        ),
        (("name: demo", "name: demo\nnodez: {}"), r"nodez: unknown key \(did you mean 'nodes'"),
        (
            ("name: demo", "name: demo\ntransport: {mode: udp}"),
            r"transport.mode: expected one of 'ipc', 'tcp', got 'udp'",
        ),
        (
            ("name: demo", "name: demo\ntransport: {mode: tcp, keys: nokeys}"),
            r"transport.keys: keys folder 'nokeys' not found",
        ),
        (("  camera:", "  9camera:"), r"node name '9camera' must start with a letter"),
    ],
)
def test_mistakes_name_file_line_key_and_expectation(
    tmp_path: Path, edit: tuple[str, str], expected: str
) -> None:
    text = GOOD.replace(*edit)
    if "9camera" in text:
        text = text.replace("camera/image", "9camera/image")
    with pytest.raises(ConfigError, match=expected):
        load_pipeline(write(tmp_path, text))


def test_missing_file_and_empty_pipeline(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nothere.yaml: cannot read"):
        load_pipeline(tmp_path / "nothere.yaml")
    with pytest.raises(ConfigError, match=r"nodes: a pipeline needs at least one node"):
        load_pipeline(write(tmp_path, "name: x\n"))


def test_module_class_node_types(tmp_path: Path) -> None:
    p = load_pipeline(write(tmp_path, "nodes:\n  c:\n    type: tests.nodes:CrashingNode\n"))
    assert p.nodes["c"].cls.__name__ == "CrashingNode"
    with pytest.raises(ConfigError, match=r"is not an edgefuse Node"):
        load_pipeline(write(tmp_path, "nodes:\n  c:\n    type: tests.conftest:child_pids\n"))
    with pytest.raises(ConfigError, match=r"cannot be loaded"):
        load_pipeline(write(tmp_path, "nodes:\n  c:\n    type: tests.nope:X\n"))


SHARED = """\
name: demo
params:
  width: 160
  rate_hz: 5
  log_every_s: 0
nodes:
  camera:
    type: test_pattern
    params: {height: 120, rate_hz: 40}
  check:
    type: pattern_check
    inputs: {image: camera/image}
"""


def test_shared_params_go_to_nodes_declaring_them_own_values_win(tmp_path: Path) -> None:
    p = load_pipeline(write(tmp_path, SHARED))
    camera, check = p.nodes["camera"], p.nodes["check"]
    assert camera.merged_params == {"width": 160, "height": 120, "rate_hz": 40}
    assert (camera.params.width, camera.params.height, camera.params.rate_hz) == (160, 120, 40)
    assert check.merged_params == {"log_every_s": 0}
    assert check.params.log_every_s == 0
    # Without shared params, a node's merged params are its own.
    assert load_pipeline(write(tmp_path, GOOD)).nodes["camera"].merged_params == {
        "width": 320,
        "height": 240,
        "rate_hz": 10,
    }


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            ("  width: 160", "  widht: 160"),
            r"p.yaml:3: params.widht: no node of the pipeline declares shared parameter 'widht' "
            r"\(did you mean 'width'\?\); declared parameters are: frames, height, log_every_s, "
            r"rate_hz, width$",
        ),
        (
            ("  width: 160", "  width: wide"),
            r"^\S*p.yaml:3: params.width \(shared, for node 'camera'\): expected int, "
            r"got str 'wide'$",
        ),
        (
            ("  width: 160", "  width: [160]"),
            r"^\S*p.yaml:3: params.width \(shared, for node 'camera'\): expected int",
        ),
        (
            # The Params class's own check cannot say which key is wrong: name both places.
            ("  width: 160", "  width: 4"),
            r"p.yaml:9: nodes.camera.params \(with shared params.width from line 3\): "
            r"width and height must be in 16..8192",
        ),
    ],
)
def test_shared_param_mistakes_point_at_the_shared_block(
    tmp_path: Path, edit: tuple[str, str], expected: str
) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_pipeline(write(tmp_path, SHARED.replace(*edit)))


@pytest.mark.usefixtures("run_dir", "no_leaks")
def test_launched_node_receives_shared_params(tmp_path: Path) -> None:
    rep = launch(tmp_path, SHARED, 2.5)
    t = rep["topics"]["camera/image"]
    assert t["received"] > 0 and rep["nodes"]["check"]["errors"] == {}
    # The camera got the shared width with its own height, and its own rate over the shared.
    assert t["bytes"] == t["messages"] * 160 * 120 * 3
    assert t["rate_hz"] > 20
