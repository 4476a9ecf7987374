"""The five phases in order, for one image: interpret, classify -> MAP -> detect or keypoints
-> segment. A phase that does not run says ``skipped`` and why; a model answer that fails
validation makes its phase ``invalid_output`` (never an exception), with the raw text kept.

HITL mode stops after interpret + classify; ``resume`` later runs the reviewer's chosen
phases (and group) from the saved result document, without redoing finished phases.

``run_batch`` does this for many images at once, phase by phase in waves across the images so
the model decodes their answers together; ``analyze`` and ``resume`` are batches of one.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

import xgrammar as xgr

from services.ingest import DecodedImage
from services.models.loader import Provenance
from services.pipeline import grammars
from services.pipeline.batching import GenRequest
from services.pipeline.engine import Engine, Generation, ImagePrefix
from services.pipeline.mapping import MapDecision, map_group, map_reviewed, needs_keypoints
from services.pipeline.normalize import ImageGeometry, build_annotations
from services.pipeline.parsing import parse_phase
from services.pipeline.profile import Profile
from shared.schemas.results import (
    Classification,
    Detection,
    ImageInfo,
    Keypoints,
    Mapping,
    ModelInfo,
    PhaseName,
    PhaseReport,
    ResultDocument,
    Segmentation,
)

Mode = Literal["autonomous", "hitl"]
PHASE_ORDER: tuple[PhaseName, ...] = ("interpret", "classify", "map", "detect", "keypoints", "segment")
LOCALISATION_PHASES: tuple[PhaseName, ...] = ("detect", "keypoints", "segment")
HITL_WAITING = "awaiting the reviewer's choice of phases (HITL)"


class ResumeError(ValueError):
    """A resume request that does not fit the saved state (wrong status, unknown phase...)."""


class Abandoned(RuntimeError):
    """The item's ``abandoned`` said so mid-run: its model work stopped and it has no document."""


@dataclass
class BatchItem:
    """One image's work in ``Pipeline.run_batch``: a fresh analysis in ``mode``, or, when
    ``resume_state`` is given, the resume of that saved HITL document with the reviewer's chosen
    ``phases`` (and MAP ``group``); ``mode`` is then ignored."""

    decoded: DecodedImage
    mode: Mode = "autonomous"
    resume_state: ResultDocument | None = None
    phases: Sequence[str] = ()
    group: str | None = None
    # The reviewer's corrections of the first stage (view label, interpretation fields): MAP
    # of the resumed job reads them over the model's (without a ``group``).
    corrected_label: str | None = None
    corrected_interpretation: dict[str, str] | None = None
    # True once the caller no longer wants this item (a worker that lost the job's lease): the
    # model stops working on it at its next decode step and it ends as ``Abandoned``.
    abandoned: Callable[[], bool] | None = None


@dataclass
class _Job:
    """One item on its way through the waves."""

    item: BatchItem
    doc: ResultDocument
    decision: MapDecision | None = None  # after MAP; a resume knows it from the start
    wanted: tuple[str, ...] = LOCALISATION_PHASES
    error: Exception | None = None  # the item's own failure: it gets this instead of a document

    @property
    def resuming(self) -> bool:
        return self.item.resume_state is not None

    @property
    def waiting(self) -> bool:
        return not self.resuming and self.item.mode == "hitl"

    def given_up(self) -> bool:
        """True (and the job failed as ``Abandoned``) once its caller abandoned it."""
        if self.error is None and self.item.abandoned is not None and self.item.abandoned():
            self.error = Abandoned("abandoned by the caller; its model work stopped")
        return isinstance(self.error, Abandoned)


@dataclass
class _Call:
    """One model phase of one job, ready for a wave."""

    job: _Job
    phase: PhaseName
    labels: Sequence[str]
    prompt: str
    grammar: xgr.CompiledGrammar
    budget: int
    prep_ms: float


_Planned = tuple[_Job, PhaseName, Sequence[str]]
_T = TypeVar("_T")


