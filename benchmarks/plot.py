"""A picture of where each kernel stands: % of the measured bandwidth limit,
row by row, from the JSON of ``python -m benchmarks --json``.

    python -m benchmarks --plot limits.png
    python -m benchmarks.plot results.json limits.png

matplotlib is optional (``pip install -e '.[plot]'``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

PERCENT_COLUMNS = ("% of copy", "% limit")


def plot_limits(results: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install -e '.[plot]'") from None
    labels: list[str] = []
    values: list[float] = []
    colors: list[str] = []
    for name, tables in results.items():
        for table in tables:
            column = next((c for c in PERCENT_COLUMNS if c in table["columns"]), None)
            if column is None:
                continue
            for row in table["rows"]:
                value = row.get(column)
                if not isinstance(value, int | float):
                    continue
                words = [
                    str(row[c])
                    for c in table["columns"]
                    if c not in PERCENT_COLUMNS
                    and not isinstance(row.get(c), dict | float)
                ]
                labels.append(f"{name.removeprefix('bench_')}: {' '.join(words)}")
                values.append(float(value))
                colors.append(
                    "tab:gray"
                    if "cache-resident" in row.get("note", "")
                    else "tab:blue"
                )
    if not values:
        raise SystemExit("no row with a % of the bandwidth limit to plot")
    height = max(3.0, 0.22 * len(values) + 1.0)
    fig, ax = plt.subplots(figsize=(10, height))
    y = list(range(len(values)))[::-1]
    ax.barh(y, values, color=colors)
    ax.set_yticks(y, labels, fontsize=7)
    ax.axvline(100, color="black", linewidth=0.8)
    ax.set_xlabel("% of the memory bandwidth limit measured in the same run "
                  "(grey: cache-resident)")  # fmt: skip
    ax.set_title("llmir CPU kernels against the machine's limit")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m benchmarks.plot RESULTS.json OUT.png")
    plot_limits(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))


if __name__ == "__main__":
    main()
