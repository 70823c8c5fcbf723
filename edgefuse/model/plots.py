"""Evaluation plots: the report's mAP by sensor subset, AP by class and by scenario; PR curves.

matplotlib is a training-side dependency, so it is imported inside the functions (this module
imports without it) and a missing install says which extra to add. Figures are drawn on the Agg
canvas directly, without pyplot: no window, no global figure state and no change to the
process's backend, so plotting is safe from scripts, tests and worker threads alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefuse.errors import require_extra
from edgefuse.model.metrics import APResult

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_pr_curves", "plot_report"]

_DPI = 110
_REPORT_SIZE_IN = (12.0, 5.0)
_PR_SIZE_IN = (7.0, 5.0)
#: Subsets drawn side by side per class: more groups than this are unreadable.
_MAX_CLASS_SUBSETS = 6
#: Per-bar value labels on the class panel only up to this many bars; beyond it they overlap.
_MAX_CLASS_LABELS = 24
_NA_GREY = "#b0b0b0"


def plot_report(report: Mapping[str, Any], path: str | Path, *, title: str = "") -> Path:
    """Draw an evaluation report as one PNG and return its path.

    ``report`` is the JSON-like evaluation report: ``"subsets"`` maps a modality subset (such as
    ``"camera+lidar"``) to ``{"map": float, "per_class": {class: {"ap": float}}}`` and
    ``"scenarios"`` maps a scenario (``"day"``, ``"night"``) to ``{"map": float}``; any key may be
    missing and ``None`` or nan means not measured. Panels, left to right, for what is present:
    mAP per subset (horizontal bars, best first), AP per class for the best subsets (at most
    six, grouped bars) and mAP per scenario. Values are shown in percent with one decimal. The
    image is 12 x 5 in at 110 dpi (1320 x 550 px). Raises ``ValueError`` if there is nothing to
    plot and ``ImportError`` if matplotlib is missing.
    """
    Figure, FigureCanvasAgg = _matplotlib()
    subsets = _section(report, "subsets")
    scenarios = _section(report, "scenarios")

    subset_map = {name: _value(entry, "map") for name, entry in subsets.items()}
    ranked = sorted(subset_map, key=lambda n: _sort_key(subset_map[n]))
    # The class panel shows the best subsets that have per-class numbers.
    class_subsets = [n for n in ranked if _per_class(subsets[n], n)][:_MAX_CLASS_SUBSETS]
    colours = {n: f"C{k}" for k, n in enumerate(class_subsets)}

    panels: list[tuple[str, float]] = []
    if subset_map:
        panels.append(("subsets", 1.0))
    if class_subsets:
        panels.append(("classes", 1.7))
    if scenarios:
        panels.append(("scenarios", max(0.45, 0.18 * len(scenarios))))
    if not panels:
        raise ValueError("report has no subsets and no scenarios to plot")

    fig = Figure(figsize=_REPORT_SIZE_IN, dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), width_ratios=[r for _, r in panels], squeeze=False)[0]
    for ax, (kind, _) in zip(axes, panels, strict=True):
        if kind == "subsets":
            _draw_subsets(ax, ranked, subset_map, colours)
        elif kind == "classes":
            _draw_classes(ax, class_subsets, subsets, colours)
        else:
            names = list(scenarios)
            _draw_scenarios(ax, names, [_value(scenarios[n], "map") for n in names])
    if title:
        fig.suptitle(title, fontsize=13)
    return _save(fig, path)


def plot_pr_curves(result: APResult, path: str | Path, *, threshold_m: float = 2.0) -> Path:
    """Draw each class's precision-recall curve at one distance threshold as a PNG.

    The curves are the 101-point resampled ones the AP is computed from, one line per class
    that has truth, labelled with its AP at that threshold; the title gives the threshold and
    the mAP. The image is 7 x 5 in at 110 dpi (770 x 550 px). Raises ``ValueError`` if
    ``threshold_m`` is not one of the result's thresholds or no class has truth, and
    ``ImportError`` if matplotlib is missing.
    """
    Figure, FigureCanvasAgg = _matplotlib()
    th = next((t for t in result.thresholds_m if math.isclose(t, threshold_m)), None)
    if th is None:
        raise ValueError(
            f"threshold_m {threshold_m} is not one of the result's {list(result.thresholds_m)}"
        )
    drawn = [name for name in result.per_class if th in result.curves.get(name, {})]
    if not drawn:
        raise ValueError("no class has ground truth: there is no precision-recall curve to draw")

    fig = Figure(figsize=_PR_SIZE_IN, dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for k, name in enumerate(drawn):
        recall, precision = result.curves[name][th]
        ap = result.per_class[name].ap_by_threshold[th]
        ax.plot(recall, precision, color=f"C{k % 10}", lw=1.8, label=f"{name}  AP {_pct(ap)}")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.05)
    ax.set_xlabel("Recall")
    ax.set_ylabel("Precision")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=9)
    ax.set_title(f"Precision-recall at {th:g} m centre distance (mAP {_pct(result.map)})")
    return _save(fig, path)


# -- panels ------------------------------------------------------------------------------------


def _draw_subsets(
    ax: Axes, ranked: list[str], maps: Mapping[str, float | None], colours: Mapping[str, str]
) -> None:
    """Horizontal mAP bars per subset, best on top; subsets also in the class panel coloured."""
    values = [maps[n] for n in ranked]
    y = list(range(len(ranked)))
    ax.barh(
        y,
        [_bar(v) for v in values],
        color=[colours.get(n, _NA_GREY) for n in ranked],
        height=0.7,
    )
    for yi, v in zip(y, values, strict=True):
        ax.text(_bar(v) + 1.5, yi, _pct(v), va="center", fontsize=9)
    ax.set_yticks(y, ranked, fontsize=9)
    ax.invert_yaxis()
    # Room right of a 100 % bar for its label; ticks stop at 100 so the scale stays honest.
    ax.set_xlim(0.0, 118.0)
    ax.set_xticks(range(0, 101, 20))
    ax.set_xlabel("mAP (%)")
    ax.set_title("mAP by sensor subset", fontsize=11)
    ax.grid(axis="x", alpha=0.3)


def _draw_classes(
    ax: Axes,
    names: list[str],
    subsets: Mapping[str, Any],
    colours: Mapping[str, str],
) -> None:
    """Grouped AP bars: one group per class, one bar per subset (best subset first)."""
    per_class = {n: _per_class(subsets[n], n) for n in names}
    classes: list[str] = []
    for n in names:  # classes in the order the best subset lists them, then any others
        classes.extend(c for c in per_class[n] if c not in classes)
    width = 0.8 / len(names)
    labelled = len(names) * len(classes) <= _MAX_CLASS_LABELS
    for k, n in enumerate(names):
        values = [_value(per_class[n].get(c), "ap") for c in classes]
        x = [i - 0.4 + width * (k + 0.5) for i in range(len(classes))]
        ax.bar(x, [_bar(v) for v in values], width=width, color=colours[n], label=n)
        if labelled:
            for xi, v in zip(x, values, strict=True):
                ax.text(
                    xi, _bar(v) + 1.5, _pct(v), ha="center", va="bottom", rotation=90, fontsize=7
                )
    ax.set_xticks(range(len(classes)), classes, rotation=30 if len(classes) > 5 else 0)
    ax.set_ylim(0.0, 118.0 if labelled else 105.0)
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("AP (%)")
    ax.set_title(
        f"AP by class, best {len(names)} subset{'s' if len(names) > 1 else ''}", fontsize=11
    )
    ax.grid(axis="y", alpha=0.3)
    ax.legend(
        loc="upper center",
        bbox_to_anchor=(0.5, -0.12 if len(classes) > 5 else -0.08),
        ncol=min(3, len(names)),
        fontsize=8,
        frameon=False,
    )


def _draw_scenarios(ax: Axes, names: list[str], values: list[float | None]) -> None:
    """Vertical mAP bars per scenario, in the report's order (day before night reads best)."""
    x = list(range(len(names)))
    ax.bar(x, [_bar(v) for v in values], color="C7", width=0.6)
    for xi, v in zip(x, values, strict=True):
        ax.text(xi, _bar(v) + 1.5, _pct(v), ha="center", va="bottom", fontsize=9)
    ax.set_xticks(x, names, rotation=30 if len(names) > 3 else 0)
    ax.set_ylim(0.0, 112.0)
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("mAP (%)")
    ax.set_title("mAP by scenario", fontsize=11)
    ax.grid(axis="y", alpha=0.3)