class Pipeline:
    def __init__(self, engine: Engine, profile: Profile, provenance: Provenance, *,
                 share_prefix: bool = True, max_batch: int = 8) -> None:
        """``share_prefix=False`` re-encodes the image for every phase, as the reference app
        does; it exists for the benchmark and for diagnosis, not for serving (and runs the
        phases one by one). ``max_batch`` bounds the rows decoded together in ``run_batch``."""
        self.engine = engine
        self.share_prefix = share_prefix
        self.max_batch = max_batch
        self.profile = profile
        self.provenance = provenance
        tokens = profile.max_new_tokens
        # Fixed-shape grammars are built once; list grammars depend on the requested classes.
        self._interpret = grammars.interpret_grammar(profile.interpretation_fields, profile.limits,
                                                     tokens.interpret)
        self._classify = grammars.classify_grammar(profile.view_labels, tokens.classify)
        self._compiled: dict[str, xgr.CompiledGrammar] = {
            "interpret": engine.compile(self._interpret),
            "classify": engine.compile(self._classify),
        }

    # -- public ---------------------------------------------------------------------------

    def analyze(self, decoded: DecodedImage, *, mode: Mode = "autonomous",
                abandoned: Callable[[], bool] | None = None) -> ResultDocument:
        return _unwrap(self.run_batch([BatchItem(decoded, mode=mode, abandoned=abandoned)])[0])

    def resume(self, decoded: DecodedImage, state: ResultDocument, *, phases: Sequence[str],
               group: str | None = None, corrected_label: str | None = None,
               corrected_interpretation: dict[str, str] | None = None,
               abandoned: Callable[[], bool] | None = None) -> ResultDocument:
        """Run the reviewer's chosen phases on a HITL document; interpret/classify are kept (MAP
        reads the reviewer's corrections of them over the model's)."""
        item = BatchItem(decoded, resume_state=state, phases=tuple(phases), group=group,
                         corrected_label=corrected_label, corrected_interpretation=corrected_interpretation,
                         abandoned=abandoned)
        return _unwrap(self.run_batch([item])[0])

    def run_batch(self, items: Sequence[BatchItem]) -> list[ResultDocument | Exception]:
        """Each item's document, or the exception its own processing raised, in item order.

        The model runs in two waves across all items: interpret + classify of every fresh item;
        then, after each one's MAP (no model), the localisation phases of the autonomous items
        and of the resumes together. HITL items stop after the first wave. Each image is encoded
        at most once, and only if one of its phases needs the model.
        """
        jobs = [self._start(item) for item in items]
        live = [job for job in jobs if isinstance(job, _Job)]
        prefixes = _Prefixes(self.engine)
        fresh = [job for job in live if not job.resuming]
        self._run_wave([(job, phase, labels) for job in fresh for phase, labels in self._first_phases()], prefixes)
        for job in fresh:
            _guard(job, self._after_first_wave)
        second: list[_Planned] = []
        for job in live:
            if job.error is None and job.decision is not None:
                second += _guard(job, self._plan_localisation) or []
        prefixes.keep_only({job.item.decoded.sha256 for job, _, _ in second})
        self._run_wave(second, prefixes)
        return [job if isinstance(job, Exception) else _finish(job) for job in jobs]

    # -- planning ---------------------------------------------------------------------------

    def _start(self, item: BatchItem) -> _Job | Exception:
        try:
            if item.resume_state is None:
                return _Job(item, self._new_document(item.decoded))
            return self._start_resume(item, item.resume_state)
        except Exception as exc:  # this item's problem, not the batch's
            return exc

    def _start_resume(self, item: BatchItem, state: ResultDocument) -> _Job:
        if state.status != "awaiting_review":
            raise ResumeError(f"only a document awaiting review can be resumed (status {state.status})")
        unknown = set(item.phases) - set(LOCALISATION_PHASES)
        if unknown:
            raise ResumeError(f"unknown phases {sorted(unknown)}; choose from {list(LOCALISATION_PHASES)}")
        if state.image.sha256 != item.decoded.sha256:
            raise ResumeError("the image does not match the saved document")
        job = _Job(item, state.model_copy(deep=True), wanted=tuple(item.phases))
        if job.doc.image.frame_count is None:  # a first stage stored before results named their frame
            job.doc.image = job.doc.image.model_copy(
                update={"frame": item.decoded.frame, "frame_count": item.decoded.frame_count})
        if item.group is not None:
            try:
                job.decision = map_group(item.group, self.profile.map)
            except ValueError as exc:
                raise ResumeError(str(exc)) from exc
            self._record_mapping(job.doc, job.decision, latency_ms=0.0)
        else:
            job.decision = self._map(job.doc, corrected_label=item.corrected_label,
                                     corrected_interpretation=item.corrected_interpretation)
        return job

    def _first_phases(self) -> list[tuple[PhaseName, Sequence[str]]]:
        return [("interpret", self.profile.interpretation_fields), ("classify", self.profile.view_labels)]

    def _after_first_wave(self, job: _Job) -> None:
        """HITL: wait for the reviewer; otherwise MAP decides the localisation phases."""
        if job.waiting:
            for phase in ("map", *LOCALISATION_PHASES):
                job.doc.phases[phase] = PhaseReport(status="skipped", detail=HITL_WAITING)
            job.doc.status = "awaiting_review"
        else:
            job.decision = self._map(job.doc)

    def _plan_localisation(self, job: _Job) -> list[_Planned]:
        """Record the phases that will not run (and why); return those that will, in order."""
        decision, doc = job.decision, job.doc
        assert decision is not None
        uses_keypoints = needs_keypoints(decision.detect_classes, self.profile.keypoint_classes)
        box_phase: PhaseName = "keypoints" if uses_keypoints else "detect"
        other: PhaseName = "detect" if uses_keypoints else "keypoints"
        doc.phases[other] = PhaseReport(
            status="skipped",
            detail="replaced by keypoints: MAP classes include keypoint classes" if uses_keypoints
            else "MAP classes include no keypoint classes")
        planned: list[_Planned] = []
        if box_phase in job.wanted:
            planned.append((job, box_phase, decision.detect_classes))
        else:
            doc.phases[box_phase] = PhaseReport(status="skipped", detail="not chosen by the reviewer")
        if not decision.segment_classes:
            doc.phases["segment"] = PhaseReport(status="skipped", detail="MAP gave no segment classes")
        elif "segment" in job.wanted:
            planned.append((job, "segment", decision.segment_classes))
        else:
            doc.phases["segment"] = PhaseReport(status="skipped", detail="not chosen by the reviewer")
        return planned

    # -- phases -----------------------------------------------------------------------------

    def _new_document(self, decoded: DecodedImage) -> ResultDocument:
        p = self.provenance
        return ResultDocument(
            status="running",
            model=ModelInfo(base=p.base, adapter=p.adapter, revision=p.revision,
                            profile=f"{self.profile.name}@{self.profile.version}", untrained=p.untrained),
            image=ImageInfo(width=decoded.width, height=decoded.height, sha256=decoded.sha256,
                            format=decoded.format, pixel_spacing_mm=decoded.pixel_spacing_mm,
                            frame=decoded.frame, frame_count=decoded.frame_count),
        )

    def _map(self, doc: ResultDocument, *, corrected_label: str | None = None,
             corrected_interpretation: dict[str, str] | None = None) -> MapDecision:
        started = time.perf_counter()
        label = doc.classification.label if doc.classification else None
        decision = map_reviewed(label, doc.interpretation, self.profile.map, corrected_label=corrected_label,
                                corrected_interpretation=corrected_interpretation)
        self._record_mapping(doc, decision, latency_ms=(time.perf_counter() - started) * 1000)
        return decision

    @staticmethod
    def _record_mapping(doc: ResultDocument, decision: MapDecision, *, latency_ms: float) -> None:
        doc.mapping = Mapping(detect_classes=decision.detect_classes, segment_classes=decision.segment_classes,
                              tier=decision.tier, group=decision.group)
        doc.phases["map"] = PhaseReport(status="ok", latency_ms=round(latency_ms, 3),
                                        detail=f"{decision.tier}: {decision.reason}")

    def _grammar(self, phase: str, labels: Sequence[str]) -> tuple[grammars.PhaseGrammar, xgr.CompiledGrammar]:
        if phase in self._compiled:
            fixed = self._interpret if phase == "interpret" else self._classify
            return fixed, self._compiled[phase]
        budget = getattr(self.profile.max_new_tokens, phase)
        grammar = grammars.items_grammar(phase, labels, self.profile.limits, budget,
                                         scale=self.profile.coordinate_scale)
        return grammar, self.engine.compile(grammar)

    def _prompt(self, phase: str, labels: Sequence[str], grammar: grammars.PhaseGrammar) -> str:
        template: str = getattr(self.profile.prompts, phase)
        # str.replace, not str.format: prompts contain literal JSON braces.
        return (template.replace("{labels}", ", ".join(self.profile.view_labels))
                .replace("{classes}", ", ".join(labels))
                .replace("{max_points}", str(grammar.max_points)))

    def _prepare(self, job: _Job, phase: PhaseName, labels: Sequence[str]) -> _Call | None:
        """Grammar and prompt of one phase; a failure is that phase's error, not the job's."""
        started = time.perf_counter()
        try:
            grammar, compiled = self._grammar(phase, labels)
            prompt = self._prompt(phase, labels, grammar)
            budget: int = getattr(self.profile.max_new_tokens, phase)
        except Exception as exc:
            _record_error(job.doc, phase, exc, _ms(started))
            return None
        return _Call(job=job, phase=phase, labels=labels, prompt=prompt, grammar=compiled, budget=budget,
                     prep_ms=_ms(started))

    def _run_wave(self, planned: Sequence[_Planned], prefixes: _Prefixes) -> None:
        """Prepare, generate and record the planned phases (of many jobs) together; an abandoned
        job's phases are not started (nor its image encoded)."""
        calls = [call for call in (self._prepare(*each) for each in planned if not each[0].given_up())
                 if call is not None]
        if not self.share_prefix:
            for call in calls:
                if not call.job.given_up():
                    self._record(call, self._single_turn(call))
            return
        prefixes.load([call.job for call in calls])
        ready = [(call, prefix) for call in calls if (prefix := prefixes.get(call.job)) is not None]
        requests = [GenRequest(prefix=prefix, prompt=call.prompt, grammar=call.grammar, max_new_tokens=call.budget,
                               decoding=self.profile.decoding, seed=_seed(call.job.item.decoded.sha256, call.phase),
                               abandoned=call.job.item.abandoned)
                    for call, prefix in ready]
        for (call, _), generation in zip(ready, self._generate(requests), strict=True):
            self._record(call, generation)

    def _generate(self, requests: Sequence[GenRequest]) -> list[Generation | Exception]:
        if not requests:
            return []
        try:
            return list(self.engine.generate_many(requests, max_batch=self.max_batch))
        except Exception as exc:
            if len(requests) == 1:
                return [exc]
            # One failing request must not fail the others' phases: redo them one at a time.
            return [self._generate([request])[0] for request in requests]

    def _single_turn(self, call: _Call) -> Generation | Exception:
        try:
            return self.engine.generate_single_turn(call.job.item.decoded.image, call.prompt, grammar=call.grammar,
                                                    max_new_tokens=call.budget)
        except Exception as exc:
            return exc

    def _record(self, call: _Call, generation: Generation | Exception) -> None:
        """A failed generation is the phase's error; an answer is validated into the document
        (an exception there is the job's failure, not the batch's). An abandoned job's answer,
        cut short, is not recorded."""
        if call.job.given_up():
            return
        if isinstance(generation, Exception):
            _record_error(call.job.doc, call.phase, generation, call.prep_ms)
            return
        decoded = call.job.item.decoded
        geometry = ImageGeometry(width=decoded.width, height=decoded.height, scale=self.profile.coordinate_scale)
        try:
            record_phase(call.job.doc, call.phase, generation, labels=call.labels, geometry=geometry,
                         profile=self.profile, latency_ms=round(call.prep_ms + generation.latency_ms, 3))
        except Exception as exc:
            call.job.error = exc


