"""The pass policy: what a listing or PyPI's answers may make a pass remove, and when
a listing is not believed at all. Pure: the sync engine applies it.

- A project is removed only on PyPI's word about that project: a ``remove project``
  changelog row, or 404 from both its JSON API and its Simple page asked by name.
  Absence from a listing is a reason to ask, never a proof.
- A pass removes at most :func:`removal_limit` projects; past it, it removes nothing
  and says why until the listing recovers or an operator confirms.
- A listing older than the checkpoint is stale (:func:`stale_listing`): nothing is
  written or removed from it.
"""

from __future__ import annotations

MIN_REMOVAL_LIMIT = 100  # a pass may always remove this many projects (or 1 % of them)
CONFIRM_HINT = ("run one pass with --confirm-removals (Python: confirm_removals=True), "
                "or raise --max-removals")


def removal_limit(projects: int, max_removals: int | None = None) -> int:
    """How many projects one pass may remove: ``max_removals`` when given, else 1 % of
    the ``projects`` stored or 100, whichever is larger."""
    if max_removals is not None:
        return max_removals
    return max(MIN_REMOVAL_LIMIT, projects // 100)


def stale_listing(listed_serial: int | None, checkpoint_serial: int | None,
                  where: str) -> str | None:
    """Why a listing at ``listed_serial`` is not to be used (older than the
    checkpoint: a stale copy), or None."""
    if listed_serial is None or checkpoint_serial is None or \
            listed_serial >= checkpoint_serial:
        return None
    return (f"the listing from {where} is older than our checkpoint (serial "
            f"{listed_serial} < {checkpoint_serial}): nothing written or removed from it")
