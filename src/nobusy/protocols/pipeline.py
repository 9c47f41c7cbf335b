"""The one path every client protocol shares: admit, screen, route, relay, account.

A protocol's endpoint parses its body into the internal request (``nobusy.schema``'s
``ChatRequest`` and the chat body that goes upstream) and hands it to ``handle`` with its
``ClientProtocol``; from there the request takes the same path whatever it spoke. Admission
first takes a slot on a route. When every route is at its limit the request waits in the fair
queue within its patience (``x-nobusy-max-wait``, else the default): a streaming client is
answered at once with SSE comments giving its position and estimated wait, and the answer
follows in the same stream; a wait longer than the patience is refused at once with 429 and
``Retry-After``.

Once the body parses, the request has an entry in the ledger: the in-flight gauge, its key's
counters, its walk over the routes (a queue place or an upstream slot; the walker requeues a
request every route refused as busy). The entry is closed in one ``finally``
(``_PipelineResponse.__call__``) whatever happens — an error, a bug, a client that leaves —
with one usage row saying how it ended. A client that leaves before its answer is ready is
noticed at once, streaming or not: its queue place is given up, its upstream request closed,
and its row says ``client_gone``. While the process drains before it stops
(``nobusy.edge.drain``) a new request is refused with 503 before its body is read; one still
running at ``drain_timeout`` is cut, its row ``drained``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from nobusy.admission.limits import estimate_tokens
from nobusy.cache.use import STALE_NOTE, STALE_ON, CacheUse, Kept, after, replay
from nobusy.errors import Draining, InvalidRequest, NobusyError
from nobusy.guard import Guard, Hit
from nobusy.guard.filtering import check_request, filter_answer, restore_answer
from nobusy.guard.pii import Masker, PiiSettings
from nobusy.keys import Key
from nobusy.knowledge.grounding import HEADER, Grounding, check_visible
from nobusy.money.budgets import budget_warning, check_copy, key_budget
from nobusy.protocols.grounded import asked_stores, cited, ground
from nobusy.responses import EventStreamResponse, JSONResponse, error_response
from nobusy.routing import Answer, Walker, open_answer
from nobusy.routing.capabilities import fitting
from nobusy.routing.relay import (
    Chunked,
    Encoder,
    collect,
    internal_error_event,
    sse_events,
)
from nobusy.schema import ChatRequest
from nobusy.state import AppState, app_state
from nobusy.store.interfaces import MoneyHolder
from nobusy.store.knowledge import Caller
from nobusy.store.ledger import Transcript
from nobusy.store.money_holds import Hold
from nobusy.store.usage import UsageRecord
from nobusy.upstreams.base import Chunk

if TYPE_CHECKING:
    from nobusy.crosscheck.ads import AdsCheck

__all__ = ["ClientProtocol", "Parser", "complete", "handle"]

T = TypeVar("T")

_WATCH_AFTER = 0.05  # seconds before a request starts watching for its client to leave

Parser = Callable[[bytes], tuple[ChatRequest, dict[str, Any]]]


class ClientProtocol(Protocol):
    """A client protocol's edge on the way out: its stream format and its whole answer."""

    def encoder(self, chat: ChatRequest, record: UsageRecord) -> Encoder:
        """The stream format for one streamed answer (``nobusy.routing.relay.Encoder``)."""
        ...

    def render(self, completion: dict[str, Any], chat: ChatRequest) -> dict[str, Any]:
        """A whole answer, given as one ``chat.completion``, in the protocol's shape."""
        ...


async def handle(request: Request, protocol: ClientProtocol, parse: Parser) -> Response:
    """Answer one request of ``protocol`` (its body read by ``parse``) from the first route of
    the alias that can, streaming or not."""
    state = app_state(request)
    state.drain.check()  # the process is stopping: 503 before the body is read
    raw = await request.body()
    # A large body is parsed off the loop (see nobusy.offload), like its guard and PII checks.
    chat, body = await state.offload.run(len(raw), parse, raw)
    state.router.alias(chat.model)  # unknown model: 404 before anything is logged as usage
    fitting(state.router, chat.model, body)  # no route takes it (an image, a suffix...): 400
    return _PipelineResponse(request, state, protocol, chat, body, len(raw))


