"""Sonographer reviews: scoring a job's interpretation and annotation (0-3), amending with
history, the HITL gate (the interpretation review that resumes or finishes a job awaiting
review), the review state of jobs and the reviewers' queue. Plain functions over a
SQLAlchemy ``Session``; none of them commits."""

from .corrections import AnnotationCorrection, Corrections, Text, check_corrections
from .errors import InvalidReview, ReviewConflict, ReviewExists, ReviewNotFound, ReviewsError, UnknownReview
from .hitl import LATER_PHASES, NO_PHASES_DETAIL, Gate
from .queue import QueueEntry, QueuePage, review_queue
from .reading import CorrectedAnnotations, ReviewRecord, corrected_annotations, get_own_review, list_reviews
from .state import refresh_review_state, required_dimensions
from .submit import ReviewInput, Submitted, amend_review, save_review, submit_review

__all__ = [
    "LATER_PHASES",
    "NO_PHASES_DETAIL",
    "AnnotationCorrection",
    "CorrectedAnnotations",
    "Corrections",
    "Gate",
    "InvalidReview",
    "QueueEntry",
    "QueuePage",
    "ReviewConflict",
    "ReviewExists",
    "ReviewInput",
    "ReviewNotFound",
    "ReviewRecord",
    "ReviewsError",
    "Submitted",
    "Text",
    "UnknownReview",
    "amend_review",
    "check_corrections",
    "corrected_annotations",
    "get_own_review",
    "list_reviews",
    "refresh_review_state",
    "required_dimensions",
    "review_queue",
    "save_review",
    "submit_review",
]
