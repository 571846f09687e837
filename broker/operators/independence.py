"""Separation of duties: may two operators be the same person? Pure, so it is tested whole.

An admin who creates an operator through the API is handed that operator's first token, so
until someone else vouches for the new operator it may be the admin acting under a second
name. The *lineage* of an operator is everyone who may hold its credentials that way:

    lineage(op) = {}                                   if op is a root or confirmed
                = {op.created_by} | lineage(creator)   otherwise

and its *control set* is ``{op} | lineage(op)``. Two operators are independent when their
control sets are disjoint. That is what an approval needs from the proposer and from every
approver already counted (two puppets of one admin are one person), and what confirming an
operator needs from the confirming admin.

Roots are the bootstrap admin and operators made with ``broker operator create`` on the
host: whoever can run that can change the database anyway, so nobody above them is known.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Standing:
    """What independence needs to know of one operator."""

    name: str
    created_by: str | None  # operator id; None: a root
    confirmed: bool

    @property
    def vouched(self) -> bool:
        """Nobody else may hold its credentials: a root, or confirmed by another admin."""
        return self.created_by is None or self.confirmed


Roster = Mapping[str, Standing]


def lineage(operator_id: str, roster: Roster) -> frozenset[str]:
    """Everyone who may act as ``operator_id``, itself excluded.

    An operator missing from the roster, or a loop (impossible when creators exist before
    what they create, but data can be edited), fails closed: the walk keeps what it found
    and the caller's comparisons treat the unknown id as a person of its own.
    """
    found: list[str] = []
    seen = {operator_id}
    current = roster.get(operator_id)
    while current is not None and not current.vouched:
        creator = current.created_by
        if creator is None or creator in seen:  # (not vouched implies a creator)
            break
        found.append(creator)
        seen.add(creator)
        current = roster.get(creator)
    return frozenset(found)


def control(operator_id: str, roster: Roster) -> frozenset[str]:
    return lineage(operator_id, roster) | {operator_id}


def _name(operator_id: str, roster: Roster) -> str:
    found = roster.get(operator_id)
    return found.name if found is not None else operator_id


def _unconfirmed_link(a: str, b: str, roster: Roster) -> str:
    """Why ``a`` and ``b`` may be one person, for the refusal's detail."""
    shared = sorted((control(a, roster) & control(b, roster)) - {a, b})
    if b in lineage(a, roster):
        return (
            f"{_name(a, roster)} was created by {_name(b, roster)}"
            + ("" if roster[a].created_by == b else " (through operators it created)")
            + " and no other admin has confirmed it yet"
        )
    if a in lineage(b, roster):
        return (
            f"{_name(b, roster)} was created by {_name(a, roster)}"
            + ("" if roster[b].created_by == a else " (through operators it created)")
            + " and no other admin has confirmed it yet"
        )
    common = ", ".join(_name(x, roster) for x in shared)
    return (
        f"{_name(a, roster)} and {_name(b, roster)} were both created by {common}, "
        "and no other admin has confirmed them yet"
    )


def same_person_reason(a: str, b: str, roster: Roster) -> str | None:
    """``None`` when ``a`` and ``b`` are independent; else why they may be one person."""
    if a == b:
        return f"{_name(a, roster)} is the same operator"
    if control(a, roster) & control(b, roster):
        return _unconfirmed_link(a, b, roster)
    return None


def approval_problem(
    approver: str, proposer: str, counted: Iterable[str], roster: Roster
) -> str | None:
    """Why an approval by ``approver`` would not count, or ``None`` if it counts.

    ``counted`` are the approvers whose approvals of the same version already count: each
    approval must come from a different person, not only a different name.
    """
    if approver == proposer:
        return "the proposer cannot approve their own proposal"
    if why := same_person_reason(approver, proposer, roster):
        return f"this approval would not be independent of the proposer: {why}"
    for earlier in counted:
        if why := same_person_reason(approver, earlier, roster):
            return f"this approval would not be independent of an earlier approval: {why}"
    return None


def confirmation_problem(confirmer: str, operator_id: str, roster: Roster) -> str | None:
    """Why ``confirmer`` may not vouch for ``operator_id``, or ``None``.

    Only the operator's own standing is set aside for the check: the confirmer must be
    independent of the operator as it stands *before* the confirmation, so neither its
    creator nor anyone the creator controls may vouch for it.
    """
    found = roster.get(operator_id)
    if found is None:
        return "no such operator"
    if found.created_by is None:
        return f"{found.name} is a root operator: there is nothing to confirm"
    if found.confirmed:
        return f"{found.name} is already confirmed"
    if why := same_person_reason(confirmer, operator_id, roster):
        return f"the confirming admin must be independent of {found.name}: {why}"
    return None
