"""Billing: a wallet and a replay check."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from krako_cli.render.text import fields
from shared.wire import ReplayReport, Wallet


def wallet_fields(wallet: Wallet) -> Table:
    """The tenant's spend by line-item type and in all, and the seq it is current to."""
    return fields(
        [
            ("tenant", wallet.tenant_id),
            ("as of seq", str(wallet.as_of_seq)),
            ("workunit_cpu", f"${wallet.totals.workunit_cpu}"),
            ("llm_tokens", f"${wallet.totals.llm_tokens}"),
            ("total", Text(f"${wallet.total_usd}", style="bold")),
        ]
    )


def replay_fields(report: ReplayReport) -> Table:
    """The replay verdict and the digests it compared."""
    verdict = (
        Text("identical", style="bold green")
        if report.identical
        else Text("DIFFERENT", style="bold red")
    )
    return fields(
        [
            ("replay", verdict),
            ("live digest", report.live_digest),
            ("replay digest", report.replay_digest),
            ("events replayed", str(report.events_replayed)),
            ("ledger entries", str(report.ledger_entries)),
        ]
    )
