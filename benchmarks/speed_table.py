"""The README's speed table, written from the JSON that ``speed.py`` wrote (never typed by hand).

    python benchmarks/speed_table.py benchmarks/results/speed-cpu-2core-spr.json           # print the table
    python benchmarks/speed_table.py benchmarks/results/speed-cpu-2core-spr.json --readme  # rewrite README.md's

The table sits between the ``<!-- speed-table -->`` and ``<!-- /speed-table -->`` lines of README.md; a test checks
that it is what this script makes of the committed JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN, END = "<!-- speed-table -->", "<!-- /speed-table -->"


def _cell(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def table(report: dict) -> str:
    """One line per row: the group, the row, images/s, ms, the ratio to the group's first row (timm eager float32)
    and, where the group has a floor row, the fraction of it; memory for training (activations kept)."""
    lines = [
        f"Machine: {report['machine']}; torch {report['torch']}, timm {report['timm']}, {report['threads']} "
        f"threads; {report['model']} unless named, 224x224, channels-last.",
        "",
        "| group | row | images/s | ms | × first row | of floor | saved MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for group in report["groups"]:
        for index, row in enumerate(group["rows"]):
            name = f"**{row['name']}**" if "ours" in row["name"].split() else row["name"]
            title = group["group"] if index == 0 else ""
            memory = row.get("memory_mib") if "training" in group["group"] else None
            floor = _cell(row.get("floor_fraction"), 2)
            lines.append(
                f"| {title} | {name} | {row['images_per_s']:.1f} | {row['median_ms']:.0f} | "
                f"{row['ratio']:.2f} | {floor} | {_cell(memory, 0)} |"
            )
    return "\n".join(lines)


def readme_with(text: str, readme: str) -> str:
    start, end = readme.index(BEGIN) + len(BEGIN), readme.index(END)
    return readme[:start] + "\n" + text + "\n" + readme[end:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", help="what speed.py wrote")
    parser.add_argument("--readme", action="store_true", help="rewrite the table in README.md")
    args = parser.parse_args()
    text = table(json.loads(Path(args.json).read_text()))
    if args.readme:
        README.write_text(readme_with(text, README.read_text()))
        print(f"rewrote the speed table in {README}")
    else:
        print(text)


if __name__ == "__main__":
    main()
