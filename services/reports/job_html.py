"""One job as a self-contained page for the people who judge it: the picture (the image with
the annotations drawn), the interpretation, the view label, the map, every phase with what it
dropped, the annotations as numbers, and the reviews.

Like the score report: inline CSS, the picture as a ``data:`` URI, no script, no external
asset, every piece of text from the data escaped. Links stay relative (``?review=ID`` on the
same page) so the page works behind a proxy that serves the API under a prefix.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from urllib.parse import quote

from services.reviews import LATER_PHASES, QueueEntry, QueuePage
from shared.db.models import JobMode, JobStatus
from shared.schemas.results import ResultDocument

from .html_render import CSS, local_time
from .job_view import JobView, ReviewLine
from .svg import esc

PAGE_CSS = CSS + """
form.review{display:grid;gap:10px;margin:0 0 6px}
form.review fieldset{border:1px solid #e2e8f0;border-radius:8px;padding:8px 12px;display:flex;flex-wrap:wrap;
gap:6px 18px}
form.review legend{font-size:12px;color:#4a5568;padding:0 4px}
form.review textarea{font:inherit;width:100%;min-height:64px;padding:6px 8px;border:1px solid #cbd5e0;
border-radius:6px}
form.review select{font:inherit;padding:5px 8px;border:1px solid #cbd5e0;border-radius:6px}
form.review button{justify-self:start}
form.review .fields-edit{display:grid;gap:8px;margin:8px 0 0}form.review summary{cursor:pointer;color:#2b6cb0}
.error{background:#fff5f5;border:1px solid #fc8181;color:#742a2a;border-radius:8px;padding:10px 14px;margin:0 0 18px}
header .kicker a{color:inherit}
figure{margin:0}figure img{max-width:100%;height:auto;border-radius:6px;display:block;image-rendering:auto}
figcaption{font-size:12px;color:#4a5568;margin:6px 0 0}
.untrained{background:#fff5f5;border:1px solid #fc8181;color:#9b2c2c;border-radius:8px;padding:10px 14px;
margin:0 0 18px;font-weight:600}
.facts{display:grid;grid-template-columns:repeat(4,1fr);gap:12px;margin:0 0 18px}
.facts div{background:#fff;border:1px solid #e2e8f0;border-radius:10px;padding:10px 14px}
.facts b{display:block;font-size:11px;color:#4a5568;text-transform:uppercase;letter-spacing:.05em;font-weight:600}
dl.fields{display:grid;grid-template-columns:max-content minmax(0,1fr);gap:6px 16px;margin:0}
dl.fields dt{font-weight:600;color:#2d3748}
dl.fields dd{margin:0;white-space:pre-wrap;overflow-wrap:anywhere;min-width:0}
td.text,th.text{text-align:left;white-space:normal;overflow-wrap:anywhere}
.status-ok{color:#276749}.status-skipped{color:#718096}.status-error,.status-invalid_output{color:#9b2c2c}
@media (max-width:900px){.facts{grid-template-columns:repeat(2,1fr)}}
"""


@dataclass(frozen=True)
class ReviewForms:
    """What the page needs to offer its reader the review forms (reviewers only)."""

    token: str  # ``api.form_tokens``: ties a posted form to this page and this key
    reviewer_key_id: str
    view_labels: Sequence[str]
    routing_groups: Sequence[str]
    interpretation_fields: Sequence[str] = ()


def render_job_page(view: JobView, *, zone: tzinfo, forms: ReviewForms | None = None, error: str | None = None) -> str:
    """The page; with ``forms``, the reader's review forms for what is open to review now;
    ``error`` is shown at the top (a refused form post)."""
    job, document = view.job, view.document
    title = f"Job {job.id}"
    untrained = (
        '<div class="untrained">Untrained model (random weights): this is not a clinical reading.</div>'
        if document is not None and document.model.untrained else "")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>FADA Serve · {esc(title)}</title><style>{PAGE_CSS}</style></head><body>"
        '<header><div class="kicker"><a href="../queue.html">FADA Serve · review queue</a> · job</div>'
        f"<h1>{esc(job.external_id or job.id)}</h1><p>{esc(title)}</p></header><main>"
        f"{_error(error)}{untrained}{_facts(view, zone)}{_picture(view)}"
        f"{_reading(document) if document is not None else ''}"
        f"{_annotations(document) if document is not None else ''}"
        f"{_phases(document) if document is not None else ''}"
        f"{_reviews(view.reviews, view.shown_review, zone)}"
        f"{_forms(view, forms) if forms is not None else ''}"
        f"</main><footer>All times in {esc(str(zone))}. Geometry in pixels of the original image "
        "(COCO: bbox = x, y, width, height).</footer></body></html>")


def _facts(view: JobView, zone: tzinfo) -> str:
    job, document = view.job, view.document
    model = document.model if document is not None else None
    image = document.image if document is not None else None
    facts = [
        ("status", job.status.value + (f" ({job.error_code})" if job.error_code else "")),
        ("mode", job.mode.value), ("review", job.review_state.value),
        ("submitted", local_time(job.created_at, zone)),
        ("view label", _view_label(view)),
        ("model", f"{model.revision} ({model.profile})" if model else job.model_revision or "–"),
        ("image", f"{image.width} × {image.height} px, {image.format}, frame {image.frame}" if image else "–"),
        ("pixel spacing", f"{image.pixel_spacing_mm[0]:.4g} × {image.pixel_spacing_mm[1]:.4g} mm"
         if image and image.pixel_spacing_mm else "–"),
    ]
    if job.burned_in_annotation == "YES":
        facts.append(("burned-in text", "YES: the pixels may carry identifying text"))
    return '<div class="facts">' + "".join(f"<div><b>{esc(k)}</b>{esc(v)}</div>" for k, v in facts) + "</div>"


def _view_label(view: JobView) -> str:
    """The model's view label, and the one the latest correcting interpretation review gave."""
    document = view.document
    label = document.classification.label if document and document.classification else "–"
    corrected = [r for r in view.reviews if r.dimension == "interpretation" and r.corrected_label]
    if corrected:
        latest = max(corrected, key=lambda r: r.amended_at or r.created_at)
        return f"{label} → {latest.corrected_label} ({latest.reviewer})"
    return label


def _picture(view: JobView) -> str:
    if view.picture is None:
        note = view.picture_note[:1].upper() + view.picture_note[1:]
        return f'<section><h2>Image</h2><p class="note">{esc(note)}</p></section>'
    data = base64.b64encode(view.picture).decode("ascii")
    back = ' <a href="?">Show the model\'s annotations.</a>' if view.shown_review else ""
    return (f'<section><h2>Image</h2><figure><img alt="{esc(view.picture_note)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{esc(view.picture_note)}.{back}</figcaption>'
            "</figure></section>")


def _reading(document: ResultDocument) -> str:
    fields = "".join(f"<dt>{esc(k.replace('_', ' '))}</dt><dd>{esc(v)}</dd>"
                     for k, v in (document.interpretation or {}).items())
    mapping = document.mapping
    mapped = (f"<p>Map: tier {esc(mapping.tier)}{f', group {esc(mapping.group)}' if mapping.group else ''}; "
              f"detect {esc(', '.join(mapping.detect_classes) or '–')}; "
              f"segment {esc(', '.join(mapping.segment_classes or []) or '–')}.</p>" if mapping else "")
    body = f'<dl class="fields">{fields}</dl>' if fields else '<p class="note">No interpretation.</p>'
    return f"<section><h2>Interpretation</h2>{body}{mapped}</section>"


def _annotations(document: ResultDocument) -> str:
    rows: list[tuple[str, str, Sequence[float], str, str]] = []
    rows += [("box", d.label, d.bbox, _score(d.score), "") for d in document.detections]
    rows += [("mask", s.label, s.bbox, _score(s.score), f"area {s.area:.0f} px²") for s in document.segmentations]
    rows += [("keypoints", k.label, k.bbox, "", f"{k.num_keypoints} labelled") for k in document.keypoints]
    if not rows:
        return '<section><h2>Annotations</h2><p class="note">The model gave none.</p></section>'
    body = "".join(
        f'<tr><td class="key">{esc(kind)}</td><td class="key">{esc(label)}</td>'
        f"<td>{', '.join(f'{v:.1f}' for v in bbox)}</td><td>{esc(score)}</td><td class=\"text\">{esc(extra)}</td></tr>"
        for kind, label, bbox, score, extra in rows)
    return ('<section><h2>Annotations (the model\'s)</h2><table><thead><tr><th class="key">kind</th>'
            '<th class="key">class</th><th>bbox</th><th>score</th><th class="text"></th></tr></thead>'
            f"<tbody>{body}</tbody></table></section>")


def _phases(document: ResultDocument) -> str:
    body = "".join(
        f'<tr><td class="key">{esc(name)}</td><td class="key status-{esc(p.status)}">{esc(p.status)}</td>'
        f"<td>{'' if p.latency_ms is None else f'{p.latency_ms:.0f} ms'}</td>"
        f'<td class="text">{esc("; ".join(filter(None, [p.detail, *p.dropped])))}</td></tr>'
        for name, p in document.phases.items())
    return ('<section><h2>Phases</h2><table><thead><tr><th class="key">phase</th><th class="key">status</th>'
            f'<th>time</th><th class="text">detail, items dropped</th></tr></thead><tbody>{body}</tbody></table>'
            "</section>")


def _reviews(reviews: list[ReviewLine], shown: ReviewLine | None, zone: tzinfo) -> str:
    if not reviews:
        return '<section><h2>Reviews</h2><p class="note">Not reviewed yet.</p></section>'

    def row(r: ReviewLine) -> str:
        if r.corrects_annotations:
            link = ("shown above" if shown and shown.id == r.id
                    else f'<a href="?review={quote(r.id)}">show its annotations</a>')
        else:
            link = ""
        when = local_time(r.amended_at or r.created_at, zone) + (f" (version {r.revision})" if r.revision > 1 else "")
        chosen = ", ".join(r.next_phases) if r.next_phases is not None else ""
        return (f'<tr><td class="key">{esc(r.reviewer)}</td><td class="key">{esc(r.dimension)}</td>'
                f"<td>{r.score}</td><td class=\"key\">{esc(r.decision)}</td>"
                f'<td class="text">{esc(r.comment or "")}</td>'
                f'<td class="text">{esc(chosen)}{esc(f" ({r.group})" if r.group else "")}</td>'
                f"<td>{esc(when)}</td><td class=\"key\">{link}</td></tr>")

    return ('<section><h2>Reviews</h2><table><thead><tr><th class="key">reviewer</th><th class="key">dimension</th>'
            '<th>score</th><th class="key">decision</th><th class="text">comment</th>'
            '<th class="text">next phases</th><th>when</th><th class="key"></th></tr></thead>'
            f"<tbody>{''.join(row(r) for r in reviews)}</tbody></table>"
            '<p class="note">Scores: 1 clinically acceptable, 2 minor issues, 3 major errors, 0 not assessable.</p>'
            "</section>")


SCORE_CHOICES = ((1, "1 acceptable"), (2, "2 minor issues"), (3, "3 major errors"), (0, "0 not assessable"))
DECISIONS = ("accept", "correct", "reject")


def _error(error: str | None) -> str:
    return f'<div class="error" role="alert">{esc(error)}</div>' if error else ""


def _open_dimensions(view: JobView) -> list[str]:
    """What can be reviewed now: the interpretation once there is a result; the annotations
    once the job has run a later phase (a HITL job finished without one has none)."""
    job, document = view.job, view.document
    if document is None or job.status not in (JobStatus.awaiting_review, JobStatus.succeeded):
        return []
    open_ = ["interpretation"]
    ran_later = any(p in document.phases and document.phases[p].status != "skipped" for p in LATER_PHASES)
    if job.status is JobStatus.succeeded and (job.mode is JobMode.autonomous or ran_later):
        open_.append("annotation")
    return open_


def _forms(view: JobView, forms: ReviewForms) -> str:
    dimensions = _open_dimensions(view)
    if not dimensions:
        return ('<section><h2>Your review</h2><p class="note">Nothing to review now: the job is '
                f"{esc(view.job.status.value)}.</p></section>")
    own = {r.dimension: r for r in view.reviews if r.reviewer_key_id == forms.reviewer_key_id}
    return ("<section><h2>Your review</h2>"
            + "".join(_form(view, forms, d, own.get(d)) for d in dimensions)
            + '<p class="note">Corrected boxes, masks and keypoints are sent through the API '
            "(<code>corrections.annotations</code>); this form scores and comments.</p></section>")


def _form(view: JobView, forms: ReviewForms, dimension: str, mine: ReviewLine | None) -> str:
    job = view.job
    chooses = (dimension == "interpretation" and job.status is JobStatus.awaiting_review
               and job.mode is JobMode.hitl)

    def radios(name: str, choices: Sequence[tuple[object, str]], current: object) -> str:
        return "".join(
            f'<label><input type="radio" name="{name}" value="{esc(str(value))}" required'
            f'{" checked" if value == current else ""}> {esc(text)}</label>' for value, text in choices)

    fields = [
        f'<input type="hidden" name="token" value="{esc(forms.token)}">',
        f'<input type="hidden" name="dimension" value="{esc(dimension)}">',
        f"<fieldset><legend>score</legend>{radios('score', SCORE_CHOICES, mine.score if mine else None)}</fieldset>",
        "<fieldset><legend>decision</legend>"
        f"{radios('decision', [(d, d) for d in DECISIONS], mine.decision if mine else None)}</fieldset>",
    ]
    if dimension == "interpretation":
        current = mine.corrected_label if mine else None
        options = "".join(f'<option value="{esc(label)}"{" selected" if label == current else ""}>{esc(label)}</option>'
                          for label in forms.view_labels)
        fields.append('<label>corrected view label (decision correct) <select name="label">'
                      f'<option value="">keep the model&#39;s</option>{options}</select></label>')
        fields.append(_interpretation_fields(view, forms, mine))
    if chooses:
        boxes = "".join(f'<label><input type="checkbox" name="next_phases" value="{p}"> {p}</label>'
                        for p in LATER_PHASES)
        groups = "".join(f'<option value="{esc(g)}">{esc(g)}</option>' for g in forms.routing_groups)
        fields += ['<input type="hidden" name="choose_phases" value="1">',
                   f"<fieldset><legend>then run (none: finish the job now)</legend>{boxes}</fieldset>",
                   '<label>structure group <select name="group"><option value="">as the map gives</option>'
                   f"{groups}</select></label>"]
    comment = esc(mine.comment or "") if mine else ""
    fields.append(f'<label>comment<textarea name="comment" maxlength="4000">{comment}</textarea></label>')
    verb = f"Amend your {dimension} review (version {mine.revision + 1})" if mine else f"Save the {dimension} review"
    return (f'<h3>{esc(dimension.capitalize())}</h3><form class="review" method="post" '
            f'action="{quote(job.id)}/reviews">{"".join(fields)}<button type="submit">{esc(verb)}</button></form>')


def _interpretation_fields(view: JobView, forms: ReviewForms, mine: ReviewLine | None) -> str:
    """A text box per interpretation field, holding the model's text (or the reader's earlier
    correction): what the reader changes is sent as ``corrections.interpretation``. Each box
    follows a hidden ``field`` naming it: a form's repeated fields arrive in document order."""
    model = (view.document.interpretation if view.document else None) or {}
    corrected = (mine.corrected_interpretation if mine else None) or {}
    boxes = "".join(
        f'<input type="hidden" name="field" value="{esc(name)}"><label>{esc(name.replace("_", " "))}'
        f'<textarea name="text" maxlength="4000">{esc(corrected.get(name, model.get(name, "")))}</textarea></label>'
        for name in forms.interpretation_fields)
    opened = " open" if corrected else ""
    return (f"<details{opened}><summary>Correct the interpretation text (decision correct)</summary>"
            f'<div class="fields-edit">{boxes}</div></details>')


def _score(score: float | None) -> str:
    return "" if score is None else f"{score:.2f}"


def render_queue_page(page: QueuePage, *, reviewer: str, zone: tzinfo, now: datetime, limit: int) -> str:
    """A reviewer's queue: the HITL jobs waiting for them, oldest first, each a link to its page."""

    def row(entry: QueueEntry) -> str:
        job = entry.job
        since = job.waiting_since or job.created_at
        waited = _duration(now - since)
        name = esc(job.external_id or job.id)
        return (f'<tr><td class="key"><a href="jobs/{quote(job.id)}.html">{name}</a></td>'
                f'<td class="key">{esc(", ".join(d.value for d in entry.pending))}</td>'
                f'<td class="key">{esc(job.status.value)}</td><td>{esc(local_time(since, zone))}</td>'
                f"<td>{esc(waited)}</td></tr>")

    if page.items:
        body = ('<table><thead><tr><th class="key">job</th><th class="key">to review</th><th class="key">status</th>'
                f"<th>waiting since</th><th>waited</th></tr></thead><tbody>{''.join(map(row, page.items))}"
                "</tbody></table>")
    else:
        body = '<p class="note">Nothing is waiting for you.</p>'
    following = f"?limit={limit}&amp;cursor={quote(page.next_cursor)}" if page.next_cursor else ""
    more = f'<p><a class="button secondary" href="{following}">Next page</a></p>' if following else ""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>FADA Serve · review queue</title><style>{PAGE_CSS}</style></head><body>"
        '<header><div class="kicker">FADA Serve · review</div><h1>Waiting for your review</h1>'
        f"<p>{esc(reviewer)}: human-in-the-loop jobs, oldest first.</p></header><main>"
        f"<section>{body}{more}"
        '<p class="note">interpretation: the first stage, whose review chooses the later phases; '
        "annotation: the finished job's boxes, masks and keypoints.</p></section>"
        f"</main><footer>All times in {esc(str(zone))}.</footer></body></html>")


def _duration(elapsed: timedelta) -> str:
    minutes = max(0, int(elapsed.total_seconds() // 60))
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    return f"{days} d {hours} h" if days else f"{hours} h {minutes} min" if hours else f"{minutes} min"
