"""The registry of a run's tables and the typed run record: their encodings, without a database."""
from __future__ import annotations

import json

from fastwatch.store.records import ENDED, RUN_ID, RunInfo, RunRecord, encode_fields
from fastwatch.store.tables import RUN_TABLES, batches, epochs


def test_every_run_table_has_a_typed_row_of_its_columns_and_a_cursor():
    for name, entry in RUN_TABLES.items():
        assert entry.name == name and entry.Row._fields == tuple(entry.table.c.keys())
        assert entry.key[0] == 'run_id' and entry.cursor in entry.Row._fields
        assert set(entry.json_columns) <= set(entry.Row._fields) and entry.bound > 0


def test_json_columns_are_encoded_for_the_database_and_decoded_back():
    row = epochs.Row('r', 0, 0, True, 9, 1.5, 1.4, {'error_rate': 0.25, 'dice': [1, 2]}, 3.0, 10.0)
    [stored] = epochs.encode([row])
    assert json.loads(stored[7]) == row.metrics and stored[:7] == row[:7]
    assert epochs.decode(stored) == row
    no_lrs = batches.Row('r', 0, 0, 0, False, 1.0, 1.0, 1e-3, 0.9, 1.0, None)
    assert batches.encode([no_lrs]) == [tuple(no_lrs)] and batches.decode(tuple(no_lrs)) == no_lrs


def test_a_run_record_keeps_its_info_and_what_it_does_not_know_of_older_or_newer_stores():
    info = RunInfo.from_dict({'model': 'Sequential', 'fits': [{'fit': 0, 'n_epoch': 2, 'extra': 1}], 'new': 'x'})
    assert info.model == 'Sequential' and info.fits[0].n_epoch == 2 and info.metric_names == []
    record = RunRecord.new('abc', 'name', info, {'lr': 0.1}, ['a', 'b'], now=5.0)
    stored = record.row()
    assert json.loads(stored['info'])['fits'][0]['n_epoch'] == 2 and json.loads(stored['config']) == {'lr': 0.1}
    assert (record.status, record.state, record.ended) == ('running', 'live', False)
    assert encode_fields({'info': info, 'status': 'finished'})['status'] == 'finished'
    assert 'finished' in ENDED and RUN_ID.fullmatch('k3v7q2m4x9abc') and not RUN_ID.fullmatch('../x')
