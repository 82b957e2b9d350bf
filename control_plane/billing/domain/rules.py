"""Ledger lines from events: which events bill, what each line says, and how much.

Lines:

- ``workunit.completed`` gives one ``workunit_cpu`` line: ``quantity`` the CPU seconds
  (``cpu_ms / 1000``, a 6-decimal string), ``unit`` ``"cpu_s"``, ``amount_usd`` =
  ``cpu_s x usd_per_cpu_s``. With ``bill_llm_from_workunit_completed`` on, it also gives one
  ``llm_tokens`` line per entry of its ``llm_usage`` (sub-key ``"usage:<index>"``).
- ``llm.invocation.completed`` gives one ``llm_tokens`` line when ``bill_llm_from_invocation`` is
  on and the invocation is not ``stale_claim``: ``quantity`` the total tokens (digits), ``unit``
  ``"tokens"``, ``amount_usd`` = ``tokens_in x usd_per_1m_in / 10^6 + tokens_out x
  usd_per_1m_out / 10^6``. A stale-claim invocation is platform cost, never a tenant line.
- Every other event gives no line.

Events arrive typed (``shared.events.LogEvent``: the codec validated each payload against its
type's model, with strict types). A billable event whose payload did not validate, or that lacks
what its line needs (a tenant, non-negative counts, rates that parse, a model name), raises
``InvalidBillableEvent``; the projection keeps it aside and the anomaly checker reports it as
``unbillable_event``. An invocation the policy in force does not bill from is not read at all.

Prices come only from the event's ``pricing`` stamp (never from a table or settings), and the
line's ``pricing`` repeats them so any line can be recomputed from itself (``recompute_amount``).

The rounding rule (``shared.money``): the amount is computed exactly in ``Decimal`` (under a fixed
60-digit context, whatever the caller's context is), then rounded **once**, to 6 places, with
ROUND_HALF_EVEN. For example 1234 ms at 0.00005 USD/s is exactly 0.0000617, billed 0.000062;
1 ms at 0.0000025 USD/s is exactly 0.0000000025, billed 0.000000 (a zero line is still a line).

Keys: a line's uniqueness key is ``(source_event_id, line_item_type, sub_key)``, ``sub_key`` empty
except for the ``llm_usage`` lines of a completion; ``entry_id`` is derived from the key
(``"le_"`` + SHA-256 hex), so the same event always yields the same ids.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import (
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    DivisionByZero,
    InvalidOperation,
    Overflow,
    localcontext,
)
from types import MappingProxyType
from typing import Any

from control_plane.billing.domain.errors import InvalidBillableEvent
from control_plane.billing.domain.policy import BillingPolicy
from control_plane.billing.domain.pricing import rate_str
from shared.enums import LineItemType
from shared.events import (
    EventType,
    LlmInvocationCompleted,
    LlmUsage,
    LogEvent,
    Payload,
    UnreadablePayload,
    WorkUnitCompleted,
)
from shared.money import parse_rate, quantize_usd
from shared.wire import LedgerEntry

CPU_UNIT = "cpu_s"
TOKEN_UNIT = "tokens"
USAGE_SUB_KEY_PREFIX = "usage:"

LineKey = tuple[str, str, str]
"""``(source_event_id, line_item_type, sub_key)``: at most one line per key, ever."""

BILLABLE_TYPES: frozenset[str] = frozenset(
    {EventType.WORKUNIT_COMPLETED.value, EventType.LLM_INVOCATION_COMPLETED.value}
)

# Exact arithmetic, independent of the calling thread's decimal context: 60 significant digits
# hold any realistic count times any realistic rate without rounding, so the only rounding is
# the final quantize; invalid operations and overflow raise instead of giving a wrong amount.
EXACT = Context(
    prec=60, rounding=ROUND_HALF_EVEN, traps=[InvalidOperation, Overflow, DivisionByZero]
)
_MILLION = Decimal(1_000_000)


def entry_id_for(source_event_id: str, line_item_type: str, sub_key: str = "") -> str:
    """The deterministic ``entry_id`` of the line with this key (67 characters)."""
    raw = f"{source_event_id}\x1f{line_item_type}\x1f{sub_key}".encode()
    return "le_" + hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True, slots=True)
class LedgerLine:
    """One ledger line; fields mirror ``shared.wire.LedgerEntry`` plus ``sub_key``."""

    entry_id: str
    source_event_id: str
    source_seq: int
    line_item_type: LineItemType
    tenant_id: str
    work_unit_id: str
    execution_session_id: str
    quantity: str
    unit: str
    pricing: Mapping[str, Any]
    amount_usd: Decimal
    recorded_at: datetime
    sub_key: str = ""

    def __hash__(self) -> int:
        return hash((self.entry_id, self.key))

    @property
    def key(self) -> LineKey:
        """The uniqueness key ``(source_event_id, line_item_type, sub_key)``."""
        return (self.source_event_id, str(self.line_item_type), self.sub_key)

    def to_entry(self) -> LedgerEntry:
        """The wire model (``sub_key`` is not on the wire; ``llm_usage`` lines carry their
        index in ``pricing["usage_index"]`` instead)."""
        return LedgerEntry(
            entry_id=self.entry_id,
            source_event_id=self.source_event_id,
            source_seq=self.source_seq,
            line_item_type=self.line_item_type,
            tenant_id=self.tenant_id,
            work_unit_id=self.work_unit_id,
            execution_session_id=self.execution_session_id,
            quantity=self.quantity,
            unit=self.unit,
            pricing=dict(self.pricing),
            amount_usd=self.amount_usd,
            recorded_at=self.recorded_at,
        )

    @classmethod
    def from_entry(cls, entry: LedgerEntry) -> LedgerLine:
        """Back from the wire (or the database) form; the key is rebuilt from ``pricing``."""
        return cls(
            entry_id=entry.entry_id,
            source_event_id=entry.source_event_id,
            source_seq=entry.source_seq,
            line_item_type=LineItemType(entry.line_item_type),
            tenant_id=entry.tenant_id,
            work_unit_id=entry.work_unit_id,
            execution_session_id=entry.execution_session_id,
            quantity=entry.quantity,
            unit=entry.unit,
            pricing=MappingProxyType(dict(entry.pricing)),
            amount_usd=entry.amount_usd,
            recorded_at=as_utc(entry.recorded_at),
            sub_key=_sub_key_from_pricing(entry.pricing),
        )


def _sub_key_from_pricing(pricing: Mapping[str, Any]) -> str:
    index = pricing.get("usage_index")
    if isinstance(index, int) and not isinstance(index, bool):
        return f"{USAGE_SUB_KEY_PREFIX}{index}"
    return ""


def line_key(line: LedgerLine | LedgerEntry) -> LineKey:
    """The uniqueness key of a line in either form."""
    if isinstance(line, LedgerLine):
        return line.key
    return (line.source_event_id, str(line.line_item_type), _sub_key_from_pricing(line.pricing))


def as_utc(value: datetime) -> datetime:
    """An aware UTC datetime; a naive one (SQLite gives those) is taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


