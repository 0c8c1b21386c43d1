"""Shared fixtures: the digits image folder, real short trainings recorded into real stores, a PostgreSQL URL."""
from __future__ import annotations

import os
import socket
import uuid
import warnings

import pytest
from helpers import train
from hypothesis import settings

# In CI the examples hypothesis tries are the same on every run (a red CI is never a new random example);
# elsewhere each run explores new ones.
settings.register_profile('ci', derandomize=True)
if os.environ.get('CI'): settings.load_profile('ci')

POSTGRES_URL = os.environ.get('FASTWATCH_TEST_POSTGRES',
                              'postgresql://fastwatch:fastwatch@127.0.0.1:5432/fastwatch_test')


@pytest.fixture(scope='session')
def digits_path(tmp_path_factory):
    "scikit-learn's digits as an image folder: valid/<digit>/*.png and train/<digit>/*.png."
    from fastwatch.demo.digits import digits_folder
    return digits_folder(tmp_path_factory.mktemp('digits'))


@pytest.fixture(scope='session')
def few_digits(tmp_path_factory):
    "240 digits: 50 to validate, 190 to train on in 11 batches of 16 an epoch (fastai drops the last, partial one)."
    from fastwatch.demo.digits import digits_folder
    return digits_folder(tmp_path_factory.mktemp('few-digits'), per_class=24)


@pytest.fixture
def start_training(few_digits, tmp_path):
    "Start trainings in child processes (`child_training.Training`); they are killed if left running."
    from child_training import Training
    started = []

    def start(location, **kwargs) -> Training:
        started.append(Training(few_digits, location, tmp_path, **kwargs))
        return started[-1]
    yield start
    for training in started:
        if training.proc.poll() is None:
            training.proc.kill()
            training.proc.wait()


@pytest.fixture(scope='session')
def dls(digits_path):
    from fastwatch.demo.digits import digits_dls
    return digits_dls(digits_path)


@pytest.fixture(scope='session')
def trained(dls, tmp_path_factory):
    "A finished run: `fine_tune(2)` (1 frozen + 2 unfrozen epochs) recorded into a SQLite store."
    path = tmp_path_factory.mktemp('trained') / 'fastwatch.db'
    learn = train(dls, path, epochs=2, name='digits', config={'purpose': 'tests'})
    from fastwatch import open_store
    store = open_store(path)
    # What fastai's Recorder kept of the second fit, copied now: a later validate() or get_preds() resets it.
    recorder = learn.recorder
    recorded = {'values': [list(v) for v in recorder.values], 'losses': [float(loss) for loss in recorder.losses],
                'lrs': list(recorder.lrs), 'metric_names': list(recorder.metric_names)}
    return {'path': path, 'store': store, 'run_id': store.runs()[0].id, 'learn': learn, 'recorder': recorded}


@pytest.fixture
def postgres_url():
    "A fresh, empty PostgreSQL schema for one test (the server comes from `.ci/services`)."
    sqlalchemy = pytest.importorskip('sqlalchemy')
    engine = sqlalchemy.create_engine(POSTGRES_URL.replace('postgresql://', 'postgresql+psycopg://'))
    schema = f'test_{uuid.uuid4().hex[:12]}'
    try:
        with engine.begin() as conn: conn.exec_driver_sql(f'CREATE SCHEMA {schema}')
    except sqlalchemy.exc.OperationalError as e:
        if os.environ.get('CI'): raise
        pytest.skip(f'no PostgreSQL server (run .ci/services): {e}')
    yield f'{POSTGRES_URL}?options=-csearch_path%3D{schema}'
    with engine.begin() as conn: conn.exec_driver_sql(f'DROP SCHEMA {schema} CASCADE')
    engine.dispose()


@pytest.fixture
def silent_port():
    "A TCP port whose connections are made (the kernel's backlog) but never answered, like a server that hangs."
    with socket.socket() as server:
        server.bind(('127.0.0.1', 0))
        server.listen(64)
        yield server.getsockname()[1]


@pytest.fixture(autouse=True)
def _no_stray_store(tmp_path, monkeypatch):
    "Tests that forget `store=` must not write ./fastwatch.db into the repository."
    monkeypatch.setenv('FASTWATCH_STORE', str(tmp_path / 'default.db'))
    warnings.filterwarnings('ignore', message='.*torch.jit.script.*')


@pytest.fixture(scope='module')
def browser():
    "Debian's chromium, headless, for one test module."
    from browser import launch
    playwright = pytest.importorskip('playwright.sync_api').sync_playwright().start()
    chromium = launch(playwright)
    yield chromium
    chromium.close()
    playwright.stop()


@pytest.fixture
def page(browser):
    "A fresh page (1280 x 900) that records and dismisses the dialogs it opens."
    context = browser.new_context(viewport={'width': 1280, 'height': 900})
    page = context.new_page()
    page.dialogs = []
    page.on('dialog', lambda dialog: (page.dialogs.append(dialog.message), dialog.dismiss()))
    yield page
    context.close()
