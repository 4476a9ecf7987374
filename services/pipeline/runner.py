"""The five phases in order, for one image: interpret, classify -> MAP -> detect or keypoints
-> segment. A phase that does not run says ``skipped`` and why; a model answer that fails
validation makes its phase ``invalid_output`` (never an exception), with the raw text kept.

HITL mode stops after interpret + classify; ``resume`` later runs the reviewer's chosen
phases (and group) from the saved result document, without redoing finished phases.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from typing import Literal

from services.ingest import DecodedImage
from services.models.loader import Provenance
from services.pipeline import grammars
from services.pipeline.engine import Engine, Generation, ImagePrefix
from services.pipeline.mapping import MapDecision, map_group, map_structures
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


class Pipeline:
    def __init__(self, engine: Engine, profile: Profile, provenance: Provenance, *,
                 share_prefix: bool = True) -> None:
        """``share_prefix=False`` re-encodes the image for every phase, as the reference app
        does; it exists for the benchmark and for diagnosis, not for serving."""
        self.engine = engine
        self.share_prefix = share_prefix
        self.profile = profile
        self.provenance = provenance
        tokens = profile.max_new_tokens
        # Fixed-shape grammars are built once; list grammars depend on the requested classes.
        self._interpret = grammars.interpret_grammar(profile.interpretation_fields, profile.limits,
                                                     tokens.interpret)
        self._classify = grammars.classify_grammar(profile.view_labels, tokens.classify)
        self._compiled = {
            "interpret": engine.compile(self._interpret),
            "classify": engine.compile(self._classify),
        }

    # -- public ---------------------------------------------------------------------------

    def analyze(self, decoded: DecodedImage, *, mode: Mode = "autonomous") -> ResultDocument:
        doc = self._new_document(decoded)
        prefix = self._prefix(decoded)
        for phase in ("interpret", "classify"):  # type: PhaseName
            self._run_model_phase(doc, prefix, decoded, phase, self.profile.interpretation_fields
                                  if phase == "interpret" else self.profile.view_labels)
        if mode == "hitl":
            for phase in ("map", *LOCALISATION_PHASES):
                doc.phases[phase] = PhaseReport(status="skipped", detail=HITL_WAITING)
            doc.status = "awaiting_review"
            return _in_order(doc)
        decision = self._map(doc)
        self._localise(doc, prefix, decoded, decision, LOCALISATION_PHASES)
        doc.status = "succeeded"
        return _in_order(doc)

    def resume(self, decoded: DecodedImage, state: ResultDocument, *, phases: Sequence[str],
               group: str | None = None) -> ResultDocument:
        """Run the reviewer's chosen phases on a HITL document; interpret/classify are kept."""
        if state.status != "awaiting_review":
            raise ResumeError(f"only a document awaiting review can be resumed (status {state.status})")
        unknown = set(phases) - set(LOCALISATION_PHASES)
        if unknown:
            raise ResumeError(f"unknown phases {sorted(unknown)}; choose from {list(LOCALISATION_PHASES)}")
        if state.image.sha256 != decoded.sha256:
            raise ResumeError("the image does not match the saved document")
        doc = state.model_copy(deep=True)
        if group is not None:
            try:
                decision = map_group(group, self.profile.map)
            except ValueError as exc:
                raise ResumeError(str(exc)) from exc
            self._record_mapping(doc, decision, latency_ms=0.0)
        else:
            decision = self._map(doc)
        # No chosen phase means no model call, so the image need not be encoded at all.
        prefix = self._prefix(decoded) if phases else None
        self._localise(doc, prefix, decoded, decision, tuple(phases))
        doc.status = "succeeded"
        return _in_order(doc)

    # -- phases -----------------------------------------------------------------------------

    def _new_document(self, decoded: DecodedImage) -> ResultDocument:
        p = self.provenance
        return ResultDocument(
            status="running",
            model=ModelInfo(base=p.base, adapter=p.adapter, revision=p.revision,
                            profile=f"{self.profile.name}@{self.profile.version}", untrained=p.untrained),
            image=ImageInfo(width=decoded.width, height=decoded.height, sha256=decoded.sha256,
                            format=decoded.format, pixel_spacing_mm=decoded.pixel_spacing_mm),
        )

    def _map(self, doc: ResultDocument) -> MapDecision:
        started = time.perf_counter()
        label = doc.classification.label if doc.classification else None
        decision = map_structures(label, doc.interpretation, self.profile.map)
        self._record_mapping(doc, decision, latency_ms=(time.perf_counter() - started) * 1000)
        return decision

    @staticmethod
    def _record_mapping(doc: ResultDocument, decision: MapDecision, *, latency_ms: float) -> None:
        doc.mapping = Mapping(detect_classes=decision.detect_classes, segment_classes=decision.segment_classes,
                              tier=decision.tier, group=decision.group)
        doc.phases["map"] = PhaseReport(status="ok", latency_ms=round(latency_ms, 3),
                                        detail=f"{decision.tier}: {decision.reason}")

    def _prefix(self, decoded: DecodedImage) -> ImagePrefix | None:
        return self.engine.encode_image(decoded.image) if self.share_prefix else None

    def _localise(self, doc: ResultDocument, prefix: ImagePrefix | None, decoded: DecodedImage,
                  decision: MapDecision, wanted: Sequence[str]) -> None:
        keypoint_classes = set(self.profile.keypoint_classes)
        uses_keypoints = any(c in keypoint_classes for c in decision.detect_classes)
        box_phase: PhaseName = "keypoints" if uses_keypoints else "detect"
        other: PhaseName = "detect" if uses_keypoints else "keypoints"
        doc.phases[other] = PhaseReport(
            status="skipped",
            detail="replaced by keypoints: MAP classes include keypoint classes" if uses_keypoints
            else "MAP classes include no keypoint classes")
        if box_phase in wanted:
            self._run_model_phase(doc, prefix, decoded, box_phase, decision.detect_classes)
        else:
            doc.phases[box_phase] = PhaseReport(status="skipped", detail="not chosen by the reviewer")
        if not decision.segment_classes:
            doc.phases["segment"] = PhaseReport(status="skipped", detail="MAP gave no segment classes")
        elif "segment" in wanted:
            self._run_model_phase(doc, prefix, decoded, "segment", decision.segment_classes)
        else:
            doc.phases["segment"] = PhaseReport(status="skipped", detail="not chosen by the reviewer")

    def _grammar(self, phase: str, labels: Sequence[str]) -> tuple[grammars.PhaseGrammar, object]:
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

    def _run_model_phase(self, doc: ResultDocument, prefix: ImagePrefix | None, decoded: DecodedImage,
                         phase: PhaseName, labels: Sequence[str]) -> None:
        started = time.perf_counter()
        try:
            grammar, compiled = self._grammar(phase, labels)
            prompt = self._prompt(phase, labels, grammar)
            budget = getattr(self.profile.max_new_tokens, phase)
            if prefix is None:
                generation = self.engine.generate_single_turn(
                    decoded.image, prompt, grammar=compiled, max_new_tokens=budget)  # type: ignore[arg-type]
            else:
                generation = self.engine.generate(
                    prefix, prompt, grammar=compiled, max_new_tokens=budget,  # type: ignore[arg-type]
                    decoding=self.profile.decoding, seed=_seed(decoded.sha256, phase))
        except Exception as exc:  # a failing phase must not lose the others' results
            doc.phases[phase] = PhaseReport(status="error", latency_ms=_ms(started),
                                            detail=f"{type(exc).__name__}: {exc}"[:500])
            return
        geometry = ImageGeometry(width=decoded.width, height=decoded.height, scale=self.profile.coordinate_scale)
        record_phase(doc, phase, generation, labels=labels, geometry=geometry, profile=self.profile,
                     latency_ms=_ms(started))

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
