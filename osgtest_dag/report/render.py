"""results.json in any report format: the one entry point the CLI and the Report node share."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from osgtest_dag.model.history import History
from osgtest_dag.model.results import ResultsDocument
from osgtest_dag.report import html as report_html
from osgtest_dag.report import junit as report_junit
from osgtest_dag.report import text as report_text

FORMATS = ("text", "html", "junit", "json")


def render(
    doc: ResultsDocument,
    fmt: str,
    *,
    diff: dict[str, Any] | None = None,
    out_path: Path | None = None,
    link_base: str | None = None,
    history: History | None = None,
) -> str:
    """results.json -> the report in `fmt` (text, html, junit, json); `history`: a nightly's
    flaky and slower cells, in the text and HTML reports."""
    if fmt == "text":
        return report_text.render(doc, diff, history=history)
    if fmt == "html":
        return report_html.render(doc, diff, out_path=out_path, link_base=link_base, history=history)
    if fmt == "junit":
        return report_junit.render(doc)
    if fmt == "json":
        return json.dumps(doc.to_json(), indent=1, ensure_ascii=False) + "\n"
    raise ValueError(fmt)
