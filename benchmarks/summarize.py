"""Summarize pytest-benchmark JSON files (one per backend) into one markdown table."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(out: Path) -> None:
    rows = ["| backend | family | config | training ex/s | train % peak | eval samples/s | eval % peak |",
            "|---|---|---|---|---|---|---|"]
    cases: dict[tuple, dict] = {}
    for path in sorted(out.glob("*.json")):
        for bench in json.loads(path.read_text())["benchmarks"]:
            p = bench["params"]
            cases.setdefault((p["name"], p["family"], p["config"]), {})[bench["name"].split("[")[0]] = bench
    for (name, family, config), case in cases.items():
        train = case.get("test_train", {}).get("extra_info", {})
        ev = case.get("test_evaluate", {}).get("extra_info", {})
        rows.append(f"| {name} | {family} | {config} | {train.get('examples_per_s', 0):,.0f} | "
                    f"{100 * train.get('fraction_of_peak', 0):.0f}% | {ev.get('samples_per_s', 0):,.0f} | "
                    f"{100 * ev.get('fraction_of_peak', 0):.0f}% |")
    table = "\n".join(rows)
    (out / "summary.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
