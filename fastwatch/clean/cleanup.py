"""`fastwatch cleanup`: carry out a run's decisions on the data it was trained on.

A relabelled file moves into its new class's folder: beside its current one when that is named after a class of the
run (`train/3/x.png` -> `train/7/x.png`), else `root/7/x.png`. A deleted file moves into the trash folder
`root/.fastwatch-trash/`, under the same relative path (a hidden folder: fastai's `get_image_files` skips it). Nothing
is ever unlinked. Without `--apply` the command only shows the plan. Every move is checked before any is made, and
one refusal stops them all: a name that leads outside the data's root (absolute, `..`, a link), a file that is not
what the run recorded (its size or modification time differ, or it is gone: the data changed since, or the cleanup was
already applied), a destination that exists (never overwritten). `--apply` keeps a journal of its moves in the trash
folder, which `--undo` follows backwards, then removes the folders the apply made: the data is as it was.

Items that are not files (a DataFrame's rows, texts) have nothing to move: their plan is a CSV of their ids and new
labels, for the owner's own code.
"""
from __future__ import annotations

import csv
import errno
import io
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

from ..errors import OutputError, UsageError
from ..formats import printable
from ..store import Store, open_store
from ..store.decisions import current
from ..store.files import writing
from ..store.records import RUN_ID
from ..store.tables import DecisionRow, ItemsRow

TRASH = '.fastwatch-trash'
FILE_COLUMNS = ('split', 'item', 'action', 'label', 'source', 'destination', 'refused')
ROW_COLUMNS = FILE_COLUMNS[:4]  # items that are not files: their ids and new labels


@dataclass(frozen=True)
class Move:
    """One decided item's operation: where its file goes (`destination`, relative to the data's `root`; both None for
    an item that is not a file), and why it is `refused`, when it is."""
    split: str
    item: str  # its name as the run recorded it: for a file, its path relative to `root`
    action: str  # delete / relabel
    label: str | None = None
    root: Path | None = None
    destination: str | None = None
    refused: str | None = None

    @property
    def source(self) -> str | None: return self.item if self.root else None

    @property
    def why(self) -> str: return f'relabel as {self.label}' if self.action == 'relabel' else 'delete'

    def line(self) -> str:
        "The move as the plan prints it."
        if self.refused: return f'refuse {self.item}  ({self.why}): {self.refused}'
        if self.root is None: return f'note {self.split} item {self.item}  ({self.why}): not a file, nothing to move'
        return f'move {self.source} -> {self.destination}  ({self.why})'

    def cells(self, columns: tuple[str, ...]) -> list[str]:
        "The move's row of the plan's CSV."
        return [getattr(self, column) or '' for column in columns]


@dataclass(frozen=True)
class Plan:
    "What a run's current decisions make of its data: the moves (refused ones among them), and the items left as is."
    run_id: str
    moves: list[Move]
    unchanged: int  # kept, or relabelled as the class whose folder already holds them

    @property
    def files(self) -> list[Move]: return [m for m in self.moves if m.root is not None]

    @property
    def refused(self) -> list[Move]: return [m for m in self.moves if m.refused]

    @property
    def roots(self) -> list[Path]: return list(dict.fromkeys(m.root for m in self.files))


@dataclass
class Journal:
    """What one `--apply` did under a data root: its moves in order, (source, destination) relative to `root`, and
    the folders it made, outermost first (the trash folder among them, when it made it)."""
    root: Path
    run_id: str
    moves: list[tuple[str, str]] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)

    @property
    def path(self) -> Path: return journal_path(self.root, self.run_id)

    def write(self) -> None:
        "Write the journal in one step (a reader finds the old one or the new one)."
        with writing(self.path, force=True) as tmp:
            tmp.write_text(json.dumps({'run': self.run_id, 'moves': self.moves, 'folders': self.folders}, indent=1))

    @classmethod
    def read(cls, root: Path, run_id: str) -> Journal | None:
        "The journal of run `run_id`'s cleanup under `root`, if one was applied; `OutputError` for a damaged one."
        path = journal_path(root, run_id)
        if not path.exists(): return None
        try:
            found = json.loads(path.read_text())
            moves = [(source, destination) for source, destination in found['moves']]
            folders = found['folders']
            if not all(isinstance(p, str) for p in [*folders, *(p for move in moves for p in move)]): raise TypeError
        except (OSError, ValueError, TypeError, KeyError):
            raise OutputError(f'{path} is not a journal fastwatch cleanup wrote: move its files back by hand') from None
        return cls(root, run_id, moves, folders)


