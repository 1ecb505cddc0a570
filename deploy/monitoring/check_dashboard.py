#!/usr/bin/env python3
"""List the metric names a Grafana dashboard's PromQL expressions use.

    cd deploy/monitoring && python3 check_dashboard.py grafana-dashboard.json

Prints one name per line, sorted and unique, with histogram suffixes (_bucket, _sum,
_count) stripped, so a test can compare them with the names the broker exports.
Reads panel targets (rows and nested panels included) and template-variable queries.
Exit 0 on success, 1 if the file is unreadable, not JSON or not a dashboard, 2 on usage.
Standard library only; not a PromQL parser, but exact for the expression shapes a
dashboard uses (selectors, functions, aggregations with by/without, ranges, offsets).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from typing import Any

HISTOGRAM_SUFFIX = re.compile(r"_(bucket|sum|count)$")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+|\[\[\w+\]\]")
LABEL_MATCHERS = re.compile(r"\{[^{}]*\}")
RANGE = re.compile(r"\[[^\[\]]*\]")
GROUPING = re.compile(
    r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
IDENTIFIER = re.compile(r"(?<![\w.:$])([A-Za-z_:][\w:]*)(?!\w)")
KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
    "group_right", "bool", "offset", "inf", "nan", "start", "end",
}  # fmt: skip
LABEL_VALUES = re.compile(r"^\s*label_values\s*\((.*)\)\s*$", re.DOTALL)


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression or a Grafana ``label_values(...)`` query."""
    if match := LABEL_VALUES.match(expr):
        # label_values(selector, label) names a metric; label_values(label) does not.
        args = match.group(1)
        head, sep, _ = args.rpartition(",")
        if not sep:
            return set()
        expr = head
    text = STRING.sub('""', expr)
    text = GRAFANA_VARIABLE.sub(" ", text)
    # Innermost first, so selectors nested in subqueries come out too.
    previous = None
    while previous != text:
        previous = text
        text = LABEL_MATCHERS.sub(" ", text)
        text = RANGE.sub(" ", text)
    text = GROUPING.sub(" ", text)
    names = set()
    for found in IDENTIFIER.finditer(text):
        name = found.group(1)
        following = text[found.end() :].lstrip()
        if following.startswith("(") or name.lower() in KEYWORDS:
            continue  # a function or aggregation, or a PromQL keyword
        names.add(HISTOGRAM_SUFFIX.sub("", name))
    return names


def expressions(dashboard: dict[str, Any]) -> Iterator[str]:
    def panels(items: list[Any]) -> Iterator[dict[str, Any]]:
        for panel in items:
            if isinstance(panel, dict):
                yield panel
                yield from panels(panel.get("panels") or [])

    for panel in panels(dashboard.get("panels") or []):
        for target in panel.get("targets") or []:
            if isinstance(target, dict) and isinstance(target.get("expr"), str):
                yield target["expr"]
    for variable in (dashboard.get("templating") or {}).get("list") or []:
        if not isinstance(variable, dict) or variable.get("type") != "query":
            continue
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if isinstance(query, str):
            yield query


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} DASHBOARD.json", file=sys.stderr)
        return 2
    try:
        with open(argv[1], encoding="utf-8") as fh:
            document = json.load(fh)
    except OSError as exc:
        print(f"{argv[1]}: cannot read ({exc.strerror})", file=sys.stderr)
        return 1
    except json.JSONDecodeError as exc:
        print(f"{argv[1]}: invalid JSON ({exc})", file=sys.stderr)
        return 1
    # Accept a bare dashboard or the API's {"dashboard": {...}} envelope.
    if isinstance(document, dict) and isinstance(document.get("dashboard"), dict):
        document = document["dashboard"]
    if not isinstance(document, dict) or not isinstance(document.get("panels"), list):
        print(f"{argv[1]}: not a Grafana dashboard (no panels list)", file=sys.stderr)
        return 1
    names: set[str] = set()
    for expr in expressions(document):
        names |= metric_names(expr)
    print("\n".join(sorted(names)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
