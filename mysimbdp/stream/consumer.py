"""One stream consumer: its own channel and tasks, batched writes, acknowledgement after the write.

A consumer buffers delivered messages and flushes when ``batch_max_messages`` are buffered
(or ``prefetch`` messages, if lower: the broker sends no more before an acknowledgement) or
the oldest has waited ``batch_max_wait_ms``. A flush runs the tenant's app on the batch in
the consumer's own worker thread (so a slow app never blocks the event loop, other
consumers or other tenants), writes the documents and rejects with
:func:`mysimbdp.store.writes.write` (the one write path of batch and stream), and only then
acknowledges (``multiple``). Two batches are in flight at most: the app runs over the next
batch while the one before it is written, so the app's worker and the store work at once;
writes and acknowledgements go one batch at a time, in delivery order.

* Store down (a transient error, :func:`mysimbdp.store.writes.is_transient`): the batch is
  kept (not acknowledged) and the write retried with exponential backoff until the store is
  back; nothing is lost and nothing is redelivered meanwhile.
* The store refuses documents for good (too large, a unique index, a collection it does not
  accept) or the app's target is one apps may not write to: those documents become
  ``write_failed`` rejects with the reason and their messages are acknowledged; never retried.
* App stuck on one message longer than ``app_timeout_s``: that message is returned to the
  queue (``nack`` with requeue) and counts one delivery; past the queue's delivery limit the
  broker moves it to the dead-letter queue. The other messages of the batch go on.
* Anything unexpected in a flush: the batch is returned to the queue, the consumer goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from pamqp import common as amqp_common
from pamqp import decode as amqp_decode
from pymongo.asynchronous.database import AsyncDatabase

from mysimbdp.apps.runner import AppSession, Mode, Runners
from mysimbdp.compat import install_pamqp_decoders
from mysimbdp.events import Emitter
from mysimbdp.events.catalog import (
    StreamAckFailed,
    StreamAppTimeout,
    StreamBatchCommitted,
    StreamBatchFailed,
    StreamBatchRetry,
    StreamConsumerAbandoned,
    StreamConsumerCancelFailed,
    StreamConsumerStarted,
    StreamConsumerStopped,
    StreamConsumerStopStepLeft,
    StreamConsumerWarmUpFailed,
    StreamReport,
    StreamTickFailed,
)
from mysimbdp.monitor.reports import ReportWindow, clamp_ms
from mysimbdp.store.rejects import REJECTS
from mysimbdp.store.schemas import SchemaRecorder
from mysimbdp.store.writes import (
    RetryHook,
    RetryPolicy,
    TargetRefused,
    ensure_target,
    write,
    write_rejects,
)
from mysimbdp.stream.apprun import PER_FRAME, AppRoute, AppRun
from mysimbdp.stream.counters import BatchStats, CommitSummary, RateMeter
from mysimbdp.stream.records import (
    RAW_LIMIT,
    TIMESTAMP_MS_HEADER,
    Incoming,
    Outcome,
    plain_headers,
    raw_fields,
    too_large_reason,
    write_failed_reject,
)
from mysimbdp.stream.topology import queue_name, type_of
from mysimbdp.tenants import StreamProfile

__all__ = ["Consumer", "Routes"]

DepthProbe = Callable[[], Awaitable[int | None]]


@dataclass(frozen=True)
class Routes:
    """The tenant's apps: the default one and one per routing-key type (``stream.apps``)."""

    default: AppRoute
    by_type: Mapping[str, AppRoute]

    def for_key(self, tenant: str, key: str) -> AppRoute:
        """The route of routing key ``<tenant>`` or ``<tenant>.<type>`` (unknown types: default)."""
        type_ = type_of(tenant, key)
        return self.by_type.get(type_, self.default) if type_ else self.default