def journal_path(root: Path, run_id: str) -> Path:
    "Where the journal of run `run_id`'s cleanup under `root` is kept."
    # Ids come from the store, where an imported snapshot may have put anything: only a plain one names a file.
    if not RUN_ID.fullmatch(run_id): raise UsageError(f'run id {run_id!r} cannot name a journal file')
    return root / TRASH / f'{run_id}.json'


def recorded_items(store: Store, run_id: str) -> dict[str, ItemsRow]:
    "The run's items rows by split; `UsageError` when it recorded none."
    rows = store.rows('items', run_id)
    if not rows: raise UsageError(f'run {run_id} recorded no items: train it with WatchCallback(dynamics=True)')
    return {row.split: row for row in rows}


def make_plan(store: Store, run_id: str) -> Plan:
    """The moves that run `run_id`'s current decisions make, each checked against the data as it is now;
    `UsageError` when the run recorded no items or has no decisions."""
    vocab = [str(c) for c in store.run(run_id).vocab or []]
    splits = recorded_items(store, run_id)
    decided = sorted(current(store.rows('decisions', run_id)).values(), key=lambda row: row.seq)
    if not decided: raise UsageError(f'no decisions for run {run_id}')
    moves, unchanged, taken = [], 0, set()
    for row in decided:
        move = None if row.action == 'keep' else _move(splits.get(row.split), row, vocab)
        if move is None:
            unchanged += 1
            continue
        if move.destination is not None and not move.refused:
            # Two files of one name relabelled into one folder: the second would land on the first.
            if (move.root, move.destination) in taken: move = replace(move, refused='another move goes there first')
            taken.add((move.root, move.destination))
        moves.append(move)
    return Plan(run_id, moves, unchanged)


def _move(items: ItemsRow | None, row: DecisionRow, vocab: list[str]) -> Move | None:
    "A decision's move, checked; None for a relabel as the class whose folder already holds the file."
    move = Move(row.split, row.item, row.action, row.label)
    if items is None: return replace(move, refused=f'the run recorded no {row.split} items')
    if items.root is None or items.files is None: return move  # not files: nothing to move
    root = Path(items.root)
    move = replace(move, root=root)
    if not _inside(root, row.item): return replace(move, refused=f'outside the data folder {root}')
    source = PurePosixPath(row.item)
    if row.action == 'delete': destination = PurePosixPath(TRASH) / source
    else:  # beside its class folder when it is in one (train/3/x.png -> train/7/x.png), else at the root's top
        folder = source.parent.parent if source.parent.name in vocab else PurePosixPath()
        destination = folder / row.label / source.name
    if destination == source: return None
    move = replace(move, destination=str(destination))
    if not _inside(root, destination): return replace(move, refused=f'{destination} is outside the data folder')
    names = items.names
    index = row.item_index if 0 <= row.item_index < len(names) and names[row.item_index] == row.item else (
        names.index(row.item) if row.item in names else None)
    if index is None or items.files[index] is None: return replace(move, refused='not a file the run recorded')
    try: info = (root / source).stat()
    except FileNotFoundError:
        return replace(move, refused='missing: moved or deleted since the run recorded it (a cleanup applied?)')
    except OSError as e: return replace(move, refused=e.strerror)
    if [info.st_size, info.st_mtime_ns] != items.files[index]:
        return replace(move, refused='changed since the run recorded it (its size or modification time differ)')
    if os.path.lexists(root / destination): return replace(move, refused=f'{destination} exists')
    return move


def _inside(root: Path, name: str | PurePosixPath) -> bool:
    "Whether `root/name` is under `root`, its links followed (an absolute name, `..` or a link may lead elsewhere)."
    relative = PurePosixPath(name)
    if relative.is_absolute() or '..' in relative.parts or not relative.parts: return False
    try: return (root / relative).resolve().is_relative_to(root.resolve())
    except (OSError, ValueError): return False  # a loop of links, a NUL in the name


