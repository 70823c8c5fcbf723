"""Reading stamp files: TUM, EuRoC CSV and timestamps, KITTI raw; exact stamps; clear errors."""

from __future__ import annotations

import datetime
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefuse.sync.errors import AssociateError
from edgefuse.sync.stamps import parse_decimal_ns, parse_stamp_lines, read_stamp_file
from tests.conftest import SHARED_DATA

TUM = SHARED_DATA / "tum-fr1xyz"
KITTI = SHARED_DATA / "kitti-raw-2011_09_26_0001"
EUROC_CAM0 = SHARED_DATA / "euroc-cam0-timestamps"
EUROC_IMU0 = SHARED_DATA / "euroc-imu0" / "V102_imu0_data.csv"


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# -- decimal seconds to nanoseconds -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("1305031102.175304", 1_305_031_102_175_304_000),  # float(...)*1e9 is 175303936
        ("1305031102.1753041", 1_305_031_102_175_304_100),
        ("0", 0),
        ("-0.5", -500_000_000),
        ("+2.", 2_000_000_000),
        (".25", 250_000_000),
        ("1e-9", 1),
        ("1.5E3", 1_500_000_000_000),
        ("0.0000000005", 0),  # half to even
        ("0.0000000015", 2),
        ("0.00000000151", 2),
    ],
)
def test_parse_decimal_ns_is_exact(text: str, ns: int) -> None:
    assert parse_decimal_ns(text) == ns


def test_parse_decimal_ns_in_other_units() -> None:
    assert parse_decimal_ns("1403715523912143104", unit_ns=1) == 1403715523912143104
    assert parse_decimal_ns("12.5", unit_ns=1_000_000) == 12_500_000


@pytest.mark.parametrize("text", ["", ".", "nan", "inf", "1,5", "1.2.3", "0x10", "1e99", "١٢"])
def test_parse_decimal_ns_refuses_non_decimals(text: str) -> None:
    with pytest.raises(ValueError):
        parse_decimal_ns(text)


@given(st.integers(-(10**20), 10**20))
def test_decimal_seconds_round_trip(ns: int) -> None:
    text = str(Decimal(ns).scaleb(-9))
    assert parse_decimal_ns(text) == ns


# -- real files ---------------------------------------------------------------------------------


def test_tum_rgb_list() -> None:
    f = read_stamp_file(TUM / "rgb.txt")
    assert f.format == "tum"
    assert len(f.entries) == 798
    e = f.entries[0]
    assert (e.stamp_ns, e.text, e.rest, e.line) == (
        1_305_031_102_175_304_000,
        "1305031102.175304",
        "rgb/1305031102.175304.png",
        4,  # three comment lines first
    )
    assert e.format() == "1305031102.175304 rgb/1305031102.175304.png"


def test_tum_groundtruth_keeps_all_fields() -> None:
    f = read_stamp_file(TUM / "groundtruth.txt")
    assert f.format == "tum"
    assert len(f.entries[0].rest.split(" ")) == 7  # tx ty tz qx qy qz qw


def test_euroc_imu_csv_with_ns_header() -> None:
    f = read_stamp_file(EUROC_IMU0)
    assert f.format == "csv"
    assert len(f.entries) == 17100
    e = f.entries[0]
    assert e.stamp_ns == 1403715523912143104
    assert e.text == "1403715523912143104"
    assert e.rest.split(" ")[0] == "-0.00069813170079773186"
    assert len(e.rest.split(" ")) == 6
    assert f.entries[1].stamp_ns - e.stamp_ns == 4_999_936  # 200 Hz, exact ns


@pytest.mark.parametrize("name", ["MH01.txt", "V101.txt", "V102.txt"])
def test_euroc_cam0_timestamps_are_integer_ns(name: str) -> None:
    f = read_stamp_file(EUROC_CAM0 / name)
    assert f.format == "ns"
    steps = {b.stamp_ns - a.stamp_ns for a, b in zip(f.entries, f.entries[1:], strict=False)}
    assert steps == {49_999_872, 50_000_128}  # 20 Hz, stamps quantised to 256 ns
    assert all(e.rest == "" for e in f.entries)