@dataclass
class _Prepared:
    """A batch the apps have run over, waiting for its turn to be written."""

    outcomes: list[Outcome | None]
    poison: list[int]  # indexes of messages the app was stuck on: back to the queue
    evolved: dict[str, set[str]]  # what the contract's evolve accepted
    seconds: float  # the apps' time


@dataclass
class _Delivery:
    message: AbstractIncomingMessage
    published_ms: float | None
    received_ms: float


def _published_ms(message: AbstractIncomingMessage) -> float | None:
    """The publish time in epoch ms: the header ``timestamp_ms``, else the AMQP timestamp, else None.

    Never raises: a value that is not a number of milliseconds between 1970 and the year
    9999 (what a ``datetime`` holds) counts as absent, so one message's odd header cannot
    fail the batch it is in.
    """
    try:
        headers = message.headers
        value = headers.get(TIMESTAMP_MS_HEADER) if isinstance(headers, Mapping) else None
    except Exception:
        value = None
    ms = _epoch_ms(value)
    if ms is None:
        try:
            stamp = message.timestamp
            ms = _epoch_ms(stamp.timestamp() * 1000.0) if isinstance(stamp, datetime) else None
        except Exception:
            ms = None
    return ms


class Consumer:
    """One consumer of a tenant's queue; ``instance`` is its id, e.g. ``<tenant>-c3``.

    Its events go through ``events``, the emitter of the manager that runs it (component ``stream``).
    """

    def __init__(self, *, tenant: str, instance: str, profile: StreamProfile, routes: Routes,
                 connection: AbstractConnection, database: AsyncDatabase[dict[str, Any]],
                 depth: DepthProbe, runners: Runners, events: Emitter, runner: Mode = "process",
                 retry_max_s: float = 30.0, schemas: SchemaRecorder | None = None) -> None:
        self.tenant = tenant
        self._schemas = schemas
        self.instance = instance
        self.events = events
        self.profile = profile
        self.routes = routes
        self._connection = connection
        self._db = database
        self._depth = depth
        # no deadline: a batch waits for the store unacknowledged (requeueing it would count deliveries)
        self._policy = RetryPolicy(max_delay_s=retry_max_s, deadline_s=None)
        self._runners, self._runner = runners, runner
        self._sessions: dict[str, AppSession] = {}  # app name -> session, used only from the app thread
        self._channel: AbstractChannel | None = None
        self._tag: str | None = None
        self._queue: Any = None
        self._buffer: list[_Delivery] = []
        self._in_flight = 0
        self._wake = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._executor = self._new_executor()
        self._window = ReportWindow(tenant, profile.app, instance)
        self._summary = CommitSummary()
        self.delivered = RateMeter()
        self.committed = RateMeter()
        self.last_ingest: float | None = None  # when a batch last wrote documents (epoch seconds)

    def _new_executor(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(1, thread_name_prefix=f"{self.instance}-app")

    # ----------------------------------------------------------------- life cycle

    async def start(self) -> None:
        """Open the channel, set the prefetch, begin consuming and flushing."""
        await self._warm_up()
        self._channel = await self._connection.channel(publisher_confirms=False)
        await self._channel.set_qos(prefetch_count=self.profile.prefetch)
        # ensure=True: a robust channel restores only the queues (and their consumers) it looked up
        # for real; with ensure=False consumption silently stops after RabbitMQ restarts
        self._queue = await self._channel.get_queue(queue_name(self.tenant), ensure=True)
        self._tasks = [asyncio.create_task(self._flush_loop(), name=f"{self.instance}.flush"),
                       asyncio.create_task(self._tick_loop(), name=f"{self.instance}.tick")]
        try:
            self._tag = await self._queue.consume(self._on_message, no_ack=False)
        except BaseException:
            await self.stop(0)
            raise
        self.events.emit(StreamConsumerStarted(tenant=self.tenant, consumer=self.instance,
                                               prefetch=self.profile.prefetch))

    async def _warm_up(self, timeout: float = 10.0) -> None:
        """Start the default app's session before taking messages: the first batch then does not
        wait for a worker to start. Best effort: on failure the first batch tries again."""
        work = asyncio.get_running_loop().run_in_executor(self._executor, self._session, self.routes.default.app)
        try:
            await asyncio.wait_for(asyncio.shield(work), timeout)
        except Exception as exc:
            self.events.emit(StreamConsumerWarmUpFailed(tenant=self.tenant, consumer=self.instance,
                                                        app=self.routes.default.app,
                                                        error=f"{type(exc).__name__}: {exc}"[:300]))

    async def stop(self, timeout: float) -> int:
        """Cancel the consumer tag, flush what is buffered within ``timeout``, close the channel.

        Returns how many delivered messages were left unacknowledged (the broker delivers
        them again to another consumer).
        """
        await self._cancel_tag(timeout)
        self._stopping = True
        self._wake.set()
        flusher, ticker = self._tasks if self._tasks else (None, None)
        left = 0
        if flusher is not None:
            done, _ = await asyncio.wait({flusher}, timeout=timeout)
            if not done:
                left = len(self._buffer) + self._in_flight
                flusher.cancel()
                await self._bounded("flush", flusher, timeout)
                self.events.emit(StreamConsumerAbandoned(tenant=self.tenant, consumer=self.instance,
                                                         unacked=left, timeout_s=timeout))
        if ticker is not None:
            ticker.cancel()
            await self._bounded("report", ticker, timeout)
        self._emit_summary()
        if self._channel is not None and not self._channel.is_closed:
            # bounded: a broker that does not answer must not stall a scale-down or a shutdown
            await self._bounded("channel close", self._channel.close(), timeout)
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._release_sessions(kill=left > 0)
        self.events.emit(StreamConsumerStopped(tenant=self.tenant, consumer=self.instance, unacked=left))
        return left

    async def _cancel_tag(self, timeout: float) -> None:
        tag, self._tag = self._tag, None
        if tag is not None and self._queue is not None:
            await self._bounded("consumer tag cancel", self._queue.cancel(tag), timeout)

    async def _bounded(self, step: str, work: Awaitable[Any], timeout: float) -> None:
        """Wait for one step of a stop at most ``timeout`` seconds, then leave it behind.

        ``asyncio.wait_for`` would wait for a cancelled call to finish cancelling, which a
        broker call need not do soon: a scale-down or a shutdown must not hang on it. A step
        that fails (a closed channel has no consumer left to cancel) is logged and passed.
        """
        task = asyncio.ensure_future(work)
        done, _ = await asyncio.wait({task}, timeout=max(timeout, 0.001))
        if not done:
            task.cancel()
            task.add_done_callback(_retrieve)
            self.events.emit(StreamConsumerStopStepLeft(tenant=self.tenant, consumer=self.instance, step=step,
                                                        timeout_s=timeout))
        elif not task.cancelled() and task.exception() is not None:
            self.events.emit(StreamConsumerCancelFailed(tenant=self.tenant, consumer=self.instance, step=step,
                                                        error=str(task.exception())))

    @property
    def buffered(self) -> int:
        """Messages delivered and not yet acknowledged."""
        return len(self._buffer) + self._in_flight

    # ----------------------------------------------------------------- intake and flushing

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self._buffer.append(_Delivery(message, _published_ms(message), time.time() * 1000.0))
        self.delivered.add(1)
        if len(self._buffer) == 1 or len(self._buffer) >= self._full:
            self._wake.set()

    @property
    def _full(self) -> int:
        """Buffered messages that make a batch: ``batch_max_messages``, or the prefetch if lower
        (the broker sends no more until some are acknowledged: waiting would only add latency)."""
        return min(self.profile.batch_max_messages, self.profile.prefetch)

    async def _flush_loop(self) -> None:
        """Take batches and flush them, two at a time: the app runs over one batch while the
        one before it is written; writes and acknowledgements go one batch at a time, in
        delivery order (an acknowledgement with ``multiple`` covers every earlier delivery)."""
        committing: asyncio.Task[None] | None = None
        try:
            while (batch := await self._next_batch()) is not None:
                self._in_flight += len(batch)
                handed_on = False  # to a commit, which then counts it out of flight
                try:
                    prepared = await self._prepare(batch)
                    if committing is not None:
                        await committing
                        committing = None
                    if prepared is not None:
                        committing = asyncio.create_task(self._commit(batch, prepared),
                                                         name=f"{self.instance}.commit")
                        handed_on = True
                finally:
                    if not handed_on:
                        self._in_flight -= len(batch)
            if committing is not None:
                await committing
        finally:
            if committing is not None and not committing.done():  # the loop was cancelled
                committing.cancel()
                await asyncio.gather(committing, return_exceptions=True)

    async def _next_batch(self) -> list[_Delivery] | None:
        """The next batch: ``_full`` messages, or what is buffered once the oldest has waited
        ``batch_max_wait_ms``; None once stopping with nothing buffered."""
        max_wait = self.profile.batch_max_wait_ms / 1000.0
        while not self._buffer:
            if self._stopping:
                return None
            self._wake.clear()
            await self._wake.wait()
        deadline = time.monotonic() + max_wait
        while (len(self._buffer) < self._full and not self._stopping
               and (remaining := deadline - time.monotonic()) > 0):
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), remaining)
        batch = self._buffer[: self.profile.batch_max_messages]
        del self._buffer[: len(batch)]
        return batch

    async def _prepare(self, batch: list[_Delivery]) -> _Prepared | None:
        """The apps over the batch; None if that failed (the batch is back in the queue)."""
        t0 = time.monotonic()
        try:
            outcomes, poison, evolved = await self._run_app(batch)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._failed(batch, exc)
            return None
        return _Prepared(outcomes, poison, evolved, time.monotonic() - t0)

    async def _commit(self, batch: list[_Delivery], prepared: _Prepared) -> None:
        """Write, record the schema, acknowledge: the error boundary of one batch's writes."""
        try:
            t0 = time.monotonic()
            stats = await self._write(batch, prepared.outcomes)
            contract = self.profile.contract
            if prepared.evolved and self._schemas is not None and contract is not None:
                # before the ack: a redelivery records it again
                await self._schemas.record(self.tenant, "stream", prepared.evolved, "stream", contract.fields)
            stats.seconds = prepared.seconds + time.monotonic() - t0
            await self._settle(batch, prepared.poison)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._failed(batch, exc)
            return
        finally:
            self._in_flight -= len(batch)
        self._committed(batch, prepared.poison, stats)

    async def _failed(self, batch: list[_Delivery], exc: Exception) -> None:
        """Anything unexpected in a batch: it goes back to the queue, the consumer goes on."""
        self.events.emit(StreamBatchFailed(tenant=self.tenant, consumer=self.instance, messages=len(batch),
                                           error=str(exc)), exc_info=True)
        for delivery in batch:
            await self._safely(delivery.message.nack(requeue=True))

    def _committed(self, batch: list[_Delivery], poison: list[int], stats: BatchStats) -> None:
        """A batch written and acknowledged: its latencies and counts into the reports."""
        now_ms = time.time() * 1000.0
        poisoned = {id(batch[i]) for i in poison}
        # Without a publish time, the time since delivery is the best (lower) bound we have.
        # Clamped: a publish time in the future (a wrong clock, a hostile header) counts 0.
        stats.ingest_ms = [_latency_ms(now_ms, d.published_ms if d.published_ms is not None else d.received_ms)
                           for d in batch if id(d) not in poisoned]
        self._window.add(stats.ingest_ms, stats.seconds * 1000.0, documents=stats.documents,
                         bytes=stats.bytes, rejected=stats.rejected)
        self._summary.add(stats)
        self.committed.add(stats.messages)
        if stats.documents:
            self.last_ingest = time.time()

    async def _run_app(self, batch: list[_Delivery]) -> tuple[list[Outcome | None], list[int], dict[str, set[str]]]:
        """Run the apps over the batch from the app thread; returns outcomes, stuck indexes and
        what the contract's ``evolve`` accepted (fields and their types)."""
        work = [(self._incoming(d.message), self.routes.for_key(self.tenant, d.message.routing_key or self.tenant))
                for d in batch]
        outcomes: list[Outcome | None] = [None] * len(batch)
        poison: list[int] = []
        evolved: dict[str, set[str]] = {}
        start = 0
        loop = asyncio.get_running_loop()
        limit = self.profile.app_timeout_s
        per_frame = PER_FRAME
        while start < len(work):
            run = AppRun(work[start:], self.profile.min_quality, self.profile.max_records_per_message, self._session,
                         per_frame, self.profile.contract)
            future = loop.run_in_executor(self._executor, run)
            stuck: int | None = None
            while True:
                _, started = run.progress
                wait = 0.5 if started == math.inf else max(started + limit - time.monotonic(), 0.005)
                done, _ = await asyncio.wait({future}, timeout=wait)
                if done:
                    future.result()
                    break
                index, started = run.progress
                if time.monotonic() - started >= limit and len(run.results) <= index:
                    stuck, run.abandoned = index, True
                    self._abandon(run)
                    break
            for name, kinds in run.evolved.items():
                evolved.setdefault(name, set()).update(kinds)
            taken = run.results[: stuck if stuck is not None else len(run.results)]
            for offset, outcome in enumerate(taken):
                outcomes[start + offset] = outcome
            if stuck is None:
                break
            if not run.exact:
                # the app's answers came several at a time: the message it is stuck on may be any
                # of those unanswered; go on one answer per message to find it
                per_frame = 1
                start += len(taken)
                continue
            poison.append(start + stuck)
            message = batch[start + stuck].message
            self.events.emit(StreamAppTimeout(tenant=self.tenant, consumer=self.instance,
                                              app=work[start + stuck][1].app, message_id=message.message_id,
                                              timeout_s=limit, redelivered=bool(message.redelivered)))
            start += stuck + 1
        return outcomes, poison, evolved

    def _session(self, app: str) -> AppSession:
        """The consumer's session of ``app`` (in the app thread: a worker may have to start)."""
        session = self._sessions.get(app)
        if session is None or not session.alive:
            if session is not None:
                self._runners.release(session)
            session = self._runners.lease(self.tenant, app, self._runner, "stream")
            self._sessions[app] = session
        return session

    def _abandon(self, run: AppRun) -> None:
        """The app is stuck: kill its session (a worker dies at once, a thread is left behind)."""
        session = run.current
        if session is not None:
            session.kill()
        self._executor.shutdown(wait=False)  # a stuck thread ends when the app returns
        self._executor = self._new_executor()
        self._sessions = {name: s for name, s in self._sessions.items() if s is not session}
        if session is not None:
            threading.Thread(target=self._runners.release, args=(session,), daemon=True).start()

    def _release_sessions(self, kill: bool) -> None:
        """Give the sessions back; ``kill``: the app thread may still be in a call (abandoned flush)."""
        sessions, self._sessions = list(self._sessions.values()), {}
        if kill:
            for session in sessions:
                session.kill()
        if sessions:
            threading.Thread(target=_release_all, args=(self._runners, sessions), daemon=True).start()

    def _incoming(self, message: AbstractIncomingMessage) -> Incoming:
        """The plain data of one message for its app: the error boundary of its properties.

        Never raises: the headers become plain, bounded values (:func:`plain_headers`), a
        publish time out of range counts as absent, and a body over the tenant's
        ``max_message_bytes`` is checked here, before anything decodes it: it goes on cut to
        its first ``RAW_LIMIT`` bytes and marked ``too_large``, to be rejected unread.
        """
        body = message.body
        too_large, body_bytes = None, None
        if len(body) > self.profile.max_message_bytes:
            too_large, body_bytes = too_large_reason(len(body), self.profile.max_message_bytes), len(body)
            body = body[:RAW_LIMIT]
        try:
            headers = plain_headers(message.headers)
        except Exception:
            headers = {}
        return Incoming(
            tenant=self.tenant, routing_key=message.routing_key or self.tenant, body=body,
            message_id=message.message_id, timestamp=_utc(_published_ms(message)), headers=headers,
            too_large=too_large, body_bytes=body_bytes)

    # ----------------------------------------------------------------- writing

    async def _write(self, batch: list[_Delivery], outcomes: list[Outcome | None]) -> BatchStats:
        """Write documents and rejects, retrying while the store is unreachable."""
        by_collection: dict[str, list[dict[str, Any]]] = {}
        rejects: list[dict[str, Any]] = []
        stats = BatchStats()
        for delivery, outcome in zip(batch, outcomes, strict=True):
            if outcome is None:  # stuck in the app: goes back to the queue
                continue
            stats.messages += 1
            stats.bytes += len(delivery.message.body)
            for collection, docs in outcome.documents.items():
                by_collection.setdefault(collection, []).extend(docs)
            rejects.extend(outcome.rejects)
        for collection, docs in by_collection.items():
            written, dups, failed = await self._insert(collection, docs)
            stats.documents += written
            stats.duplicates += dups
            if failed:
                rejects.extend(self._write_rejects(batch, outcomes, collection, docs, failed))
        if rejects:  # one the store refuses goes again without its record and raw message
            await write_rejects(self._db, rejects, self._policy, self._on_retry(REJECTS, len(rejects)))
        stats.rejected = len(rejects)
        return stats

    def _write_rejects(self, batch: list[_Delivery], outcomes: list[Outcome | None], collection: str,
                       docs: list[dict[str, Any]], failed: list[tuple[int, str]]) -> list[dict[str, Any]]:
        """Reject documents for the documents the store refused, each with its message's raw body."""
        message_of: dict[int, _Delivery] = {}
        # the reject holding each message's raw body (one of its app's rejects, if any): a
        # message is stored once, its other rejects point to it with ``raw_in``
        holder: dict[int, Any] = {}
        for delivery, outcome in zip(batch, outcomes, strict=True):
            if outcome is not None:
                if outcome.rejects:
                    holder[id(delivery)] = outcome.rejects[0]["_id"]
                for doc in outcome.documents.get(collection, ()):
                    message_of[id(doc)] = delivery
        rejects = []
        for i, reason in failed:
            source = message_of.get(id(docs[i]))
            key = (source.message.routing_key or self.tenant) if source is not None else self.tenant
            reject = write_failed_reject(self.tenant, self.routes.for_key(self.tenant, key).app, docs[i], reason)
            if source is not None:
                message = source.message
                reject.update(routing_key=message.routing_key or self.tenant, message_id=message.message_id)
                if id(source) in holder:
                    reject["raw_in"] = holder[id(source)]
                else:
                    reject.update(raw_fields(message.body))
                    holder[id(source)] = reject["_id"]
            rejects.append(reject)
        return rejects

    async def _insert(self, collection: str, docs: list[dict[str, Any]]) -> tuple[int, int, list[tuple[int, str]]]:
        """``(written, duplicates, (index, reason) of refused documents)``; retries store outages.

        The collection is checked first (the manager created its indexes): documents for a
        target apps may not write to are all refused, with the reason.
        """
        try:
            target = await ensure_target(self._db, collection)
        except TargetRefused as exc:
            reason = f"the app's target is refused: {exc}"
            return 0, 0, [(i, reason) for i in range(len(docs))]
        result = await write(target, docs, self._policy, self._on_retry(collection, len(docs)))
        failed = [(i, f"the store refused the document: {reason}") for i, reason in result.failed
                  if 0 <= i < len(docs)]
        return result.written, result.duplicates, failed

    def _on_retry(self, collection: str, documents: int) -> RetryHook:
        """Logs each retry of a write while the store is unreachable."""
        def retrying(attempt: int, delay: float, exc: BaseException) -> None:
            self.events.emit(StreamBatchRetry(tenant=self.tenant, consumer=self.instance, collection=collection,
                                              documents=documents, attempt=attempt, retry_in_s=delay,
                                              error=f"{type(exc).__name__}: {exc}"[:300]))
        return retrying

    # ----------------------------------------------------------------- acknowledging

    async def _settle(self, batch: list[_Delivery], poison: list[int]) -> None:
        """Return stuck messages to the queue, then acknowledge the rest (multiple, per channel)."""
        for i in poison:
            await self._safely(batch[i].message.nack(requeue=True))
        stuck = {id(batch[i]) for i in poison}
        last: dict[int, AbstractIncomingMessage] = {}
        for delivery in batch:
            if id(delivery) in stuck:
                continue
            try:
                channel = delivery.message.channel
            except Exception:  # its channel is gone: the broker already requeued it
                continue
            last[id(channel)] = delivery.message
        for message in last.values():
            await self._safely(message.ack(multiple=True))

    async def _safely(self, action: Awaitable[None]) -> None:
        try:
            await action
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the channel closed: the broker redelivers, the write deduplicates
            self.events.emit(StreamAckFailed(tenant=self.tenant, consumer=self.instance,
                                             error=f"{type(exc).__name__}: {exc}"[:300]))

    # ----------------------------------------------------------------- reports

    async def _tick_loop(self) -> None:
        """The committed summary every second (or period, if shorter); a report on time every period.

        Reports keep to their own schedule rather than the next summary tick, so they come
        one period apart (the monitor evaluates just after each one is due).
        """
        interval = self.profile.report_interval_s
        tick = min(1.0, interval)
        next_summary = time.monotonic() + tick
        next_report = time.monotonic() + interval
        while True:
            await asyncio.sleep(max(0.0, min(next_summary, next_report) - time.monotonic()))
            now = time.monotonic()
            if now >= next_summary:
                next_summary = now + tick
                try:
                    self._emit_summary()
                except Exception as exc:  # one bad tick must not end the consumer's summaries
                    self._tick_failed("summary", exc)
            if now >= next_report:
                # after a stall, start the schedule again rather than report in a burst
                next_report = next_report + interval if now - next_report < interval else now + interval
                try:
                    await self._report()
                except Exception as exc:  # nor its reports
                    self._tick_failed("report", exc)

    def _emit_summary(self) -> None:
        fields = self._summary.take()
        if fields is not None:
            self.events.emit(StreamBatchCommitted(tenant=self.tenant, consumer=self.instance, **fields))

    async def _report(self) -> None:
        try:
            depth = await asyncio.wait_for(self._depth(), 2.0)
        except Exception:
            depth = None
        try:
            report = self._window.close(queue_depth=depth)
        except Exception as exc:
            # the window cannot make a valid report: start a fresh one, or every later report fails too
            self._window = ReportWindow(self.tenant, self.profile.app, self.instance)
            self._tick_failed("report", exc)
            return
        self.events.emit(StreamReport(**report.to_event()))

    def _tick_failed(self, step: str, exc: Exception) -> None:
        """Log a failed summary or report; the tick loop goes on (even if logging fails)."""
        with contextlib.suppress(Exception):
            self.events.emit(StreamTickFailed(tenant=self.tenant, consumer=self.instance, step=step,
                                              error=f"{type(exc).__name__}: {exc}"[:300]), exc_info=True)


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Take a left-behind task's outcome, so that asyncio does not report it as never retrieved."""
    if not task.cancelled():
        task.exception()


