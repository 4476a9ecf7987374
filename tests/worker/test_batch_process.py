"""process_batch on a real pipeline (tiny model) and a real database, PostgreSQL and SQLite: a
worker claims several ready jobs and runs them through the model together; each job ends as
it would alone. And one real Celery worker that batches."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import event, select, update
from sqlalchemy.orm import Session, sessionmaker

from services.ingest import decode_image
from services.jobs import cancel, get_job, resume_hitl, submit_job
from services.jobs import process as process_module
from services.jobs.images import load_decoded
from services.jobs.process import BAD_IMAGE_CODE, BAD_RESUME_CODE, Outcome, process_batch, process_job
from services.pipeline import batching
from services.pipeline.runner import BatchItem, Pipeline, ResumeError
from shared.db.engine import make_engine, make_sessionmaker
from shared.db.migrate import upgrade
from shared.db.models import ApiKey, Image, Job, JobMode, JobStatus, Result, Role
from shared.db.types import new_id
from shared.schemas.results import ResultDocument
from tests.fixtures_db import connections_refused
from tests.ingest.builders import encode, noise_rgb

from .test_celery_worker import Service, service  # noqa: F401  (the real-worker fixture, both backends)

OWNER = "batch-worker:1"
HITL_CHOICE = {"next_phases": ["detect", "segment"], "group": None}


def png(seed: int) -> bytes:
    return encode(noise_rgb(40, 30, seed=seed), "PNG")


def job_row(sm: sessionmaker[Session], job_id: str) -> Job:
    with sm() as s:
        job = get_job(s, job_id)
        assert job is not None
        s.expunge(job)
        return job


def stored_document(sm: sessionmaker[Session], job_id: str) -> dict[str, Any]:
    with sm() as s:
        [document] = s.scalars(select(Result.document).where(Result.job_id == job_id)).all()
        return dict(document)


def comparable(document: dict[str, Any] | ResultDocument) -> dict[str, Any]:
    """A result document without what differs from run to run: timings, and the job id."""
    doc = document.model_dump(mode="json") if isinstance(document, ResultDocument) else dict(document)
    doc.pop("job_id", None)
    doc["phases"] = {name: {k: v for k, v in report.items() if k != "latency_ms"}
                     for name, report in doc["phases"].items()}
    return doc


def alone(sm: sessionmaker[Session], pipeline: Pipeline, job: Job) -> ResultDocument:
    """What the single-image path gives for this job, from the same stored image."""
    with sm() as s:
        decoded = load_decoded(s, job.image_id)
    if job.hitl_choice is None:
        return pipeline.analyze(decoded, mode="hitl" if job.mode is JobMode.hitl else "autonomous")
    assert job.hitl_state is not None
    return pipeline.resume(decoded, ResultDocument.model_validate(job.hitl_state),
                           phases=job.hitl_choice["next_phases"], group=job.hitl_choice["group"])


def resumed_hitl_job(sm: sessionmaker[Session], pipeline: Pipeline, submit: Callable[..., str], seed: int) -> str:
    """A HITL job after its first stage and the reviewer's choice: queued for its second."""
    job_id = submit(png(seed), mode="hitl")
    assert process_job(sm, pipeline, job_id, owner=OWNER, lease_seconds=30).outcome is Outcome.awaiting_review
    with sm.begin() as s:
        assert resume_hitl(s, job_id, HITL_CHOICE)
    return job_id


def outcomes(runs: Sequence[Any]) -> dict[str, Outcome]:
    return {run.job_id: run.outcome for run in runs}


