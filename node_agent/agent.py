"""The agent: one poll loop plus two named side tasks, ``heartbeat`` and ``shutdown-watch``.

Life of a unit: a poll with ``claim: true`` and ``max_units`` = free slots claims a batch in
one request (with ``--claim-mode explicit`` the poll only returns offers and each is claimed
with its own request; an offer another node claimed first is logged as ``skipped``); each
claim runs as its own task (at most ``max_concurrency`` at once), bounded by its timeout;
then its LLM invocations (if any) and its completion or failure are reported.
A unit counts against the slots, and is listed in heartbeats (so its lease is renewed), from
its claim until its last report is settled.

Talking to the control plane: what is safe to repeat (register, heartbeat, poll, reports:
the control plane treats a repeated completion, failure or invocation as the same one) is
retried with exponential backoff and jitter while it is unreachable or answers 5xx; a 401
re-registers with the join token (same node id, fresh token) and tries again; a 409
``stale_claim`` drops the report. Nothing the control plane does crashes the agent.

Stopping: ``request_stop`` (SIGTERM/SIGINT) stops polling (a poll in flight gets
``STOP_POLL_GRACE_S`` to come back, so that claims the control plane granted in that instant
are run rather than lost until their lease expires); running units get
``shutdown_grace_s`` to finish, then are failed as retryable; reports get ``report_grace_s``
more; then the agent exits. A second signal skips the waiting. ``--polls N`` stops polling
after N polls and exits once what it holds is finished.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic_core import PydanticSerializationError

from node_agent.backoff import Backoff, sleep_unless
from node_agent.client import ControlPlaneClient
from node_agent.errors import (
    ConfigError,
    Conflict,
    ControlPlaneUnavailable,
    ExecutionError,
    GaveUp,
    HandlerError,
    InvalidPayloadError,
    RequestRejected,
    Unauthorized,
    UnitTimeoutError,
    UnsupportedKindError,
)
from node_agent.executors.base import Executor, Invocation, Job, Success
from node_agent.logs import log_event
from node_agent.settings import AgentSettings
from node_agent.state import NodeState
from shared.enums import CapacityMode, WorkUnitKind
from shared.payloads import payload_timeout_s
from shared.wire import (
    ClaimReply,
    CompleteRequest,
    FailRequest,
    HeartbeatRequest,
    LlmInvocationReport,
    NodeRegister,
    PollRequest,
    WorkUnit,
)

T = TypeVar("T")

WARNING = logging.WARNING
MIN_HEARTBEAT_INTERVAL_S = 0.01
REREGISTER_QUIET_S = 5.0  # a 401 sooner than this after registering backs off first
STOP_POLL_GRACE_S = 0.5  # how long a stop waits for the poll in flight before dropping it

# Why a unit's execution was cut short.
REVOKED = "revoked"
SHUTDOWN = "shutdown"


@dataclass(eq=False)
class HeldUnit:
    """A unit this agent holds a claim on, from the claim until its last report."""

    claim: ClaimReply
    job: Job
    executing: bool = False
    abort_reason: str | None = None
    revoked: bool = False
    stop_reporting: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    @property
    def unit(self) -> WorkUnit:
        """The claimed unit."""
        return self.claim.work_unit

    def abort(self, reason: str) -> None:
        """Cut the execution short (no-op once it has finished)."""
        if self.abort_reason is not None or not self.executing:
            return
        self.abort_reason = reason
        self.job.cancelled.set()
        if self.task is not None:
            self.task.cancel()


def unit_timeout_s(payload: Mapping[str, Any], default: float) -> float:
    """``payload.timeout_s`` by the payload schema's rule (``shared.payloads``), else
    ``default``."""
    value = payload_timeout_s(payload)
    return default if value is None else float(value)


class Agent:
    """One node agent session. Build it, ``await run()``, then ``await aclose()``."""

    def __init__(
        self,
        settings: AgentSettings,
        client: ControlPlaneClient,
        executors: Mapping[WorkUnitKind, Executor],
        state: NodeState | None = None,
        *,
        rng: random.Random | None = None,
    ) -> None:
        if settings.node_join_token is None:
            raise ConfigError("a join token is needed (--join-token or KRAKO_NODE_JOIN_TOKEN)")
        self.settings = settings
        self.client = client
        self.executors = dict(executors)
        self.state = state
        self.node_id: str | None = settings.node_id or (state.load_node_id() if state else None)
        self.heartbeat_interval_s = 5.0
        self.lease_s = 30.0
        self.capacity_mode: CapacityMode | None = None
        self.polls_done = 0
        self.stats: collections.Counter[str] = collections.Counter()
        self.fatal: ConfigError | None = None

        self._join_token = settings.node_join_token.get_secret_value()
        self._rng = rng or random.Random()
        self._held: dict[str, HeldUnit] = {}
        self._stop = asyncio.Event()  # stop polling
        self._signalled = asyncio.Event()  # a stop was requested: grace periods apply
        self._abandon = asyncio.Event()  # give up on everything still pending
        self._changed = asyncio.Event()  # a slot was freed
        self._idle = asyncio.Event()  # nothing held
        self._idle.set()
        self._polling_done = asyncio.Event()  # the poll loop has returned
        self._registration = 0  # bumped by every successful (re-)registration
        self._register_lock = asyncio.Lock()
        self._registered_at = float("-inf")
        self._reregister_backoff = self._backoff()
        self._side_tasks: list[asyncio.Task[None]] = []
        self._unit_tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(settings.max_concurrency)

    # ------------------------------------------------------------------ public

    @property
    def held(self) -> list[str]:
        """Ids of the units held now."""
        return list(self._held)

    def request_stop(self, reason: str = "requested") -> None:
        """Stop polling and finish (see the module docstring); a second call stops now."""
        if self._signalled.is_set():
            log_event("shutdown_now", WARNING, reason=reason, held=len(self._held))
            self._give_up_everything()
            return
        log_event("shutdown_requested", logging.INFO, reason=reason, held=len(self._held))
        self._signalled.set()
        self._stop.set()

    async def run(self) -> int:
        """Register, poll and execute until stopped; the process exit code (0, or 2 when the
        control plane refuses this agent's configuration)."""
        try:
            if not await self._register(until=self._stop):
                return self._exit_code()
            self._side_tasks = [
                asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
                asyncio.create_task(self._shutdown_watch(), name="shutdown-watch"),
            ]
            await self._poll_loop()
            if self._held:
                log_event("draining", logging.INFO, held=len(self._held))
            await self._idle.wait()
            log_event(
                "stopped",
                logging.INFO,
                node_id=self.node_id,
                polls=self.polls_done,
                **dict(self.stats),
            )
            return self._exit_code()
        finally:
            pending = [*self._side_tasks, *self._unit_tasks]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def aclose(self) -> None:
        """Close the executors and the client."""
        for executor in self.executors.values():
            try:
                await executor.aclose()
            except Exception:
                log_event("executor_close_failed", WARNING, kind=str(executor.kind))
        await self.client.aclose()

    # ------------------------------------------------------------------ registration

    def _exit_code(self) -> int:
        return 2 if self.fatal is not None else 0

    def _backoff(self) -> Backoff:
        return Backoff(self.settings.backoff_initial_s, self.settings.backoff_max_s, rng=self._rng)

    async def _register(self, *, until: asyncio.Event) -> bool:
        """Register (again) until it succeeds; False when ``until`` was set first or the
        control plane refused the join token (``self.fatal``)."""
        backoff = self._backoff()
        settings = self.settings
        while not until.is_set() and self.fatal is None:
            body = NodeRegister(
                node_id=self.node_id,
                supported_kinds=list(settings.agent_kinds),
                region=settings.region,
                max_concurrency=settings.max_concurrency,
                labels=settings.agent_labels or None,
            )
            try:
                registration = await self.client.register(self._join_token, body)
            except ControlPlaneUnavailable as exc:
                delay = backoff.next_delay(exc.retry_after_s)
                self._log_waiting("register", exc, delay, backoff.attempts)
                await sleep_unless(until, delay)
                continue
            except RequestRejected as exc:
                self.fatal = ConfigError(f"the control plane refused to register this node: {exc}")
                log_event(
                    "registration_refused",
                    logging.ERROR,
                    status=exc.status,
                    code=exc.code,
                    detail=exc.detail,
                )
                self._give_up_everything()
                return False
            restart = self._registration > 0
            self.node_id = registration.node_id
            self.heartbeat_interval_s = max(
                MIN_HEARTBEAT_INTERVAL_S, registration.heartbeat_interval_s
            )
            self.lease_s = registration.lease_s
            self._registration += 1
            self._registered_at = asyncio.get_running_loop().time()
            if self.state is not None:
                self.state.save_node_id(registration.node_id)
            log_event(
                "registered",
                logging.INFO,
                node_id=registration.node_id,
                again=restart,
                heartbeat_interval_s=registration.heartbeat_interval_s,
                lease_s=registration.lease_s,
                kinds=",".join(settings.agent_kinds),
                max_concurrency=settings.max_concurrency,
            )
            return True
        return False

    async def _reregister(self, seen: int) -> bool:
        """Re-register after a 401 seen under registration ``seen`` (once for all callers).

        A token refused again right after a registration (a control plane that keeps
        forgetting) is retried with backoff, not in a hot loop.
        """
        async with self._register_lock:
            if self._registration != seen:
                return True  # someone else already did
            loop = asyncio.get_running_loop()
            if loop.time() - self._registered_at < REREGISTER_QUIET_S:
                delay = self._reregister_backoff.next_delay()
            else:
                self._reregister_backoff.reset()
                delay = 0.0
            hint = (
                "refused again soon after registering: is another agent using this node id?"
                if delay
                else None
            )
            log_event(
                "token_rejected",
                WARNING,
                node_id=self.node_id,
                action="re-registering",
                delay_s=round(delay, 3),
                **({"hint": hint} if hint else {}),
            )
            if delay and await sleep_unless(self._abandon, delay):
                return False
            return await self._register(until=self._abandon)

    # ------------------------------------------------------------------ calls

    def _log_waiting(
        self, what: str, exc: Exception, delay: float, attempt: int, **fields: Any
    ) -> None:
        log_event(
            "waiting_for_control_plane",
            WARNING,
            op=what,
            error=str(exc),
            retry_in_s=round(delay, 3),
            attempt=attempt,
            **fields,
        )

    async def _retrying(
        self,
        what: str,
        call: Callable[[], Awaitable[T]],
        *,
        until: asyncio.Event,
        **fields: Any,
    ) -> T:
        """Run ``call`` (which must be safe to repeat) until it succeeds.

        Retries on outages with backoff and re-registers on 401; raises ``GaveUp`` when
        ``until`` is set first, and passes 409 and other 4xx through.
        """
        backoff = self._backoff()
        while True:
            if until.is_set():
                raise GaveUp(what)
            seen = self._registration
            try:
                result = await call()
            except Unauthorized:
                if not await self._reregister(seen):
                    raise GaveUp(what) from None
                continue
            except ControlPlaneUnavailable as exc:
                delay = backoff.next_delay(exc.retry_after_s)
                self._log_waiting(what, exc, delay, backoff.attempts, **fields)
                await sleep_unless(until, delay)
                continue
            if backoff.attempts:
                log_event(
                    "control_plane_back",
                    logging.INFO,
                    op=what,
                    after_attempts=backoff.attempts,
                    **fields,
                )
            return result

    # ------------------------------------------------------------------ poll loop

    async def _poll_loop(self) -> None:
        try:
            await self._polls()
        finally:
            self._polling_done.set()

    async def _polls(self) -> None:
        backoff = self._backoff()
        limit = self.settings.polls
        while not self._stop.is_set():
            if limit is not None and self.polls_done >= limit:
                log_event("polls_done", logging.INFO, polls=self.polls_done, held=len(self._held))
                return
            free = self.settings.max_concurrency - len(self._held)
            if free <= 0:
                self._changed.clear()
                await _first_of(self._changed, self._stop)
                continue
            try:
                await self._poll_once(min(free, 1000), backoff)
            except Exception as exc:  # a bug must not kill the agent: log, pause, go on
                delay = backoff.next_delay()
                logging.getLogger("krako.agent").exception(
                    "internal_error", extra={"krako_fields": {"op": "poll", "error": str(exc)}}
                )
                await sleep_unless(self._stop, delay)

    async def _poll_once(self, max_units: int, backoff: Backoff) -> None:
        assert self.node_id is not None
        body = PollRequest(
            max_units=max_units,
            wait_s=self.settings.poll_wait_s,
            claim=self.settings.claim_mode == "poll",
        )
        seen = self._registration
        poll = asyncio.ensure_future(self.client.poll(self.node_id, body))
        stopped = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait({poll, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not poll.done():
            # Stop requested mid-poll: the control plane may be granting claims this instant
            # (their reply on its way), so give the poll a moment. Past that, close it: the
            # control plane then grants nothing more, and a claim granted in the very last
            # instant comes back when its lease runs out (the unit just waits longer).
            await asyncio.wait({poll}, timeout=STOP_POLL_GRACE_S)
        if not poll.done():
            poll.cancel()
            await asyncio.gather(poll, return_exceptions=True)
            return
        try:
            reply = poll.result()
        except Unauthorized:
            if not await self._reregister(seen):
                self._stop.set()
            return
        except ControlPlaneUnavailable as exc:
            delay = backoff.next_delay(exc.retry_after_s)
            self._log_waiting("poll", exc, delay, backoff.attempts)
            await sleep_unless(self._stop, delay)
            return
        except RequestRejected as exc:
            delay = backoff.next_delay()
            log_event(
                "poll_rejected",
                logging.ERROR,
                status=exc.status,
                code=exc.code,
                detail=exc.detail,
                retry_in_s=round(delay, 3),
            )
            await sleep_unless(self._stop, delay)
            return
        if backoff.attempts:
            log_event(
                "control_plane_back", logging.INFO, op="poll", after_attempts=backoff.attempts
            )
            backoff.reset()
        self.polls_done += 1
        for claim in reply.claims:
            self._start(claim)
        if reply.assignments:
            # Explicit claim mode (or a control plane that offers instead of claiming):
            # claim each offer ourselves; with fan-out another node may win (skipped).
            await asyncio.gather(*(self._claim_offer(unit) for unit in reply.assignments))

    async def _claim_offer(self, unit: WorkUnit) -> None:
        if unit.id in self._held:
            return
        try:
            claim = await self._retrying(
                "claim",
                lambda: self.client.claim(unit.id, unit.attempt),
                until=self._stop,
                unit=unit.id,
            )
        except Conflict as exc:
            self.stats["skipped"] += 1
            log_event("skipped", logging.INFO, unit=unit.id, attempt=unit.attempt, reason=exc.code)
            return
        except RequestRejected as exc:
            log_event(
                "claim_rejected",
                WARNING,
                unit=unit.id,
                status=exc.status,
                code=exc.code,
                detail=exc.detail,
            )
            return
        except GaveUp:
            return
        self._start(claim)

    # ------------------------------------------------------------------ units

    def _start(self, claim: ClaimReply) -> None:
        unit = claim.work_unit
        previous = self._held.get(unit.id)
        if previous is not None:
            if claim.attempt <= previous.claim.attempt:
                log_event("claim_duplicate", WARNING, unit=unit.id, attempt=claim.attempt)
                return
            # Our older attempt lost its lease (the control plane moved on, then gave the unit
            # back to us): its claim is stale, so stop it silently and run the new one.
            log_event(
                "superseded",
                WARNING,
                unit=unit.id,
                attempt=previous.claim.attempt,
                new_attempt=claim.attempt,
            )
            previous.revoked = True
            previous.stop_reporting.set()
            previous.abort(REVOKED)
            del self._held[unit.id]
        held = HeldUnit(
            claim=claim, job=Job(unit=unit, attempt=claim.attempt, claim_token=claim.claim_token)
        )
        self._held[unit.id] = held
        self._idle.clear()
        self.stats["claimed"] += 1
        log_event(
            "claimed", logging.INFO, unit=unit.id, attempt=claim.attempt, kind=unit.kind.value
        )
        held.task = asyncio.create_task(self._run_unit(held), name=f"unit-{unit.id}")
        self._unit_tasks.add(held.task)
        held.task.add_done_callback(self._unit_tasks.discard)

    async def _run_unit(self, held: HeldUnit) -> None:
        unit = held.unit
        try:
            outcome = await self._execute(held)
            if held.abort_reason == SHUTDOWN:
                outcome = ExecutionError(
                    "the agent shut down before the unit finished",
                    retryable=True,
                    code="agent_shutdown",
                )
            if outcome is not None:
                await self._report(held, outcome)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logging.getLogger("krako.agent").exception(
                "internal_error", extra={"krako_fields": {"unit": unit.id, "error": str(exc)}}
            )
        finally:
            if self._held.get(unit.id) is held:  # not if a newer attempt replaced it
                del self._held[unit.id]
            self._changed.set()
            if not self._held:
                self._idle.set()

    async def _execute(self, held: HeldUnit) -> Success | ExecutionError | None:
        """Run the unit; None when it was aborted with nothing to report (revoked)."""
        unit = held.unit
        executor = self.executors.get(unit.kind)
        if executor is None:
            return UnsupportedKindError(f"this agent does not run {unit.kind.value!r} units")
        timeout = unit_timeout_s(unit.payload, self.settings.unit_timeout_s)
        held.executing = True
        acquired = False
        try:
            # Polls ask for free slots only, so this never waits unless the control plane
            # hands out more claims than asked for: those wait here, held and heartbeated.
            await self._slots.acquire()
            acquired = True
            async with asyncio.timeout(timeout) as deadline:
                return await executor.execute(held.job)
        except TimeoutError as exc:
            if not deadline.expired():
                return HandlerError(f"executor raised TimeoutError: {exc}")
            held.job.cancelled.set()
            return UnitTimeoutError(f"unit ran past its timeout of {timeout:g}s")
        except asyncio.CancelledError:
            if held.abort_reason is None:
                raise  # the agent itself is being torn down
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            return None
        except ExecutionError as exc:
            return exc
        except Exception as exc:
            return HandlerError(f"executor failed: {type(exc).__name__}: {exc}")
        finally:
            held.executing = False
            if acquired:
                self._slots.release()

    async def _report(self, held: HeldUnit, outcome: Success | ExecutionError) -> None:
        unit, token = held.unit, held.claim.claim_token
        if isinstance(outcome, Success):
            for invocation in outcome.invocations:
                if not await self._report_invocation(held, invocation):
                    return
        if held.revoked:
            return
        try:
            if isinstance(outcome, Success):
                try:
                    body = CompleteRequest(
                        claim_token=token, result=outcome.result, cpu_ms=outcome.cpu_ms
                    )
                    await self._retrying(
                        "complete",
                        lambda: self.client.complete(unit.id, body),
                        until=held.stop_reporting,
                        unit=unit.id,
                    )
                except PydanticSerializationError as exc:
                    outcome = InvalidPayloadError(
                        f"result is not JSON-serializable: {exc}", code="result_not_serializable"
                    )
                else:
                    self.stats["completed"] += 1
                    log_event(
                        "completed",
                        logging.INFO,
                        unit=unit.id,
                        attempt=held.claim.attempt,
                        cpu_ms=outcome.cpu_ms,
                    )
                    return
            fail = FailRequest(
                claim_token=token, error=outcome.to_wire(), retryable=outcome.retryable
            )
            await self._retrying(
                "fail",
                lambda: self.client.fail(unit.id, fail),
                until=held.stop_reporting,
                unit=unit.id,
            )
            self.stats["failed"] += 1
            log_event(
                "failed",
                logging.INFO,
                unit=unit.id,
                attempt=held.claim.attempt,
                retryable=outcome.retryable,
                code=outcome.code,
                error=outcome.message,
            )
        except Conflict as exc:
            self.stats["dropped"] += 1
            log_event(
                "report_dropped",
                WARNING,
                unit=unit.id,
                attempt=held.claim.attempt,
                code=exc.code,
                detail=exc.detail,
            )
        except RequestRejected as exc:
            self.stats["dropped"] += 1
            log_event(
                "report_rejected",
                logging.ERROR,
                unit=unit.id,
                status=exc.status,
                code=exc.code,
                detail=exc.detail,
            )
        except GaveUp:
            self.stats["abandoned"] += 1
            log_event("report_abandoned", WARNING, unit=unit.id, revoked=held.revoked)

    async def _report_invocation(self, held: HeldUnit, invocation: Invocation) -> bool:
        """Send one LLM invocation's telemetry; False when the unit must not be completed.

        Sent even for a unit revoked after the call ran: the spend happened, and the control
        plane records it (as platform cost) while refusing the claim with 409.
        """
        unit = held.unit
        body = LlmInvocationReport(
            claim_token=held.claim.claim_token,
            invocation_id=invocation.invocation_id,
            provider=invocation.provider,
            model=invocation.model,
            tokens_in=invocation.tokens_in,
            tokens_out=invocation.tokens_out,
            total_tokens=invocation.total_tokens,
            latency_ms=invocation.latency_ms,
            estimated_cost_usd=invocation.estimated_cost_usd,
        )
        try:
            await self._retrying(
                "llm_invocation",
                lambda: self.client.report_llm_invocation(unit.id, body),
                until=self._abandon,
                unit=unit.id,
            )
        except Conflict as exc:
            self.stats["dropped"] += 1
            log_event(
                "report_dropped",
                WARNING,
                unit=unit.id,
                op="llm_invocation",
                invocation=invocation.invocation_id,
                code=exc.code,
            )
            return False
        except RequestRejected as exc:
            self.stats["dropped"] += 1
            log_event(
                "report_rejected",
                logging.ERROR,
                unit=unit.id,
                op="llm_invocation",
                status=exc.status,
                code=exc.code,
                detail=exc.detail,
            )
            return False
        except GaveUp:
            log_event("report_abandoned", WARNING, unit=unit.id, op="llm_invocation")
            return False
        log_event(
            "llm_invocation_reported",
            logging.INFO,
            unit=unit.id,
            invocation=invocation.invocation_id,
            model=invocation.model,
            total_tokens=invocation.total_tokens,
            estimated_cost_usd=str(invocation.estimated_cost_usd),
        )
        return True

    # ------------------------------------------------------------------ side tasks

    def _revoke(self, held: HeldUnit) -> None:
        if held.revoked:
            return
        held.revoked = True
        held.stop_reporting.set()
        held.abort(REVOKED)
        self.stats["revoked"] += 1
        log_event("revoked", WARNING, unit=held.unit.id, attempt=held.claim.attempt)

    async def _heartbeat_loop(self) -> None:
        """Every ``heartbeat_interval_s``: say what runs, renew leases, stop what is revoked."""
        failures = 0
        while True:
            await asyncio.sleep(self.heartbeat_interval_s)
            assert self.node_id is not None
            max_c = self.settings.max_concurrency
            running = list(self._held)
            body = HeartbeatRequest(
                running=running,
                free_slots=max(0, max_c - len(running)),
                load=round(len(running) / max_c, 4),
            )
            seen = self._registration
            try:
                reply = await self.client.heartbeat(self.node_id, body)
            except Unauthorized:
                await self._reregister(seen)
                continue
            except ControlPlaneUnavailable as exc:
                failures += 1
                self._log_waiting(
                    "heartbeat", exc, self.heartbeat_interval_s, failures, held=len(running)
                )
                continue
            except RequestRejected as exc:
                log_event(
                    "heartbeat_rejected",
                    logging.ERROR,
                    status=exc.status,
                    code=exc.code,
                    detail=exc.detail,
                )
                continue
            except Exception as exc:
                logging.getLogger("krako.agent").exception(
                    "internal_error", extra={"krako_fields": {"op": "heartbeat", "error": str(exc)}}
                )
                continue
            if failures:
                log_event(
                    "control_plane_back", logging.INFO, op="heartbeat", after_attempts=failures
                )
                failures = 0
            for unit_id in reply.revoked:
                held = self._held.get(unit_id)
                if held is not None:
                    self._revoke(held)
            if reply.capacity_mode != self.capacity_mode:
                log_event(
                    "capacity_mode",
                    logging.INFO,
                    mode=reply.capacity_mode.value,
                    previous=self.capacity_mode.value if self.capacity_mode else None,
                )
                self.capacity_mode = reply.capacity_mode

    async def _shutdown_watch(self) -> None:
        """After a stop request: grace for running units, then for reports, then give up."""
        await self._signalled.wait()
        grace = self.settings.shutdown_grace_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        # the poll in flight may still bring claims: they run under the same grace
        await _wait_for(self._polling_done, grace)
        if await _wait_for(self._idle, max(0.0, deadline - loop.time())):
            return
        aborted = [h.unit.id for h in self._held.values() if h.executing]
        for held in list(self._held.values()):
            held.abort(SHUTDOWN)
        if aborted:
            log_event("shutdown_grace_expired", WARNING, grace_s=grace, aborted=",".join(aborted))
        if await _wait_for(self._idle, self.settings.report_grace_s):
            return
        log_event("shutdown_abandoning", WARNING, units=",".join(self._held))
        self._give_up_everything()

    def _give_up_everything(self) -> None:
        self._stop.set()
        self._abandon.set()
        for held in list(self._held.values()):
            held.abort(SHUTDOWN)
            held.stop_reporting.set()


async def _first_of(*events: asyncio.Event) -> None:
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def _wait_for(event: asyncio.Event, seconds: float) -> bool:
    try:
        await asyncio.wait_for(event.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True