_MAX_EPOCH_MS = 253_402_300_799_999.0  # 9999-12-31T23:59:59.999Z, the last instant a datetime holds


def _epoch_ms(value: Any) -> float | None:
    """``value`` as epoch milliseconds a ``datetime`` can hold, or None (not a number, out of range)."""
    if type(value) is not int and type(value) is not float:
        return None
    try:
        ms = float(value)
    except OverflowError:  # an int beyond any float
        return None
    return ms if math.isfinite(ms) and 0.0 <= ms <= _MAX_EPOCH_MS else None


def _utc(ms: float | None) -> datetime | None:
    """Epoch milliseconds as an aware UTC datetime (None stays None, as does anything out of range)."""
    if ms is None:
        return None
    try:
        return datetime.fromtimestamp(ms / 1000.0, UTC)
    except (ValueError, OverflowError, OSError):
        return None


def _latency_ms(now_ms: float, since_ms: float) -> float:
    """Milliseconds from ``since_ms`` to ``now_ms``, clamped as in reports (0 to a day): one odd
    publish time can neither make a negative latency nor swamp the summaries and reports."""
    return clamp_ms(now_ms - since_ms)


def _release_all(runners: Runners, sessions: list[AppSession]) -> None:
    for session in sessions:
        runners.release(session)


