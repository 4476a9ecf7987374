"""QA reports over sonographer reviews: score aggregation (``scores``), inter-rater agreement
(``agreement``), and their CSV and HTML renderings. Reads the database; writes nothing."""

from .agreement import Kappa, PairAgreement, pair_agreements, quadratic_kappa
from .csv_render import csv_columns, render_csv
from .filters import (
    GroupBy,
    ReportFilters,
    ReportParameterError,
    parse_bound,
    parse_filters,
    parse_group_by,
    parse_zone,
)
from .html_render import render_html
from .scores import DimensionStats, Group, ScoreReport, ScoreRow, aggregate, build_report, fetch_rows, score_report

__all__ = [
    "DimensionStats",
    "Group",
    "GroupBy",
    "Kappa",
    "PairAgreement",
    "ReportFilters",
    "ReportParameterError",
    "ScoreReport",
    "ScoreRow",
    "aggregate",
    "build_report",
    "csv_columns",
    "fetch_rows",
    "pair_agreements",
    "parse_bound",
    "parse_filters",
    "parse_group_by",
    "parse_zone",
    "quadratic_kappa",
    "render_csv",
    "render_html",
    "score_report",
]
