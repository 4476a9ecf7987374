"""``fada submit``: send a folder of images to a running service, resumably.

Files are recognised by content (PNG, JPEG, DICOM Part-10); anything else is skipped and
counted, except an empty file (0 bytes) whose name says it is an image (``.png``, ``.jpg``,
``.jpeg``, ``.dcm``, ``.dicom``): that is a failed input (a copy cut short, say), never sent,
named with the reason on stderr and counted as failed (exit 1). Every file's state is kept in
``<out>/manifest.json`` (path -> sha256, job id, status, error), rewritten atomically after each
change, so a rerun after a crash or a failure skips what is done (succeeded, result written),
waits again on jobs already submitted and resubmits what failed. The ``Idempotency-Key`` of a
file is derived from its content and the submission's fields (mode, frame, external id; plus a
retry counter once a job of it failed), so a rerun never creates a second job for a submission
the server already stored. A service with a per-key limit of pending jobs
(``FADA_MAX_PENDING_PER_KEY``) refuses images while the key has that many queued (429): the
command waits and sends them again, with the same key, until ``--timeout``. A service that
answered earlier in the run and then stops answering, or answers 503 (a gateway restart, a
database failover), is waited for up to 5 minutes (within ``--timeout``) before a file is
given up; a service never reached fails the run after the client's own retries.

Per-job fields: ``--frame N`` (sent as the ``frame`` field of every job: the 0-based frame of a
multi-frame DICOM; a file with fewer frames is refused by the service, 422, and recorded as an
error) and ``--external-id-from name|stem|relpath`` (the ``external_id`` field: the file's
name, its name without the last suffix, or its path relative to the folder given on the command
line; for a file given directly, its name). The service keeps at most 128 characters, so a
longer id refuses the whole run before anything is sent.

One output folder, one set of options: the manifest records ``--mode``, ``--frame`` and
``--external-id-from``, and a rerun into the same ``--out`` with other values is refused (exit
2) rather than mixing results made with different options in one folder (their result files
would have the same names). Use another ``--out`` for other options. A manifest written before
the options were recorded is taken as made with the default frame and no external ids (what
that version could send) and the current mode (which it did not record).

Exit codes: 0 every image done; 1 some image failed or did not finish; 2 bad usage (no key,
no images); 3 the key was refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from cli.client import (
    DEFAULT_URL,
    ApiError,
    FadaClient,
    FadaError,
    Forbidden,
    TransportError,
    Unauthorized,
    Unavailable,
    WaitTimeout,
)

MANIFEST = "manifest.json"
MANIFEST_VERSION = 2  # 2: the run's options are recorded (version 1 had only "files")
EXIT_FAILED, EXIT_USAGE, EXIT_AUTH = 1, 2, 3
DONE = "succeeded"
ADMISSION_PAUSE = 5.0  # seconds between submissions the service refused for the key's pending limit
# A service that answered earlier in the run and then stops (a gateway restart, a database
# failover: no answer, or 503) is waited for this long before a file is given up; the client's
# own retries cover seconds, a restart takes longer. A service never reached fails at once.
OUTAGE_PATIENCE = 300.0
OUTAGE_PAUSE = 2.0
T = TypeVar("T")
EXTERNAL_ID_SOURCES = ("none", "name", "stem", "relpath")
EXTERNAL_ID_MAX = 128  # the contract's limit on external_id
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".dcm", ".dicom"})  # an empty file named so has failed


def sniff(head: bytes) -> str | None:
    """``png``, ``jpeg``, ``dicom`` from a file's first 132 bytes, or None."""
    if head.startswith(b"\x89PNG"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[128:132] == b"DICM":
        return "dicom"
    return None


def collect(paths: Iterable[Path], recursive: bool) -> tuple[list[tuple[Path, str]], int, int]:
    """The images under ``paths`` as (file, name relative to its argument), with the empty files
    named as images (:data:`IMAGE_SUFFIXES`; :meth:`Runner.process` fails them); how many files
    were skipped (not an image); how many subfolders were not searched (no --recursive)."""
    found: list[tuple[Path, str]] = []
    skipped = folders = 0
    for root in paths:
        if root.is_file():
            candidates = [(root, root.name)]
        else:
            walk = sorted(root.rglob("*")) if recursive else sorted(root.iterdir())
            candidates = [(p, p.relative_to(root).as_posix()) for p in walk if p.is_file()]
            folders += 0 if recursive else sum(1 for p in walk if p.is_dir())
        for path, rel in candidates:
            try:
                with path.open("rb") as f:
                    head = f.read(132)
            except OSError:
                skipped += 1
                continue
            if sniff(head) is not None or (not head and path.suffix.lower() in IMAGE_SUFFIXES):
                found.append((path, rel))
            else:
                skipped += 1
    return found, skipped, folders


def external_id_for(path: Path, rel: str, source: str) -> str | None:
    """The ``external_id`` of a file for ``--external-id-from``: None (``none``), the file's
    name, its stem, or ``rel`` (its path relative to the command-line argument it was found under)."""
    if source == "none":
        return None
    if source == "name":
        return path.name
    if source == "stem":
        return path.stem
    if source == "relpath":
        return rel
    raise ValueError(f"unknown external id source {source!r}; choose one of {', '.join(EXTERNAL_ID_SOURCES)}")


def idempotency_key(sha256: str, mode: str, retry: int, *, frame: int = 0, external_id: str | None = None) -> str:
    """The key of one submission: the same file sent with the same fields gets the same key
    (so a retry or a rerun finds the stored job); other fields get another key, since the
    service refuses a key reused with a different request (422). The defaults (frame 0, no
    external id) give the keys of manifests written before those fields existed."""
    material = f"{sha256}:{mode}"
    if frame:
        material += f":frame={frame}"
    if external_id is not None:
        material += f":external_id={external_id}"
    base = hashlib.sha256(material.encode()).hexdigest()
    return f"fada-submit-{base}" if retry == 0 else f"fada-submit-{base}-retry{retry}"


class OptionsMismatch(Exception):
    """The manifest in ``--out`` was written by a run with other options."""


def _describe(options: dict[str, Any]) -> str:
    return " ".join(f"--{name.replace('_', '-')} {options.get(name)}" for name in sorted(options))


class Manifest:
    """``<out>/manifest.json``: ``{"version": 2, "options": {...}, "files": {path: entry}}``,
    thread-safe, written whole after every change (temporary file + rename).

    ``options`` are the run's submission options (mode, frame, external_id_from). A manifest
    holding files made with other options raises :class:`OptionsMismatch`: those results must
    not be mixed (or overwritten) with this run's. One without ``options`` (version 1) is read as
    frame 0 and no external ids, its mode unknown and so taken as this run's, and is rewritten
    at once as version 2 with those options."""

    def __init__(self, out: Path, options: dict[str, Any] | None = None) -> None:
        self.path = out / MANIFEST
        self.lock = threading.Lock()
        self.files: dict[str, dict[str, Any]] = {}
        self.options: dict[str, Any] = dict(options or {})
        if self.path.exists():
            data = json.loads(self.path.read_text())
            self.files = dict(data.get("files", {}))
            recorded = data.get("options")
            if recorded is None:  # version 1: what it could send, and the mode it did not record
                recorded = {**self.options, "frame": 0, "external_id_from": "none"}
            if self.files and recorded != self.options:
                raise OptionsMismatch(
                    f"{self.path} was written by a run with {_describe(recorded)}; this run asks for "
                    f"{_describe(self.options)}. Rerun with the same options to finish that run, or pass another "
                    "--out for these options (results made with different options are not mixed in one folder).")
            if data.get("options") is None and self.files:
                self._write()  # adopted: from now on the options are recorded, even if nothing else changes

    def get(self, key: str) -> dict[str, Any]:
        with self.lock:
            return dict(self.files.get(key, {}))

    def update(self, key: str, **values: Any) -> None:
        with self.lock:
            self.files.setdefault(key, {}).update(values)
            self._write()

    def _write(self) -> None:
        data = json.dumps({"version": MANIFEST_VERSION, "options": self.options, "files": self.files}, indent=2,
                          sort_keys=True).encode()
        fd, tmp = tempfile.mkstemp(prefix=".manifest.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(value, f, indent=2)
    os.replace(tmp, path)


class Runner:
    def __init__(self, client: FadaClient, manifest: Manifest, out: Path, mode: str, wait: bool,
                 deadline: float, *, frame: int = 0, external_id_from: str = "none") -> None:
        self.client, self.manifest, self.out, self.mode, self.wait, self.deadline = (
            client, manifest, out, mode, wait, deadline)
        self.frame, self.external_id_from = frame, external_id_from
        self.auth_error: ApiError | None = None
        self.rejected: list[str] = []  # why files were failed here, without a job: one line each, naming the file
        self.reached = False  # the service answered in this run: later silence is an outage, not a wrong URL

    def _call(self, operation: Callable[[], T]) -> T:
        """``operation()``, tried again while the service, reached before in this run, does not
        answer or answers 503 (``Retry-After`` aside), for up to OUTAGE_PATIENCE seconds and
        within the run's deadline. Safe to repeat: submissions carry their Idempotency-Key."""
        since: float | None = None
        while True:
            try:
                value = operation()
            except (TransportError, Unavailable) as exc:
                if isinstance(exc, Unavailable) and exc.code == "too_many_pending_jobs":
                    raise  # not an outage: the admission loop waits for it
                now = time.monotonic()
                since = now if since is None else since
                if not self.reached or now - since >= OUTAGE_PATIENCE or now >= self.deadline:
                    raise
                time.sleep(min(OUTAGE_PAUSE, self.deadline - now))
            else:
                self.reached = True
                return value

    @staticmethod
    def same(entry: dict[str, Any], sha256: str, external_id: str | None) -> bool:
        """The entry is of this content sent with this external id (with relpath ids, the same
        file reached from another folder argument has another id: a new submission)."""
        return entry.get("sha256") == sha256 and entry.get("external_id") == external_id

    def done(self, key: str, entry: dict[str, Any], sha256: str, external_id: str | None = None) -> bool:
        if not self.same(entry, sha256, external_id):
            return False
        if not self.wait:
            return bool(entry.get("job_id")) and entry.get("status") not in ("failed", "canceled", "error")
        return entry.get("status") == DONE and all((self.out / entry.get(k, "")).is_file()
                                                   for k in ("result", "coco"))

    def process(self, path: Path, rel: str) -> str:
        """One file, start to end; returns its final status for the summary."""
        key = str(path.resolve())
        data = path.read_bytes()
        sha256 = hashlib.sha256(data).hexdigest()
        external_id = external_id_for(path, rel, self.external_id_from)
        if not data:  # named as an image (see collect): a failed input, not something to skip or send
            detail = f"{path}: empty file (0 bytes) named as an image; not sent"
            self.rejected.append(detail)
            self.manifest.update(key, name=rel, sha256=sha256, external_id=external_id, retry=0, job_id=None,
                                 status="failed", error={"code": "empty_file", "detail": detail})
            return "failed"
        entry = self.manifest.get(key)
        if self.done(key, entry, sha256, external_id):
            return "skipped"
        if not self.same(entry, sha256, external_id):  # new file, its content or its id changed: start over
            entry = {"sha256": sha256, "retry": 0}
            self.manifest.update(key, name=rel, sha256=sha256, external_id=external_id, retry=0, job_id=None,
                                 status="new", error=None)
        try:
            job_id = entry.get("job_id")
            if not job_id or entry.get("status") in ("failed", "canceled"):
                retry = int(entry.get("retry", 0)) + (1 if entry.get("status") in ("failed", "canceled") else 0)
                self.manifest.update(key, retry=retry)  # recorded before sending: a crash reuses the key
                job = self._submit_when_admitted(
                    data, external_id, idempotency_key(sha256, self.mode, retry, frame=self.frame,
                                                       external_id=external_id))
                job_id = job["id"]
                self.manifest.update(key, job_id=job_id, status=job["status"], error=None)
            if not self.wait:
                return "submitted"
            job = self._call(lambda: self.client.wait(job_id, timeout=max(0.0, self.deadline - time.monotonic())))
            status = str(job["status"])
            if status in ("succeeded", "awaiting_review"):
                result_name, coco_name = f"{rel}.json", f"{rel}.coco.json"
                _write_json(self.out / result_name, self._call(lambda: self.client.result(job_id)))
                _write_json(self.out / coco_name, self._call(lambda: self.client.coco(job_id)))
                self.manifest.update(key, status=status, error=None, result=result_name, coco=coco_name)
                return status
            error = job.get("error") or {"code": status, "detail": f"the job ended {status}"}
            self.manifest.update(key, status=status, error=error)
            return "failed"
        except WaitTimeout as exc:
            self.manifest.update(key, status=str(exc.job.get("status")), error={"code": "timeout", "detail": str(exc)})
            return "unfinished"
        except (Unauthorized, Forbidden) as exc:
            self.auth_error = exc
            self.manifest.update(key, status="error", error={"code": exc.code, "detail": exc.detail})
            return "error"
        except ApiError as exc:
            self.manifest.update(key, status="error", error={"code": exc.code, "detail": exc.detail,
                                                               "status": exc.status})
            return "error"
        except FadaError as exc:
            self.manifest.update(key, status="error", error={"code": "transport", "detail": str(exc)})
            return "error"


    def _submit_when_admitted(self, data: bytes, external_id: str | None, key: str) -> dict[str, Any]:
        """Submit; while the service says the key has as many jobs queued as it may have
        (429 too_many_pending_jobs, after the client's own retries), wait and send again,
        until the run's deadline. The Idempotency-Key stays the same, so nothing is sent twice."""
        while True:
            try:
                return self._call(lambda: self.client.submit(
                    data, mode=self.mode, external_id=external_id,  # type: ignore[arg-type]
                    frame=self.frame or None, idempotency_key=key))
            except Unavailable as exc:
                left = self.deadline - time.monotonic()
                if exc.code != "too_many_pending_jobs" or left <= 0:
                    raise
                time.sleep(min(ADMISSION_PAUSE, left))


def _check_external_ids(files: list[tuple[Path, str]], source: str) -> None:
    """Refuse the run, before anything is sent, when an external id would be over the
    service's limit (it would refuse those files one by one, half-way through the run); warn
    when several files share one id (with ``name`` or ``stem`` across subfolders)."""
    ids = [(rel, external_id_for(path, rel, source)) for path, rel in files]
    too_long = [(rel, ext) for rel, ext in ids if ext is not None and len(ext) > EXTERNAL_ID_MAX]
    if too_long:
        lines = "\n".join(f"  {rel} ({len(ext)} characters)" for rel, ext in too_long[:10])
        more = f"\n  ... and {len(too_long) - 10} more" if len(too_long) > 10 else ""
        typer.echo(f"error: --external-id-from {source} gives {len(too_long)} external id(s) over "
                   f"{EXTERNAL_ID_MAX} characters, the service's limit; nothing was sent:\n{lines}{more}", err=True)
        raise typer.Exit(EXIT_USAGE)
    shared = [ext for ext, n in Counter(ext for _, ext in ids if ext is not None).items() if n > 1]
    if shared:
        typer.echo(f"warning: {len(shared)} external id(s) are shared by several files (e.g. {shared[0]!r}); "
                   "--external-id-from relpath gives one id per file", err=True)


def submit(
    paths: Annotated[list[Path], typer.Argument(help="image files or folders", exists=True)],
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="descend into subfolders")] = False,
    concurrency: Annotated[int, typer.Option(help="files in flight at once", min=1, max=64)] = 4,
    mode: Annotated[str, typer.Option(help="autonomous or hitl")] = "autonomous",
    frame: Annotated[int | None, typer.Option(
        min=0, show_default=False,
        help="0-based frame of a multi-frame DICOM, sent with every file (default: the service's, 0); a file with "
             "fewer frames is refused and counted as an error")] = None,
    external_id_from: Annotated[str, typer.Option(
        help="each job's external_id: none, name (file name), stem (name without its suffix) or relpath (path "
             "relative to the folder argument); at most 128 characters")] = "none",
    wait: Annotated[bool, typer.Option("--wait", help="wait for each job; write its result and COCO")] = False,
    out: Annotated[Path, typer.Option(help="folder for the manifest and results", file_okay=False)] = Path(
        "fada-out"),
    timeout: Annotated[float, typer.Option(
        help="seconds for the whole run: waiting for the service to take more images (its per-key limit of "
             "pending jobs) and, with --wait, for the jobs", min=0)] = 3600,
    url: Annotated[str, typer.Option(envvar="FADA_URL", help="the service's base URL")] = DEFAULT_URL,
    key: Annotated[str | None, typer.Option(envvar="FADA_API_KEY", show_default=False,
                                            help="a submitter or admin API key")] = None,
) -> None:
    """Submit PNG, JPEG and DICOM files (found by content), resumably: rerun the same command
    to finish what a crash, a timeout or a failure left undone; no image is submitted twice.
    Other files are skipped; an empty file named as an image (.png, .jpg, .jpeg, .dcm, .dicom)
    is not sent and counts as failed.
    An --out folder holds one set of options (--mode, --frame, --external-id-from): a rerun with
    others is refused; use another --out.

    Exit codes: 0 all done; 1 some image failed or did not finish; 2 bad usage; 3 key refused.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.table import Table

    console = Console(stderr=True)
    if mode not in ("autonomous", "hitl"):
        raise typer.BadParameter("mode must be autonomous or hitl", param_hint="--mode")
    if external_id_from not in EXTERNAL_ID_SOURCES:
        raise typer.BadParameter(f"must be one of {', '.join(EXTERNAL_ID_SOURCES)}", param_hint="--external-id-from")
    if not key:
        typer.echo("error: no API key: pass --key or set FADA_API_KEY (a submitter key)", err=True)
        raise typer.Exit(EXIT_USAGE)
    files, skipped, folders = collect(paths, recursive)
    if not files:
        typer.echo(f"error: no PNG, JPEG or DICOM files found ({skipped} skipped)", err=True)
        raise typer.Exit(EXIT_USAGE)
    _check_external_ids(files, external_id_from)
    out.mkdir(parents=True, exist_ok=True)
    options = {"mode": mode, "frame": frame or 0, "external_id_from": external_id_from}
    try:
        manifest = Manifest(out, options)
    except OptionsMismatch as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    statuses: Counter[str] = Counter()
    with FadaClient(url, key) as client:
        runner = Runner(client, manifest, out, mode, wait, time.monotonic() + timeout, frame=frame or 0,
                        external_id_from=external_id_from)
        columns = (TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TaskProgressColumn(), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                   TimeRemainingColumn())
        with Progress(*columns, console=console) as progress, ThreadPoolExecutor(concurrency) as pool:
            task = progress.add_task("submitting" if not wait else "processing", total=len(files), rate="")
            started = time.monotonic()

            def one(item: tuple[Path, str]) -> None:
                status = runner.process(*item)
                with manifest.lock:
                    statuses[status] += 1
                    rate = sum(statuses.values()) / max(1e-6, time.monotonic() - started)
                progress.update(task, advance=1, rate=f"{rate:.1f}/s")

            list(pool.map(one, files))
    table = Table(title="fada submit")
    table.add_column("status")
    table.add_column("images", justify="right")
    for status, n in sorted(statuses.items()):
        table.add_row(status, str(n))
    table.add_row("not an image (skipped)", str(skipped))
    if folders:
        table.add_row("subfolders not searched (--recursive)", str(folders))
    console.print(table)
    for detail in sorted(runner.rejected):
        typer.echo(f"error: {detail}", err=True)
    console.print(f"manifest: {manifest.path}")
    if runner.auth_error is not None:
        typer.echo(f"error: the service refused the key ({runner.auth_error})", err=True)
        raise typer.Exit(EXIT_AUTH)
    if statuses["failed"] or statuses["error"] or statuses["unfinished"]:
        raise typer.Exit(EXIT_FAILED)