async def complete(
    request: Request,
    chat: ChatRequest,
    body: dict[str, Any],
    size: int,
    *,
    request_id: str,
    note: str,
) -> tuple[dict[str, Any], UsageRecord]:
    """One whole non-streaming answer through the same accounts as ``handle`` (key limits and
    quota, guard and PII, a slot or a queue place, one usage row marked with ``note``), for a
    feature that asks upstreams on a client's behalf (``nobusy.crosscheck``)."""
    state = app_state(request)
    state.drain.check()
    entry = _LedgerEntry(state, chat, body, request_id)
    entry.record.notes.append(note)
    try:
        key: Key | None = getattr(request.state, "key", None)
        await entry.admit(key, chat, size, _nothing)
        body, entry.masker = await state.offload.run(
            size, _screen, state.guard, state.router.alias(chat.model).pii, body, entry.hits
        )
        client = request.client.host if request.client else "unknown"
        who = f"key:{key.id}" if key else f"client:{client}"
        priority = key.priority if key else "normal"
        default = key.max_wait if key and key.max_wait is not None else None
        patience = _patience(request, default or state.settings.default_max_wait)
        tokens = entry.estimate or estimate_tokens(
            size, chat.max_completion_tokens or chat.max_tokens
        )
        walk = Walker(state.router, chat.model, body, request_id, who, priority, patience, tokens)
        entry.walk = walk
        if not await walk.take():
            await walk.granted()
        answer = await _open(entry, walk)
        completion = await collect(answer, chat, entry.record, entry.capture)
        return completion, entry.record
    except BaseException as exc:
        entry.ended(exc)
        raise
    finally:
        await entry.settle()


class _ClientGone(Exception):
    """The client closed its connection before its answer was ready."""