def test_a_batch_ends_each_job_as_it_would_alone(sm: sessionmaker[Session], pipeline: Pipeline,
                                                 submit: Callable[..., str], monkeypatch: pytest.MonkeyPatch) -> None:
    resumed = resumed_hitl_job(sm, pipeline, submit, seed=1)
    auto_a, hitl, auto_b = submit(png(2)), submit(png(3), mode="hitl"), submit(png(4))
    batches: list[int] = []
    original = pipeline.run_batch

    def counting(items: Sequence[BatchItem]) -> list[ResultDocument | Exception]:
        batches.append(len(items))
        return original(items)

    monkeypatch.setattr(pipeline, "run_batch", counting)
    runs = process_batch(sm, pipeline, hitl, owner=OWNER, lease_seconds=30, batch_size=4)
    assert batches == [4], "the four jobs did not go through the model together"
    assert runs[0].job_id == hitl  # the job whose message woke the worker comes first
    assert outcomes(runs) == {resumed: Outcome.succeeded, auto_a: Outcome.succeeded, hitl: Outcome.awaiting_review,
                              auto_b: Outcome.succeeded}
    for job_id, status in outcomes(runs).items():
        job = job_row(sm, job_id)
        assert job.status.value == status.value and job.lease_owner is None and job.attempts == 1
        document = stored_document(sm, job_id)
        assert document["job_id"] == job_id and document["status"] == status.value
        assert comparable(document) == comparable(alone(sm, pipeline, job)), f"job {job_id} differs from alone"
    assert job_row(sm, hitl).hitl_state is not None
    assert stored_document(sm, resumed)["phases"]["detect"]["status"] != "skipped" or "no" in (
        stored_document(sm, resumed)["phases"]["detect"]["detail"] or "")


def test_an_unreadable_image_fails_its_job_alone(sm: sessionmaker[Session], pipeline: Pipeline,
                                                 submit: Callable[..., str]) -> None:
    good, bad, other = submit(png(5)), submit(png(6)), submit(png(7))
    with sm.begin() as s:
        image_id = s.get_one(Job, bad).image_id
        s.execute(update(Image).where(Image.id == image_id).values(data=b"not a png"))
    runs = process_batch(sm, pipeline, good, owner=OWNER, lease_seconds=30, batch_size=4)
    assert outcomes(runs) == {good: Outcome.succeeded, bad: Outcome.failed, other: Outcome.succeeded}
    failed = job_row(sm, bad)
    assert failed.status is JobStatus.failed and failed.error_code == BAD_IMAGE_CODE and failed.attempts == 1
    assert job_row(sm, other).status is JobStatus.succeeded


