"""docs/grafana-dashboard.json: every PromQL expression names only series `/metrics` exports, groups and joins
by labels those series have, and the panels are the charts of the server's own `/dashboard` page."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import common.headroom
import frontend.metrics
import worker.metrics
from common.metrics import REGISTRY, RESERVED_LABELS

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
PAGE = ROOT / "frontend" / "static" / "dashboard.html"
# The modules that define figures (common.metrics defines the ones every process keeps).
DEFINING = (common.headroom, frontend.metrics, worker.metrics)

METRIC = re.compile(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b")
LABEL_LISTS = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
MATCHERS = re.compile(r"\{([^}]*)\}")
RANGES = re.compile(r"\[[^\]]*\]")
LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def exported() -> dict[str, set[str]]:
    """Every sample name `/metrics` can serve, with the labels its series carry."""
    assert DEFINING
    out: dict[str, set[str]] = {}
    for family in REGISTRY.snapshot("p", "web")["families"]:
        labels = set(family["labels"]) | set(RESERVED_LABELS)
        if family["type"] == "histogram":
            out[family["name"] + "_bucket"] = labels | {"le"}
            out[family["name"] + "_sum"] = labels
            out[family["name"] + "_count"] = labels
        else:
            out[family["name"]] = labels
    return out


def targets(node: Any) -> list[tuple[str, dict[str, Any]]]:
    """(panel title, target) for every query of every panel, rows' panels included."""
    found = []
    for panel in node.get("panels", []):
        found += [(panel["title"], t) for t in panel.get("targets", [])]
        found += targets(panel)
    return found


def test_every_expression_names_exported_series_and_their_labels() -> None:
    series = exported()
    assert "pbx_calls_active" in series and "pbx_command_roundtrip_seconds_bucket" in series
    found = targets(json.loads(DASHBOARD.read_text()))
    assert len(found) >= 9
    for title, target in found:
        expr = target["expr"]
        assert expr.count("(") == expr.count(")"), f"{title}: {expr}"
        stripped = RANGES.sub("", MATCHERS.sub("", LABEL_LISTS.sub("", expr)))
        metrics = {m for m in METRIC.findall(stripped) if m.startswith("pbx_")}
        assert metrics, f"{title}: {expr} names no pbx_ series"
        unknown = metrics - series.keys()
        assert not unknown, f"{title}: {expr} names series /metrics does not export: {unknown}"
        # Grouping and joining: labels of the series named (a join's `group_left` brings the other side's).
        labels = set().union(*(series[m] for m in metrics))
        for _, names in LABEL_LISTS.findall(expr):
            used = {n.strip() for n in names.split(",") if n.strip()}
            assert used <= labels, f"{title}: {expr} groups by labels its series lack: {used - labels}"
        for matchers in MATCHERS.findall(expr):
            used = {m.split("=")[0].strip(" !~") for m in matchers.split(",") if m.strip()}
            assert used <= labels, f"{title}: {expr} matches labels its series lack: {used - labels}"
        grouped = {n.strip() for _, names in LABEL_LISTS.findall(expr) for n in names.split(",")}
        kept = grouped if expr.lstrip().startswith(("sum", "histogram_quantile")) else labels
        for name in LEGEND.findall(target.get("legendFormat", "")):
            assert name in kept, f"{title}: the legend's {{{{{name}}}}} is not a label of {expr}"


def test_queries_use_the_dashboard_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]
    for title, target in targets(dashboard):
        assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
    refs = [[t["refId"] for t in p["targets"]] for p in dashboard["panels"]]
    assert all(len(r) == len(set(r)) for r in refs), "refIds are unique within a panel"


class _Titles(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.titles: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        title = dict(attrs).get("data-title")
        if title:
            self.titles.append(title)


def test_panels_are_the_pages_charts() -> None:
    parser = _Titles()
    parser.feed(PAGE.read_text())
    # The page's titles say their window or unit in parentheses; Grafana's panels have their own units.
    page = [re.sub(r"\s*\(.*\)$", "", t) for t in parser.titles]
    assert page == [p["title"] for p in json.loads(DASHBOARD.read_text())["panels"]]
