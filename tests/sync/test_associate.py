"""``edgefuse associate``: TUM associate.py semantics, approximate mode, real data, errors."""

from __future__ import annotations

import contextlib
import io
import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefuse.cli import main
from edgefuse.sync.associate import (
    associate,
    associate_approximate,
    associate_nearest,
    nearest_pairs,
)
from edgefuse.sync.errors import AssociateError
from edgefuse.sync.stamps import parse_stamp_lines, read_stamp_file
from tests.conftest import SHARED_DATA, edgefuse_cli

TUM = SHARED_DATA / "tum-fr1xyz"
KITTI = SHARED_DATA / "kitti-raw-2011_09_26_0001"
EUROC_CAM0_V102 = SHARED_DATA / "euroc-cam0-timestamps" / "V102.txt"
EUROC_IMU0_V102 = SHARED_DATA / "euroc-imu0" / "V102_imu0_data.csv"


def _run(*args: str) -> tuple[int, str, str]:
    """Run ``edgefuse associate ARGS`` in this process; (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["associate", *args])
        except SystemExit as exc:  # argparse errors
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


# -- a literal port of TUM's associate.py (rgbd_benchmark_tools), the reference ---------------


def associate_py_read_file_list(filename: Path) -> dict[float, list[str]]:
    """``read_file_list`` of associate.py, verbatim but for names."""
    data = filename.read_text()
    lines = data.replace(",", " ").replace("\t", " ").split("\n")
    rows = [
        [v.strip() for v in line.split(" ") if v.strip() != ""]
        for line in lines
        if len(line) > 0 and line[0] != "#"
    ]
    pairs = [(float(r[0]), r[1:]) for r in rows if len(r) > 1]
    return dict(pairs)


def associate_py_associate(
    first_list: dict[Any, Any], second_list: dict[Any, Any], offset: Any, max_difference: Any
) -> list[tuple[Any, Any]]:
    """``associate`` of associate.py, verbatim: the O(n·m) double loop and greedy choice."""
    first_keys = list(first_list.keys())
    second_keys = list(second_list.keys())
    potential_matches = [
        (abs(a - (b + offset)), a, b)
        for a in first_keys
        for b in second_keys
        if abs(a - (b + offset)) < max_difference
    ]
    potential_matches.sort()
    matches = []
    for _diff, a, b in potential_matches:
        if a in first_keys and b in second_keys:
            first_keys.remove(a)
            second_keys.remove(b)
            matches.append((a, b))
    matches.sort()
    return matches


def test_reference_port_reproduces_the_orbslam2_associations_file() -> None:
    # Checks the reference itself: associate.py on rgb/depth with its defaults, printed with
    # its "%f %s %f %s", is the associations file shipped with ORB-SLAM2.
    first = associate_py_read_file_list(TUM / "rgb.txt")
    second = associate_py_read_file_list(TUM / "depth.txt")
    lines = [
        "%f %s %f %s" % (a, " ".join(first[a]), b - 0.0, " ".join(second[b]))  # noqa: UP031
        for a, b in associate_py_associate(first, second, 0.0, 0.02)
    ]
    assert lines == (TUM / "orbslam2_associations_fr1_xyz.txt").read_text().splitlines()


def _check_against_reference(rng: random.Random) -> None:
    # Small stamp ranges make many equal differences: ties are decided by (diff, a, b).
    span = rng.choice([10, 30, 200])
    first = [rng.randint(0, span) for _ in range(rng.randint(0, 25))]
    second = [rng.randint(0, span) for _ in range(rng.randint(0, 25))]
    offset = rng.randint(-span // 3, span // 3)
    max_difference = rng.randint(1, span // 2 + 1)
    # associate.py keys are a dict: a repeated stamp counts once.
    expected = associate_py_associate(
        dict.fromkeys(first), dict.fromkeys(second), offset, max_difference
    )
    got = nearest_pairs(first, second, offset_ns=offset, max_difference_ns=max_difference)
    assert got == expected, (first, second, offset, max_difference)


def test_nearest_pairs_equals_associate_py_on_seeded_random_inputs() -> None:
    rng = random.Random(20240611)
    for _ in range(2000):
        _check_against_reference(rng)


@settings(max_examples=300, deadline=None)
@given(
    first=st.lists(st.integers(-50, 50), max_size=30),
    second=st.lists(st.integers(-50, 50), max_size=30),
    offset=st.integers(-20, 20),
    max_difference=st.integers(1, 40),
)
def test_nearest_pairs_equals_associate_py(
    first: list[int], second: list[int], offset: int, max_difference: int
) -> None:
    expected = associate_py_associate(
        dict.fromkeys(first), dict.fromkeys(second), offset, max_difference
    )
    got = nearest_pairs(first, second, offset_ns=offset, max_difference_ns=max_difference)
    assert got == expected


# -- TUM ------------------------------------------------------------------------------------------


def test_cli_on_tum_prints_exactly_the_associate_py_output() -> None:
    r = edgefuse_cli("associate", str(TUM / "rgb.txt"), str(TUM / "depth.txt"))
    assert r.returncode == 0, r.stderr
    expected = (TUM / "orbslam2_associations_fr1_xyz.txt").read_text().splitlines()
    assert len(expected) == 792
    assert r.stdout.splitlines() == expected
    assert "associated 792 sets (nearest; stamps per file: 798, 798)" in r.stderr
    assert "mean -3.436 ms" in r.stderr


def test_tum_nearest_differences_match_the_readme() -> None:
    files = [read_stamp_file(TUM / "rgb.txt"), read_stamp_file(TUM / "depth.txt")]
    result = associate_nearest(files)
    assert len(result.sets) == 792
    (stats,) = result.stats()
    # README: pairs differ by 3.4 ms on average, at most 17.2 ms (depth before rgb).
    assert stats.mean_ms == pytest.approx(-3.436, abs=0.001)
    assert stats.min_ms == pytest.approx(-17.230, abs=0.001)
    assert stats.max_ms < 17.2


def test_tum_approximate() -> None:
    files = [read_stamp_file(TUM / "rgb.txt"), read_stamp_file(TUM / "depth.txt")]
    result = associate_approximate(files)
    nearest = associate_nearest(files)
    # Both streams are ~30 Hz; ApproximateTime pairs nearly every frame (the nearest mode's
    # 20 ms limit leaves 6 out), each frame at most once, within a frame period.
    assert len(result.sets) == 796
    for j in (0, 1):
        used = [s[j].stamp_ns for s in result.sets]
        assert len(used) == len(set(used))
    assert max(abs(d) for d in result.differences_ns(1)) < 20_000_000
    common = set(result.lines()) & set(nearest.lines())
    assert len(common) > 700


# -- KITTI ----------------------------------------------------------------------------------------


def test_kitti_colour_camera_against_lidar() -> None:
    # velodyne_points/timestamps.txt is the instant the spinning lidar faces forward, which
    # triggers the cameras; the README's "image_02 minus lidar sweep start, about 10.5 ms (sd
    # 0.04 ms)" holds for this file. Sign: lidar minus camera.
    files = [
        read_stamp_file(KITTI / "image_02" / "timestamps.txt"),
        read_stamp_file(KITTI / "velodyne_points" / "timestamps.txt"),
    ]
    for mode in ("nearest", "approximate"):
        result = associate(files, mode=mode)
        assert len(result.sets) == 108
        (stats,) = result.stats()
        assert stats.mean_ms == pytest.approx(-10.5, abs=0.3)
        assert stats.sd_ms < 0.2


def test_kitti_sweep_start_is_a_half_sweep_earlier() -> None:
    # timestamps_start.txt (the sweep start) is 62 ms before image_02 (41 ms after it for the
    # next sweep): nothing within associate.py's 20 ms; with --offset 0.062 every frame pairs.
    camera = str(KITTI / "image_02" / "timestamps.txt")
    start = str(KITTI / "velodyne_points" / "timestamps_start.txt")
    code, out, err = _run(camera, start)
    assert code == 2 and "nothing matched (nearest mode, --max-difference 0.02 s" in err
    code, out, err = _run(camera, start, "--offset", "0.062", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["sets"] == 108
    assert summary["differences_ms"][0]["mean"] == pytest.approx(-62.08, abs=0.3)
    assert summary["differences_ms"][0]["sd"] < 0.2


def test_kitti_six_streams_in_both_modes() -> None:
    paths = [KITTI / f"image_0{i}" / "timestamps.txt" for i in range(4)]
    paths += [KITTI / "velodyne_points" / "timestamps.txt", KITTI / "oxts" / "timestamps.txt"]
    files = [read_stamp_file(p) for p in paths]
    nearest = associate_nearest(files)
    approximate = associate_approximate(files, queue_size=10)
    assert len(nearest.sets) == 108
    assert approximate.sets == nearest.sets
    # Members in the files' order: each set takes line k of every file.
    for k, s in enumerate(nearest.sets):
        assert [e.line for e in s] == [k + 1] * 6
    lidar = nearest.stats()[3]
    assert lidar.mean_ms == pytest.approx(-16.9, abs=0.3)  # grey camera image_00 vs lidar


# -- EuRoC ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["nearest", "approximate"])
def test_euroc_cam0_against_imu0_csv(mode: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["associate", str(EUROC_CAM0_V102), str(EUROC_IMU0_V102), "--mode", mode])
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = out.splitlines()
    # The camera is triggered on IMU samples: every frame has an IMU sample at its stamp.
    assert len(lines) == 1710
    assert lines[0] == (
        "1403715523912143104 1403715523912143104 -0.00069813170079773186 0.019547687622336492 "
        "0.076794487087750496 9.2182509999999986 0.30237170833333332 -3.1544724166666662"
    )
    assert "mean 0.000 ms, sd 0.000 ms, min 0.000 ms, max 0.000 ms" in err


def test_euroc_imu_against_camera_with_an_offset() -> None:
    # IMU first (200 Hz), camera second (20 Hz, triggered on IMU samples). The offset moves
    # the frames for matching only; the differences are of the raw stamps.
    files = [read_stamp_file(EUROC_IMU0_V102), read_stamp_file(EUROC_CAM0_V102)]
    for mode in ("nearest", "approximate"):
        # Frame + 2 ms: the IMU sample at the frame (2 ms away) beats the next one (3 ms).
        result = associate(files, mode=mode, offset_ns=2_000_000)
        assert len(result.sets) == 1710
        assert set(result.differences_ns(1)) == {0}
        # Frame + 3 ms: the next IMU sample (4 999 936 ns later) is nearer.
        result = associate(files, mode=mode, offset_ns=3_000_000)
        assert len(result.sets) == 1710
        assert set(result.differences_ns(1)) == {-4_999_936}


# -- semantics on synthetic files -----------------------------------------------------------------


def _stamps(*lines: str, name: str = "f") -> Any:
    return parse_stamp_lines(list(lines), source=name)


def test_output_prints_original_stamp_texts_not_b_minus_offset() -> None:
    a = _stamps("1.0000000001 a", "2.5 b")
    b = _stamps("0.55 x", "2.1000000 y")
    result = associate_nearest([a, b], offset_ns=500_000_000, max_difference_ns=100_000_000)
    # associate.py would print "1.000000 a 0.050000 x" (b - offset, %f). 2.5 and 2.1 + 0.5
    # are exactly 0.1 s apart, not less (exact in ns, where floats would be unsure).
    assert result.lines() == ["1.0000000001 a 0.55 x"]
    # Raw stamps (1.0000000001 s rounds to 1 s in ns), without the offset.
    assert result.differences_ns(1) == [-450_000_000]


def test_stamp_only_lines_print_without_trailing_space() -> None:
    result = associate_nearest([_stamps("1.0", "2.0"), _stamps("1.01 d", "2.01")])
    assert result.lines() == ["1.0 1.01 d", "2.0 2.01"]


def test_repeated_stamp_keeps_the_last_line_like_associate_py() -> None:
    result = associate_nearest([_stamps("1.0 first", "1.000 second"), _stamps("1.0 x")])
    assert result.lines() == ["1.000 second 1.0 x"]


def test_three_files_need_every_file_to_match_the_first() -> None:
    a = _stamps("1.0 a1", "2.0 a2", "3.0 a3")
    b = _stamps("1.01 b1", "2.01 b2", "3.01 b3")
    c = _stamps("0.99 c1", "3.5 c3")  # no stamp near 2.0 or 3.0
    result = associate_nearest([a, b, c])
    assert result.lines() == ["1.0 a1 1.01 b1 0.99 c1"]
    assert [s.mean_ms for s in result.stats()] == pytest.approx([10.0, -10.0])


def test_approximate_flushes_the_last_set_at_end_of_input() -> None:
    # Online, ApproximateTime would wait for a message after 3.0 on the first file to be sure
    # that (3.0, 3.1) is optimal; offline the input is over, so it is output.
    a = _stamps("1.0", "2.0", "3.0")
    b = _stamps("1.05", "2.05", "3.1")
    result = associate_approximate([a, b])
    assert result.lines() == ["1.0 1.05", "2.0 2.05", "3.0 3.1"]


def test_approximate_lower_bounds_one_for_all_or_one_per_file() -> None:
    a, b = _stamps("1.0", "2.0"), _stamps("1.1", "2.1")
    one = associate_approximate([a, b], lower_bounds_ns=[500_000_000])
    per_file = associate_approximate([a, b], lower_bounds_ns=[500_000_000, 500_000_000])
    assert one.sets == per_file.sets
    with pytest.raises(AssociateError, match="3 lower bounds for 2 files"):
        associate_approximate([a, b], lower_bounds_ns=[1, 2, 3])


def test_approximate_max_interval() -> None:
    a, b = _stamps("1.0", "2.0"), _stamps("1.3", "2.05")
    assert len(associate_approximate([a, b]).sets) == 2
    result = associate_approximate([a, b], max_interval_ns=100_000_000)
    assert result.lines() == ["2.0 2.05"]


def test_fewer_than_two_files_is_an_error() -> None:
    with pytest.raises(AssociateError, match="at least 2 stamp files"):
        associate([_stamps("1.0")])


# -- command line: errors, JSON -------------------------------------------------------------------


def test_cli_errors_exit_2_with_a_clear_message(tmp_path: Path) -> None:
    rgb = str(TUM / "rgb.txt")
    typo = tmp_path / "depth.txt"
    lines = (TUM / "depth.txt").read_text().split("\n")
    lines[6] = "1305031102.29S279 depth/1305031102.295279.png"
    typo.write_text("\n".join(lines))
    far = tmp_path / "far.txt"
    far.write_text("1.0\n2.0\n")
    cases = [
        ((rgb, str(tmp_path / "missing.txt")), f"{tmp_path / 'missing.txt'}: no such file"),
        ((rgb, str(typo)), f"{typo}:7: expected a stamp in decimal seconds"),
        ((rgb,), "need at least 2 stamp files to associate, got 1"),
        ((rgb, str(far)), "nothing matched (nearest mode, --max-difference 0.02 s, --offset 0 s)"),
        ((rgb, str(far), "--mode", "approximate", "--lower-bound", "1", "2", "3"),
         "3 lower bounds for 2 files"),
        ((rgb, str(far), "--mode", "approximate", "--lower-bound", "-1"), "negative"),
    ]  # fmt: skip
    for args, message in cases:
        code, out, err = _run(*args)
        assert code == 2, (args, err)
        assert out == ""
        assert err.startswith("edgefuse: error: ") and message in err, err
        assert "Traceback" not in err
    for bad in (("--offset", "abc"), ("--queue-size", "0"), ("--mode", "exact")):
        code, out, err = _run(rgb, rgb, *bad)
        assert code == 2 and "usage:" in err and "Traceback" not in err


def test_cli_json_summary() -> None:
    code, out, err = _run(str(TUM / "rgb.txt"), str(TUM / "depth.txt"), "--json")
    assert code == 0 and err == ""
    summary = json.loads(out)
    assert summary["mode"] == "nearest"
    assert summary["sets"] == 792
    assert [f["format"] for f in summary["files"]] == ["tum", "tum"]
    assert [f["entries"] for f in summary["files"]] == [798, 798]
    (d,) = summary["differences_ms"]
    assert d["path"].endswith("depth.txt")
    assert d["mean"] == pytest.approx(-3.436, abs=0.001)
    assert set(d) == {"path", "mean", "sd", "min", "max"}


def test_cli_help_mentions_the_print_format() -> None:
    code, out, _ = _run("--help")
    assert code == 0
    assert "exactly as written in its file" in out
    assert "b - offset" in out
