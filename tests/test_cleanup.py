"""`fastwatch cleanup`: a real run's decisions carried out on the data it trained on, as a plan, applied and undone,
and refused whole when a single move could lose or overwrite a file."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastai.tabular.all import CategoryBlock, Normalize, RandomSplitter, TabularDataLoaders, range_of, tabular_learner
from helpers import add_empty_run, changes, cli, hashes, train
from sklearn.datasets import load_wine

from fastwatch import WatchCallback, open_store
from fastwatch.demo.digits import digits_dls, digits_folder
from fastwatch.store.decisions import decide

TRASH = '.fastwatch-trash'


def folders(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob('*') if p.is_dir()}


def one_line_error(status: int, err: str, message: str) -> None:
    assert status == 1 and len(err.strip().splitlines()) == 1, err
    assert err.startswith('fastwatch cleanup: ') and message in err, err


def moves(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith('move ')]


@pytest.fixture
def run(tmp_path):
    """A real training on a copy of the digits of our own (files to move), and decisions on its items: a relabel,
    a delete, a keep, and a relabel taken back."""
    root = digits_folder(tmp_path / 'digits', per_class=24).resolve()
    location = tmp_path / 'runs.db'
    train(digits_dls(root), location, epochs=1)
    store = open_store(location)
    run_id = store.runs()[0].id
    items = {row.split: row for row in store.rows('items', run_id)}
    assert items['train'].root == str(root) and items['train'].files is not None
    train_names, valid_names = items['train'].names, items['valid'].names
    relabelled, kept, undone = train_names[0], train_names[1], train_names[2]
    deleted = valid_names[0]
    current_class = Path(relabelled).parent.name
    label = str((int(current_class) + 3) % 10)

    def on(split: str, name: str, action: str, label: str | None = None):
        names = items[split].names  # a name the run never had (one made to escape the root) takes item 0's index
        return decide(store, run_id, split, names.index(name) if name in names else 0, name, action, label)
    on('train', relabelled, 'relabel', label)
    on('valid', deleted, 'delete')
    on('train', kept, 'keep')
    on('train', undone, 'delete')
    on('train', undone, 'undo')
    return SimpleNamespace(
        root=root, location=str(location), store=store, run_id=run_id, on=on, label=label,
        relabelled=relabelled, relabelled_to=str(Path(relabelled).parent.parent / label / Path(relabelled).name),
        deleted=deleted, deleted_to=f'{TRASH}/{deleted}')


def cleanup(capsys, run, *options: str) -> tuple[int, str, str]:
    return cli(capsys, 'cleanup', run.run_id, '--store', run.location, *options)


def test_the_plan_names_exactly_the_decided_files_and_changes_nothing(capsys, run):
    before = hashes(run.root)
    status, out, err = cleanup(capsys, run)
    assert status == 0 and err == ''
    assert moves(out) == [f'move {run.relabelled} -> {run.relabelled_to}  (relabel as {run.label})',
                          f'move {run.deleted} -> {run.deleted_to}  (delete)']
    assert out.splitlines()[-1] == (f'planned: 2 moves in {run.root} (1 relabel, 1 delete), 1 unchanged; '
                                    '--apply makes them')
    assert changes(before, hashes(run.root)) == [] and not (run.root / TRASH).exists()


def test_csv_holds_the_plan(capsys, run, tmp_path):
    before = hashes(run.root)
    plan = tmp_path / 'plan.csv'
    status, out, err = cleanup(capsys, run, '--csv', str(plan))
    assert status == 0 and err == '' and moves(out) == []  # the moves are in the file
    assert f'written to {plan}' in out
    with open(plan, newline='') as f: rows = list(csv.DictReader(f))
    assert rows == [
        {'split': 'train', 'item': run.relabelled, 'action': 'relabel', 'label': run.label,
         'source': run.relabelled, 'destination': run.relabelled_to, 'refused': ''},
        {'split': 'valid', 'item': run.deleted, 'action': 'delete', 'label': '',
         'source': run.deleted, 'destination': run.deleted_to, 'refused': ''}]
    assert changes(before, hashes(run.root)) == []


def test_apply_moves_exactly_the_decided_files_and_undo_puts_every_byte_back(capsys, run):
    before, before_folders = hashes(run.root), folders(run.root)
    status, out, err = cleanup(capsys, run, '--apply')
    assert status == 0 and err == '', err
    journal = f'{TRASH}/{run.run_id}.json'
    assert len(moves(out)) == 2 and f'journal {run.root / journal}' in out.splitlines()[-1]
    after = hashes(run.root)
    assert changes(before, after) == sorted([run.relabelled, run.relabelled_to, run.deleted, run.deleted_to, journal])
    assert after[run.relabelled_to] == before[run.relabelled] and after[run.deleted_to] == before[run.deleted]
    assert json.loads((run.root / journal).read_text())['moves'] == [[run.relabelled, run.relabelled_to],
                                                                      [run.deleted, run.deleted_to]]

    # A second apply does not move anything twice: the journal says the cleanup is applied.
    status, out, err = cleanup(capsys, run, '--apply')
    one_line_error(status, err, 'already applied')
    assert out == '' and hashes(run.root) == after
    status, out, err = cleanup(capsys, run)  # the plan says so too, and why each move could not be made again
    assert status == 0 and 'note: the cleanup of run' in out and '2 refusals: --apply would move nothing' in out

    status, out, err = cleanup(capsys, run, '--undo')
    assert status == 0 and err == '', err
    assert moves(out) == [f'move {run.deleted_to} -> {run.deleted}  (undo)',
                          f'move {run.relabelled_to} -> {run.relabelled}  (undo)']
    assert hashes(run.root) == before and folders(run.root) == before_folders  # no trash, no new class folder
    one_line_error(*cleanup(capsys, run, '--undo')[::2], 'nothing to undo')

    status, out, err = cleanup(capsys, run, '--apply')  # applied again once undone: the same moves
    assert status == 0 and changes(before, hashes(run.root)) == sorted(
        [run.relabelled, run.relabelled_to, run.deleted, run.deleted_to, journal])


def test_undo_refuses_when_a_moved_file_is_gone_or_its_place_taken(capsys, run):
    assert cleanup(capsys, run, '--apply')[0] == 0
    (run.root / run.relabelled).write_bytes(b'a new file in the old place')
    os.rename(run.root / run.deleted_to, run.root.parent / 'elsewhere.png')
    applied = hashes(run.root)
    status, out, err = cleanup(capsys, run, '--undo')
    one_line_error(status, err, '2 moves of the cleanup cannot be taken back: nothing moved')
    assert out.splitlines() == [f'refuse {run.relabelled_to} -> {run.relabelled}  (undo): {run.relabelled} is taken',
                                f'refuse {run.deleted_to} -> {run.deleted}  (undo): {run.deleted_to} is missing']
    assert hashes(run.root) == applied


def outside_root(run) -> str:
    (run.root.parent / 'outside.png').write_bytes(b'not part of the data')
    run.on('train', '../outside.png', 'delete')
    return '../outside.png'


def link_out_of_root(run) -> str:
    (run.root.parent / 'outside.png').write_bytes(b'not part of the data')
    link = Path(run.relabelled).parent / 'link.png'
    (run.root / link).symlink_to(run.root.parent / 'outside.png')
    run.on('train', str(link), 'delete')
    return str(link)


def modified_since_the_run(run) -> str:
    path = run.root / run.relabelled
    path.write_bytes(path.read_bytes() + b'\0')
    return run.relabelled


def destination_taken(run) -> str:
    (run.root / run.relabelled_to).write_bytes(b'already there')
    return run.relabelled


def missing(run) -> str:
    os.rename(run.root / run.deleted, run.root.parent / 'moved-away.png')
    return run.deleted


@pytest.mark.parametrize('make, reason', [
    (outside_root, 'outside the data folder'),
    (link_out_of_root, 'outside the data folder'),
    (modified_since_the_run, 'changed since the run recorded it'),
    (destination_taken, 'exists'),
    (missing, 'missing: moved or deleted since the run recorded it'),
])
def test_one_refused_move_stops_them_all(capsys, run, make, reason):
    item = make(run)
    before, outside = hashes(run.root), hashes(run.root.parent)
    status, out, err = cleanup(capsys, run)
    assert status == 0 and f'refuse {item}  (' in out and reason in out
    assert '1 refusal: --apply would move nothing' in out.splitlines()[-1]

    status, out, err = cleanup(capsys, run, '--apply')
    one_line_error(status, err, 'refused: nothing moved')
    [line] = out.splitlines()
    assert line.startswith(f'refuse {item}  (') and reason in line
    assert hashes(run.root) == before and changes(outside, hashes(run.root.parent)) == []


def test_errors_are_one_clear_line(capsys, run):
    one_line_error(*cli(capsys, 'cleanup', 'nosuchrun', '--store', run.location)[::2], "no run 'nosuchrun'")
    one_line_error(*cleanup(capsys, run, '--apply', '--undo')[::2], '--apply and --undo do not go together')
    for row in run.store.rows('decisions', run.run_id):
        if row.action != 'undo': run.on(row.split, row.item, 'undo')
    one_line_error(*cleanup(capsys, run)[::2], f'no decisions for run {run.run_id}')

    add_empty_run(run.location, 'older')  # as a run recorded before fastwatch recorded items
    one_line_error(*cli(capsys, 'cleanup', 'older', '--store', run.location)[::2],
                   'run older recorded no items: train it with WatchCallback(dynamics=True)')


def test_a_tabular_run_gets_its_row_ids_and_new_labels(capsys, tmp_path):
    data = load_wine(as_frame=True)
    frame = data.frame.assign(target=data.target.map(dict(enumerate(data.target_names))))
    dls = TabularDataLoaders.from_df(frame, y_names='target', cont_names=list(data.feature_names), procs=[Normalize],
                                     y_block=CategoryBlock, valid_idx=RandomSplitter(0.3, seed=0)(range_of(frame))[1],
                                     bs=32, num_workers=0)
    location = tmp_path / 'wine.db'
    learn = tabular_learner(dls, layers=[16], cbs=WatchCallback(store=location))
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    store = open_store(location)
    run_id = store.runs()[0].id
    items = {row.split: row for row in store.rows('items', run_id)}
    assert items['valid'].root is None and items['valid'].files is None
    relabelled, deleted = items['valid'].names[3], items['train'].names[5]
    assert int(relabelled) in frame.index and int(deleted) in frame.index  # the DataFrame's row labels
    decide(store, run_id, 'valid', 3, relabelled, 'relabel', 'class_2')
    decide(store, run_id, 'train', 5, deleted, 'delete')

    table = f'split,item,action,label\nvalid,{relabelled},relabel,class_2\ntrain,{deleted},delete,\n'
    status, out, err = cli(capsys, 'cleanup', run_id, '--store', str(location))
    assert status == 0 and err == '' and out == table
    plan = tmp_path / 'rows.csv'
    status, out, err = cli(capsys, 'cleanup', run_id, '--store', str(location), '--csv', str(plan))
    assert status == 0 and plan.read_text() == table and out == f'wrote the ids and new labels of 2 items to {plan}\n'
    one_line_error(*cli(capsys, 'cleanup', run_id, '--store', str(location), '--apply')[::2],
                   'items are not files (rows of a table, texts): nothing to apply')