# --------------------------------------------------------------------------- amounts


def cpu_seconds(cpu_ms: int) -> Decimal:
    """CPU milliseconds as exact seconds."""
    with localcontext(EXACT):
        return Decimal(cpu_ms).scaleb(-3)


def cpu_amount(cpu_ms: int, usd_per_cpu_s: Decimal) -> Decimal:
    """``cpu_ms / 1000 x usd_per_cpu_s``, exact, then rounded once (6 places, half-even)."""
    with localcontext(EXACT):
        return quantize_usd(cpu_seconds(cpu_ms) * usd_per_cpu_s)


def token_amount(
    tokens_in: int, tokens_out: int, usd_per_1m_in: Decimal, usd_per_1m_out: Decimal
) -> Decimal:
    """``(tokens_in x usd_per_1m_in + tokens_out x usd_per_1m_out) / 10^6``, exact, then rounded
    once (6 places, half-even). The two halves are not rounded separately."""
    with localcontext(EXACT):
        exact = Decimal(tokens_in) * usd_per_1m_in + Decimal(tokens_out) * usd_per_1m_out
        return quantize_usd(exact / _MILLION)


def recompute_amount(line: LedgerLine | LedgerEntry) -> Decimal:
    """The amount a line should carry, from its own ``quantity`` and ``pricing``; raises
    ``ValueError`` when the line does not hold what that needs."""
    pricing = line.pricing
    try:
        if str(line.line_item_type) == LineItemType.WORKUNIT_CPU:
            with localcontext(EXACT):
                seconds = Decimal(line.quantity)
                if not seconds.is_finite() or seconds < 0:
                    raise ValueError(f"not a CPU time: {line.quantity!r}")
                return quantize_usd(seconds * parse_rate(pricing["usd_per_cpu_s"]))
        tokens_in = _nonneg_int(pricing["tokens_in"])
        tokens_out = _nonneg_int(pricing["tokens_out"])
        if str(tokens_in + tokens_out) != line.quantity:
            raise ValueError("quantity is not tokens_in + tokens_out")
        return token_amount(
            tokens_in,
            tokens_out,
            parse_rate(pricing["usd_per_1m_in"]),
            parse_rate(pricing["usd_per_1m_out"]),
        )
    except KeyError as exc:
        raise ValueError(f"pricing has no {exc.args[0]!r}") from exc
    except ArithmeticError as exc:
        raise ValueError(f"cannot recompute: {exc!r}") from exc


