"""The HITL gate: the interpretation review of a job awaiting review chooses what happens next.

- ``accept``/``correct`` with ``next_phases`` (a subset of detect, segment, keypoints) and an
  optional routing ``group``: the job is resumed (awaiting_review -> queued) and a worker runs
  those phases; without a group, MAP picks the classes from the interpretation.
- ``accept``/``correct`` with ``next_phases: []``: the reviewer wants nothing more; the job is
  finished at once (no worker round trip), its later phases ``skipped`` with
  ``NO_PHASES_DETAIL``.
- ``reject``: finished at once likewise, the later phases ``skipped`` with
  ``"rejected by the reviewer"``.
- ``accept``/``correct`` with ``next_phases`` left out: 422; the reviewer must choose.

``next_phases`` and ``group`` mean nothing elsewhere: on annotation reviews and on autonomous
jobs they are a 422; on a HITL job past its gate (the phases were chosen already) a 409.
The job's ``hitl_choice`` keeps the choice and the id of the review that made it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from services.jobs import REJECTED_DETAIL, finish_hitl, resume_hitl
from services.pipeline.mapping import MapDecision, map_group, map_reviewed, runnable_phases
from services.pipeline.profile import Profile
from shared.db.models import Job, JobMode, JobStatus, ReviewDecision, ReviewDimension
from shared.schemas.results import ResultDocument

from .corrections import Corrections
from .errors import InvalidReview, ReviewConflict

LATER_PHASES = ("detect", "segment", "keypoints")
NO_PHASES_DETAIL = "no further phases chosen by the reviewer"


@dataclass(frozen=True)
class Gate:
    """What an interpretation review of a job awaiting review decided."""

    phases: list[str]
    group: str | None
    decision: ReviewDecision
    corrections: Corrections | None = None

    @property
    def resumes(self) -> bool:
        """True when a worker must run phases (enqueue the job after commit)."""
        return bool(self.phases)

    def choice(self, review_id: str) -> dict[str, Any]:
        # The worker reads next_phases, group and the corrected label and interpretation (MAP
        # reads them over the model's); review_id ties the job to the review that chose, and
        # decision tells a rejected job from one finished with no phases chosen.
        choice: dict[str, Any] = {"next_phases": list(self.phases), "group": self.group, "review_id": review_id,
                                  "decision": self.decision.value}
        if self.corrections is not None and self.corrections.label is not None:
            choice["label"] = self.corrections.label
        if self.corrections is not None and self.corrections.interpretation:
            choice["interpretation"] = dict(self.corrections.interpretation)
        return choice


def gate_of(job: Job, dimension: ReviewDimension, decision: ReviewDecision, next_phases: Sequence[str] | None,
            group: str | None, profile: Profile, *, corrections: Corrections | None = None,
            first_stage: ResultDocument | None = None) -> Gate | None:
    """The gate this review is, or None for a plain score; raises for a choice that does not fit.
    ``first_stage`` is the job's result so far: without a group, MAP over it (as corrected)
    must give the chosen phases something to run."""
    chooses = next_phases is not None or group is not None
    if dimension is not ReviewDimension.interpretation:
        if chooses:
            raise InvalidReview("next_phases and group belong to an interpretation review (the HITL choice of the "
                                "later phases), not to an annotation review")
        return None
    if job.mode is JobMode.autonomous:
        if chooses:
            raise InvalidReview(f"next_phases and group apply to HITL jobs only; job {job.id} is autonomous")
        return None
    if job.status is not JobStatus.awaiting_review:
        if chooses:
            raise ReviewConflict(f"job {job.id} is {job.status.value}: its later phases were chosen already; "
                                 "leave next_phases and group out", code="phases_chosen_already",
                                 current_status=job.status.value)
        return None
    if decision is ReviewDecision.reject:
        if next_phases or group is not None:
            raise InvalidReview("decision reject finishes the job without later phases; leave next_phases and "
                                "group out")
        return Gate(phases=[], group=None, decision=decision)
    if next_phases is None:
        raise InvalidReview(f"job {job.id} awaits the reviewer's choice: an interpretation review that accepts or "
                            f"corrects it must give next_phases (any of {', '.join(LATER_PHASES)}; [] finishes it "
                            "without later phases)")
    phases = _phases(next_phases)
    if group is not None:
        _check_group(group, phases, profile)
    elif phases and first_stage is not None:
        _check_mapped(phases, first_stage, corrections, profile)
    return Gate(phases=phases, group=group, decision=decision, corrections=corrections)


def apply_gate(session: Session, job_id: str, gate: Gate, review_id: str) -> None:
    """Resume or finish the job in the caller's transaction. A job that left awaiting_review
    meanwhile (another reviewer's gate won the race) is a 409; the caller rolls back."""
    if gate.resumes:
        done = resume_hitl(session, job_id, gate.choice(review_id))
    else:
        detail = REJECTED_DETAIL if gate.decision is ReviewDecision.reject else NO_PHASES_DETAIL
        done = finish_hitl(session, job_id, gate.choice(review_id), detail=detail)
    if not done:
        raise ReviewConflict(f"job {job_id} is no longer awaiting review: another review chose its phases first",
                             code="phases_chosen_already")


def gate_review_id(job: Job) -> str | None:
    """The id of the review that chose this job's later phases, if any."""
    choice = job.hitl_choice or {}
    value = choice.get("review_id")
    return value if isinstance(value, str) else None


def finished_without_phases(job: Job) -> bool:
    """A HITL job whose reviewer chose no later phases (rejected, or chose []): it has no
    annotations, so it needs no annotation review."""
    return job.mode is JobMode.hitl and job.hitl_choice is not None and not job.hitl_choice.get("next_phases")


def _phases(next_phases: Sequence[str]) -> list[str]:
    unknown = [p for p in next_phases if p not in LATER_PHASES]
    if unknown:
        raise InvalidReview(f"next_phases {unknown} are not later phases; choose from {', '.join(LATER_PHASES)}")
    repeated = sorted({p for p in next_phases if list(next_phases).count(p) > 1})
    if repeated:
        raise InvalidReview(f"next_phases repeats {repeated}")
    return list(next_phases)


def _check_group(group: str, phases: list[str], profile: Profile) -> None:
    if group not in profile.map.routing_groups:
        raise InvalidReview(f"group {group!r} is not a routing group of profile {profile.name}; choose one of: "
                            f"{', '.join(profile.map.routing_groups)}")
    if not phases:
        raise InvalidReview("a group chooses the classes of later phases: with next_phases [] leave it out")
    _refuse_running_nothing(phases, map_group(group, profile.map), profile,
                            lambda runnable: f" for group {group!r}: it is localised by {runnable}")


def _check_mapped(phases: list[str], first_stage: ResultDocument, corrections: Corrections | None,
                  profile: Profile) -> None:
    """The same check without a group: what MAP will choose from the (corrected) first stage."""
    decision = map_reviewed(first_stage.classification.label if first_stage.classification else None,
                            first_stage.interpretation, profile.map,
                            corrected_label=corrections.label if corrections else None,
                            corrected_interpretation=corrections.interpretation if corrections else None)
    _refuse_running_nothing(phases, decision, profile,
                            lambda runnable: f": MAP ({decision.tier}: {decision.reason}) localises by {runnable}; "
                                             "choose those, or a group")


def _refuse_running_nothing(phases: list[str], decision: MapDecision, profile: Profile,
                            why: Callable[[str], str]) -> None:
    """Catch a choice that would run nothing, rather than succeed silently empty."""
    runnable = runnable_phases(decision, profile.keypoint_classes)
    if not set(phases) & set(runnable):
        raise InvalidReview(f"next_phases {phases} would run nothing{why(' and '.join(runnable))}")
