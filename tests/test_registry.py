"""The registry of a run's tables (`fastwatch.store.tables`) is the one place that knows them: a table added to it
in a copy of the package, with its migration and no other edit, is recorded, bounded while the store fails,
published, followed, snapshotted, imported and exported like every other table."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from browser import self_signed_certificate
from helpers import add_empty_run

ROOT = Path(__file__).parent.parent

NEW_TABLE = '''

notes = run_table(
    'notes', _key('seq'),
    Column('text', Text, nullable=False),
    Column('tags', Text),  # a list
    cursor='seq', json_columns=('tags',))
'''

# Runs in the copy. Every check's outcome is printed as JSON: {check: what it found}.
SCRIPT = r'''
import http.server, json, ssl, sys, threading, time, warnings
from functools import partial
from pathlib import Path
import fastwatch
from fastwatch import open_store
from fastwatch.record.writer import Writer
from fastwatch.remote.protocol import Publisher, follow
from fastwatch.share.exports import export, import_snapshot
from fastwatch.store import RunInfo, RunRecord
from fastwatch.store.snapshot import write_snapshot
from fastwatch.store.tables import RUN_TABLES, notes

package, old_store, work, cert, key = sys.argv[1:]
work = Path(work)
found = {'package': fastwatch.__file__.startswith(package), 'registered': 'notes' in RUN_TABLES}
NOTES = [notes.Row(run_id='withnotes', seq=i, text=f'note {i}', tags=['a', str(i)]) for i in range(10)]

def start(writer, run_id):
    writer.start_run(RunRecord.new(run_id, 'notes', RunInfo(), {}, None, time.time()))

def notes_of(location, run_id='withnotes'):
    return [list(row) for row in open_store(location, readonly=True).rows('notes', run_id)]

# Recorded: through the writer, into a store of the older schema, which opening upgrades.
writer = Writer.for_store(old_store)
start(writer, 'withnotes')
writer.add_rows('notes', NOTES)
writer.end_run('withnotes', 'finished')
assert writer.flush(timeout=60)
found['recorded'] = notes_of(old_store)
found['counts'] = open_store(old_store, readonly=True).counts('withnotes')

# Bounded: while the store cannot be written, the table keeps its newest rows up to its bound.
blocked = work / 'blocked'
blocked.write_text('a file where the store folder should be')
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    failing = Writer.for_store(blocked / 'store.db')
    failing.bounds['notes'] = 3
    start(failing, 'withnotes')
    failing.add_rows('notes', NOTES)
    failing.end_run('withnotes', 'finished')
    deadline = time.monotonic() + 60
    while not failing.failing and time.monotonic() < deadline: time.sleep(0.05)
    failing.flush(timeout=0)  # one more tick, which bounds the buffer
    while failing._queue and time.monotonic() < deadline: time.sleep(0.05)
    blocked.unlink()
    blocked.mkdir()
    found['bounded_flushed'] = failing.flush(timeout=60, through_failures=True)
found['bounded'] = notes_of(blocked / 'store.db')
found['bounded_lost'] = open_store(blocked / 'store.db', readonly=True).run('withnotes').lost_rows

# Published, then followed over https.
site = work / 'site'
site.mkdir()
handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
handler.log_message = lambda *args: None
server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
threading.Thread(target=server.serve_forever, daemon=True).start()
url = f'https://127.0.0.1:{server.server_address[1]}/'
publisher = Publisher(old_store, 'withnotes', str(site), every=1, url=url)
found['published'] = publisher.publish(last=True) and publisher.done
found['followed'] = [list(row) for row in follow(publisher.url, work).rows('notes', 'withnotes')]

# Snapshotted, imported, exported.
store = open_store(old_store, readonly=True)
write_snapshot(store, ['withnotes'], work / 'snapshot.fastwatch')
found['snapshotted'] = notes_of(work / 'snapshot.fastwatch')
import_snapshot(str(work / 'snapshot.fastwatch'), store=str(work / 'imported.db'))
found['imported'] = notes_of(work / 'imported.db')
export('withnotes', Output=str(work / 'exported.fastwatch'), store=old_store)
found['exported'] = notes_of(work / 'exported.fastwatch')
print(json.dumps(found))
'''


@pytest.fixture
def with_a_new_table(tmp_path) -> Path:
    "A copy of the package whose registry has one more table, `notes`, and whose migrations create it."
    copy = tmp_path / 'copy'
    shutil.copytree(ROOT / 'fastwatch', copy / 'fastwatch', ignore=shutil.ignore_patterns('__pycache__'))
    tables, schema = copy / 'fastwatch' / 'store' / 'tables.py', copy / 'fastwatch' / 'store' / 'schema.py'
    tables.write_text(tables.read_text() + NEW_TABLE)
    text = schema.read_text()
    version = 'SCHEMA_VERSION = max(MIGRATIONS) + 1'
    assert version in text and 'from .tables import (\n' in text
    schema.write_text(text.replace('from .tables import (\n', 'from .tables import (\n    notes,\n')
                      .replace(version, f'MIGRATIONS[max(MIGRATIONS) + 1] = AddTables((notes,))\n{version}'))
    return copy


def test_a_table_added_to_the_registry_goes_everywhere_with_no_other_edit(with_a_new_table, tmp_path):
    old_store = tmp_path / 'old.db'
    add_empty_run(old_store, 'before')  # a store of today's schema, which the copy upgrades
    cert, key = self_signed_certificate(tmp_path)
    env = {**os.environ, 'PYTHONPATH': str(with_a_new_table), 'SSL_CERT_FILE': str(cert),
           'FASTWATCH_ALLOW_PRIVATE_URLS': '1'}
    done = subprocess.run([sys.executable, '-c', SCRIPT, str(with_a_new_table), str(old_store), str(tmp_path),
                           str(cert), str(key)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.splitlines()[-1])
    notes = [['withnotes', i, f'note {i}', ['a', str(i)]] for i in range(10)]
    assert found['package'] and found['registered']
    assert found['recorded'] == notes and found['counts']['notes'] == 10
    assert found['bounded_flushed'] and found['bounded'] == notes[-3:] and found['bounded_lost'] == 7
    assert found['published'] and found['followed'] == notes
    assert found['snapshotted'] == found['imported'] == found['exported'] == notes
