"""Placement decisions: why the scheduler put a unit where it did.

``Placement.of`` reads a ``workunit.scheduled`` event once (the chosen node, who it was
offered to, the candidates with their scores, the excluded nodes with their reasons), and
``explanation`` turns it into what ``krako explain`` prints. Values are kept as the control
plane wrote them, so they show exactly as in the log."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from krako_cli.render.events import summarize
from krako_cli.render.text import compact
from shared.events import Event

#: the score's terms, in the order the scheduler weighs them
TERMS = ("free_capacity", "load", "trust", "region_match")


@dataclass(frozen=True)
class Candidate:
    """A node that passed the hard filter, with its score and the score's components."""

    node_id: str
    score: Any
    components: Mapping[str, Any]
    free_slots: Any

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> Candidate:
        return cls(
            node_id=str(raw.get("node_id")),
            score=raw.get("score"),
            components=raw.get("components") or {},
            free_slots=raw.get("free_slots", "-"),
        )


@dataclass(frozen=True)
class Exclusion:
    """A node the hard filter left out, and why."""

    node_id: str
    reason: str

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> Exclusion:
        return cls(node_id=str(raw.get("node_id")), reason=str(raw.get("reason")))


@dataclass(frozen=True)
class Placement:
    """One ``workunit.scheduled`` event, read for display."""

    event: Event
    attempt: Any
    node_id: Any
    offered_to: list[str]
    decision: Mapping[str, Any]
    rule: str | None
    eligible: Any
    weights: Mapping[str, Any]
    streak: Any
    candidates: list[Candidate]
    excluded: list[Exclusion]
    excluded_total: int
    excluded_counts: Mapping[str, int]

    @classmethod
    def of(cls, event: Event) -> Placement:
        payload = event.payload
        decision: Mapping[str, Any] = payload.get("decision") or {}
        excluded = [Exclusion.of(x) for x in decision.get("excluded") or []]
        return cls(
            event=event,
            attempt=payload.get("attempt"),
            node_id=payload.get("node_id"),
            offered_to=[str(n) for n in payload.get("offered_to", []) or []],
            decision=decision,
            rule=decision.get("rule"),
            eligible=decision.get("eligible"),
            weights=decision.get("weights") or {},
            streak=decision.get("streak"),
            candidates=[Candidate.of(c) for c in decision.get("candidates") or []],
            excluded=excluded,
            excluded_total=int(decision.get("excluded_total") or len(excluded)),
            excluded_counts=decision.get("excluded_counts") or {},
        )

    @property
    def chosen(self) -> Any:
        return self.decision.get("chosen")


def candidates_table(placement: Placement) -> Table:
    """The candidates, best first, with each weighted component."""
    weights = placement.weights
    table = Table(title="candidates (best first)", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("node")
    table.add_column("score", justify="right")
    for name in TERMS:
        w = weights.get(name)
        table.add_column(f"{name}" + (f" ×{w}" if w is not None else ""), justify="right")
    table.add_column("free slots", justify="right")
    table.add_column("")
    for rank, cand in enumerate(placement.candidates, start=1):
        marks = []
        if cand.node_id == placement.chosen:
            marks.append("chosen")
        elif cand.node_id in placement.offered_to:
            marks.append("offered")
        table.add_row(
            str(rank),
            Text(cand.node_id, style="bold green" if cand.node_id == placement.chosen else ""),
            f"{cand.score}",
            *(f"{cand.components.get(n, '-')}" for n in TERMS),
            f"{cand.free_slots}",
            ", ".join(marks),
        )
    return table


def excluded_table(placement: Placement) -> Table:
    """The excluded nodes listed in the decision, with their reasons."""
    table = Table(title=f"excluded ({placement.excluded_total})", title_justify="left")
    table.add_column("node")
    table.add_column("reason")
    for item in placement.excluded:
        table.add_row(item.node_id, item.reason)
    return table


def explanation(placement: Placement, later: list[Event]) -> list[RenderableType]:
    """What ``krako explain`` prints about one placement and the events that followed it."""
    event = placement.event
    head = Text()
    head.append(f"attempt {placement.attempt}", style="bold")
    head.append(
        f": placed on {placement.node_id} at {event.recorded_at.isoformat()} (event #{event.seq})"
    )
    parts: list[RenderableType] = [head]
    if placement.rule:
        parts.append(f"  why: {placement.rule}")
    if placement.eligible is not None:
        offered = ", ".join(placement.offered_to) or "-"
        parts.append(f"  eligible nodes: {placement.eligible}; offered to: {offered}")
    terms = [f"{placement.weights[n]}×{n}" for n in TERMS if n in placement.weights]
    if terms:
        parts.append("  score = " + " + ".join(terms))
    if placement.streak:
        parts.append(f"  anti-affinity: {compact(placement.streak)}")
    if placement.candidates:
        parts.append(candidates_table(placement))
    total = placement.excluded_total
    if placement.excluded or total:
        parts.append(excluded_table(placement))
        counts = placement.excluded_counts
        if total > len(placement.excluded) and counts:
            parts.append(
                "  by reason: " + ", ".join(f"{r} ×{n}" for r, n in sorted(counts.items()))
            )
    if later:
        parts.append("  then: " + "; ".join(f"{e.type} {summarize(e)}".rstrip() for e in later))
    return parts