# ----------------------------------------------------------------------------- AMQP decoding
#
# The broker passes a publisher's message properties on unchecked, and pamqp (under aio-pika)
# raises on two kinds of them: a timestamp (the property, or a header of type T) outside what
# a ``datetime`` holds, and a short string (``message_id``, a header's name, ...) that is not
# UTF-8. Raised while the daemon's connection reads the frame, that closes the connection every
# tenant's consumers share, and the message comes back after the reconnection, for ever: one
# publisher stalls every tenant. The decoders below are total instead: such a timestamp
# decodes as None, such a string with U+FFFD for its bad bytes; the message then goes through
# its own error boundary (``_incoming``) like any other.

_AMQP_TIMESTAMP = amqp_decode.timestamp
_AMQP_SHORT_STR = amqp_decode.short_str


def _amqp_timestamp(value: bytes) -> tuple[int, datetime | None]:
    """pamqp's timestamp decoder, with None for a time a ``datetime`` cannot hold."""
    if len(value) < 8:
        return _AMQP_TIMESTAMP(value)  # truncated: pamqp's own error
    try:
        return _AMQP_TIMESTAMP(value)
    except (ValueError, OverflowError, OSError):
        return 8, None


def _amqp_short_str(value: bytes) -> tuple[int, str]:
    """pamqp's short-string decoder, replacing bytes that are not UTF-8."""
    try:
        return _AMQP_SHORT_STR(value)
    except UnicodeDecodeError:
        length = value[0]
        return length + 1, value[1 : length + 1].decode("utf-8", "replace")


def _amqp_field_table(value: bytes) -> tuple[int, dict[str, Any]]:
    """pamqp's field-table decoder, replacing bytes of a key that are not UTF-8."""
    try:
        length = amqp_common.Struct.integer.unpack(value[0:4])[0]
    except struct.error as err:
        raise ValueError("Could not unpack table value") from err
    offset, end, table = 4, 4 + length, {}
    if end > len(value):
        raise ValueError("Field table length exceeds available data")
    while offset < end:
        key_length = value[offset]
        offset += 1
        if offset + key_length > end:
            raise ValueError("Field table key length exceeds data")
        key = value[offset : offset + key_length].decode("utf-8", "replace")
        offset += key_length
        consumed, table[key] = amqp_decode.embedded_value(value[offset:])
        offset += consumed
    return end, table


install_pamqp_decoders(timestamp=_amqp_timestamp, short_str=_amqp_short_str, table=_amqp_field_table)