def test_an_error_of_one_item_is_handled_as_for_a_job_alone(sm: sessionmaker[Session], pipeline: Pipeline,
                                                            submit: Callable[..., str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """run_batch returns an exception for an item: a ResumeError fails that job, any other
    error releases it for a retry; the rest of the batch is stored."""
    ok, rejected, flaky = submit(png(8)), submit(png(9)), submit(png(10))
    original = pipeline.run_batch

    def partly_failing(items: Sequence[BatchItem]) -> list[ResultDocument | Exception]:
        assert len(items) == 3
        return [*original(items[:1]), ResumeError("no such group"), RuntimeError("decoder hiccup")]

    monkeypatch.setattr(pipeline, "run_batch", partly_failing)
    runs = process_batch(sm, pipeline, ok, owner=OWNER, lease_seconds=30, batch_size=3)
    assert outcomes(runs) == {ok: Outcome.succeeded, rejected: Outcome.failed, flaky: Outcome.requeued}
    assert job_row(sm, rejected).error_code == BAD_RESUME_CODE
    requeued = job_row(sm, flaky)
    assert requeued.status is JobStatus.queued and requeued.lease_owner is None and requeued.attempts == 1


def test_a_result_the_database_refuses_costs_its_job_one_attempt_and_no_other_job_its_result(
        sm: sessionmaker[Session], pipeline: Pipeline, submit: Callable[..., str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A model's raw text with U+0000 (JSONB cannot hold it) is stored with U+FFFD instead; a
    result that cannot be stored at all releases its job for a retry while the next jobs of
    the batch are still stored (they were left running until their leases expired), and it
    fails saying why once its attempts are used."""
    nul, unstorable, after = submit(png(14)), submit(png(15), max_attempts=1), submit(png(16))
    original = pipeline.run_batch

    def outputs(items: Sequence[BatchItem]) -> list[ResultDocument | Exception]:
        docs = original(items)
        first = docs[0]
        assert isinstance(first, ResultDocument)
        interpret = first.phases["interpret"]
        docs[0] = first.model_copy(update={"phases": {**first.phases, "interpret": interpret.model_copy(
            update={"raw": "model said \x00 here"})}})
        return docs

    real_complete = process_module.complete

    def refusing(session: Session, job_id: str, *args: Any, **kwargs: Any) -> bool:
        if job_id == unstorable:
            raise RuntimeError("simulated: the database refused this result")
        return real_complete(session, job_id, *args, **kwargs)

    monkeypatch.setattr(pipeline, "run_batch", outputs)
    monkeypatch.setattr(process_module, "complete", refusing)
    runs = process_batch(sm, pipeline, nul, owner=OWNER, lease_seconds=30, batch_size=3)
    assert outcomes(runs) == {nul: Outcome.succeeded, unstorable: Outcome.failed, after: Outcome.succeeded}
    assert stored_document(sm, nul)["phases"]["interpret"]["raw"] == "model said \ufffd here"
    gave_up = job_row(sm, unstorable)  # its one attempt used: failed, saying why (with attempts left: requeued)
    assert gave_up.status is JobStatus.failed and gave_up.error_code == "max_attempts"
    assert "the result could not be stored: RuntimeError: simulated" in (gave_up.error_detail or "")


def test_a_batch_that_fails_as_a_whole_runs_each_job_alone(sm: sessionmaker[Session], pipeline: Pipeline,
                                                            submit: Callable[..., str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The batched path fails (out of memory, say): each job is then run alone and gets its
    own outcome, as at batch size 1. One input that also fails alone is released (or fails,
    its attempts used) by itself; the others are not charged an attempt for it."""
    ids = [submit(png(11)), submit(png(12), mode="hitl"), submit(png(13), max_attempts=1), submit(png(17))]
    poison = load_image_sha(sm, ids[2])

    real_run_batch, real_analyze = pipeline.run_batch, pipeline.analyze

    def oom(items: Sequence[BatchItem]) -> list[ResultDocument | Exception]:
        if len(items) > 1:  # the per-image entry points are batches of one: those fit
            raise ResumeError("CUDA out of memory (simulated; even an error type that fails one job alone)")
        return real_run_batch(items)

    def analyze(decoded: Any, **kwargs: Any) -> ResultDocument:
        if decoded.sha256 == poison:
            raise RuntimeError("this image breaks the model even alone")
        return real_analyze(decoded, **kwargs)

    monkeypatch.setattr(pipeline, "run_batch", oom)
    monkeypatch.setattr(pipeline, "analyze", analyze)
    runs = process_batch(sm, pipeline, ids[0], owner=OWNER, lease_seconds=30, batch_size=4)
    assert outcomes(runs) == {ids[0]: Outcome.succeeded, ids[1]: Outcome.awaiting_review,
                              ids[2]: Outcome.failed, ids[3]: Outcome.succeeded}
    for job_id in (ids[0], ids[1], ids[3]):
        assert job_row(sm, job_id).attempts == 1
    last = job_row(sm, ids[2])  # its only attempt is used up, by its own error
    assert last.error_code == "max_attempts" and "breaks the model even alone" in (last.error_detail or "")
    with sm() as s:
        assert len(s.scalars(select(Result.id)).all()) == 3


def load_image_sha(sm: sessionmaker[Session], job_id: str) -> str:
    with sm() as s:
        return str(s.scalar(select(Image.sha256).join(Job, Job.image_id == Image.id).where(Job.id == job_id)))


def test_batch_size_bounds_the_claim(sm: sessionmaker[Session], pipeline: Pipeline,
                                     submit: Callable[..., str]) -> None:
    ids = [submit(png(20 + i)) for i in range(3)]
    runs = process_batch(sm, pipeline, ids[2], owner=OWNER, lease_seconds=30, batch_size=2)
    assert len(runs) == 2 and runs[0].job_id == ids[2]
    assert all(run.outcome is Outcome.succeeded for run in runs)
    statuses = sorted(job_row(sm, job_id).status.value for job_id in ids)
    assert statuses == ["queued", "succeeded", "succeeded"]


def test_a_message_for_a_taken_job_still_runs_other_ready_jobs(sm: sessionmaker[Session], pipeline: Pipeline,
                                                                submit: Callable[..., str]) -> None:
    done = submit(png(30))
    assert process_job(sm, pipeline, done, owner=OWNER, lease_seconds=30).outcome is Outcome.succeeded
    waiting = submit(png(31))
    runs = process_batch(sm, pipeline, done, owner="w2", lease_seconds=30, batch_size=4)
    assert [(r.job_id, r.outcome) for r in runs] == [(done, Outcome.skipped), (waiting, Outcome.succeeded)]
    # at batch size 1 such a message does nothing at all (today's behaviour)
    another = submit(png(32))
    assert outcomes(process_batch(sm, pipeline, done, owner="w2", lease_seconds=30, batch_size=1)) == {
        done: Outcome.skipped}
    assert job_row(sm, another).status is JobStatus.queued


def test_lingering_fills_the_batch_with_jobs_submitted_meanwhile(sm: sessionmaker[Session], pipeline: Pipeline,
                                                                 submit: Callable[..., str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    first = submit(png(40))
    late: list[str] = []
    # the linger is where jobs arrive; submit them there instead of racing a real sleep
    monkeypatch.setattr(process_module, "time",
                        SimpleNamespace(sleep=lambda _s: late.extend(submit(png(41 + i)) for i in range(2)),
                                        monotonic=time.monotonic))
    runs = process_batch(sm, pipeline, first, owner=OWNER, lease_seconds=30, batch_size=2, linger_seconds=0.5)
    assert [run.job_id for run in runs] == [first, late[0]]
    assert all(run.outcome is Outcome.succeeded for run in runs)
    assert job_row(sm, late[1]).status is JobStatus.queued
    # no linger when nothing was claimed: a message for a taken job with no work left returns at once
    with sm.begin() as s:
        cancel(s, late.pop())
    assert outcomes(process_batch(sm, pipeline, first, owner=OWNER, lease_seconds=30, batch_size=2,
                                  linger_seconds=0.5)) == {first: Outcome.skipped}
    assert len(late) == 1, "it lingered"


def test_every_lease_is_renewed_and_a_lost_one_is_not_completed(sm: sessionmaker[Session], pipeline: Pipeline,
                                                                submit: Callable[..., str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    kept, stolen = submit(png(50)), submit(png(51))
    seen: list[tuple[Any, Any]] = []
    original = pipeline.run_batch

    def slow(items: Sequence[BatchItem]) -> list[ResultDocument | Exception]:
        first_expiry = job_row(sm, kept).lease_expires_at
        with sm.begin() as s:  # the sweeper took this one back and another worker holds it now
            s.execute(update(Job).where(Job.id == stolen).values(lease_owner="thief:9"))
        time.sleep(2.5)  # a lease of 3 s is renewed every second
        seen.append((first_expiry, job_row(sm, kept).lease_expires_at))
        return original(items)

    monkeypatch.setattr(pipeline, "run_batch", slow)
    runs = process_batch(sm, pipeline, kept, owner=OWNER, lease_seconds=3, batch_size=2)
    assert outcomes(runs) == {kept: Outcome.succeeded, stolen: Outcome.lease_lost}
    [(before, after)] = seen
    assert after > before, "the lease did not move forward"
    job = job_row(sm, stolen)
    assert job.status is JobStatus.running and job.lease_owner == "thief:9"
    with sm() as s:
        assert s.scalars(select(Result.id).where(Result.job_id == stolen)).all() == []


@pytest.mark.parametrize("when", ["mid_decode", "between_waves"])
def test_a_job_taken_back_mid_run_stops_its_model_work_and_not_the_others(
        when: str, sm: sessionmaker[Session], pipeline: Pipeline, submit: Callable[..., str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Another worker claimed one job of the batch (this one stalled past its lease). Once the
    lease keeper finds the lease lost, the model drops that job's rows at the next decode step
    and starts none of its later phases; nothing is stored for it, and the other job ends as it
    would alone."""
    kept, taken = submit(png(52)), submit(png(53))
    flags: dict[str, Callable[[], bool]] = {}
    real_taken_back = process_module.LeaseKeeper.taken_back

    def recording(keeper: Any, job_id: str) -> Callable[[], bool]:
        flags[job_id] = real_taken_back(keeper, job_id)
        return flags[job_id]

    def take_it() -> None:
        with sm.begin() as s:  # another worker claims it; our keeper notices at its next renewal
            s.execute(update(Job).where(Job.id == taken).values(lease_owner="thief:9"))
        deadline = time.monotonic() + 10  # a lease of 3 s is renewed every second
        while not flags[taken]() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert flags[taken](), "the lease keeper did not notice"

    gone_per_step: list[int] = []  # decode steps: rows still running for the taken job
    gone_per_call: list[int] = []  # generate_many calls (waves): requests for the taken job
    real_pick, real_generate, real_after = (batching.pick_tokens, pipeline.engine.generate_many,
                                            pipeline._after_first_wave)

    def pick(engine: Any, rows: Sequence[Any], logits: Any) -> list[int]:
        if when == "mid_decode" and len(gone_per_step) == 2:
            take_it()
        gone_per_step.append(sum(row.request.gone for row in rows))
        return real_pick(engine, rows, logits)

    def generate_many(requests: Sequence[Any], **kwargs: Any) -> Any:
        gone_per_call.append(sum(request.gone for request in requests))
        return real_generate(requests, **kwargs)

    def after_first_wave(job: Any) -> None:
        if when == "between_waves" and not flags[taken]():
            take_it()
        real_after(job)

    monkeypatch.setattr(process_module.LeaseKeeper, "taken_back", recording)
    monkeypatch.setattr(batching, "pick_tokens", pick)
    monkeypatch.setattr(pipeline.engine, "generate_many", generate_many)
    monkeypatch.setattr(pipeline, "_after_first_wave", after_first_wave)
    runs = process_batch(sm, pipeline, kept, owner=OWNER, lease_seconds=3, batch_size=2)
    assert outcomes(runs) == {kept: Outcome.succeeded, taken: Outcome.lease_lost}
    if when == "mid_decode":
        assert gone_per_step[2] == 2, f"its interpret and classify rows were running: {gone_per_step[:4]}"
        assert len(gone_per_step) > 3 and set(gone_per_step[3:]) == {0}, "a row of the taken job kept decoding"
    assert len(gone_per_call) == 2 and gone_per_call[1] == 0, f"the taken job's later phases ran: {gone_per_call}"
    job = job_row(sm, taken)
    assert job.status is JobStatus.running and job.lease_owner == "thief:9"
    with sm() as s:
        assert s.scalars(select(Result.id).where(Result.job_id == taken)).all() == []
    assert comparable(stored_document(sm, kept)) == comparable(alone(sm, pipeline, job_row(sm, kept)))


def test_a_celery_worker_runs_jobs_in_batches(service: Service) -> None:  # noqa: F811
    """FADA_BATCH_SIZE=4, jobs queued before the worker starts: the first message it takes
    claims four jobs at once (one claim statement gives them one ``started_at``), and every
    job still ends exactly once."""
    ids = [service.submit(png(60 + i), f"{i}.png", **({"mode": "hitl"} if i == 1 else {})) for i in range(6)]
    service.env["FADA_BATCH_SIZE"] = "4"
    service.start_worker()
    for i, job_id in enumerate(ids):
        expected = "awaiting_review" if i == 1 else "succeeded"
        job = service.wait_status(job_id, "awaiting_review", "succeeded", "failed", timeout=180)
        assert job["status"] == expected and job["attempts"] == 1, job
    assert service.count(Result) == 6
    started = _started_at(service, ids)
    largest = max(started.count(t) for t in started)
    assert largest == 4, f"no run claimed a full batch of 4: {started}"


def _started_at(svc: Service, ids: list[str]) -> list[Any]:
    engine = make_engine(svc.settings.database_url)
    try:
        with make_sessionmaker(engine)() as s:
            return list(s.scalars(select(Job.started_at).where(Job.id.in_(ids))))
    finally:
        engine.dispose()


def test_a_database_restart_as_the_model_finishes_costs_no_model_work(
        postgres_url: str, pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL refuses connections for 2 s just as the batch's model work ends (a restart,
    a failover): the worker stores both results once it is back, at the first attempt, instead
    of dropping the work and waiting for the leases to expire."""
    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    sm = make_sessionmaker(engine)
    key_id = new_id()
    with sm.begin() as s:
        s.add(ApiKey(id=key_id, name="test", role=Role.submitter, key_prefix="fada_t", key_hash=new_id()))
    ids = []
    for seed in (40, 41):
        with sm.begin() as s:
            ids.append(submit_job(s, decoded=decode_image(png(seed)), original_size=10, api_key_id=key_id).id)
    outage = ExitStack()
    original = pipeline.run_batch

    def model_then_restart(items: Sequence[BatchItem]) -> list[ResultDocument | Exception]:
        docs = original(items)
        outage.enter_context(connections_refused(postgres_url))
        threading.Timer(2.0, outage.close).start()
        return docs

    monkeypatch.setattr(pipeline, "run_batch", model_then_restart)
    try:
        runs = process_batch(sm, pipeline, ids[0], owner=OWNER, lease_seconds=30, batch_size=2)
    finally:
        outage.close()
    assert outcomes(runs) == {ids[0]: Outcome.succeeded, ids[1]: Outcome.succeeded}
    for job_id in ids:
        job = job_row(sm, job_id)
        assert job.status is JobStatus.succeeded and job.attempts == 1
    with sm() as s:
        assert len(s.scalars(select(Result).where(Result.job_id.in_(ids))).all()) == 2
    engine.dispose()


def test_a_full_disk_as_the_model_finishes_is_logged_as_such_and_costs_no_model_work(
        sqlite_url: str, pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """SQLite refuses writes for want of space (PRAGMA max_page_count: the SQLITE_FULL a full
    disk gives) for 1.5 s just as the model work ends. The worker's log says the disk is full,
    at ERROR, for the operator who must free it (not "unavailable", the wording of a restart),
    and once there is room both results are stored at the first attempt."""
    upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    sm = make_sessionmaker(engine)
    full = threading.Event()

    def size_limit(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        # 1 page means "no larger than now" (SQLite never caps below the file's size)
        dbapi_connection.execute(f"PRAGMA max_page_count = {1 if full.is_set() else 1_073_741_823}")

    event.listen(engine.pool, "checkout", size_limit)
    key_id = new_id()
    with sm.begin() as s:
        s.add(ApiKey(id=key_id, name="test", role=Role.submitter, key_prefix="fada_t", key_hash=new_id()))
    ids = []
    for seed in (50, 51):
        with sm.begin() as s:
            ids.append(submit_job(s, decoded=decode_image(png(seed)), original_size=10, api_key_id=key_id).id)
    original = pipeline.run_batch

    def model_then_full_disk(items: Sequence[BatchItem]) -> list[ResultDocument | Exception]:
        docs = original(items)
        full.set()
        threading.Timer(1.5, full.clear).start()
        return docs

    monkeypatch.setattr(pipeline, "run_batch", model_then_full_disk)
    with caplog.at_level(logging.WARNING, logger=process_module.log.name):
        runs = process_batch(sm, pipeline, ids[0], owner=OWNER, lease_seconds=30, batch_size=2)
    assert outcomes(runs) == {ids[0]: Outcome.succeeded, ids[1]: Outcome.succeeded}
    for job_id in ids:
        job = job_row(sm, job_id)
        assert job.status is JobStatus.succeeded and job.attempts == 1
    said = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert any(level == logging.ERROR and "disk is full" in text for level, text in said), said
    assert not any("unavailable" in text for _, text in said), said
    engine.dispose()