class _LedgerEntry:
    """One request's accounts: usage record, in-flight gauge, key counters, its walk over the
    routes (a queue place or a slot); closed once."""

    def __init__(
        self, state: AppState, chat: ChatRequest, body: dict[str, Any], request_id: str
    ) -> None:
        self.state = state
        # A shallow copy: the audit keeps the messages as sent, before PII masking.
        self.exchange = Transcript(dict(body)) if state.audit is not None else None
        self.hits: list[Hit] = self.exchange.hits if self.exchange is not None else []
        self.started = time.perf_counter()
        self.record = UsageRecord(request_id=request_id, alias=chat.model, stream=chat.stream)
        self.in_flight = state.metrics.in_flight_of(chat.model)
        self.in_flight.inc()
        self.answer: Answer | None = None
        self.closed = False
        self.key: Key | None = None
        self.walk: Walker | None = None
        self.masker: Masker | None = None
        self.grounding: Grounding | None = None  # an alias's passages, retrieved once
        self.estimate = 0
        self.hold: Hold | None = None  # its money held against a budget
        self.cache: CacheUse | None = None
        self.first_token_at: float | None = None  # of an answer from the cache

    async def admit(
        self,
        key: Key | None,
        chat: ChatRequest,
        body_size: int,
        meanwhile: Callable[[], Awaitable[T]],
    ) -> T:
        """Check the key's own limits (from here on the request counts against them) while
        ``meanwhile`` runs; its result. With ``state`` the check is a round trip to Redis:
        the request's own work (screening) fills it instead of waiting for it."""
        holds = self.state.holds
        if key is not None and key.held and holds is not None and self.state.pricer is not None:
            # Its worst-case cost held against its budgets before anything else is spent on
            # it; settled to the real cost in close(), however the request ends.
            self.hold = await _held(holds.reserve(key, self._worst(chat, body_size)), holds)
            self.record.held = True
        elif key is not None and key.budget_micros is not None:  # `pricing.holds: false`
            check_copy(key, self.state.settings.pricing.currency, datetime.now(UTC))
            self.record.budgeted = True
        limits = self.state.limits
        if key is None or limits is None:
            return await meanwhile()
        self.record.key_id = key.id
        estimate = estimate_tokens(body_size, chat.max_completion_tokens or chat.max_tokens)
        admission = asyncio.ensure_future(limits.admit(key, chat.model, estimate))
        await asyncio.sleep(0)  # the admission sends its command before ``meanwhile`` runs
        failed: BaseException | None = None
        try:
            result = await meanwhile()
        except BaseException as exc:  # re-raised below, once the admission is settled
            failed = exc
        try:
            await asyncio.shield(admission)
        except asyncio.CancelledError:
            # The shared store admits on a thread, which may count the request in after this
            # task was cancelled: its slot is given back whenever that happens.
            def give_back(done: asyncio.Future[None]) -> None:
                if not done.cancelled() and done.exception() is None:
                    limits.done(key.id, estimate, 0)

            admission.add_done_callback(give_back)
            raise
        self.key, self.estimate = key, estimate  # admitted: its end is counted, whatever comes
        if failed is not None:
            raise failed
        return result

    def _worst(self, chat: ChatRequest, body_size: int) -> int:
        """The most this request can cost: its prompt (about four bytes a token) and its
        max_tokens (else ``pricing.hold_output_tokens``) on its alias's dearest route."""
        pricing = self.state.settings.pricing
        completion = chat.max_completion_tokens or chat.max_tokens or pricing.hold_output_tokens
        assert self.state.pricer is not None
        return self.state.pricer.worst(chat.model, body_size // 4, completion, time.time())

    def ended(self, exc: BaseException) -> None:
        """Say how the request ended, unless an earlier step already did."""
        if self.closed:
            return
        if isinstance(exc, _ClientGone):
            self.record.outcome = "client_gone"
        elif isinstance(exc, NobusyError):
            self.record.outcome = exc.code or "error"
            failures = getattr(exc, "failures", ())
            self.record.tried = [f.upstream for f in failures if f.attempted]
        elif isinstance(exc, Exception):
            self.record.outcome = "internal_error"  # rendered as a 500 by the middleware
        else:
            self.record.outcome = "cancelled"  # the server is stopping

    def close(self) -> None:
        """Close every account (idempotent): the gauge, the key's counters, the usage row."""
        if self.closed:
            return
        self.closed = True
        self.in_flight.dec()
        if self.walk is not None:
            self.walk.close()  # a queue place given up
            self.record.queue_ms = self.walk.queue_ms
        if self.cache is not None:
            self.cache.settle(self.record)  # keeps an answer that came whole from upstream
        if self.key is not None and self.state.limits is not None:
            actual = sum(self.record.upstream_tokens())
            self.state.limits.done(self.key.id, self.estimate, actual)
        first_token_at = self.first_token_at
        if self.answer is not None:
            self.record.tried = self.answer.tried()
            first_token_at = self.answer.first_token_at
        self.state.ledger.close(self.record, self.started, first_token_at, self.exchange)
        if self.hold is not None and self.state.holds is not None:  # priced by ledger.close
            self.state.holds.settle(self.hold, self.record.report_cost_micros)

    async def settle(self) -> None:
        """The one way out: an answer not read to its end is closed (and its upstream request
        with it), then every account."""
        try:
            if self.answer is not None:
                aclose = getattr(self.answer.chunks, "aclose", None)
                if aclose is not None:
                    await aclose()
        finally:
            self.close()

    @property
    def capture(self) -> Transcript | None:
        return self.exchange


class _PipelineResponse(Response):
    """The rest of the request, run as the response: every path out goes through one
    ``finally`` that closes the ledger entry (an SSE body that never started included)."""

    def __init__(
        self,
        request: Request,
        state: AppState,
        protocol: ClientProtocol,
        chat: ChatRequest,
        body: dict[str, Any],
        size: int,
    ) -> None:
        self.request, self.state, self.chat, self.size = request, state, chat, size
        self.protocol = protocol
        self.payload = body  # not `body`: a Response's body is its bytes
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        entry = _LedgerEntry(self.state, self.chat, self.payload, self.request.state.request_id)
        self.request.state.usage_record = entry.record  # for the access line (nobusy.edge.access)
        drain = self.state.drain
        task = drain.enter(entry.record)
        response: Response | None = None
        try:
            response = await _unless_gone(receive, self._prepare(entry))
            await response(scope, receive, send)
        except _ClientGone as exc:
            entry.ended(exc)
            # Nobody reads this; it keeps the server from logging a response never started.
            await Response(status_code=499)(scope, receive, send)
        except asyncio.CancelledError as exc:
            if not drain.was_cut(task):
                entry.ended(exc)
                raise
            task.uncancel()  # cut at drain_timeout: the outcome says so already
            await _cut_off(response, self.encoder(entry), scope, receive, send)
        except BaseException as exc:
            entry.ended(exc)
            raise
        finally:
            try:
                await entry.settle()
            finally:
                drain.leave(task)

    async def _prepare(self, entry: _LedgerEntry) -> Response:
        """Everything up to the response: admission, checks, a slot, the first token; for a
        non-streaming request the whole answer, with the entry closed before it is sent."""
        request, state, chat, body = self.request, self.state, self.chat, self.payload
        router = state.router
        key: Key | None = getattr(request.state, "key", None)
        alias = router.alias(chat.model)
        # Stores the request names itself: checked before it waits for anything.
        asked = asked_stores(request.headers.get(HEADER), self.protocol)
        if asked is not None:
            admin = bool(getattr(request.state, "admin", False))
            caller = Caller(key.id if key else None, admin)
            await check_visible(state.knowledge, caller, asked.stores)
        # Keyed on the request as sent: the guard and PII masking rewrite the body below. A
        # request naming its own stores is not kept: the key would not say which passages.
        use = (
            None
            if asked is not None
            else CacheUse.open(
                state.cache,
                alias.cache,
                request.headers,
                chat,
                body,
                key.id if key else None,
                alias.pii,
                alias.knowledge,
            )
        )
        if alias.knowledge is None and asked is None:
            body, entry.masker = await entry.admit(
                key,
                chat,
                self.size,
                lambda: state.offload.run(
                    self.size, _screen, state.guard, alias.pii, body, entry.hits
                ),
            )
        else:
            # Passages are retrieved only for an admitted request, and go into the body before
            # the guard and PII masking, which screen them like the client's own words.
            await entry.admit(key, chat, self.size, _nothing)
            entry.grounding = await ground(state, entry.exchange, chat, body, asked)
            body, entry.masker = await state.offload.run(
                self.size, _screen, state.guard, alias.pii, body, entry.hits
            )
        entry.cache = use
        if use is not None and (kept := await use.fresh()) is not None:
            return await self._kept(entry, kept)
        client = request.client.host if request.client else "unknown"
        who = f"key:{key.id}" if key else f"client:{client}"
        priority = key.priority if key else "normal"
        default = key.max_wait if key and key.max_wait is not None else None
        patience = _patience(request, default or state.settings.default_max_wait)
        tokens = entry.estimate or estimate_tokens(
            self.size, chat.max_completion_tokens or chat.max_tokens
        )
        walk = Walker(
            router, chat.model, body, entry.record.request_id, who, priority, patience, tokens
        )
        entry.walk = walk
        marked = {"x-nobusy-cache": use.status} if use is not None else {}
        try:
            if not await walk.take():  # queued
                if chat.stream:
                    entry.record.outcome = "client_gone"  # until the stream says otherwise
                    encoder = self.encoder(entry)
                    ads = _ads_check(request, state, chat)
                    events = cited(
                        _queued_stream(chat, entry, walk, encoder, ads), entry.grounding, encoder
                    )
                    if ads is not None:
                        events = ads.around(events)
                    return EventStreamResponse(events, {"x-nobusy-upstream": "queued", **marked})
                await walk.granted()
            answer = await _open(entry, walk)
        except STALE_ON as exc:
            # No upstream can answer: an answer kept earlier, marked stale, beats the error.
            kept = await use.stale() if use is not None else None
            if kept is None:
                raise
            entry.record.tried = [f.upstream for f in getattr(exc, "failures", ()) if f.attempted]
            return await self._kept(entry, kept)
        request.state.upstream = answer.upstream
        headers = {"x-nobusy-upstream": answer.upstream, **marked}
        if key is not None and (entry.hold is not None or key.budget_micros is not None):
            currency, now = state.settings.pricing.currency, datetime.now(UTC)
            budgets = entry.hold.budgets if entry.hold is not None else key_budget(key, now)
            warning = budget_warning(budgets, currency, now)
            if warning is not None:
                headers["x-nobusy-budget-warning"] = warning
        return await self._respond(entry, answer, headers)

    async def _kept(self, entry: _LedgerEntry, kept: list[Chunk]) -> Response:
        """A kept answer (a hit, or stale), through today's PII and output guard."""
        use = entry.cache
        assert use is not None
        _from_cache(entry, use)
        self.request.state.upstream = "cache"
        headers = {"x-nobusy-upstream": "cache", "x-nobusy-cache": use.status}
        note = STALE_NOTE if use.status == "stale" else None
        chunks = _outward(entry, replay(kept), kept=True)
        if entry.grounding is not None:  # a kept answer cites as it did when it was new
            chunks = entry.grounding.tap(chunks)
        return await self._respond(entry, Kept(chunks), headers, note)

    async def _respond(
        self, entry: _LedgerEntry, answer: Chunked, headers: dict[str, str], note: str | None = None
    ) -> Response:
        """The answer as a stream (``note`` first, as the protocol's comment) or whole."""
        chat = self.chat
        ads = _ads_check(self.request, self.state, chat)
        if ads is not None:
            answer.chunks = ads.watch(answer.chunks)
        if chat.stream:
            entry.record.outcome = "client_gone"  # until the stream says otherwise
            encoder = self.encoder(entry)
            events = sse_events(answer, chat, entry.record, entry.close, entry.capture, encoder)
            if note is not None:
                events = after(encoder.note(note), events)
            events = cited(events, entry.grounding, encoder)
            if ads is not None:
                events = ads.around(events)
            return EventStreamResponse(events, headers)
        completion = await collect(answer, chat, entry.record, entry.capture)
        entry.close()  # before the answer leaves: its row is then committed before its end
        if entry.record.notes:  # a continuation happened: say so where non-streaming clients see
            headers["x-nobusy-failover"] = "; ".join(entry.record.notes)
        cites = entry.grounding.citations() if entry.grounding is not None else None
        if cites is not None:  # for a protocol that marks citations its own way (Responses)
            completion["nobusy"] = cites
        rendered = self.protocol.render(completion, chat)
        if cites is not None:
            rendered["nobusy"] = {**rendered.get("nobusy", {}), **cites}
        if ads is not None:
            text = "".join(ads.parts)
            await self.state.offload.run(len(text) * 4, ads.annotate, rendered, text, headers)
        return JSONResponse(rendered, headers=headers)

    def encoder(self, entry: _LedgerEntry) -> Encoder:
        return self.protocol.encoder(self.chat, entry.record)


async def _cut_off(
    response: Response | None, encoder: Encoder, scope: Scope, receive: Receive, send: Send
) -> None:
    """A request still running at drain_timeout: a 503 if nothing was sent yet, else an error
    event that ends its stream (the SDKs raise it as an API error)."""
    error = Draining("This server is restarting and had to cut this answer; retry.")
    if response is None:
        await error_response(error, scope["path"])(scope, receive, send)
    elif isinstance(response, EventStreamResponse):
        event = encoder.error(error.status_code, error.body())
        await send({"type": "http.response.body", "body": event, "more_body": False})


def _screen(
    guard: Guard | None, pii: PiiSettings, body: dict[str, Any], hits: list[Hit]
) -> tuple[dict[str, Any], Masker | None]:
    """The input guard (on ``body`` in place), then PII masking: the body to send upstream,
    and the masker that restores the answer."""
    if guard is not None and guard.checks_input:
        check_request(guard, body, hits)
    if not pii.enabled:
        return body, None
    masker = Masker(pii.kinds)
    return masker.mask_request(body), masker


async def _open(entry: _LedgerEntry, walk: Walker) -> Answer:
    """The answer from the walk's slot on (requeued by the walker when every route was busy),
    put back together and filtered as the request asks (and recorded for the cache, before
    its personal data is put back)."""
    answer = await open_answer(walk)
    chunks = answer.chunks
    if entry.cache is not None:
        chunks = entry.cache.record(chunks)
    answer.chunks = _outward(entry, chunks)
    if entry.grounding is not None:  # the answer's [n], read as the client gets them
        answer.chunks = entry.grounding.tap(answer.chunks)
    entry.answer = answer
    entry.record.upstream = answer.upstream
    entry.record.overflow = answer.overflow
    return answer


def _outward(
    entry: _LedgerEntry, chunks: AsyncIterator[Chunk], kept: bool = False
) -> AsyncIterator[Chunk]:
    """An answer on its way out (from upstream, or ``kept`` in the cache): personal data put
    back, the output guard in force now."""
    state = entry.state
    if entry.masker is not None:
        chunks = restore_answer(chunks, entry.masker)
    if state.guard is not None and state.guard.checks_output:
        chunks = filter_answer(chunks, state.guard, entry.hits)
    if entry.cache is not None and not kept:  # how it ends decides whether it is kept
        chunks = entry.cache.watch(chunks)
    return chunks


def _from_cache(entry: _LedgerEntry, use: CacheUse) -> None:
    entry.record.upstream = "cache"
    entry.record.cache = use.status
    entry.first_token_at = time.perf_counter()


async def _held(reserving: Coroutine[Any, Any, Hold], holds: MoneyHolder) -> Hold:
    """The hold ``reserving`` takes; one taken on its thread after this task was cancelled (the
    client left) is given back at once rather than left to expire."""
    future = asyncio.ensure_future(reserving)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:

        def give_back(done: asyncio.Future[Hold]) -> None:
            if not done.cancelled() and done.exception() is None:
                holds.settle(done.result(), 0)

        future.add_done_callback(give_back)
        raise


async def _nothing() -> None:
    """Admission's companion when nothing may run beside it."""


async def _queued_stream(
    chat: ChatRequest,
    entry: _LedgerEntry,
    walk: Walker,
    encoder: Encoder,
    ads: AdsCheck | None = None,
) -> AsyncIterator[bytes]:
    """Queue positions as SSE comments (ignored by the SDKs), then the answer itself (or a
    kept one, stale, when no upstream could answer)."""
    answer: Chunked
    try:
        try:
            async for position, eta in walk.positions():
                yield f": nobusy: queued, position {position}, about {eta:.0f}s\n\n".encode()
            await walk.granted()
            answer = await _open(entry, walk)
        except NobusyError as exc:
            use = entry.cache
            kept = await use.stale() if use is not None and isinstance(exc, STALE_ON) else None
            if use is None or kept is None:
                entry.record.outcome = exc.code or "error"
                yield encoder.error(exc.status_code, exc.body())
                return
            # The headers said miss; the comment says what this is.
            _from_cache(entry, use)
            yield encoder.note(STALE_NOTE)
            answer = Kept(_outward(entry, replay(kept), kept=True))
        except Exception as exc:
            entry.record.outcome = "internal_error"
            yield internal_error_event(entry.record.request_id, exc, encoder)
            return
        yield f": nobusy: answering from {entry.record.upstream}\n\n".encode()
        if ads is not None:  # the answer's text, for the report at the stream's end
            answer.chunks = ads.watch(answer.chunks)
        events = sse_events(answer, chat, entry.record, entry.close, entry.capture, encoder)
        async for part in events:
            yield part
    finally:
        entry.close()


async def _unless_gone(receive: Receive, work: Coroutine[Any, Any, T]) -> T:
    """``work``'s result, or _ClientGone once the client has disconnected: ``work`` (run in
    this task) is cancelled then, which gives up a queue place and closes an upstream request.

    The watcher starts only after ``_WATCH_AFTER``: most answers are ready sooner, and a
    watcher task per request would cost them about 7% more CPU (measured)."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    watch: asyncio.Task[None] | None = None
    finished = False

    def cancel_work(done: asyncio.Task[None]) -> None:
        if not done.cancelled() and done.exception() is None and not finished:
            task.cancel()

    def start_watching() -> None:
        nonlocal watch
        watch = loop.create_task(_disconnected(receive))
        watch.add_done_callback(cancel_work)

    timer = loop.call_later(_WATCH_AFTER, start_watching)
    try:
        return await work
    except asyncio.CancelledError:
        if watch is not None and watch.done() and not watch.cancelled():
            task.uncancel()  # our own cancellation, not the server's
            raise _ClientGone from None
        raise
    finally:
        finished = True
        timer.cancel()
        if watch is not None:
            watch.cancel()


async def _disconnected(receive: Receive) -> None:
    # The body has been read: what receive() delivers now is the client leaving.
    while (await receive())["type"] != "http.disconnect":
        pass


def _ads_check(request: Request, state: AppState, chat: ChatRequest) -> AdsCheck | None:
    """The ad detector for this answer when the request or its alias asks for it."""
    header = request.headers.get("x-nobusy-check")
    setting = state.router.alias(chat.model).check_ads
    if header is None and not setting:
        return None  # off: nothing imported or run
    from nobusy.crosscheck.ads import AdsCheck, wanted  # numpy and the lexicons: on first use

    return AdsCheck(chat) if wanted(header, setting) else None


def _patience(request: Request, default: float) -> float:
    header = request.headers.get("x-nobusy-max-wait")
    if header is None:
        return default
    try:
        value = float(header)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 3600:
        raise InvalidRequest(
            "x-nobusy-max-wait must be a number of seconds from 0 to 3600.",
            param="x-nobusy-max-wait",
        )
    return value