def test_kitti_timestamps() -> None:
    f = read_stamp_file(KITTI / "image_02" / "timestamps.txt")
    assert f.format == "kitti"
    assert len(f.entries) == 108
    e = f.entries[0]
    assert e.text == "2011-09-26 13:02:25.961661696"
    assert e.rest == ""
    utc = datetime.datetime(2011, 9, 26, 13, 2, 25, tzinfo=datetime.timezone.utc)
    assert e.stamp_ns == int(utc.timestamp()) * 1_000_000_000 + 961_661_696
    assert f.entries[1].stamp_ns - e.stamp_ns == 103_123_456  # 26.064785152 - 25.961661696


# -- synthetic files ----------------------------------------------------------------------------


def test_tum_separators_and_stamp_only_lines() -> None:
    f = parse_stamp_lines(
        ["# c", "1.5\ta,b  c", "", "   ", "2.0", "3.25 x\r", "  # indented comment"], source="m"
    )
    assert [(e.stamp_ns, e.text, e.rest, e.line) for e in f.entries] == [
        (1_500_000_000, "1.5", "a b c", 2),
        (2_000_000_000, "2.0", "", 5),
        (3_250_000_000, "3.25", "x", 6),
    ]
    assert f.entries[1].format() == "2.0"


def test_unit_header_in_milliseconds() -> None:
    f = parse_stamp_lines(["#t [ms],value", "12.5,1", "13,2"], source="m")
    assert f.format == "csv"
    assert [e.stamp_ns for e in f.entries] == [12_500_000, 13_000_000]


def test_ns_needs_eighteen_digits_without_a_header() -> None:
    assert parse_stamp_lines(["123456789012345678"], source="m").format == "ns"
    # 17 digits: read as seconds (1.2e16 s), as associate.py would.
    f = parse_stamp_lines(["12345678901234567"], source="m")
    assert f.format == "tum"
    assert f.entries[0].stamp_ns == 12345678901234567 * 10**9


def test_kitti_fraction_is_padded_and_rounded() -> None:
    f = parse_stamp_lines(["2011-09-26 00:00:00.5", "2011-09-26 00:00:00.0000000015"], source="k")
    assert f.entries[1].stamp_ns - f.entries[0].stamp_ns == -500_000_000 + 2


@pytest.mark.parametrize(
    ("lines", "where", "what"),
    [
        (["# header", "1.0 a", "1.O b"], "m:3:", "decimal seconds"),  # letter O typo
        (["1403715523912143104", "1403715523962142976.5"], "m:2:", "integer nanoseconds"),
        (["2011-09-26 13:02:25.9", "2011-09-26 13:02:26"], None, None),  # valid: no fraction
        (["2011-09-26 13:02:25.9", "2011-09-26 25:02:26.1"], "m:2:", "KITTI"),
        (["2011-09-26 13:02:25.9", "1317041000.5"], "m:2:", "KITTI"),
        (["#timestamp [ns],x", "14037155239121431O4,1"], "m:2:", "header's unit"),
        (["nan a"], "m:1:", "decimal seconds"),
    ],
)
def test_unparsable_lines_name_file_and_line(
    lines: list[str], where: str | None, what: str | None
) -> None:
    if where is None:
        parse_stamp_lines(lines, source="m")
        return
    with pytest.raises(AssociateError, match=what) as info:
        parse_stamp_lines(lines, source="m")
    assert str(info.value).startswith(where)


def test_a_typo_in_a_real_file_copy_names_its_line(tmp_path: Path) -> None:
    lines = (TUM / "depth.txt").read_text().split("\n")
    lines[10] = lines[10].replace(".", ",", 1).replace("1", "l", 1)  # "l305031102,..."
    p = _write(tmp_path, "depth.txt", "\n".join(lines))
    with pytest.raises(AssociateError, match=rf"^{p}:11: expected a stamp in decimal seconds"):
        read_stamp_file(p)


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(AssociateError, match=r"nope\.txt: no such file"):
        read_stamp_file(tmp_path / "nope.txt")
    with pytest.raises(AssociateError, match="no stamps"):
        read_stamp_file(_write(tmp_path, "empty.txt", "# only a comment\n\n"))
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"1.0 \xff\xfe\n")
    with pytest.raises(AssociateError, match="not a UTF-8 text file"):
        read_stamp_file(binary)
    with pytest.raises(AssociateError, match="cannot read"):
        read_stamp_file(tmp_path)  # a folder
