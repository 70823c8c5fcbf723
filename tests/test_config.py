"""Config building: every mistake names the file, the line, the key and what was expected."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from edgefuse import config
from edgefuse.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class Inner:
    gain_db: float = 0.0
    mode: Literal["auto", "manual"] = "auto"


@dataclass(frozen=True, kw_only=True)
class Outer:
    name: str
    rate_hz: float = 30.0
    count: int = 1
    enabled: bool = True
    size: tuple[int, int] = (640, 480)
    tags: list[str] = field(default_factory=list)
    inner: Inner = field(default_factory=Inner)
    note: str | None = None


def build(text: str) -> Outer:
    data, src = config.parse_yaml(text, file="cfg.yaml")
    return config.build(Outer, data, src=src)


def test_valid_round_trip_with_conversions() -> None:
    o = build("name: cam\nrate_hz: 15\nsize: [320, 240]\ntags: [a, b]\ninner: {mode: manual}\n")
    assert o == Outer(
        name="cam", rate_hz=15.0, size=(320, 240), tags=["a", "b"], inner=Inner(mode="manual")
    )
    assert isinstance(o.rate_hz, float)


def test_unknown_key_names_line_and_suggests() -> None:
    with pytest.raises(ConfigError) as e:
        build("name: cam\n\nrate_hzz: 15\n")
    msg = str(e.value)
    assert msg.startswith("cfg.yaml:3: rate_hzz: unknown key (did you mean 'rate_hz'?)")
    assert "expected one of:" in msg and "count" in msg


def test_wrong_type_says_what_was_expected() -> None:
    with pytest.raises(ConfigError, match=r"cfg.yaml:2: count: expected int, got str 'many'"):
        build("name: cam\ncount: many\n")
    with pytest.raises(ConfigError, match=r"enabled: expected bool"):
        build("name: cam\nenabled: 1\n")
    with pytest.raises(ConfigError, match=r"count: expected int, got bool"):
        build("name: cam\ncount: true\n")


def test_nested_literal_and_tuple_errors() -> None:
    with pytest.raises(
        ConfigError,
        match=r"cfg.yaml:3: inner.mode: expected one of 'auto', "
        r"'manual', got 'fast'",
    ):
        build("name: cam\ninner:\n  mode: fast\n")
    with pytest.raises(ConfigError, match=r"size: expected a list of 2 items, got 3"):
        build("name: cam\nsize: [1, 2, 3]\n")
    with pytest.raises(ConfigError, match=r"tags.1: expected str"):
        build("name: cam\ntags: [a, 2]\n")


def test_missing_required_key() -> None:
    with pytest.raises(ConfigError, match=r"name: missing required key"):
        build("rate_hz: 10\n")


def test_invalid_yaml_reports_line() -> None:
    with pytest.raises(ConfigError, match=r"cfg.yaml:2: not valid YAML"):
        build("name: cam\n  bad: [\n")


def test_post_init_validation_becomes_config_error() -> None:
    @dataclass(frozen=True, kw_only=True)
    class Rate:
        rate_hz: float = 1.0

        def __post_init__(self) -> None:
            if self.rate_hz <= 0:
                raise ValueError(f"rate_hz must be > 0, got {self.rate_hz}")

    data, src = config.parse_yaml("rate_hz: -1\n", file="r.yaml")
    with pytest.raises(ConfigError, match=r"r.yaml:1: \(top level\): rate_hz must be > 0"):
        config.build(Rate, data, src=src)
