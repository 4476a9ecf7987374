"""A score report as one self-contained HTML page for QA staff.

No external assets and no JavaScript: inline CSS and inline SVG charts (``svg.py``). Every
piece of text from the data (labels, model revisions, reviewer names, filter values) is
escaped with ``html.escape``. The filter form submits to ``scores.html`` beside the page
(relative, so it also works behind a reverse proxy that serves the API under a prefix); the
browser must send the key, which a proxy that signs QA staff in does.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta, tzinfo
from decimal import Decimal
from urllib.parse import urlencode

from shared.db.models import JobMode

from .filters import GroupBy
from .scores import DIMENSIONS, Group, ScoreReport
from .svg import (
    SCORE_COLORS,
    SCORE_NAMES,
    STACK_ORDER,
    DayPoint,
    MeanRow,
    StackRow,
    daily_means,
    esc,
    mean_bars,
    mini_distribution,
    stacked_distribution,
)

MAX_BAR_ROWS = 30
GROUP_TITLES = {None: "Overall", GroupBy.mode: "By mode", GroupBy.model: "By model revision",
                GroupBy.label: "By view label", GroupBy.reviewed_label: "By view label as reviewed",
                GroupBy.reviewer: "By reviewer", GroupBy.day: "By day"}
UNKNOWN = {GroupBy.model: "(no model revision)", GroupBy.label: "(no view label)",
           GroupBy.reviewed_label: "(no view label)", GroupBy.reviewer: "(unknown)"}

CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f4f6f9;color:#1a202c;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,
"Helvetica Neue",Arial,sans-serif}
header{background:linear-gradient(90deg,#1e3a5f,#2b6cb0);color:#fff;padding:22px 32px 18px}
header .kicker{text-transform:uppercase;letter-spacing:.08em;font-size:12px;opacity:.8}
header h1{margin:2px 0 4px;font-size:26px;font-weight:650}
header p{margin:0;opacity:.92}
main{max-width:1200px;margin:0 auto;padding:20px 32px 40px}
section{background:#fff;border:1px solid #e2e8f0;border-radius:10px;padding:16px 20px;margin:0 0 18px;
box-shadow:0 1px 2px rgba(26,32,44,.05)}
h2{font-size:17px;margin:0 0 12px;color:#1e3a5f}
h3{font-size:14px;margin:0 0 8px;color:#2d3748}
form.filters{display:flex;flex-wrap:wrap;gap:12px 18px;align-items:flex-end}
form.filters label{display:flex;flex-direction:column;font-size:12px;color:#4a5568;gap:3px}
form.filters input,form.filters select{font:inherit;padding:6px 8px;border:1px solid #cbd5e0;border-radius:6px;
min-width:150px;background:#fff}
button,.button{font:inherit;padding:7px 16px;border-radius:6px;border:1px solid #2b6cb0;background:#2b6cb0;
color:#fff;cursor:pointer;text-decoration:none;display:inline-block}
.button.secondary{background:#fff;color:#2b6cb0}
.hint{font-size:12px;color:#718096;margin:8px 0 0}
.cards{display:grid;grid-template-columns:repeat(5,1fr);gap:12px;margin:0 0 18px}
.card{background:#fff;border:1px solid #e2e8f0;border-radius:10px;padding:12px 16px}
.card .label{font-size:12px;color:#4a5568;text-transform:uppercase;letter-spacing:.05em}
.card .value{font-size:26px;font-weight:650;color:#1e3a5f}
.card .sub{font-size:12px;color:#718096}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:6px 8px;border-bottom:1px solid #edf2f7;text-align:right;white-space:nowrap}
th{background:#f7fafc;color:#2d3748;font-weight:600;font-size:12px}
thead tr.dims th{text-align:center;border-bottom:2px solid #cbd5e0}
th.dim-interpretation{color:#2b6cb0}th.dim-annotation{color:#805ad5}
td.key,th.key{text-align:left}
tbody tr:nth-child(even){background:#fafbfc}
tfoot td{font-weight:650;border-top:2px solid #cbd5e0}
td.dist{text-align:left}
td.dist .counts{font-size:11px;color:#4a5568;margin-left:6px}
td.na,span.na{color:#a0aec0}
em.unknown{color:#718096}
.idhint{font-size:11px;color:#a0aec0;margin-left:4px}
.charts{display:grid;grid-template-columns:1fr 1fr;gap:18px}
.charts section{margin:0}
.legend{display:flex;gap:14px;flex-wrap:wrap;font-size:12px;color:#4a5568;margin:6px 0 0}
.legend i{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:5px;vertical-align:-1px}
.warning{background:#fffaf0;border:1px solid #f6ad55;color:#7b341e;border-radius:8px;padding:10px 14px;
margin:0 0 18px}
.note{font-size:12px;color:#718096;margin:8px 0 0}
svg.mini{vertical-align:middle;border-radius:2px}
footer{font-size:12px;color:#718096;max-width:1200px;margin:0 auto;padding:0 32px 30px}
@media (max-width:900px){.charts{grid-template-columns:1fr}.cards{grid-template-columns:repeat(2,1fr)}}
@media print{header{background:#1e3a5f}section{break-inside:avoid}form.filters{display:none}}
"""