def applied(run_id: str, roots: list[Path]) -> list[Journal]:
    "The journals of run `run_id`'s cleanups applied (and not undone) under `roots`."
    return [journal for root in roots if (journal := Journal.read(root, run_id)) is not None]


def apply_plan(plan: Plan) -> list[Journal]:
    """Make the plan's moves, root by root, and return their journals; `OutputError`, with nothing moved, when a move
    is refused or a cleanup of the run is already applied there. Each root's journal is written before its first
    move, with every move planned, so that a cleanup cut short names all it may have done; then with those done."""
    for journal in applied(plan.run_id, plan.roots):  # before the refusals: its moves are why most are refused
        raise OutputError(_already_applied(journal, 'nothing moved; --undo it first'))
    if plan.refused:
        raise OutputError(f"{_count(len(plan.refused), 'move')} of {len(plan.moves)} refused: nothing moved")
    journals = []
    for root in plan.roots:
        moves = [(m.source, m.destination) for m in plan.files if m.root == root]
        journal, done = Journal(root, plan.run_id, moves), []
        try:
            journal.folders = _make_folders(root, PurePosixPath(TRASH))
            journal.write()
            try:
                for source, destination in moves:
                    journal.folders += _make_folders(root, PurePosixPath(destination).parent)
                    _rename(root / source, root / destination)
                    done.append((source, destination))
            finally:
                journal.moves = done
                journal.write()
        except OSError as e:
            raise OutputError(f'{e.strerror or e}: {e.filename}; moved {len(done)} of the {len(moves)} files in '
                              f'{root}' + (': --undo moves them back' if done else '')) from None
        journals.append(journal)
    return journals


def undo_refusals(journal: Journal) -> list[str]:
    "Why moves of an applied cleanup cannot be taken back: a moved file gone, its first place taken."
    refused, root = [], journal.root
    for source, destination in journal.moves:
        if not (_inside(root, source) and _inside(root, destination)): reason = 'outside the data folder'
        elif not os.path.lexists(root / destination): reason = f'{destination} is missing'
        elif os.path.lexists(root / source): reason = f'{source} is taken'
        else: continue
        refused.append(f'refuse {destination} -> {source}  (undo): {reason}')
    return refused


def undo_journal(journal: Journal) -> None:
    """Move a cleanup's files back, last first, then remove its journal and the folders it made that are empty; on a
    failure the journal keeps the moves not yet taken back."""
    root = journal.root
    try:
        while journal.moves:
            source, destination = journal.moves[-1]
            (root / source).parent.mkdir(parents=True, exist_ok=True)
            _rename(root / destination, root / source)
            journal.moves.pop()
        journal.path.unlink()  # the journal, not data: it only says what the apply moved
    except OSError as e:
        if journal.moves: journal.write()
        raise OutputError(f'{e.strerror or e}: {e.filename}; {len(journal.moves)} files are left to move back, '
                          f'as {journal.path} says') from None
    for folder in reversed(journal.folders):
        try: (root / folder).rmdir()
        except OSError: pass  # not empty: it holds files the cleanup did not put there


def _make_folders(root: Path, folder: PurePosixPath) -> list[str]:
    "Make folder `root/folder` with its missing parents; the ones made, outermost first."
    missing = []
    while folder.parts and not (root / folder).exists():
        missing.append(folder)
        folder = folder.parent
    for made in reversed(missing): (root / made).mkdir()
    return [str(made) for made in reversed(missing)]


def _rename(source: Path, destination: Path) -> None:
    "Move a file, never over another (one may have come since the plan was checked)."
    if os.path.lexists(destination): raise FileExistsError(errno.EEXIST, 'a file came in the way', str(destination))
    os.rename(source, destination)


def plan_csv(plan: Plan) -> str:
    "The plan as CSV: for files, each move's source, destination and refusal; for other items, their ids and labels."
    columns = FILE_COLUMNS if plan.files else ROW_COLUMNS
    out = io.StringIO()
    writer = csv.writer(out, lineterminator='\n')
    writer.writerow(columns)
    writer.writerows(move.cells(columns) for move in plan.moves)
    return out.getvalue()