class _Prefixes:
    """Image prefixes of one batch: each image (by content hash) encoded at most once, when
    a wave first needs it (``load``); a failed encoding is the failure of every job of that image."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._by_sha: dict[str, ImagePrefix | Exception] = {}

    def load(self, jobs: Sequence[_Job]) -> None:
        """Encode the images these jobs need, several per call (``engine.encode_rows``); a call
        of several that fails is redone image by image, so a bad image fails only its own jobs."""
        todo = {job.item.decoded.sha256: job.item.decoded.image for job in jobs
                if job.item.decoded.sha256 not in self._by_sha}
        shas = list(todo)
        step = max(1, self.engine.encode_rows)
        for chunk in (shas[i:i + step] for i in range(0, len(shas), step)):
            try:
                self._by_sha.update(zip(chunk, self.engine.encode_images([todo[sha] for sha in chunk]), strict=True))
            except Exception as exc:
                if len(chunk) == 1:  # encode_images of one image is encode_image: no second try
                    self._by_sha[chunk[0]] = exc
                    continue
                for sha in chunk:
                    try:
                        self._by_sha[sha] = self.engine.encode_image(todo[sha])
                    except Exception as own:
                        self._by_sha[sha] = own

    def get(self, job: _Job) -> ImagePrefix | None:
        """The job's prefix after ``load``; None, with the job failed, when it could not be encoded."""
        prefix = self._by_sha[job.item.decoded.sha256]
        if isinstance(prefix, Exception):
            job.error = prefix
            return None
        return prefix

    def keep_only(self, shas: set[str]) -> None:
        """Free the caches that no later phase needs (they are large on a GPU)."""
        self._by_sha = {sha: prefix for sha, prefix in self._by_sha.items() if sha in shas}


