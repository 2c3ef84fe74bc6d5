"""Results: the JSON of a run and its markdown, both under benchmarks/results/ unless told otherwise, the
markdown headed by the environment (machine, ISA, variables, versions, commit, date) so that every quoted
figure carries what produced it."""

from __future__ import annotations

import json
import math
import os
import pathlib

from harness import RESULTS, environment


def default_path(name: str, tiny: bool = False) -> pathlib.Path:
    """benchmarks/results/NAME.json; NAME_tiny.json for a --tiny run, which must not replace real figures."""
    return RESULTS / f"{name}{'_tiny' if tiny else ''}.json"


def write(json_path, report: dict, title: str, body: list[str]) -> str:
    """Writes `report` (which holds "environment", from `environment.capture()`) to `json_path` and the markdown
    (`# title`, the environment, a blank line, `body`) beside it with the suffix .md; returns the markdown."""
    json_path = pathlib.Path(json_path)
    os.makedirs(json_path.parent, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    markdown = "\n".join([f"# {title}", "", *environment.summary(report["environment"]), "", *body]) + "\n"
    json_path.with_suffix(".md").write_text(markdown)
    return markdown


def table(header: list[str], rows: list[list]) -> list[str]:
    """A markdown table's lines."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(map(str, row)) + " |" for row in rows)]


def num(value, spec: str = ".1f", suffix: str = "") -> str:
    """`value` formatted, or "-" where there is none (no twin, out of memory)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:{spec}}{suffix}"
