"""Reading stamp files: one time stamp per line, the rest of the line kept as text.

Formats, detected per file from its first data line (and its header comments):

- ``tum``: TUM RGB-D lists (``rgb.txt``, ``groundtruth.txt``, ...): ``stamp_s rest...`` with the
  stamp in decimal seconds. Lines are split exactly like TUM's ``associate.py``
  (``read_file_list``): commas and tabs count as spaces, empty fields are dropped, and the
  rest is the other fields joined by one space; ``#`` starts a comment line. Unlike
  ``associate.py``, a line with only a stamp is kept (with an empty rest).
- ``csv``: a header comment names the stamp unit in brackets, as EuRoC's
  ``#timestamp [ns],filename`` does (``[ns]``, ``[us]``, ``[ms]`` or ``[s]``); the stamp is the
  first field, a number in that unit.
- ``ns``: no unit in the header and the first stamp is an integer of 18 or more digits: integer
  nanoseconds (EuRoC ``timestamps.txt``). In seconds that would be more than three billion
  years, so no ``tum`` file is misread; microseconds since 1970 have only 16 digits.
- ``kitti``: KITTI raw ``timestamps.txt``: ``2011-09-26 13:02:25.961661696`` (date, time and up
  to nanoseconds), read as UTC and converted to nanoseconds since 1970 (only differences
  matter: KITTI does not say which zone it used).

Stamps are kept as integer nanoseconds, converted from the decimal text exactly (never through
a float: ``1305031102.175304`` is ``1305031102175304000`` ns), rounded half to even beyond
nanoseconds; each entry also keeps its stamp's original text, for printing it back unchanged.
Anything unparsable raises :class:`~edgefuse.sync.errors.AssociateError` naming the file and the
line.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from edgefuse.sync.errors import AssociateError

#: Nanoseconds per unit named in a CSV header (``#timestamp [ns]``).
_UNIT_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
_UNIT_RE = re.compile(r"\[(ns|us|µs|ms|s)\]")
_DECIMAL_RE = re.compile(r"([+-]?)(\d*)(?:\.(\d*))?(?:[eE]([+-]?\d+))?", re.ASCII)
_KITTI_DATE_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})", re.ASCII)
_KITTI_TIME_RE = re.compile(r"(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?", re.ASCII)
#: Integer stamps with at least this many digits and no unit header are nanoseconds.
_NS_MIN_DIGITS = 18
#: Decimal exponents beyond this are refused: no stamp needs them, and 10**huge is slow.
_MAX_EXPONENT = 30
_EPOCH_ORDINAL = datetime.date(1970, 1, 1).toordinal()


@dataclass(frozen=True, slots=True)
class StampEntry:
    """One data line of a stamp file: its stamp (ns and original text) and the rest of it."""

    #: The stamp in integer nanoseconds.
    stamp_ns: int
    #: The stamp as written in the file (printed back unchanged).
    text: str
    #: The other fields of the line, joined by one space ("" when the line is only a stamp).
    rest: str
    #: 1-based line number in the file.
    line: int

    def format(self) -> str:
        """The entry as ``associate.py`` prints a member: stamp text, a space, the rest."""
        return f"{self.text} {self.rest}" if self.rest else self.text


@dataclass(frozen=True, slots=True)
class StampFile:
    """The entries of one stamp file, in file order, with the format they were read as."""

    path: str
    #: ``tum``, ``csv``, ``ns`` or ``kitti`` (see the module documentation).
    format: str
    entries: tuple[StampEntry, ...]

    @property
    def name(self) -> str:
        """The file name without its folder (for short reports)."""
        return Path(self.path).name


def parse_decimal_ns(text: str, *, unit_ns: int = 1_000_000_000) -> int:
    """Convert decimal ``text`` in units of ``unit_ns`` nanoseconds to integer nanoseconds.

    The conversion is exact (the decimal digits are read as integers, never as a float), with an
    optional exponent; digits beyond the nanosecond are rounded half to even. Raises
    ``ValueError`` on anything else than a plain decimal number (``nan``, ``inf``, ``1,5``).
    """
    m = _DECIMAL_RE.fullmatch(text)
    if m is None or not (m.group(2) or m.group(3)):
        raise ValueError(f"not a decimal number: {text!r}")
    sign, whole, frac, exp_text = m.group(1), m.group(2), m.group(3) or "", m.group(4)
    exponent = int(exp_text) if exp_text else 0
    if abs(exponent) > _MAX_EXPONENT:
        raise ValueError(f"exponent out of range: {text!r}")
    value = Fraction(int(whole + frac or "0")) * Fraction(10) ** (exponent - len(frac)) * unit_ns
    ns = round(value)  # round() on a Fraction rounds half to even
    return -ns if sign == "-" else ns


def split_fields(line: str) -> list[str]:
    """Split a data line into fields exactly like TUM's ``associate.py`` (``read_file_list``)."""
    line = line.replace(",", " ").replace("\t", " ")
    return [v.strip() for v in line.split(" ") if v.strip() != ""]


