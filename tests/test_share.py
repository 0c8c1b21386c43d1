"""`fastwatch share` (snapshot in the repository + Binder link) and `fastwatch binder` (Binder files for a user's repo).
The browser round trip of a share link is in test_binder.py."""
from __future__ import annotations

import subprocess
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from helpers import cli

from fastwatch import __version__, open_store
from fastwatch.links import binder_url
from fastwatch.share.binder import APP

ROOT = Path(__file__).parents[1]


def open_binder_link(url: str) -> tuple[str, str, dict[str, str]]:
    "What Binder does with a link: the repository request, the notebook and the dashboard's query from `urlpath`."
    parts = urlsplit(url)
    (urlpath,) = parse_qs(parts.query)['urlpath']
    notebook, _, query = urlpath.partition('?')
    return parts.path, notebook, {k: v for k, (v,) in parse_qs(query).items()}


@pytest.fixture
def repo(tmp_path, monkeypatch, capsys):
    "A user's git repository with the Binder files `fastwatch binder` writes, as the current directory."
    root = tmp_path / 'proj'
    root.mkdir()
    subprocess.run(['git', 'init', '-q', str(root)], check=True)
    assert cli(capsys, 'binder', str(root))[0] == 0
    monkeypatch.chdir(root)
    return root


def test_share_writes_the_snapshot_and_prints_link_badge_and_git_steps(trained, repo, capsys):
    run_id = trained['run_id']
    status, out, err = cli(capsys, 'share', run_id, '--repo', 'me/proj', '--store', str(trained['path']))
    assert status == 0 and err == ''
    snapshot = repo / 'runs' / f'{run_id}.fastwatch'
    copy = open_store(snapshot, readonly=True)
    assert copy.counts(run_id) == trained['store'].counts(run_id)
    copy.close()
    lines = out.splitlines()
    url = next(line for line in lines if line.startswith('https://mybinder.org/'))
    assert not set('?&/=') & set(url.partition('urlpath=')[2])  # the inner path and query are percent-encoded
    request, notebook, query = open_binder_link(url)
    assert request == '/v2/gh/me/proj/main' and notebook == 'voila/render/binder/dashboard.ipynb'
    assert query == {'run': run_id, 'store': f'runs/{run_id}.fastwatch'}
    assert url == binder_url('me/proj', 'main', 'binder/dashboard.ipynb', run_id, f'runs/{run_id}.fastwatch')
    assert f'[![launch binder](https://mybinder.org/badge_logo.svg)]({url})' in lines
    assert f'  git add runs/{run_id}.fastwatch' in lines and '  git push origin main' in lines


def test_share_path_is_relative_to_the_repository_top(trained, repo, capsys, monkeypatch):
    (repo / 'notebooks').mkdir()
    monkeypatch.chdir(repo / 'notebooks')
    status, out, _ = cli(capsys, 'share', trained['run_id'], '--repo', 'me/proj', '--ref', 'v1',
                         '--path', 'shared/first run.fastwatch', '--store', str(trained['path']))
    assert status == 0 and (repo / 'shared' / 'first run.fastwatch').is_file()
    request, _, query = open_binder_link(next(line for line in out.splitlines() if line.startswith('https://')))
    assert request == '/v2/gh/me/proj/v1' and query['store'] == 'shared/first run.fastwatch'
    assert f'  cd {repo}' in out and "  git add 'shared/first run.fastwatch'" in out


def test_share_with_a_hosted_snapshot_prints_its_link_and_writes_nothing(trained, repo, capsys):
    hosted = 'https://example.org/runs/a run.fastwatch?x=1'
    status, out, _ = cli(capsys, 'share', trained['run_id'], '--repo', 'me/proj', '--store-url', hosted,
                         '--store', str(trained['path']))
    assert status == 0 and not (repo / 'runs').exists()
    _, _, query = open_binder_link(next(line for line in out.splitlines() if line.startswith('https://mybinder.org/')))
    assert query == {'run': trained['run_id'], 'store': hosted}


def test_fastwatchs_own_repository_links_to_apps_dashboard(trained, tmp_path, monkeypatch, capsys):
    root = tmp_path / 'fastwatch'
    (root / 'apps').mkdir(parents=True)
    (root / 'apps' / 'dashboard.ipynb').write_text(APP.read_text())
    subprocess.run(['git', 'init', '-q', str(root)], check=True)
    monkeypatch.chdir(root)
    status, out, _ = cli(capsys, 'share', trained['run_id'], '--repo', 'fastwatch/fastwatch',
                         '--store', str(trained['path']))
    assert status == 0
    assert open_binder_link(next(line for line in out.splitlines() if line.startswith('https://')))[1] == \
        'voila/render/apps/dashboard.ipynb'


@pytest.mark.parametrize('case', ['unknown run', 'existing file', 'outside the repository', 'bad repo',
                                  'plain http store url'])
def test_share_refuses_bad_input_with_one_line(trained, repo, capsys, case):
    existing = repo / 'runs' / 'taken.fastwatch'
    existing.parent.mkdir()
    existing.write_bytes(b'precious')
    args = {'unknown run': ['nosuchrun', '--repo', 'me/proj'],
            'existing file': [trained['run_id'], '--repo', 'me/proj', '--path', 'runs/taken.fastwatch'],
            'outside the repository': [trained['run_id'], '--repo', 'me/proj', '--path', '../elsewhere.fastwatch'],
            'bad repo': [trained['run_id'], '--repo', 'https://github.com/me/proj'],
            'plain http store url': [trained['run_id'], '--repo', 'me/proj', '--store-url', 'http://x.org/a']}[case]
    status, out, err = cli(capsys, 'share', *args, '--store', str(trained['path']))
    assert status == 1 and out == '' and err.count('\n') == 1 and err.startswith('fastwatch share: ')
    assert {'unknown run': "no run 'nosuchrun'", 'existing file': 'exists: pass --force',
            'outside the repository': 'outside the repository', 'bad repo': 'OWNER/NAME',
            'plain http store url': 'https URL'}[case] in err
    assert [p.name for p in existing.parent.iterdir()] == ['taken.fastwatch'] and existing.read_bytes() == b'precious'
    assert not (repo.parent / 'elsewhere.fastwatch').exists()


def test_share_needs_a_git_working_copy(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    status, _, err = cli(capsys, 'share', trained['run_id'], '--repo', 'me/proj', '--store', str(trained['path']))
    assert status == 1 and 'not inside a git working copy' in err


def test_binder_writes_the_dashboard_files_without_torch(repo):
    assert (repo / 'binder' / 'dashboard.ipynb').read_text() == APP.read_text()
    assert (repo / 'binder' / 'requirements.txt').read_text() == f'fastwatch=={__version__}\n'
    assert (repo / 'binder' / 'runtime.txt').read_text() == (ROOT / 'binder' / 'runtime.txt').read_text()


def test_binder_refuses_to_overwrite_without_force(repo, capsys):
    (repo / 'binder' / 'requirements.txt').write_text('mine\n')
    (repo / 'binder' / 'dashboard.ipynb').unlink()
    status, out, err = cli(capsys, 'binder', str(repo))
    assert status == 1 and out == '' and err.count('\n') == 1 and 'exists: pass --force' in err
    assert (repo / 'binder' / 'requirements.txt').read_text() == 'mine\n'
    assert not (repo / 'binder' / 'dashboard.ipynb').exists()  # nothing written at all
    assert cli(capsys, 'binder', str(repo), '--force')[0] == 0
    assert (repo / 'binder' / 'requirements.txt').read_text() == f'fastwatch=={__version__}\n'
