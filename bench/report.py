"""Results out: JSON for machines, a Markdown table and a chart for people.

`--update-docs` rewrites only the block of docs/benchmarks.md between the
two marker comments, so the prose around the numbers stays hand-written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from bench.metrics import BASELINE, CANDIDATE, Metric

BLOCK_BEGIN = "<!-- bench:results:begin -->"
BLOCK_END = "<!-- bench:results:end -->"
DOCS_CHART_NAME = "benchmarks.png"


def results_document(
    machine: dict[str, str],
    settings: dict[str, object],
    metrics: list[Metric],
    errors: dict[str, str],
) -> dict[str, Any]:
    """Everything a run found, ready for `json.dump`."""

    return {
        "machine": machine,
        "settings": settings,
        "metrics": [metric.to_json() for metric in metrics],
        "errors": errors,
    }


def write_json(document: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")


def markdown(document: dict[str, Any]) -> str:
    """The machine and the results table, as Markdown."""

    machine = document["machine"]
    lines = [
        f"Measured {machine['date']} on {machine['cpus']} CPUs "
        f"({machine['cpu_model']}), {machine['memory']} of memory, Linux "
        f"{machine['kernel']}; {machine['openssh']}; Python {machine['python']}, "
        f"asyncssh {machine['asyncssh']}, cryptography {machine['cryptography']}. "
        f"sftpjail at {machine.get('sftpjail', 'unknown')}; load average "
        f"{machine.get('load_average', 'unknown')} when the run began.",
        "",
        "| Measure | Unit | OpenSSH | sftpjail | sftpjail/OpenSSH | Target | Met |",
        "|---|---|--:|--:|--:|---|---|",
    ]
    for metric in document["metrics"]:
        lines.append(_table_row(metric))
    if document["errors"]:
        lines += ["", "Scenarios that failed in this run:", ""]
        for name, error in document["errors"].items():
            lines.append(f"- {name}: {error}")
    return "\n".join(lines) + "\n"


def _table_row(metric: dict[str, Any]) -> str:
    summary = metric["summary"]
    ratio = metric["ratio"]
    met = {True: "met", False: "**not met**", None: ""}[metric["met"]]
    cells = [
        metric["title"],
        metric["unit"] + (" (p95)" if metric["statistic"] == "p95" else ""),
        _number(summary.get(BASELINE)),
        _number(summary.get(CANDIDATE)),
        "" if ratio is None else f"{ratio:.2f}x",
        metric["target"] or "",
        met,
    ]
    return "| " + " | ".join(cells) + " |"


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def write_chart(document: dict[str, Any], path: Path) -> bool:
    """A bar chart of every ratio; False when matplotlib is not installed."""

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as pyplot
    except ImportError:
        return False

    rows = [metric for metric in document["metrics"] if metric["ratio"] is not None]
    colours = {True: "tab:green", False: "tab:red", None: "tab:gray"}
    figure, axes = pyplot.subplots(figsize=(10, 0.34 * len(rows) + 1.4))
    ratios = [metric["ratio"] for metric in rows]
    # Bars grow from 1.0 on a log scale, so 0.5x and 2x look equally far.
    axes.barh(
        [metric["title"] for metric in rows],
        [ratio - 1.0 for ratio in ratios],
        left=1.0,
        color=[colours[metric["met"]] for metric in rows],
    )
    axes.set_xscale("log")
    for position, ratio in enumerate(ratios):
        axes.annotate(
            f"{ratio:.2f}x",
            (ratio, position),
            xytext=(3 if ratio >= 1 else -3, 0),
            textcoords="offset points",
            ha="left" if ratio >= 1 else "right",
            va="center",
            fontsize=8,
        )
    axes.axvline(1.0, color="black", linewidth=0.8)
    axes.invert_yaxis()
    axes.set_xlabel(
        "sftpjail / OpenSSH, log scale (green: target met, red: not met, "
        "grey: no target)"
    )
    machine = document["machine"]
    axes.set_title(f"sftpjail vs OpenSSH, {machine['cpus']} CPUs, {machine['date']}")
    low, high = min(ratios), max(ratios)
    axes.set_xlim(min(low, 1.0) / 1.6, max(high, 1.0) * 1.6)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
    return True


def update_docs(doc: Path, block: str, chart: Path | None) -> None:
    """Replace the generated block of `doc`; copy the chart beside it."""

    text = doc.read_text()
    begin = text.find(BLOCK_BEGIN)
    end = text.find(BLOCK_END)
    if begin < 0 or end < begin:
        raise ValueError(
            f"{doc} has no {BLOCK_BEGIN} ... {BLOCK_END} block to fill; add "
            "the two marker lines where the results belong"
        )
    if chart is not None:
        shutil.copyfile(chart, doc.parent / DOCS_CHART_NAME)
        block += f"\n![sftpjail / OpenSSH ratios]({DOCS_CHART_NAME})\n"
    new_text = text[: begin + len(BLOCK_BEGIN)] + "\n" + block + text[end:]
    doc.write_text(new_text)