def _nonneg_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"not a non-negative integer: {value!r}")
    return value


# --------------------------------------------------------------------------- reading events


def _unbillable(event: LogEvent[Payload], reason: str) -> InvalidBillableEvent:
    return InvalidBillableEvent(event.event_id, reason)


def _unreadable(event: LogEvent[Payload]) -> InvalidBillableEvent:
    """A billable event whose payload did not validate against its model (the codec's reason
    names the fields)."""
    payload = event.payload
    if isinstance(payload, UnreadablePayload):
        return _unbillable(event, payload.error)
    return _unbillable(event, f"payload is not a {event.type} payload")


def _tenant(event: LogEvent[Payload]) -> str:
    if not event.tenant_id:
        raise _unbillable(event, "no tenant_id")
    return event.tenant_id


def _count(event: LogEvent[Payload], value: int, where: str) -> int:
    # the type is the schema's; that a count is not negative is billing's rule
    if value < 0:
        raise _unbillable(event, f"{where} must be a non-negative integer, got {value!r}")
    return value


def _rate(event: LogEvent[Payload], value: str, where: str) -> Decimal:
    try:
        return parse_rate(value)
    except ValueError as exc:
        raise _unbillable(event, f"{where}: {exc}") from exc


def _session_of(
    event: LogEvent[Payload], payload: WorkUnitCompleted | LlmInvocationCompleted
) -> str:
    if event.correlation_id:
        return event.correlation_id
    return payload.execution_session_id or ""


def _line(
    event: LogEvent[Payload],
    session: str,
    tenant_id: str,
    line_item_type: LineItemType,
    quantity: str,
    unit: str,
    pricing: dict[str, Any],
    amount: Decimal,
    sub_key: str = "",
) -> LedgerLine:
    return LedgerLine(
        entry_id=entry_id_for(event.event_id, line_item_type.value, sub_key),
        source_event_id=event.event_id,
        source_seq=event.seq,
        line_item_type=line_item_type,
        tenant_id=tenant_id,
        work_unit_id=event.stream_id,
        execution_session_id=session,
        quantity=quantity,
        unit=unit,
        pricing=MappingProxyType(pricing),
        amount_usd=amount,
        recorded_at=as_utc(event.recorded_at),
        sub_key=sub_key,
    )


