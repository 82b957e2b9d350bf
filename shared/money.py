"""Money: ``Decimal`` quantized to 6 places (micro-dollars), never float.

The one rounding rule: an amount is computed exactly with ``Decimal`` arithmetic from its
inputs, then rounded **once**, to 6 decimal places, with ROUND_HALF_EVEN (banker's rounding),
when a ledger line is made. Totals are sums of rounded lines, so they need no rounding of
their own and always equal the sum of what a tenant can see line by line.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

MICRO = Decimal("0.000001")
ZERO = Decimal("0.000000")
# 10^15 USD: far above any real bill, and keeps every amount exact in 6-place micro-units
MAX_USD = Decimal(10) ** 15


def quantize_usd(value: Decimal | int | str) -> Decimal:
    """Round an exact amount to 6 places with the project's one rounding rule."""
    return Decimal(value).quantize(MICRO, rounding=ROUND_HALF_EVEN)


def format_usd(value: Decimal) -> str:
    """The wire form of money: a string with exactly 6 decimals (``"0.000150"``)."""
    return f"{quantize_usd(value):.6f}"


def to_micros(value: Decimal) -> int:
    """Integer micro-dollars, the stored form."""
    return int(quantize_usd(value) * 1_000_000)


def from_micros(micros: int) -> Decimal:
    return (Decimal(micros) / 1_000_000).quantize(MICRO)


def parse_money(value: object) -> Decimal:
    """Accept a decimal string or Decimal or int; refuse floats (they are not money)."""
    if isinstance(value, float):
        raise ValueError("money must be a decimal string, not a float")
    if isinstance(value, bool):
        raise ValueError("money must be a decimal string")
    try:
        dec = Decimal(str(value)) if not isinstance(value, Decimal) else value
    except (InvalidOperation, ValueError) as exc:
        raise ValueError(f"not a decimal amount: {value!r}") from exc
    if not dec.is_finite():
        raise ValueError("money must be finite")
    if abs(dec) >= MAX_USD:
        raise ValueError(f"amount {value!r} is out of range (at most {MAX_USD} USD)")
    return quantize_usd(dec)


def parse_rate(value: object) -> Decimal:
    """A price rate: exact decimal (more than 6 places allowed), never float."""
    if isinstance(value, float | bool):
        raise ValueError("rates must be decimal strings, not floats")
    try:
        dec = Decimal(str(value))
    except (InvalidOperation, ValueError) as exc:
        raise ValueError(f"not a decimal rate: {value!r}") from exc
    if not dec.is_finite() or dec < 0:
        raise ValueError("rates must be finite and not negative")
    if dec >= MAX_USD:
        raise ValueError(f"rate {value!r} is out of range")
    return dec


Money = Annotated[
    Decimal,
    BeforeValidator(parse_money),
    PlainSerializer(format_usd, return_type=str),
    WithJsonSchema({"type": "string", "pattern": r"^-?\d+\.\d{6}$", "examples": ["0.000150"]}),
]
"""A money field: accepts decimal strings, serializes with exactly 6 decimals."""

Rate = Annotated[
    Decimal,
    BeforeValidator(parse_rate),
    PlainSerializer(lambda d: format(d.normalize(), "f"), return_type=str),
    WithJsonSchema({"type": "string", "pattern": r"^\d+(\.\d+)?$", "examples": ["0.150"]}),
]
"""A price rate: exact decimal string (USD per unit)."""
