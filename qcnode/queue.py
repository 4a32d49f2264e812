"""The QC job queue on the database: claims with leases, no home-made broker.

A worker claims up to N jobs that are queued, or running with an expired lease (their
worker died), in one transaction: ``SELECT … FOR UPDATE SKIP LOCKED`` on PostgreSQL so
that concurrent workers never claim the same job; on SQLite every write transaction is
``BEGIN IMMEDIATE`` (see db.make_engine), which serialises claims. A claim is only
finished by the worker that holds it (same worker id and attempt), so a worker that lost
its lease cannot overwrite the result of the one that re-claimed the job.

Attempts count worker deaths (``job_max_attempts`` gives up a poison image), but only
deaths that may be the image's fault. A claim made by ``serve``'s QC child process carries
the run id of ``serve`` (its supervisor); when a node starts and finds a claim whose
worker and whose run are both gone, the whole node died (power, SIGKILL, OOM of serve, a
deploy): the claim is released without counting it. A worker that died while its run
lived (the QC child crashed under a live ``serve``) counts, as does every death of a
worker without a supervisor (threads, where the node is the worker) or on another host
(lease expiry: nothing tells why it died).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import uuid
from dataclasses import dataclass

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from qcnode.db import DONE, FAILED, QUEUED, RUNNING, Clock, Job, utcnow

log = logging.getLogger(__name__)

DEFERRED = "deferred"  # Job.worker of a job given back to be retried after its lease


def new_worker_id() -> str:
    """``host:pid:random``: lets a restarted node recognise its own dead predecessors."""
    return f"{_host()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def new_run_id() -> str:
    """``host:pid:random`` of a supervising process (``serve``): the random part tells a
    new run from a dead one whose pid was reused (a container's pid 1)."""
    return new_worker_id()


def _host() -> str:
    return socket.gethostname()[:40]


def _pid(worker_or_run: str | None) -> int:
    """The pid in a ``host:pid:…`` id, 0 when there is none."""
    parts = (worker_or_run or "").split(":")
    try:
        return int(parts[1]) if len(parts) > 2 else 0
    except ValueError:
        return 0


def run_is_gone(run_id: str, current_run: str | None) -> bool:
    """Whether the run ``run_id`` (on this host) has ended: not ours, and its process is
    gone or its pid is now ours or our run's (reused)."""
    if run_id == current_run:
        return False
    if not run_id.startswith(f"{_host()}:"):
        return False  # another host's: nothing here tells
    pid = _pid(run_id)
    if pid in (os.getpid(), _pid(current_run)):
        return True
    return not _alive(pid)


@dataclass(frozen=True)
class Claim:
    job_id: int
    instance_id: int
    attempt: int


class JobQueue:
    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        worker_id: str,
        lease_seconds: float,
        clock: Clock = utcnow,
        run_id: str | None = None,
    ) -> None:
        self.sessions = sessions
        self.worker_id = worker_id
        # the supervising run's id when this worker runs in serve's QC child process
        self.run_id = run_id
        self.lease = dt.timedelta(seconds=lease_seconds)
        self.clock = clock

    def claim(self, limit: int) -> list[Claim]:
        """Claim up to ``limit`` fresh jobs, oldest first, or one job that was started
        before and not finished (its worker died, or it was deferred).

        Such a job runs alone: if it is the image that kills workers (a decoder crash),
        it takes no batch-mates down with it, and only its own attempts count.
        """
        if limit <= 0:
            return []
        now = self.clock()
        with self.sessions.begin() as session:
            jobs = session.scalars(
                select(Job)
                .where(
                    or_(
                        and_(Job.state == QUEUED, Job.attempts > 0),
                        and_(Job.state == RUNNING, Job.lease_until < now),
                    )
                )
                .order_by(Job.id)
                .limit(1)
                .with_for_update(skip_locked=True)
            ).all()
            if not jobs:
                jobs = session.scalars(
                    select(Job)
                    .where(Job.state == QUEUED, Job.attempts == 0)
                    .order_by(Job.id)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                ).all()
            claims = []
            for job in jobs:
                if job.state == RUNNING and job.worker != DEFERRED:
                    log.warning("re-claiming job #%d after its lease expired", job.id)
                    if self._node_died(job):
                        job.attempts = max(0, job.attempts - 1)
                job.state = RUNNING
                job.worker = self.worker_id
                job.run_id = self.run_id
                job.attempts += 1
                job.lease_until = now + self.lease
                job.started_at = now
                claims.append(Claim(job.id, job.instance_id, job.attempts))
        return claims

    def defer(self, job: Job, seconds: float) -> None:
        """Give a held job back to be tried again later, without counting this attempt
        (inside the caller's transaction): for passing trouble such as a full disk."""
        job.worker = DEFERRED
        job.attempts = max(0, job.attempts - 1)
        job.lease_until = self.clock() + dt.timedelta(seconds=seconds)

    def holds(self, session: Session, claim: Claim) -> Job | None:
        """The job, locked, if this worker still holds ``claim`` (inside a transaction)."""
        return session.scalar(
            select(Job)
            .where(
                Job.id == claim.job_id,
                Job.state == RUNNING,
                Job.worker == self.worker_id,
                Job.attempts == claim.attempt,
            )
            .with_for_update()
        )

    def renew(self, claims: list[Claim]) -> None:
        """Extend the leases of a long batch."""
        if not claims:
            return
        with self.sessions.begin() as session:
            session.execute(
                update(Job)
                .where(Job.id.in_([c.job_id for c in claims]), Job.worker == self.worker_id)
                .values(lease_until=self.clock() + self.lease)
            )

    @staticmethod
    def finish(session: Session, job: Job, *, error: str | None = None) -> None:
        job.state = FAILED if error else DONE
        job.error = error
        job.finished_at = utcnow()
        job.lease_until = None

    def release_dead_local(self) -> int:
        """Requeue running jobs of workers on this host whose process is gone.

        Called at start-up so that a node restarted after a crash does not wait for the
        lease of its own dead predecessor. A job whose run is gone too was interrupted by
        the node's death, not by its image: that attempt is not counted.
        """
        requeued = spared = 0
        with self.sessions.begin() as session:
            for job in session.scalars(
                select(Job).where(Job.state == RUNNING, Job.worker.like(f"{_host()}:%"))
            ):
                pid = _pid(job.worker)
                if pid != os.getpid() and _alive(pid):
                    continue
                if self._node_died(job):
                    job.attempts = max(0, job.attempts - 1)
                    spared += 1
                job.state = QUEUED
                job.lease_until = None
                requeued += 1
        if requeued:
            log.warning(
                "requeued %d job(s) left running by a dead worker on this host"
                " (%d interrupted by the whole node's end: not counted as attempts)",
                requeued,
                spared,
            )
        return requeued

    def _node_died(self, job: Job) -> bool:
        """Whether ``job``'s worker ran under a supervising run that has ended too."""
        return bool(job.run_id) and run_is_gone(str(job.run_id), self.run_id)

    def counts(self) -> dict[str, int]:
        with self.sessions() as session:
            rows = session.execute(select(Job.state, func.count()).group_by(Job.state)).all()
        return {state: int(n) for state, n in rows}


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
