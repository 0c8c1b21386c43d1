"""What a run's owner decided about its items: keep, delete, or relabel as another class.

Decisions are rows of the run's `decisions` table, appended in order and never changed: an item's decision is its
latest row, and an `undo` row takes it back. They are keyed by the item's identity (its split and name, as the
`items` table has it), so they hold whichever epoch, class or list the item is seen in, and they travel with the
run wherever its rows go (publishing, snapshots); only a store opened for writing can take new ones.
"""
from __future__ import annotations

import time

from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError, IntegrityError

from ..errors import StoreError
from .store import Store
from .tables import DecisionRow, decisions

ACTIONS = ('keep', 'delete', 'relabel')
UNDO = 'undo'


def current(rows: list[DecisionRow]) -> dict[tuple[str, str], DecisionRow]:
    "Each decided item's decision, by (split, item name), from a run's decision rows in order."
    found = {}
    for row in rows:
        if row.action == UNDO: found.pop((row.split, row.item), None)
        else: found[(row.split, row.item)] = row
    return found


def decision_text(decision: DecisionRow | None) -> str | None:
    "A decision as people read it: keep, delete, relabel as C (None for no decision)."
    if decision is None: return None
    return f'relabel as {decision.label}' if decision.action == 'relabel' else decision.action


def decide(store: Store, run_id: str, split: str, item_index: int, item: str, action: str,
           label: str | None = None) -> DecisionRow:
    """Record a decision about an item of run `run_id` (`action`: keep, delete, relabel with `label`, or undo);
    `StoreError` for an action or label the run cannot take."""
    if action not in (*ACTIONS, UNDO):
        raise StoreError(f"a decision is one of {', '.join((*ACTIONS, UNDO))}, not {action!r}")
    vocab = store.run(run_id).vocab or []
    if action == 'relabel' and label not in vocab:
        raise StoreError(f'relabel takes a class of the run ({", ".join(map(str, vocab[:20]))}), not {label!r}')
    if action != 'relabel': label = None
    table = decisions.table
    for _ in range(3):  # another page of the owner's may take the same number: take the next
        with store.engine.connect() as conn:
            last = conn.execute(select(func.max(table.c.seq)).where(table.c.run_id == run_id)).scalar()
        row = DecisionRow(run_id, 0 if last is None else last + 1, time.time(), split, int(item_index), item,
                          action, label)
        try:
            store.write({decisions.name: [row]})
            return row
        except IntegrityError:
            continue
        except DBAPIError as e:
            raise StoreError(f'the decision could not be recorded in {store.location}: '
                             f'{" ".join(str(e.orig).split())[:200]}') from None
    raise StoreError('the decision could not be recorded: the store kept taking other decisions at once')
