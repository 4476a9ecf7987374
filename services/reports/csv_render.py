"""A score report as CSV: one row per group, flat columns, a header row.

Columns: ``key`` (plus ``reviewer_id`` when grouped by reviewer), ``cases``, then for each
dimension ``<dim>_n``, ``<dim>_mean``, ``<dim>_perfect_rate``, ``<dim>_0`` .. ``<dim>_3``
(the distribution), and ``overall_mean``. Null values are empty cells; numbers are written
as in the JSON report, so a parsed CSV row equals its JSON group. A text cell that a
spreadsheet would run as a formula (starting with ``=``, ``+``, ``-``, ``@``, tab or CR) gets a
leading ``'`` (OWASP's advice against CSV injection); labels and key names never start so.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from .filters import GroupBy
from .scores import DIMENSIONS, SCORES, ScoreReport


def csv_columns(group_by: GroupBy | None) -> list[str]:
    columns = ["key"] + (["reviewer_id"] if group_by is GroupBy.reviewer else []) + ["cases"]
    for dimension in DIMENSIONS:
        columns += [f"{dimension}_n", f"{dimension}_mean", f"{dimension}_perfect_rate"]
        columns += [f"{dimension}_{s}" for s in SCORES]
    return [*columns, "overall_mean"]


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def _text(value: str | None) -> str:
    return "'" + value if value is not None and value.startswith(FORMULA_STARTS) else _cell(value)


def render_csv(report: ScoreReport) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")  # RFC 4180 line ends
    columns = csv_columns(report.group_by)
    writer.writerow(columns)
    for group in report.groups:
        data = group.as_json()
        flat: dict[str, Any] = {"key": _text(data["key"]), "reviewer_id": data.get("reviewer_id"),
                                "cases": data["cases"], "overall_mean": data["overall_mean"]}
        for dimension in DIMENSIONS:
            stats = data[dimension.value]
            flat.update({f"{dimension}_n": stats["n"], f"{dimension}_mean": stats["mean"],
                         f"{dimension}_perfect_rate": stats["perfect_rate"]})
            flat.update({f"{dimension}_{s}": stats["distribution"][str(s)] for s in SCORES})
        writer.writerow([_cell(flat[c]) for c in columns])
    return buffer.getvalue()