def _guard(job: _Job, step: Callable[[_Job], _T]) -> _T | None:
    """Run one job's own step; an exception becomes that job's result instead of failing the batch."""
    try:
        return step(job)
    except Exception as exc:
        job.error = exc
        return None


def _finish(job: _Job) -> ResultDocument | Exception:
    if job.error is not None:
        return job.error
    if not job.waiting:
        job.doc.status = "succeeded"
    return _in_order(job.doc)


def _unwrap(result: ResultDocument | Exception) -> ResultDocument:
    if isinstance(result, Exception):
        raise result
    return result


def _record_error(doc: ResultDocument, phase: PhaseName, exc: Exception, latency_ms: float) -> None:
    """A failing phase must not lose the others' results."""
    doc.phases[phase] = PhaseReport(status="error", latency_ms=latency_ms,
                                    detail=f"{type(exc).__name__}: {exc}"[:500])


def record_phase(doc: ResultDocument, phase: PhaseName, generation: Generation, *, labels: Sequence[str],
                 geometry: ImageGeometry, profile: Profile, latency_ms: float) -> None:
    """Validate one phase's answer and write it into the document; never raises on bad output."""
    parsed = parse_phase(phase, generation.text, allowed_labels=labels, scale=profile.coordinate_scale,
                         fields=profile.interpretation_fields, view_labels=profile.view_labels)
    report = PhaseReport(status="ok", latency_ms=latency_ms, raw=generation.text,
                         dropped=list(parsed.rejected), detail=parsed.detail)
    if not generation.finished:
        report.status = "invalid_output"
        report.detail = f"answer cut off at max_new_tokens ({len(generation.token_ids)} tokens)"
    elif not parsed.ok:
        report.status = "invalid_output"
    elif phase == "interpret":
        doc.interpretation = dict(parsed.value)  # type: ignore[arg-type]
    elif phase == "classify":
        doc.classification = Classification(label=str(parsed.value))
    else:
        annotations, dropped = build_annotations(phase, parsed.value, geometry, profile)  # type: ignore[arg-type]
        report.dropped += dropped
        _store(doc, annotations, set(profile.keypoint_classes))
    doc.phases[phase] = report


def _store(doc: ResultDocument, annotations: Sequence[object], keypoint_classes: set[str]) -> None:
    """Keypoint-phase items of plain box classes are detections; ids stay unique per list."""
    for ann in annotations:
        if isinstance(ann, Keypoints) and ann.label not in keypoint_classes:
            ann = Detection(id=0, label=ann.label, category_id=ann.category_id, bbox=ann.bbox)
        if isinstance(ann, Segmentation):
            doc.segmentations.append(ann.model_copy(update={"id": len(doc.segmentations) + 1}))
        elif isinstance(ann, Keypoints):
            doc.keypoints.append(ann.model_copy(update={"id": len(doc.keypoints) + 1}))
        elif isinstance(ann, Detection):
            doc.detections.append(ann.model_copy(update={"id": len(doc.detections) + 1}))


def _in_order(doc: ResultDocument) -> ResultDocument:
    doc.phases = {name: doc.phases[name] for name in PHASE_ORDER if name in doc.phases}
    return doc


def _seed(sha256: str, phase: str) -> int:
    """Sampling seed from image and phase, so a sampled run is still reproducible."""
    return int.from_bytes(hashlib.sha256(f"{sha256}:{phase}".encode()).digest()[:4], "big")


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