def _mean(value: Decimal | None) -> str:
    return '<span class="na">–</span>' if value is None else f"{value:.3f}"


def _pct(value: Decimal | None) -> str:
    return '<span class="na">–</span>' if value is None else f"{value * 100:.1f}%"


def _f(value: Decimal | None) -> float | None:
    return float(value) if value is not None else None


def local_time(value: datetime | None, zone: tzinfo) -> str:
    """A time as people in the report's zone read it, with the zone's name and offset (an
    hour of a clock change reads twice without it)."""
    if value is None:
        return ""
    try:
        local = value.astimezone(zone)
    except OverflowError:  # the open ends of a window (year 1 or 9999) read in UTC
        local, zone = value, value.tzinfo or zone
    text = local.strftime("%Y-%m-%d %H:%M:%S").removesuffix(":00")
    if str(zone) == "UTC":
        return f"{text} UTC"
    seconds = int((local.utcoffset() or timedelta(0)).total_seconds())
    hours, minutes = divmod(abs(seconds) // 60, 60)
    return f"{text} {zone} (UTC{'-' if seconds < 0 else '+'}{hours:02d}:{minutes:02d})"


def _title(report: ScoreReport) -> str:
    """The grouping's title; days name their zone."""
    title = GROUP_TITLES[report.group_by]
    return f"{title} ({report.filters.zone})" if report.group_by is GroupBy.day else title


def _window(report: ScoreReport) -> str:
    f = report.filters
    start, end = local_time(f.start, f.zone), local_time(f.end, f.zone)
    parts = []
    if f.start and f.end:
        parts.append(f"reviews created from {start} up to (not including) {end}")
    elif f.start:
        parts.append(f"reviews created from {start} on")
    elif f.end:
        parts.append(f"reviews created before {end}")
    else:
        parts.append("all reviews")
    parts.append(f"mode: {f.mode.value if f.mode else 'all'}")
    title = _title(report)
    parts.append(f"grouped {title[0].lower()}{title[1:]}" if report.group_by else "not grouped")
    return "; ".join(parts)


def _key_cell(group: Group, group_by: GroupBy | None) -> str:
    if group.key is None:
        return f'<em class="unknown">{esc(UNKNOWN.get(group_by, "(unknown)") if group_by else "(unknown)")}</em>'
    text = esc(group.key)
    if group_by is GroupBy.reviewer and group.reviewer_id:
        text += f'<span class="idhint" title="{esc(group.reviewer_id)}">{esc(group.reviewer_id[:8])}</span>'
    return text


def _row(group: Group, group_by: GroupBy | None, *, cell: str = "td") -> str:
    cells = [f'<{cell} class="key">{_key_cell(group, group_by)}</{cell}>', f"<{cell}>{group.cases}</{cell}>"]
    for dimension in DIMENSIONS:
        stats = group.dimension(dimension)
        counts = " · ".join(str(stats.distribution[s]) for s in STACK_ORDER)
        cells += [f"<{cell}>{stats.n}</{cell}>", f'<{cell} class="mean">{_mean(stats.mean)}</{cell}>',
                  f'<{cell} class="perfect">{_pct(stats.perfect_rate)}</{cell}>',
                  f'<{cell} class="dist">{mini_distribution(stats.distribution)}'
                  f'<span class="counts" title="scores 1 · 2 · 3 · 0">{counts}</span></{cell}>']
    cells.append(f'<{cell} class="overall">{_mean(group.overall_mean)}</{cell}>')
    return "<tr>" + "".join(cells) + "</tr>"


def _scores_table(report: ScoreReport) -> str:
    head = ('<thead><tr class="dims"><th class="key" rowspan="2">'
            f'{esc(report.group_by.value if report.group_by else "group")}</th><th rowspan="2">Cases</th>'
            '<th colspan="4" class="dim-interpretation">Interpretation</th>'
            '<th colspan="4" class="dim-annotation">Annotation</th><th rowspan="2">Overall mean</th></tr>'
            "<tr>" + '<th>n</th><th>Mean</th><th>Perfect</th><th class="key">1 · 2 · 3 · 0</th>' * 2
            + "</tr></thead>")
    body = "".join(_row(g, report.group_by) for g in report.groups)
    if not report.groups:
        body = '<tr><td class="key na" colspan="11">No reviews in this window.</td></tr>'
    foot = ""
    if report.group_by is not None:
        total = Group(key="All", cases=report.total.cases, interpretation=report.total.interpretation,
                      annotation=report.total.annotation)
        foot = "<tfoot>" + _row(total, None) + "</tfoot>"
    return f'<table id="scores">{head}<tbody>{body}</tbody>{foot}</table>'


def _cards(report: ScoreReport) -> str:
    t = report.total
    cards = [("Cases", str(t.cases), f"{len(report.rows)} reviews"),
             ("Interpretation", _mean(t.interpretation.mean), f"{_pct(t.interpretation.perfect_rate)} perfect"),
             ("Annotation", _mean(t.annotation.mean), f"{_pct(t.annotation.perfect_rate)} perfect"),
             ("Overall", _mean(t.overall_mean), "mean of the two means"),
             ("Not assessable", str(t.interpretation.distribution[0] + t.annotation.distribution[0]),
              "scores of 0 (not in means)")]
    return '<div class="cards" id="summary">' + "".join(
        f'<div class="card"><div class="label">{esc(label)}</div><div class="value">{value}</div>'
        f'<div class="sub">{sub}</div></div>' for label, value, sub in cards) + "</div>"


def _option(value: str, text: str, selected: str) -> str:
    sel = " selected" if value == selected else ""
    return f'<option value="{esc(value)}"{sel}>{esc(text)}</option>'


def _form(report: ScoreReport) -> str:
    f = report.filters
    mode = f.mode.value if f.mode else ""
    group_by = report.group_by.value if report.group_by else ""
    modes = _option("", "all", mode) + "".join(_option(m.value, m.value, mode) for m in JobMode)
    groups = _option("", "no grouping", group_by) + "".join(_option(g.value, g.value, group_by) for g in GroupBy)
    csv_query = {**f.query(), **({"group_by": group_by} if group_by else {}), "format": "csv"}
    return (
        '<section><h2>Filters</h2><form class="filters" method="get" action="scores.html">'
        f'<label>From (inclusive)<input name="from" value="{esc(f.raw_from or "")}" placeholder="2026-03-01"></label>'
        f'<label>To (a date: that whole day)<input name="to" value="{esc(f.raw_to or "")}" '
        'placeholder="2026-03-31"></label>'
        f'<label>Mode<select name="mode">{modes}</select></label>'
        f'<label>Group by<select name="group_by">{groups}</select></label>'
        f'<label>Time zone<input name="tz" value="{esc(f.raw_tz or "")}" placeholder="{esc(str(f.zone))}"></label>'
        '<button type="submit">Apply</button>'
        f'<a class="button secondary" href="scores?{esc(urlencode(csv_query))}">Download CSV</a></form>'
        f'<p class="hint">Dates are whole days in the time zone ({esc(str(f.zone))}; an IANA name such as '
        "Europe/Paris) or RFC 3339 times with Z or an offset (2026-03-01T08:00:00Z). The window is the "
        "review's creation time; amended reviews count once, with their current score.</p></section>")


def _agreement_table(report: ScoreReport) -> str:
    if not report.agreement:
        return ('<table id="agreement"><tbody><tr><td class="key na">No job was scored 1-3 by two or more '
                "reviewers in the same dimension in this window.</td></tr></tbody></table>")
    rows = []
    for pair in report.agreement:
        kappa = '<span class="na">–</span>' if pair.kappa.value is None else f"{pair.kappa.value:.3f}"
        rows.append(
            f'<tr><td class="key">{esc(pair.dimension.value)}</td><td class="key">{esc(pair.reviewer_a[1])}</td>'
            f'<td class="key">{esc(pair.reviewer_b[1])}</td><td>{pair.jobs}</td>'
            f"<td>{_pct(pair.exact_agreement)}</td>"
            f"<td>{kappa}</td>"
            f'<td class="key">{esc(pair.kappa.reason or "")}</td></tr>')
    return ('<table id="agreement"><thead><tr><th class="key">Dimension</th><th class="key">Reviewer A</th>'
            '<th class="key">Reviewer B</th><th>Jobs both scored</th><th>Exact agreement</th>'
            '<th>Weighted κ (quadratic)</th><th class="key">Note</th></tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


def _mean_rows(groups: Sequence[Group], unknown: str) -> tuple[list[MeanRow], str]:
    rows = [MeanRow(label=g.key if g.key is not None else unknown, interpretation=_f(g.interpretation.mean),
                    annotation=_f(g.annotation.mean), cases=g.cases) for g in groups]
    if len(rows) <= MAX_BAR_ROWS:
        return rows, ""
    kept = sorted(sorted(rows, key=lambda r: -r.cases)[:MAX_BAR_ROWS], key=lambda r: r.label.casefold())
    return kept, f'<p class="note">The {MAX_BAR_ROWS} with the most cases of {len(rows)} are shown.</p>'


def _charts(report: ScoreReport) -> str:
    by_mode = report.breakdown(GroupBy.mode)
    stack = [StackRow(f"{d.value.capitalize()} · {g.key}", g.dimension(d).distribution)
             for d in DIMENSIONS for g in by_mode]
    days = [DayPoint(date.fromisoformat(g.key), _f(g.interpretation.mean), _f(g.annotation.mean), g.cases)
            for g in report.breakdown(GroupBy.day) if g.key is not None]
    labels, labels_note = _mean_rows(report.breakdown(GroupBy.label), UNKNOWN[GroupBy.label])
    models, models_note = _mean_rows(report.breakdown(GroupBy.model), UNKNOWN[GroupBy.model])
    charts = [
        ("chart-distribution", "Score distribution per dimension and mode",
         stacked_distribution(stack, "Score distribution per dimension and mode"), ""),
        ("chart-daily", f"Mean score per day ({report.filters.zone})", daily_means(days, "Mean score per day"),
         '<p class="note">1 = acceptable … 3 = major errors: lower is better. Scores of 0 are left out.</p>'),
        ("chart-labels", "Mean score per view label (cases)", mean_bars(labels, "Mean score per view label"),
         labels_note),
        ("chart-models", "Mean score per model revision (cases)",
         mean_bars(models, "Mean score per model revision"), models_note),
    ]
    sections = "".join(f'<section id="{cid}"><h3>{esc(title)}</h3>{svg}{note}</section>'
                       for cid, title, svg, note in charts)
    return f'<div class="charts">{sections}</div>'


def render_html(report: ScoreReport) -> str:
    warnings = "".join(f'<div class="warning">{esc(w)}</div>' for w in report.filters.warnings)
    legend = '<div class="legend">' + "".join(
        f'<span><i style="background:{SCORE_COLORS[s]}"></i>{esc(SCORE_NAMES[s])}</span>' for s in STACK_ORDER
    ) + "</div>"
    title = _title(report)
    zone = report.filters.zone
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>FADA Serve · sonographer scores</title>"
        f"<style>{CSS}</style></head><body>"
        '<header><div class="kicker">FADA Serve · quality assurance</div><h1>Sonographer scores</h1>'
        f"<p>{esc(_window(report))}. Generated {esc(local_time(report.generated_at, zone))}.</p></header><main>"
        f"{warnings}{_form(report)}{_cards(report)}"
        f'<section><h2>{esc(title)}</h2>{_scores_table(report)}{legend}'
        '<p class="note">Scores: 1 clinically acceptable, 2 minor issues, 3 major errors; 0 not assessable '
        "(counted in n, left out of the mean and the perfect rate). Perfect = share of 1s among 1-3. "
        "Overall = mean of the two dimension means (as the model card reports it, from 3-place means).</p>"
        "</section>"
        f"{_charts(report)}"
        '<section style="margin-top:18px"><h2>Inter-rater agreement</h2>'
        f"{_agreement_table(report)}"
        '<p class="note">Quadratic-weighted Cohen\'s κ over the jobs both reviewers scored 1-3 in the dimension '
        "(scores of 0 excluded). 1 = perfect agreement, 0 = no better than chance.</p></section>"
        "</main><footer>Only current reviews count: superseded versions of amended reviews are not included. "
        f"All times and days in {esc(str(zone))}.</footer></body></html>")