def _kitti_ns(date: str, time: str) -> int | None:
    """Nanoseconds since 1970 (as UTC) of a KITTI ``date time`` pair; None if it is not one."""
    dm = _KITTI_DATE_RE.fullmatch(date)
    tm = _KITTI_TIME_RE.fullmatch(time)
    if dm is None or tm is None:
        return None
    try:
        day = datetime.date(int(dm.group(1)), int(dm.group(2)), int(dm.group(3)))
        # datetime.time validates hours, minutes and seconds.
        clock = datetime.time(int(tm.group(1)), int(tm.group(2)), int(tm.group(3)))
    except ValueError:
        return None
    frac = tm.group(4) or ""
    seconds = (day.toordinal() - _EPOCH_ORDINAL) * 86_400
    seconds += clock.hour * 3600 + clock.minute * 60 + clock.second
    sub_ns = round(Fraction(int(frac or "0"), 10 ** len(frac)) * 1_000_000_000)
    return seconds * 1_000_000_000 + sub_ns


def _detect(fields: list[str], unit_ns: int | None) -> str:
    """The format of a file from its first data line's fields and its header unit (if any)."""
    if len(fields) >= 2 and _kitti_ns(fields[0], fields[1]) is not None:
        return "kitti"
    if unit_ns is not None:
        return "csv"
    digits = fields[0].lstrip("+-")
    if digits.isdigit() and digits.isascii() and len(digits) >= _NS_MIN_DIGITS:
        return "ns"
    return "tum"


_EXPECTED = {
    "tum": "a stamp in decimal seconds",
    "csv": "a stamp in the header's unit",
    "ns": "a stamp in integer nanoseconds",
    "kitti": "a KITTI stamp 'YYYY-MM-DD hh:mm:ss.fraction'",
}


def parse_stamp_lines(lines: list[str], *, source: str) -> StampFile:
    """Parse the lines of a stamp file (``source`` names it in errors); detect its format.

    Comment lines (first non-blank character ``#``) and blank lines are skipped; a comment
    before the first data line may name the stamp unit (``[ns]``). Raises
    :class:`AssociateError` ``source:line: ...`` on a line that does not fit the format
    detected from the first data line, and when the file has no data line at all.
    """
    unit_ns: int | None = None
    fmt: str | None = None
    entries: list[StampEntry] = []
    for number, raw in enumerate(lines, start=1):
        if raw.lstrip().startswith("#"):
            if fmt is None and unit_ns is None and (m := _UNIT_RE.search(raw)):
                unit_ns = _UNIT_NS[m.group(1)]
            continue
        fields = split_fields(raw)
        if not fields:
            continue
        if fmt is None:
            fmt = _detect(fields, unit_ns)
        stamp_ns = _parse_stamp(fmt, fields, unit_ns)
        if stamp_ns is None:
            shown = raw.strip()
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise AssociateError(
                f"{source}:{number}: expected {_EXPECTED[fmt]} ({fmt} format, detected from "
                f"the first data line), got {shown!r}"
            )
        n_stamp_fields = 2 if fmt == "kitti" else 1
        entries.append(
            StampEntry(
                stamp_ns=stamp_ns,
                text=" ".join(fields[:n_stamp_fields]),
                rest=" ".join(fields[n_stamp_fields:]),
                line=number,
            )
        )
    if fmt is None:
        raise AssociateError(f"{source}: no stamps (only comments or blank lines)")
    return StampFile(path=source, format=fmt, entries=tuple(entries))


def _parse_stamp(fmt: str, fields: list[str], unit_ns: int | None) -> int | None:
    """The stamp (ns) of a data line's fields in format ``fmt``; None if it does not fit."""
    if fmt == "kitti":
        return _kitti_ns(fields[0], fields[1]) if len(fields) >= 2 else None
    text = fields[0]
    if fmt == "ns":
        digits = text.lstrip("+-")
        # int() alone would accept "1_000" and non-ASCII digits.
        if not (digits.isdigit() and digits.isascii()) or len(text) - len(digits) > 1:
            return None
        return int(text)
    try:
        return parse_decimal_ns(text, unit_ns=unit_ns if fmt == "csv" and unit_ns else 10**9)
    except ValueError:
        return None


def read_stamp_file(path: str | Path) -> StampFile:
    """Read and parse the stamp file at ``path`` (see the module documentation for formats).

    Raises :class:`AssociateError` naming the file when it cannot be read or is not UTF-8
    text, and naming the line when a line cannot be parsed.
    """
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise AssociateError(f"{source}: no such file") from None
    except OSError as exc:
        raise AssociateError(f"{source}: cannot read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AssociateError(f"{source}: not a UTF-8 text file ({exc.reason})") from None
    # Split on "\n" like associate.py (str.splitlines would also split on \f, \x1c, ...), so
    # that line numbers match what an editor shows; a trailing "\r" is stripped as a field.
    return parse_stamp_lines(text.split("\n"), source=source)