def _token_line(
    event: LogEvent[Payload],
    session: str,
    tenant_id: str,
    usage: LlmUsage | LlmInvocationCompleted,
    where: str,
    sub_key: str = "",
    extra: Mapping[str, Any] | None = None,
) -> LedgerLine:
    stamp = usage.pricing
    tokens_in = _count(event, usage.tokens_in, f"{where}tokens_in")
    tokens_out = _count(event, usage.tokens_out, f"{where}tokens_out")
    usd_in = _rate(event, stamp.usd_per_1m_in, f"{where}pricing.usd_per_1m_in")
    usd_out = _rate(event, stamp.usd_per_1m_out, f"{where}pricing.usd_per_1m_out")
    if not usage.model:
        raise _unbillable(event, f"{where}model must be a non-empty string")
    pricing: dict[str, Any] = {
        "model": usage.model,
        "tokens_in": tokens_in,
        "tokens_out": tokens_out,
        "usd_per_1m_in": rate_str(usd_in),
        "usd_per_1m_out": rate_str(usd_out),
        "price_version": stamp.price_version,
    }
    if extra:
        pricing.update(extra)
    return _line(
        event,
        session,
        tenant_id,
        LineItemType.LLM_TOKENS,
        str(tokens_in + tokens_out),
        TOKEN_UNIT,
        pricing,
        token_amount(tokens_in, tokens_out, usd_in, usd_out),
        sub_key,
    )


def _lines_for_completed(
    event: LogEvent[Payload], payload: WorkUnitCompleted, policy: BillingPolicy
) -> list[LedgerLine]:
    tenant_id = _tenant(event)
    session = _session_of(event, payload)
    cpu_ms = _count(event, payload.cpu_ms, "cpu_ms")
    usd_per_cpu_s = _rate(event, payload.pricing.usd_per_cpu_s, "pricing.usd_per_cpu_s")
    pricing: dict[str, Any] = {
        "usd_per_cpu_s": rate_str(usd_per_cpu_s),
        "price_version": payload.pricing.price_version,
    }
    lines = [
        _line(
            event,
            session,
            tenant_id,
            LineItemType.WORKUNIT_CPU,
            f"{cpu_seconds(cpu_ms):.6f}",
            CPU_UNIT,
            pricing,
            cpu_amount(cpu_ms, usd_per_cpu_s),
        )
    ]
    if policy.bill_llm_from_workunit_completed:
        for index, usage in enumerate(payload.llm_usage):
            lines.append(
                _token_line(
                    event,
                    session,
                    tenant_id,
                    usage,
                    f"llm_usage[{index}].",
                    sub_key=f"{USAGE_SUB_KEY_PREFIX}{index}",
                    extra={"usage_index": index},
                )
            )
    return lines


def _invocation(event: LogEvent[Payload]) -> LlmInvocationCompleted:
    if isinstance(event.payload, LlmInvocationCompleted):
        return event.payload
    raise _unreadable(event)


def is_stale_claim(event: LogEvent[Payload]) -> bool:
    """Whether an ``llm.invocation.completed`` event is spend under a lost claim (raises
    ``InvalidBillableEvent`` when its payload is unreadable)."""
    return _invocation(event).stale_claim


def invocation_line(event: LogEvent[Payload]) -> LedgerLine:
    """The line an ``llm.invocation.completed`` event would give, whatever the policy and the
    stale-claim mark say (the anomaly checker prices platform cost with it)."""
    payload = _invocation(event)
    return _token_line(event, _session_of(event, payload), _tenant(event), payload, "")


def lines_for_event(event: LogEvent[Payload], policy: BillingPolicy) -> list[LedgerLine]:
    """The ledger lines ``event`` gives under ``policy`` (the policy in force before it).

    Raises ``InvalidBillableEvent`` when a billable event lacks what its lines need (or its
    payload does not validate against its model); events of any other type give ``[]``.
    """
    payload = event.payload
    if isinstance(payload, WorkUnitCompleted):
        return _lines_for_completed(event, payload, policy)
    if event.type == EventType.LLM_INVOCATION_COMPLETED and not policy.bill_llm_from_invocation:
        return []  # not billed from here under this policy, readable or not
    if isinstance(payload, LlmInvocationCompleted):
        return [] if payload.stale_claim else [invocation_line(event)]
    if event.type in BILLABLE_TYPES:
        raise _unreadable(event)
    return []
