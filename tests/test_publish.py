"""Publishing a run: to a local folder served over https and to a real WebDAV server, what a tick uploads, failing
targets, and the `fastwatch publish` and `share --published` commands. Followers are `remote.protocol`'s too."""
from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest
from browser import self_signed_certificate
from fastai.torch_core import set_seed
from helpers import batch_row, start_synthetic_run, train, wait_for
from storage_server import dav_server

from fastwatch import open_store
from fastwatch.demo.digits import digits_dls
from fastwatch.record.network import PublishListener
from fastwatch.record.writer import Writer
from fastwatch.remote.protocol import Publisher, follow, public_url
from fastwatch.store import RUN_TABLES

TABLES = ('batches', 'epochs', 'confusion', 'top_losses')


@pytest.fixture(scope='module')
def certificate(tmp_path_factory):
    return self_signed_certificate(tmp_path_factory.mktemp('tls'))


@pytest.fixture
def dav(tmp_path, certificate, monkeypatch):
    "A WebDAV server over https on 127.0.0.1, trusted and allowed as a follower's source."
    monkeypatch.setenv('SSL_CERT_FILE', str(certificate[0]))
    monkeypatch.setenv('FASTWATCH_ALLOW_PRIVATE_URLS', '1')
    with dav_server(tmp_path / 'site', certificate) as server: yield server


def webdav(server) -> str: return server.url.replace('https://', 'webdav+https://') + 'runs'


def same_rows(source, mirror, run_id: str) -> None:
    "The mirror holds exactly the source's rows of the run."
    assert mirror.counts(run_id) == source.counts(run_id)
    assert mirror.batches(run_id) == source.batches(run_id)
    assert mirror.epochs(run_id) == source.epochs(run_id)
    assert mirror.alerts(run_id) == source.alerts(run_id)
    for epoch in [e.epoch for e in source.epochs(run_id)]:
        assert mirror.top_losses(run_id, epoch) == source.top_losses(run_id, epoch)
        a, b = mirror.confusion(run_id, epoch), source.confusion(run_id, epoch)
        assert (a is None) == (b is None) and (a is None or str(a) == str(b))
    assert mirror.batches_downsampled(run_id, n=50) == source.batches_downsampled(run_id, n=50)
    for key in ('name', 'status', 'error', 'created_at', 'info', 'config', 'vocab', 'lost_rows'):
        assert getattr(mirror.run(run_id), key) == getattr(source.run(run_id), key)
    for table in RUN_TABLES:  # every row of every run table, as stored
        assert mirror.rows(table, run_id) == source.rows(table, run_id), table


def publisher_of(learn) -> Publisher:
    "The publisher a learner's WatchCallback gave its writer (a listener until its run is published)."
    return next(h.publisher for h in learn.watch.writer.listeners if isinstance(h, PublishListener))


def test_each_tick_uploads_what_is_new_not_the_whole_run(tmp_path, dav):
    "A long synthetic run through the writer: every tick uploads about the same bytes while the run grows 40-fold."
    path, run_id, per_tick, ticks = tmp_path / 'store.db', 'longsyntheticrun', 2000, 40
    writer = Writer(f'sqlite:///{path}')
    start_synthetic_run(writer, run_id, 'long')
    folder = dav.folder / 'runs'
    publisher = Publisher(str(path), run_id, str(folder), every=1, url=dav.url + 'runs/')
    landed = []  # bytes of the files that each tick wrote into the served folder
    for tick in range(ticks):
        for step in range(tick * per_tick, (tick + 1) * per_tick):
            writer.add_batch(batch_row(run_id, step, 1 / (step + 1), epoch=tick, smooth_loss=0.5))
        if tick == ticks - 1: writer.end_run(run_id, 'finished')
        assert writer.flush(timeout=30)
        before = {p: p.stat().st_mtime_ns for p in (folder / run_id).glob('*')} if tick else {}
        assert publisher.publish(last=tick == ticks - 1)
        landed.append(sum(p.stat().st_size for p in (folder / run_id).glob('*')
                          if before.get(p) != p.stat().st_mtime_ns))
    assert publisher.uploads == landed and publisher.done
    stored = sum(p.stat().st_size for p in tmp_path.glob('store.db*'))
    assert stored > 20 * max(landed[1:])  # the store grew far beyond what any tick uploads
    assert max(landed[1:]) < 1.2 * min(landed[1:])  # the same rows a tick: the same bytes, from first to last
    mirror = follow(publisher.url, tmp_path / 'downloads')
    same_rows(open_store(path, readonly=True), mirror, run_id)
    assert mirror.run(run_id).state == 'finished'


