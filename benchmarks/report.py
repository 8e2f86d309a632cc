"""The printed tables, the JSON file and the speedup chart."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.optimizer_steps import COLUMNS, StepResult
from benchmarks.svi_step import SviResult

#: (label, numerator column, denominator column): time ratios, so > 1 means the
#: denominator is faster
RATIOS: tuple[tuple[str, str, str], ...] = (
    ("pyro.optim/pyroopt", "pyro_optim", "pyroopt"),
    ("torch fused/pyroopt", "torch_fused", "pyroopt"),
    ("pyroopt/limit", "pyroopt", "limit"),
)

#: a pyroopt time ratio is reported as slower only below ``1 / SLOWER_MARGIN`` (noise)
SLOWER_MARGIN = 1.05

#: the columns drawn as bars of speedup over pyro.optim
CHART_COLUMNS: tuple[str, ...] = ("torch_foreach", "torch_fused", "pyroopt", "limit")


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or ``None`` when either is missing."""
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def step_ratios(result: StepResult) -> dict[str, float | None]:
    """The :data:`RATIOS` of one optimizer on one shape."""
    return {
        label: ratio(result.median_ms(num), result.median_ms(den)) for label, num, den in RATIOS
    }


def shape_label(result: StepResult) -> str:
    """``"P x S"`` with thousands separators."""
    return f"{result.n_params:,} x {result.numel:,}"


# -- text ---------------------------------------------------------------------------------


def format_ms(status: str, ms: float | None) -> str:
    """A time in ms for a table cell, or why there is none."""
    if ms is None:
        return "ERR" if status == "error" else "n/a"
    return f"{ms:.3f}"


def format_ratio(value: float | None) -> str:
    """A ratio for a table cell."""
    return "-" if value is None else f"{value:.2f}x"


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """Columns padded to their widest cell; the first ``left`` columns left-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(w) if i < left else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        )

    rule = "-" * len(line(header))
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table (``|`` in a cell is escaped).

    >>> print(markdown_table(["a", "b"], [["1", "x|y"]]))
    | a | b |
    |---|---|
    | 1 | x\\|y |
    """

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header), *(line(row) for row in rows)])


def step_table(results: Sequence[StepResult]) -> str:
    """Median ms per optimizer step for every column, and the ratios."""
    header = ["optimizer", "P x S", *(label for _, label, _ in COLUMNS), *(r[0] for r in RATIOS)]
    rows = []
    for result in results:
        times = [format_ms(c.status, c.median_ms) for c in result.columns.values()]
        ratios = [format_ratio(v) for v in step_ratios(result).values()]
        rows.append([result.optimizer, shape_label(result), *times, *ratios])
    return format_table(header, rows, left=2)


def svi_table(result: SviResult) -> str:
    """Median ms per ``svi.step()``, the speedup, and the optimizer's share of a step."""
    baseline = result.median_ms("pyro_optim")
    floor = result.median_ms("no_step")
    rows = []
    for key, column in result.columns.items():
        ms = column.median_ms
        share = ratio(None if ms is None or floor is None else ms - floor, ms)
        rows.append(
            [
                column.label,
                format_ms(column.status, ms),
                format_ratio(ratio(baseline, ms)),
                "-" if share is None or key == "no_step" else f"{100 * share:.1f}%",
            ]
        )
    header = ["optimizer", "ms per svi.step()", "pyro.optim/this", "optimizer share"]
    return format_table(header, rows)


def findings(steps: Sequence[StepResult], svi: SviResult | None) -> list[str]:
    """Errors, and where pyroopt is slower than pyro.optim or torch fused by over 5%."""
    notes = []
    for result in steps:
        where = f"{result.optimizer} {shape_label(result)}"
        for column in result.columns.values():
            if column.status == "error":
                notes.append(f"ERROR {where} [{column.label}]: {column.error}")
        ratios = step_ratios(result)
        for label, name in (
            ("pyro.optim/pyroopt", "pyro.optim"),
            ("torch fused/pyroopt", "torch fused"),
        ):
            value = ratios[label]
            if value is not None and value * SLOWER_MARGIN < 1:
                notes.append(f"SLOWER {where}: pyroopt takes {1 / value:.2f}x the time of {name}")
    if svi is not None:
        notes.extend(_svi_findings(svi))
    return notes


def _svi_findings(svi: SviResult) -> list[str]:
    """Errors of the SVI columns, and a floor slower than a column that does more."""
    notes = [
        f"ERROR SVI [{column.label}]: {column.error}"
        for column in svi.columns.values()
        if column.status == "error"
    ]
    floor = svi.median_ms("no_step")
    stepped = [ms for key in ("pyro_optim", "pyroopt") if (ms := svi.median_ms(key)) is not None]
    if floor is not None and stepped and floor > min(stepped):
        notes.append(
            "NOISE SVI: the step without an optimizer timed slower than one with an "
            "optimizer; the machine was busy, rerun before reading the SVI table"
        )
    return notes


# -- files --------------------------------------------------------------------------------


def to_json(
    meta: dict[str, Any], steps: Sequence[StepResult], svi: SviResult | None
) -> dict[str, Any]:
    """Everything measured, with the ratios, as plain JSON data."""
    return {
        "meta": meta,
        "optimizer_steps": [
            {**dataclasses.asdict(r), "shape": shape_label(r), "ratios": step_ratios(r)}
            for r in steps
        ],
        "svi": None if svi is None else dataclasses.asdict(svi),
    }


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` indented, ending with a newline."""
    path.write_text(json.dumps(payload, indent=2) + "\n")


def _draw_panel(ax: Any, results: Sequence[StepResult], labels: dict[str, str]) -> None:
    """One optimizer's bars: per shape, each column's speedup over pyro.optim."""
    width = 0.8 / len(CHART_COLUMNS)
    for i, key in enumerate(CHART_COLUMNS):
        speedups = [ratio(r.median_ms("pyro_optim"), r.median_ms(key)) for r in results]
        heights = [math.nan if s is None else s for s in speedups]
        offset = (i - (len(CHART_COLUMNS) - 1) / 2) * width
        ax.bar([g + offset for g in range(len(results))], heights, width, label=labels[key])
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--", label="pyro.optim")
    ax.set_xticks(range(len(results)))
    ax.set_xticklabels([shape_label(r) for r in results], fontsize=8)
    ax.set_title(results[0].optimizer, fontsize=10)
    ax.set_xlabel("P parameters x S elements")
    ax.grid(axis="y", which="both", alpha=0.3)


def draw_speedup_chart(steps: Sequence[StepResult], path: Path) -> None:
    """Grouped bars of each column's speedup over pyro.optim, one panel per optimizer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_optimizer: dict[str, list[StepResult]] = {}
    for result in steps:
        by_optimizer.setdefault(result.optimizer, []).append(result)
    labels = {key: label for key, label, _ in COLUMNS}
    fig, axes = plt.subplots(
        1, len(by_optimizer), figsize=(3.6 * len(by_optimizer), 4.8), sharey=True, squeeze=False
    )
    for ax, results in zip(axes[0], by_optimizer.values(), strict=True):
        _draw_panel(ax, results, labels)
    axes[0][0].set_yscale("log")
    axes[0][0].set_ylabel("speedup over pyro.optim (time ratio, log scale)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Optimizer step, float32: speedup over pyro.optim (higher is faster; n/a omitted)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
