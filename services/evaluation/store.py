"""Evaluations in the database: stored with their ground truth and metrics, listed newest
first with the same opaque keyset cursor as the job list. None of these functions commits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session, defer

from services.jobs.listing import MAX_LIMIT, decode_cursor, encode_cursor
from shared.db.models import Evaluation

from .run import Metrics


@dataclass(frozen=True)
class EvaluationPage:
    items: list[Evaluation]
    next_cursor: str | None  # None on the last page


def create_evaluation(session: Session, *, name: str, api_key_id: str, ground_truth: dict[str, Any],
                      metrics: Metrics) -> Evaluation:
    evaluation = Evaluation(name=name, api_key_id=api_key_id, ground_truth=ground_truth,
                            metrics=metrics.model_dump(mode="json"))
    session.add(evaluation)
    session.flush()
    return evaluation


def get_evaluation(session: Session, evaluation_id: str) -> Evaluation | None:
    """The evaluation without its ground truth (which can be large) loaded."""
    return session.scalars(select(Evaluation).options(defer(Evaluation.ground_truth))
                           .where(Evaluation.id == evaluation_id)).first()


def list_evaluations(session: Session, *, limit: int = 50, cursor: str | None = None) -> EvaluationPage:
    """Newest first (``created_at``, then ``id``, descending); ``cursor`` is the previous page's
    ``next_cursor`` (``InvalidCursor`` when it does not decode)."""
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}")
    stmt = select(Evaluation).options(defer(Evaluation.ground_truth))
    if cursor is not None:
        after_t, after_id = decode_cursor(cursor)
        stmt = stmt.where(or_(Evaluation.created_at < after_t,
                              and_(Evaluation.created_at == after_t, Evaluation.id < after_id)))
    rows = list(session.scalars(stmt.order_by(Evaluation.created_at.desc(), Evaluation.id.desc()).limit(limit + 1)))
    items = rows[:limit]
    next_cursor = encode_cursor(items[-1].created_at, items[-1].id) if len(rows) > limit else None
    return EvaluationPage(items=items, next_cursor=next_cursor)