# -- helpers -----------------------------------------------------------------------------------


def _matplotlib() -> tuple[type[Figure], Any]:
    """Import matplotlib's Figure and Agg canvas, or fail naming the extra to install."""
    require_extra("matplotlib", "train")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    return Figure, FigureCanvasAgg


def _save(fig: Figure, path: str | Path) -> Path:
    """Write the figure as PNG at its own size (no tight bbox: the pixel size stays fixed)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=_DPI)
    return out


def _section(report: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """``report[key]`` as a mapping of name to entry; empty when missing or ``None``."""
    section = report.get(key)
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        raise ValueError(f"report[{key!r}] must be a mapping, got {type(section).__name__}")
    return section


def _per_class(entry: Any, subset: str) -> Mapping[str, Any]:
    """A subset's ``per_class`` mapping; empty when missing or ``None``."""
    if not isinstance(entry, Mapping):
        raise ValueError(f"report['subsets'][{subset!r}] must be a mapping")
    per_class = entry.get("per_class")
    if per_class is None:
        return {}
    if not isinstance(per_class, Mapping):
        raise ValueError(f"report['subsets'][{subset!r}]['per_class'] must be a mapping")
    return per_class


def _value(entry: Any, key: str) -> float | None:
    """``entry[key]`` as a fraction, ``None`` when missing, ``None`` or nan (not measured)."""
    if entry is None:
        return None
    if not isinstance(entry, Mapping):
        raise ValueError(f"expected a mapping with {key!r}, got {type(entry).__name__}")
    value = entry.get(key)
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else number


def _sort_key(value: float | None) -> tuple[bool, float]:
    """Best first, unmeasured last."""
    return (value is None, -(value if value is not None else 0.0))


def _bar(value: float | None) -> float:
    """Bar length in percent; 0 for an unmeasured value (its label says n/a)."""
    return 0.0 if value is None else 100.0 * value


def _pct(value: float | None) -> str:
    """A fraction as a percentage with one decimal, or ``n/a``."""
    if value is None or math.isnan(value):
        return "n/a"
    return f"{100.0 * value:.1f}%"
