"""The canonical JSONL form of the ledger and the wallets, and the digest over both.

Replay verification compares digests, so the same financial state must always give the same
bytes. The format:

- One JSON object per line, each line ended by ``"\\n"`` (so an empty ledger is ``""``), UTF-8,
  keys sorted, no whitespace (separators ``","`` and ``":"``), non-ASCII characters as-is.
- A ledger line has exactly the ``LedgerEntry`` fields: ``entry_id``, ``source_event_id``,
  ``source_seq`` (integer), ``line_item_type``, ``tenant_id``, ``work_unit_id``,
  ``execution_session_id``, ``quantity`` (string), ``unit``, ``pricing`` (object, keys sorted,
  rates as decimal strings, counts and ``price_version`` as integers), ``amount_usd`` and
  ``recorded_at``.
- A wallet line has ``tenant_id``, ``as_of_seq`` (integer), ``totals`` (``{"llm_tokens",
  "workunit_cpu"}``) and ``total_usd``.
- Money is a string with exactly 6 decimals (``"0.000062"``; an amount with more places, which
  no valid line has, is written exactly rather than rounded, so it shows in the digest); a
  ``Decimal`` elsewhere (a rate)
  is its shortest exact string (``"0.00005"``); floats are refused (``TypeError``).
- Datetimes are RFC 3339 in UTC with microseconds and ``Z``: ``"2026-11-27T12:00:00.000000Z"``
  (naive datetimes are taken to be UTC).
- Ledger lines are ordered by ``(source_seq, key)``, ``key`` being ``(source_event_id,
  line_item_type, sub_key)``; wallets by ``tenant_id``.

``digest(lines, wallets)`` is the SHA-256 hex of the UTF-8 bytes of ``ledger_jsonl(lines) +
wallets_jsonl(wallets)``. A ledger object always has ``entry_id`` and a wallet object never
does, so the concatenation is unambiguous.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from decimal import Decimal
from enum import Enum

from control_plane.billing.domain.pricing import rate_str
from control_plane.billing.domain.rules import LedgerLine, as_utc, line_key
from control_plane.billing.domain.wallets import WalletState
from shared.enums import LineItemType
from shared.money import format_usd
from shared.wire import LedgerEntry, Wallet

AnyLine = LedgerLine | LedgerEntry
AnyWallet = WalletState | Wallet


def rfc3339(value: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC."""
    d = as_utc(value)
    return (
        f"{d.year:04d}-{d.month:02d}-{d.day:02d}T"
        f"{d.hour:02d}:{d.minute:02d}:{d.second:02d}.{d.microsecond:06d}Z"
    )


def _value(value: object) -> object:
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, Enum):
        return _value(value.value)
    if isinstance(value, str):
        return value
    if isinstance(value, Decimal):
        return rate_str(value)
    if isinstance(value, datetime):
        return rfc3339(value)
    if isinstance(value, Mapping):
        return {str(k): _value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_value(v) for v in value]
    raise TypeError(f"no canonical form for {type(value).__name__}: {value!r}")


def _money(amount: Decimal) -> str:
    """Exactly 6 decimals; an amount that 6 decimals cannot hold (a bug) is written exactly,
    so that it changes the digest instead of being rounded out of sight."""
    text = format_usd(amount)
    return text if Decimal(text) == amount else format(amount, "f")


def _dumps(obj: Mapping[str, object]) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_line(line: AnyLine) -> str:
    """One ledger line as canonical JSON (no trailing newline)."""
    return _dumps(
        {
            "entry_id": line.entry_id,
            "source_event_id": line.source_event_id,
            "source_seq": int(line.source_seq),
            "line_item_type": str(LineItemType(line.line_item_type).value),
            "tenant_id": line.tenant_id,
            "work_unit_id": line.work_unit_id,
            "execution_session_id": line.execution_session_id,
            "quantity": line.quantity,
            "unit": line.unit,
            "pricing": _value(line.pricing),
            "amount_usd": _money(line.amount_usd),
            "recorded_at": rfc3339(line.recorded_at),
        }
    )


def canonical_wallet(wallet: AnyWallet) -> str:
    """One wallet as canonical JSON (no trailing newline)."""
    if isinstance(wallet, Wallet):
        wallet = WalletState.from_wire(wallet)
    return _dumps(
        {
            "tenant_id": wallet.tenant_id,
            "as_of_seq": int(wallet.as_of_seq),
            "totals": {kind.value: _money(amount) for kind, amount in wallet.totals.items()},
            "total_usd": _money(wallet.total_usd),
        }
    )


def ledger_order(line: AnyLine) -> tuple[int, tuple[str, str, str]]:
    """The sort key of the canonical ledger: ``(source_seq, key)``."""
    return (int(line.source_seq), line_key(line))


def ledger_jsonl(lines: Iterable[AnyLine]) -> str:
    """The canonical JSONL of the ledger, in ``(source_seq, key)`` order."""
    return "".join(canonical_line(line) + "\n" for line in sorted(lines, key=ledger_order))


def wallets_jsonl(wallets: Iterable[AnyWallet] | Mapping[str, AnyWallet]) -> str:
    """The canonical JSONL of the wallets (a mapping's values), in ``tenant_id`` order."""
    items = list(wallets.values()) if isinstance(wallets, Mapping) else list(wallets)
    return "".join(canonical_wallet(w) + "\n" for w in sorted(items, key=lambda w: w.tenant_id))


def digest(lines: Iterable[AnyLine], wallets: Iterable[AnyWallet] | Mapping[str, AnyWallet]) -> str:
    """SHA-256 hex of the canonical ledger JSONL followed by the canonical wallets JSONL."""
    text = ledger_jsonl(lines) + wallets_jsonl(wallets)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
