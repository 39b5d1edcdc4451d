"""Draws the results page's plot: throughput per system, one panel per scenario, with the spread of
the repetitions as error bars. Run by ``bench/run.py --plot PNG`` in the peers' virtualenv (which
has matplotlib; the project's does not need it):

    <peers venv>/bin/python bench/plot.py results.json docs/performance-throughput.png
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PANELS = ("2 no-op processing", "2 no-op processing, INFO logging", "1 enqueue: single",
          "1 enqueue: bulk")
OURS = "django-kiq"


def main(src: str, png: str) -> None:
    data = json.loads(Path(src).read_text())
    rows = [r for r in data["results"] if r["unit"] == "jobs/s"]
    panels = [p for p in PANELS if any(r["scenario"] == p for r in rows)]
    fig, axes = plt.subplots(len(panels), 1, figsize=(6.4, 1.0 + 1.45 * len(panels)),
                             squeeze=False)
    for ax, panel in zip(axes[:, 0], panels):
        group = sorted((r for r in rows if r["scenario"] == panel), key=lambda r: r["value"])
        values = [r["value"] for r in group]
        low = [max(0, r["value"] - min(r["runs"] or [r["value"]])) for r in group]
        high = [max(0, max(r["runs"] or [r["value"]]) - r["value"]) for r in group]
        colors = ["#1f6f43" if r["system"] == OURS else "#9aa5b1" for r in group]
        ax.barh([r["system"] for r in group], values, xerr=[low, high], color=colors,
                error_kw={"elinewidth": 0.8, "capsize": 2})
        for y, (value, up) in enumerate(zip(values, high)):
            ax.text(value + up, y, f"  {value:,.0f}", va="center", fontsize=7)
        ax.set_title(f"{panel} (jobs/s)", fontsize=9, loc="left")
        ax.tick_params(labelsize=7)
        ax.set_xlim(0, max(max(values) * 1.25, 1))
        ax.spines[["top", "right"]].set_visible(False)
    machine = data.get("machine", {})
    load = machine.get("load_during_run", {})
    fig.suptitle(f"{machine.get('date_utc', '')} UTC, {machine.get('cores', '?')} cores, "
                 f"load {load.get('min', '?')}-{load.get('max', '?')}; bars: median, "
                 f"whiskers: spread of the repetitions", fontsize=7, y=0.995)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    main(*sys.argv[1:3])
