"""Binder: the files repo2docker reads, a fresh environment built only from them serving the demo snapshot, and a
share link followed the way Binder follows it, each checked in the real browser."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from browser import CHROMIUM, free_port, launch, open_dashboard
from packaging.requirements import InvalidRequirement, Requirement

from fastwatch import open_store
from fastwatch.cli import run_command

ROOT = Path(__file__).parents[1]
BIN = Path(sys.executable).parent
needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f'no chromium at {CHROMIUM}')


def repo2docker_dockerfile(repo: Path) -> str:
    "The Dockerfile repo2docker would build for `repo` (offline: --no-build); fails on a broken Binder file."
    result = subprocess.run([str(BIN / 'repo2docker'), '--no-build', '--debug', str(repo)], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout + result.stderr


def check_binder(repo: Path) -> str:
    "Everything about a repository's binder/ that can be checked without building: its Dockerfile, returned."
    binder = repo / 'binder'
    for line in (binder / 'requirements.txt').read_text().splitlines():
        if line.strip() and not line.startswith(('#', '.')): Requirement(line)  # raises on a malformed one
    if (binder / 'start').exists():
        assert subprocess.run(['bash', '-n', str(binder / 'start')]).returncode == 0, 'binder/start is not valid bash'
    dockerfile = repo2docker_dockerfile(repo)
    assert f"python={(binder / 'runtime.txt').read_text().strip().removeprefix('python-')}" in dockerfile
    assert 'pip install --no-cache-dir -r "binder/requirements.txt"' in dockerfile
    return dockerfile


def test_this_repositorys_binder_files():
    dockerfile = check_binder(ROOT)
    # `.` in binder/requirements.txt: fastwatch and settings.ini's light requirements, installed once the repository
    # is in the image; binder/start picks the demo snapshot
    assert dockerfile.index('src/ ${REPO_DIR}/') < dockerfile.index('-r "binder/requirements.txt"')
    assert 'R2D_ENTRYPOINT="${REPO_DIR}/binder/start"' in dockerfile


def test_a_repository_made_by_fastwatch_binder(tmp_path):
    assert run_command('binder', [str(tmp_path)]) == 0
    dockerfile = check_binder(tmp_path)
    assert 'binder/start' not in dockerfile  # fastwatch and its dependencies come from PyPI there


@pytest.mark.parametrize('file, text', [('runtime.txt', 'python3.11\n'), ('requirements.txt', 'voila>=0.5 ]\n'),
                                        ('start', 'exec "$@\n')])
def test_a_broken_binder_file_fails_the_check(tmp_path, file, text):
    shutil.copytree(ROOT / 'binder', tmp_path / 'binder')
    (tmp_path / 'binder' / file).write_text(text)
    with pytest.raises((AssertionError, InvalidRequirement)): check_binder(tmp_path)


@contextmanager
def serving(command: list[str], cwd: Path, env: dict[str, str], port: int, timeout: float = 120):
    "Run a server until the block ends, once its port accepts connections; a failure shows the end of its log."
    log = cwd.parent / f'server-{port}.log'
    with log.open('w') as out:
        server = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert server.poll() is None, 'the server stopped'
            try:
                socket.create_connection(('127.0.0.1', port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, 'the server did not start'
                time.sleep(0.3)
        yield
    except Exception as e:
        raise AssertionError(f'{e}\nserver log:\n{log.read_text()[-3000:]}') from e
    finally:
        server.terminate()
        try: server.wait(20)
        except subprocess.TimeoutExpired: server.kill()


def page_header(url: str) -> str:
    "The dashboard header's text once the page has drawn its charts, in headless chromium."
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = browser.new_page()
            open_dashboard(page, url, timeout=120)
            return page.inner_text('.fw-header')
        finally:
            browser.close()


def repository_files(dest: Path) -> Path:
    "A copy of the files a commit of this working tree would hold (tracked and not ignored), as Binder gets them."
    listed = subprocess.run(['git', 'ls-files', '--cached', '--others', '--exclude-standard', '-z'], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split('\0')
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def demo_run() -> dict:
    store = open_store(ROOT / 'runs' / 'demo.fastwatch', readonly=True)
    try: return store.runs()[0]
    finally: store.close()


@needs_chromium
@pytest.mark.timeout(600)
def test_fresh_environment_from_binder_requirements_serves_the_demo(tmp_path):
    "Binder's build in miniature: a new venv, binder/requirements.txt, then binder/start running voila."
    repo, venv = repository_files(tmp_path / 'repo'), tmp_path / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True)
    env = {**os.environ, 'PATH': f"{venv / 'bin'}:{os.environ['PATH']}", 'REPO_DIR': str(repo)}
    env.pop('FASTWATCH_STORE', None)  # as on Binder: binder/start picks the demo snapshot
    subprocess.run(['pip', 'install', '-q', '-r', 'binder/requirements.txt'], cwd=repo, env=env, check=True,
                   timeout=400)
    probe = 'import importlib.util as u; print([m for m in ("torch", "fastai") if u.find_spec(m)])'
    assert subprocess.run([str(venv / 'bin' / 'python'), '-c', probe], capture_output=True, text=True,
                          check=True).stdout.strip() == '[]'  # the Binder image stays light
    run, port = demo_run(), free_port()
    command = ['./binder/start', 'voila', 'apps/dashboard.ipynb', '--no-browser', f'--port={port}']
    with serving(command, repo, env, port):
        header = page_header(f'http://127.0.0.1:{port}/')
    assert run.id in header and run.name in header and 'finished' in header


@needs_chromium
def test_share_link_round_trip_in_the_browser(trained, tmp_path, monkeypatch, capsys):
    "Parse the printed Binder link, follow its urlpath on a local Jupyter server in the repository, as Binder does."
    repo = tmp_path / 'proj'
    subprocess.run(['git', 'init', '-q', str(repo)], check=True)
    assert run_command('binder', [str(repo)]) == 0
    monkeypatch.chdir(repo)
    assert run_command('share', [trained['run_id'], '--repo', 'me/proj', '--store', str(trained['path'])]) == 0
    url = next(line for line in capsys.readouterr().out.splitlines() if line.startswith('https://mybinder.org/'))
    (urlpath,) = parse_qs(urlsplit(url).query)['urlpath']
    env = {**os.environ, 'REPO_DIR': str(repo)}
    env.pop('FASTWATCH_STORE', None)
    port = free_port()
    command = [str(BIN / 'jupyter'), 'server', '--no-browser', '--allow-root', f'--port={port}',
               '--IdentityProvider.token=', f'--ServerApp.root_dir={repo}']
    with serving(command, repo, env, port):
        header = page_header(f'http://127.0.0.1:{port}/{urlpath}')
    assert trained['run_id'] in header and 'digits' in header
    assert [p.name for p in (repo / 'runs').iterdir()] == [f"{trained['run_id']}.fastwatch"]  # opened read-only
