"""Budgets: may a tenant start more work, and what might a queued unit cost.

``budget_check`` admits a request while ``spent + committed + requested <= budget`` (no budget:
always). ``spent`` is the tenant's wallet total; ``committed`` the estimates of its units that
are queued or running (not yet billed); ``requested`` the estimate of what it asks for now.

``estimate_unit_cost`` is a deliberately conservative guess of a unit's bill before it runs,
from its kind, its payload (parsed by ``shared.payloads``, the schema the agent runs it by) and
the price table in force:

- ``cpu``: ``timeout_s`` from the payload when given, else for the ``sleep`` handler its
  ``args.ms`` plus one second, else ``DEFAULT_CPU_ESTIMATE_S``; times the CPU rate.
- ``llm_pod``: the CPU part as for ``cpu``, plus ``max_tokens`` (default
  ``DEFAULT_MAX_TOKENS``) at the model's output rate, plus the input at the input rate: what
  the agent sends (the ``messages``, each as its JSON text, when there are some, else the
  ``prompt``), estimated as one token per ``CHARS_PER_TOKEN`` characters (rounded up) plus
  ``TOKENS_PER_MESSAGE`` per message; the model is the payload's ``model`` or the table's
  ``"default"`` entry.

An estimate is not a ledger amount: it is rounded *up* (ROUND_CEILING) to 6 places so that it
never understates; the one rounding rule of ``shared.money`` applies to ledger lines only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import ROUND_CEILING, Decimal, InvalidOperation, localcontext
from math import ceil
from typing import Any

from control_plane.billing.domain.pricing import DEFAULT_MODEL, PriceTable
from control_plane.billing.domain.rules import EXACT
from shared.enums import WorkUnitKind
from shared.money import MICRO, ZERO
from shared.payloads import CpuPayload, LlmPodPayload, UnitPayload, parse_payload

DEFAULT_CPU_ESTIMATE_S = Decimal(10)
"""CPU seconds assumed for a unit that says nothing about its duration."""
SLEEP_OVERHEAD_S = Decimal(1)
DEFAULT_MAX_TOKENS = 512
CHARS_PER_TOKEN = 3
TOKENS_PER_MESSAGE = 8


def _money(value: object, name: str) -> Decimal:
    if isinstance(value, float | bool) or not isinstance(value, Decimal | int):
        raise TypeError(f"{name} must be a Decimal, not {type(value).__name__}")
    amount = Decimal(value)
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"{name} must be finite and not negative, got {value}")
    return amount


def budget_check(
    budget: Decimal | None, spent: Decimal, committed: Decimal, requested: Decimal
) -> bool:
    """Whether ``requested`` fits: ``spent + committed + requested <= budget``; ``True`` when
    there is no budget. Amounts are ``Decimal`` (never float) and not negative."""
    spent_d = _money(spent, "spent")
    committed_d = _money(committed, "committed")
    requested_d = _money(requested, "requested")
    if budget is None:
        return True
    budget_d = _money(budget, "budget")
    with localcontext(EXACT):
        return spent_d + committed_d + requested_d <= budget_d


def _seconds(value: object) -> Decimal | None:
    """A positive duration from a JSON number or decimal string, else ``None``."""
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        return None
    try:
        seconds = Decimal(str(value))
    except InvalidOperation:
        return None
    return seconds if seconds.is_finite() and seconds > 0 else None


def _cpu_seconds(payload: UnitPayload) -> Decimal:
    if payload.timeout_s is not None:
        return Decimal(str(payload.timeout_s))
    if isinstance(payload, CpuPayload) and payload.handler == "sleep":
        # the handler's own argument: not part of the payload schema
        ms = _seconds(payload.args.get("ms"))
        if ms is not None:
            return ms.scaleb(-3) + SLEEP_OVERHEAD_S
    return DEFAULT_CPU_ESTIMATE_S


def _prompt_tokens(payload: LlmPodPayload) -> int:
    # what the agent sends: the messages when there are some, else the prompt
    if payload.messages is not None:
        chars = sum(len(json.dumps(m, ensure_ascii=False, default=str)) for m in payload.chat())
        return ceil(chars / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * len(payload.messages)
    return ceil(len(payload.prompt or "") / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE


def _cpu_cost(payload: UnitPayload, table: PriceTable) -> Decimal:
    return _cpu_seconds(payload) * table.usd_per_cpu_s


def _llm_pod_cost(payload: LlmPodPayload, table: PriceTable) -> Decimal:
    price = table.model_price(payload.model or DEFAULT_MODEL)
    max_tokens = payload.max_tokens or DEFAULT_MAX_TOKENS
    tokens = (
        Decimal(_prompt_tokens(payload)) * price.usd_per_1m_in
        + Decimal(max_tokens) * price.usd_per_1m_out
    ) / Decimal(1_000_000)
    return _cpu_cost(payload, table) + tokens


def estimate_unit_cost(
    kind: WorkUnitKind | str, payload: UnitPayload | Mapping[str, Any], table: PriceTable
) -> Decimal:
    """A conservative estimate of a unit's cost, rounded up to 6 places (see the module
    docstring). ``payload`` is the parsed payload (``units.validation.validate_payload``
    returns it), or a raw one to parse; an unknown kind or a malformed payload raises
    ``ValueError`` (``shared.payloads.PayloadError``)."""
    parsed = (
        payload if isinstance(payload, CpuPayload | LlmPodPayload) else parse_payload(kind, payload)
    )
    with localcontext(EXACT):
        if isinstance(parsed, LlmPodPayload):
            cost = _llm_pod_cost(parsed, table)
        else:
            cost = _cpu_cost(parsed, table)
        return max(cost, ZERO).quantize(MICRO, rounding=ROUND_CEILING)