def _count(n: int, word: str) -> str: return f'{n} {word}' + ('' if n == 1 else 's')


def _summary(plan: Plan) -> str:
    files = plan.files
    kinds = ', '.join(f'{sum(m.action == action for m in files)} {action}' for action in ('relabel', 'delete'))
    parts = [f"{_count(len(files), 'move')} in {', '.join(map(str, plan.roots))} ({kinds})"]
    if len(files) < len(plan.moves): parts.append(f'{len(plan.moves) - len(files)} not files')
    if plan.unchanged: parts.append(f'{plan.unchanged} unchanged')
    return ', '.join(parts)


def cleanup(run: str,  # The run id
            store: str = None,  # Store path or URL (default: $FASTWATCH_STORE, then ./fastwatch.db)
            csv: str = None,  # Write the plan to this CSV file instead of printing its moves
            apply: bool = False,  # Make the moves (without it, nothing changes)
            undo: bool = False,  # Move back the files --apply moved
            ) -> None:
    "Carry out a run's decisions on its data: relabelled files into their class's folder, deleted ones into a trash."
    if apply and undo: raise UsageError('--apply and --undo do not go together: apply a plan, or undo one')
    if undo and csv: raise UsageError('--csv writes the plan to apply: it does not go with --undo')
    db = open_store(store, readonly=True)
    try:
        db.run(run)
        if undo: roots = list(dict.fromkeys(Path(r.root) for r in recorded_items(db, run).values() if r.root))
        else: plan = make_plan(db, run)
    finally: db.close()
    if undo: return _undo(run, roots)
    if csv is not None:
        with writing(csv, force=True) as tmp: tmp.write_text(plan_csv(plan))  # replaces a plan, never a folder
    if not plan.files and plan.moves:
        # Rows of a table, texts: their ids and new labels are all there is, for the owner's own code.
        if apply: raise UsageError(f"run {run}'s items are not files (rows of a table, texts): nothing to apply; "
                                   'without --apply the plan lists their ids and new labels')
        if csv is None: print(printable(plan_csv(plan)), end='')
        else: print(f'wrote the ids and new labels of {_count(len(plan.moves), "item")} to {csv}')
        return
    if not plan.moves:
        print(f'nothing to do: {plan.unchanged} kept, or already in their class folder')
        return
    journals = applied(run, plan.roots)
    if apply:
        if not journals:
            for move in plan.refused: print(printable(move.line()))
        made = apply_plan(plan)  # refuses an applied cleanup, or a refused move
        for move in plan.moves: print(printable(move.line()))
        print(printable(f"moved: {_summary(plan)}; journal {', '.join(str(j.path) for j in made)}: "
                        '--undo moves them back'))
        return
    for move in plan.refused if csv else plan.moves: print(printable(move.line()))  # else the moves are in the file
    for journal in journals: print(printable(f"note: {_already_applied(journal, '--undo moves its files back')}"))
    then = f'{_count(len(plan.refused), "refusal")}: --apply would move nothing' if plan.refused else \
        '--apply makes them' if plan.files else 'nothing to apply'
    print(printable(f'planned: {_summary(plan)}' + (f'; written to {csv}' if csv else '') + f'; {then}'))


def _already_applied(journal: Journal, then: str) -> str:
    return f'the cleanup of run {journal.run_id} is already applied in {journal.root} ({journal.path}): {then}'


def _undo(run_id: str, roots: list[Path]) -> None:
    journals = applied(run_id, roots)
    if not journals:
        raise UsageError(f'nothing to undo: no cleanup of run {run_id} is applied'
                         + (f" in {', '.join(map(str, roots))}" if roots else ' (its items are not files)'))
    refused = [line for journal in journals for line in undo_refusals(journal)]
    if refused:
        for line in refused: print(printable(line))
        raise OutputError(f'{_count(len(refused), "move")} of the cleanup cannot be taken back: nothing moved')
    for journal in journals:
        moves = list(journal.moves)
        undo_journal(journal)
        for source, destination in reversed(moves): print(printable(f'move {destination} -> {source}  (undo)'))
        print(printable(f'undone: {_count(len(moves), "file")} moved back in {journal.root}; journal removed'))
