"""Budgets: may a tenant start more work, and what might a queued unit cost.

``budget_check`` admits a request while ``spent + committed + requested <= budget`` (no budget:
always). ``spent`` is the tenant's wallet total; ``committed`` the estimates of its units that
are queued or running (not yet billed); ``requested`` the estimate of what it asks for now.

``estimate_unit_cost`` is a deliberately conservative guess of a unit's bill before it runs,
from its kind, its submitted payload and the price table in force:

- ``cpu``: ``timeout_s`` from the payload when given, else for the ``sleep`` handler its
  ``args.ms`` plus one second, else ``DEFAULT_CPU_ESTIMATE_S``; times the CPU rate.
- ``llm_pod``: the CPU part as for ``cpu``, plus ``max_tokens`` (default
  ``DEFAULT_MAX_TOKENS``) at the model's output rate, plus the prompt at the input rate,
  estimated as one token per ``CHARS_PER_TOKEN`` characters (rounded up) plus
  ``TOKENS_PER_MESSAGE`` per message; the model is the payload's ``model`` or the table's
  ``"default"`` entry.

An estimate is not a ledger amount: it is rounded *up* (ROUND_CEILING) to 6 places so that it
never understates; the one rounding rule of ``shared.money`` applies to ledger lines only.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from decimal import ROUND_CEILING, Decimal, InvalidOperation, localcontext
from math import ceil
from typing import Any

from control_plane.billing.domain.pricing import DEFAULT_MODEL, PriceTable
from control_plane.billing.domain.rules import EXACT
from shared.enums import WorkUnitKind
from shared.money import MICRO, ZERO

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


def _cpu_seconds(payload: Mapping[str, Any]) -> Decimal:
    timeout = _seconds(payload.get("timeout_s"))
    if timeout is not None:
        return timeout
    args = payload.get("args")
    if payload.get("handler") == "sleep" and isinstance(args, Mapping):
        ms = _seconds(args.get("ms"))
        if ms is not None:
            return ms.scaleb(-3) + SLEEP_OVERHEAD_S
    return DEFAULT_CPU_ESTIMATE_S


def _prompt_tokens(payload: Mapping[str, Any]) -> int:
    prompt = payload.get("prompt")
    if isinstance(prompt, str):
        return ceil(len(prompt) / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE
    messages = payload.get("messages")
    if isinstance(messages, list):
        chars = sum(len(json.dumps(m, ensure_ascii=False, default=str)) for m in messages)
        return ceil(chars / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * len(messages)
    return TOKENS_PER_MESSAGE


def _max_tokens(payload: Mapping[str, Any]) -> int:
    value = payload.get("max_tokens")
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return DEFAULT_MAX_TOKENS


def _cpu_cost(payload: Mapping[str, Any], table: PriceTable) -> Decimal:
    return _cpu_seconds(payload) * table.usd_per_cpu_s


def _llm_pod_cost(payload: Mapping[str, Any], table: PriceTable) -> Decimal:
    model = payload.get("model")
    price = table.model_price(model if isinstance(model, str) and model else DEFAULT_MODEL)
    tokens = (
        Decimal(_prompt_tokens(payload)) * price.usd_per_1m_in
        + Decimal(_max_tokens(payload)) * price.usd_per_1m_out
    ) / Decimal(1_000_000)
    return _cpu_cost(payload, table) + tokens


_ESTIMATORS: dict[str, Callable[[Mapping[str, Any], PriceTable], Decimal]] = {
    WorkUnitKind.CPU.value: _cpu_cost,
    WorkUnitKind.LLM_POD.value: _llm_pod_cost,
}


def estimate_unit_cost(
    kind: WorkUnitKind | str, payload: Mapping[str, Any], table: PriceTable
) -> Decimal:
    """A conservative estimate of a unit's cost, rounded up to 6 places (see the module
    docstring). An unknown kind raises ``ValueError``."""
    estimator = _ESTIMATORS.get(str(kind))
    if estimator is None:
        raise ValueError(f"unknown work unit kind: {kind!r}")
    with localcontext(EXACT):
        cost = estimator(payload, table)
        return max(cost, ZERO).quantize(MICRO, rounding=ROUND_CEILING)