def test_a_training_published_to_webdav_is_followed_with_every_row(dls, tmp_path, dav, capsys):
    learn = train(dls, tmp_path / 'store.db', epochs=1, quiet=False, name='dav', publish=webdav(dav),
                  publish_every=1)
    run_id = learn.watch.run_id
    printed = capsys.readouterr().out
    assert f'{dav.url}runs/{run_id}/' in printed.replace('%2F', '/').replace('%3A', ':')
    assert 'mybinder.org/v2/gh/fastwatch/fastwatch/main' in printed and f'run%3D{run_id}' in printed
    wait_for(lambda: not learn.watch.writer.listeners)  # published whole, from a thread of its own: it is gone
    mirror = follow(f'{dav.url}runs/{run_id}/index.json', tmp_path / 'downloads')
    same_rows(open_store(tmp_path / 'store.db', readonly=True), mirror, run_id)
    index = json.loads((dav.folder / 'runs' / run_id / 'index.json').read_text())
    assert index['status'] == 'finished' and index['segments'] >= 2  # at least each epoch's end and the fit's
    writes = [r for r in dav.app.requests if r[0] == 'PUT']
    assert all('.partial' in r[1] for r in writes)  # every file is uploaded under another name, then moved


def seeded(digits_path):
    "The digits' DataLoaders after seeding every generator: trainings from here give the same results."
    set_seed(7)
    return digits_dls(digits_path)


@pytest.fixture(scope='module')
def unpublished(digits_path, tmp_path_factory):
    "What a training records with no publishing, for the same seed."
    learn = train(seeded(digits_path), tmp_path_factory.mktemp('plain') / 'store.db', epochs=1)
    return [list(v) for v in learn.recorder.values]


@pytest.mark.parametrize('failure', ['stopped', 'error', 'readonly'])
def test_a_failing_target_costs_one_warning_and_catches_up(digits_path, tmp_path, dav, unpublished, failure):
    if failure == 'stopped': dav.stop()
    else: dav.app.mode = failure
    dls = seeded(digits_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        learn = train(dls, tmp_path / 'store.db', epochs=1, publish=webdav(dav), publish_every=1)
        publisher = publisher_of(learn)
        wait_for(lambda: publisher.failures)  # uploads fail on a thread of their own, while training goes on
    messages = [str(w.message) for w in caught if 'fastwatch' in str(w.message)]
    assert len([m for m in messages if 'cannot publish' in m]) == 1, messages
    assert [list(v) for v in learn.recorder.values] == unpublished  # training went on, unchanged
    run_id = learn.watch.run_id
    assert not publisher.done and not (dav.folder / 'runs' / run_id / 'index.json').exists()
    if failure == 'stopped': dav.start()
    else: dav.app.mode = None
    wait_for(lambda: publisher.done)  # the writer thread retries, with backoff, and catches up
    mirror = follow(f'{dav.url}runs/{run_id}/', tmp_path / 'downloads')
    same_rows(open_store(tmp_path / 'store.db', readonly=True), mirror, run_id)
    assert mirror.run(run_id).state == 'finished'
    assert len([m for m in messages if 'cannot publish' in m]) == 1


def test_publish_command_publishes_a_recorded_run_and_share_prints_its_link(trained, tmp_path, dav):
    run_id, folder = trained['run_id'], dav.folder / 'published'
    command = [sys.executable, '-c', 'from fastwatch.cli import main; main()']
    out = subprocess.run([*command, 'publish', run_id, '--to', str(folder), '--url', dav.url + 'published/',
                          '--store', str(trained['path'])], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert 'mybinder.org' in out.stdout and f'published 1 segments of run {run_id}' in out.stdout
    mirror = follow(f'{dav.url}published/{run_id}/', tmp_path / 'downloads')
    same_rows(trained['store'], mirror, run_id)  # thumbnails and confusion matrices too
    out = subprocess.run([*command, 'share', run_id, '--published', f'{dav.url}published/{run_id}/'],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    link = out.stdout.splitlines()[1]
    assert link.startswith('https://mybinder.org/v2/gh/fastwatch/fastwatch/main?urlpath=voila%2Frender%2F')
    assert f'run%3D{run_id}' in link and '127.0.0.1%253A' in link
    out = subprocess.run([*command, 'publish', run_id], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and out.stderr.count('\n') == 1 and '--to' in out.stderr


def test_public_urls_of_the_storage_fastwatch_knows():
    run = 'k3v7q2m4x9abc'
    assert public_url('s3://bucket/runs/', run) == f'https://bucket.s3.amazonaws.com/runs/{run}/'
    assert public_url('gs://bucket', run) == f'https://storage.googleapis.com/bucket/{run}/'
    assert (public_url('hf://datasets/me/watch/runs', run)
            == f'https://huggingface.co/datasets/me/watch/resolve/main/runs/{run}/')
    assert (public_url('hf://datasets/me/watch@live', run)
            == f'https://huggingface.co/datasets/me/watch/resolve/live/{run}/')
    assert public_url('webdav+https://u:secret@dav.example.org/x', run) == f'https://dav.example.org/x/{run}/'
    assert public_url('/some/folder', run) is None


@pytest.mark.parametrize('kwargs, message', [
    ({'publish': 'nosuchfs://bucket'}, 'cannot publish to nosuchfs://'),
    ({'publish': 's3://bucket', 'publish_every': 0}, 'publish_every must be a positive number'),
])
def test_bad_publish_arguments_are_one_clear_error(kwargs, message):
    from fastwatch import WatchCallback
    with pytest.raises(ValueError, match=message): WatchCallback(**kwargs)
