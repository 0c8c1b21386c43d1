"""A page's query string and the links the dashboard and `fastwatch share` make: pure functions, no server."""
from __future__ import annotations

import filecmp
from pathlib import Path

import pytest

from fastwatch.errors import FastwatchError, QueryError
from fastwatch.links import binder_url, binder_url_from_env, dashboard_query, local_url, voila_urlpath
from fastwatch.remote.protocol import is_published, public_url
from fastwatch.view.page import parse_query
from fastwatch.view.panels.share import share_url

ROOT = Path(__file__).parents[2]


def test_parse_query():
    assert parse_query('run=abc&store=runs%2Fa.fastwatch&token=t') == {'run': 'abc', 'store': 'runs/a.fastwatch'}
    assert parse_query('') == parse_query(None) == {}
    with pytest.raises(QueryError): parse_query('run=')


@pytest.mark.parametrize('query, message', [
    ('colour=red', 'the dashboard takes run=, store= and view='), ('view=table', 'view= takes runs'),
    ('run=a&run=b', 'given 2 times'), ('store=', 'is empty'),
    ('run=../x', 'takes a run id'), ('store=a%01b', 'control character'), ('run=' + 'a' * 5000, 'longer than'),
])
def test_a_query_the_dashboard_cannot_follow_is_one_line_that_says_why(query, message):
    with pytest.raises(QueryError, match=message) as error: parse_query(query)
    assert isinstance(error.value, FastwatchError) and '\n' not in str(error.value)


def test_share_links():
    assert local_url('http://127.0.0.1:8866/', run='r1') == 'http://127.0.0.1:8866/?run=r1'
    url = binder_url('me/proj', 'main', run='r1', store='runs/a.fastwatch')
    assert url == ('https://mybinder.org/v2/gh/me/proj/main?urlpath='
                   'voila%2Frender%2Fapps%2Fdashboard.ipynb%3Frun%3Dr1%26store%3Druns%252Fa.fastwatch')
    env = {'BINDER_LAUNCH_HOST': 'https://mybinder.org/', 'BINDER_REQUEST': 'v2/gh/me/proj/main',
           'BINDER_PERSISTENT_REQUEST': 'v2/gh/me/proj/0123abc'}
    assert binder_url_from_env(env, run='r1').startswith('https://mybinder.org/v2/gh/me/proj/0123abc?urlpath=')
    assert binder_url_from_env({}) is None
    assert dashboard_query() == '' and voila_urlpath('a.ipynb', 'r') == 'voila/render/a.ipynb?run=r'


def test_the_share_control_names_the_server_it_is_on_and_says_when_it_is_only_local():
    url, note = share_url({'SERVER_NAME': 'box.lan', 'SERVER_PORT': '8866', 'QUERY_STRING': 'token=x'}, 'r1', None)
    assert url == 'http://box.lan:8866/?run=r1' and 'token' in note
    url, note = share_url({}, 'r1', 'runs/a.fastwatch')
    assert url == 'http://127.0.0.1/?run=r1&store=runs%2Fa.fastwatch' and '--host 0.0.0.0' in note
    url, note = share_url({}, 'r1', None, published='https://b.s3.amazonaws.com/runs/r1/')
    assert url.startswith('https://mybinder.org/v2/gh/fastwatch/fastwatch/main?') and 'live' in note


def test_published_runs_are_named_by_their_folder_or_index():
    assert is_published('https://h/runs/r1/') and is_published('https://h/runs/r1/index.json?x=1')
    assert not is_published('https://h/runs/r1.fastwatch')
    assert public_url('s3://bucket/runs/', 'r1') == 'https://bucket.s3.amazonaws.com/runs/r1/'


def test_packaged_notebook_is_the_app():
    assert filecmp.cmp(ROOT / 'apps' / 'dashboard.ipynb', ROOT / 'fastwatch' / 'view' / 'app' / 'dashboard.ipynb',
                       shallow=False)
