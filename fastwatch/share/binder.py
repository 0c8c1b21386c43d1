"""Sharing on Binder: `fastwatch share` (a run's snapshot in the repository, and the link that opens it) and
`fastwatch binder` (the Binder files for a user's own repository).

A Binder container starts from the git repository alone, so a link must carry what it shows: the snapshot is a file
committed to the repository (or hosted at an https URL) and the link names it and the run.
"""
from __future__ import annotations

import shlex
import subprocess
from importlib.resources import files
from pathlib import Path

from .. import __version__
from ..errors import UsageError
from ..links import BINDER_NOTEBOOK, FASTWATCH_REPO, binder_url, find_notebook, published_binder_url
from ..remote.protocol import public_url
from ..store import open_store
from ..store.files import check_new, writing
from ..store.snapshot import write_snapshot

BADGE = 'https://mybinder.org/badge_logo.svg'
PYTHON = 'python-3.11'  # binder/runtime.txt: the Python the dashboard is tested with
APP = files('fastwatch.view') / 'app' / 'dashboard.ipynb'  # the Voila app, a file of the view package


def working_copy() -> Path:
    "The top folder of the git working copy around the current directory."
    try:
        out = subprocess.run(['git', 'rev-parse', '--show-toplevel'], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        raise UsageError('not inside a git working copy: run this in the clone of the repository Binder builds') \
            from None
    return Path(out.stdout.strip()).resolve()


def dashboard_notebook(root: Path) -> str:
    "The dashboard notebook's path in the repository at `root`, which must have one."
    notebook = find_notebook(root)
    if notebook: return notebook
    raise UsageError(f'{root} has no dashboard notebook for Binder to open: run `fastwatch binder` there first')


def badge(url: str) -> str:
    "The Markdown of a 'launch binder' badge that opens `url`."
    return f'[![launch binder]({BADGE})]({url})'


def share(run: str,  # The run to share
          repo: str = None,  # The GitHub repository Binder builds, OWNER/NAME
          ref: str = 'main',  # The branch, tag or commit Binder builds
          path: str = None,  # Where the snapshot goes, relative to the repository's top (default: runs/RUN.fastwatch)
          store_url: str = None,  # The https URL of a snapshot hosted elsewhere: print its link, write nothing
          store: str = None,  # Store path or URL to read the run from (default: $FASTWATCH_STORE, then ./fastwatch.db)
          force: bool = False,  # Replace an existing snapshot file
          published: str = None,  # A published run's https URL or publish target: print the link that follows it
          ) -> None:
    "Share a run on Binder: write its snapshot into this repository and print the link, the badge and the git steps."
    if published is not None: return share_published(run, published, repo or FASTWATCH_REPO, ref)
    if not repo or repo.count('/') != 1 or not all(repo.split('/')):
        raise UsageError(f'give the GitHub repository as --repo OWNER/NAME, not {repo!r}')
    if store_url is not None and not store_url.startswith('https://'):
        raise UsageError(f'--store-url takes an https URL, not {store_url!r}')
    root = working_copy()
    notebook = dashboard_notebook(root)
    source = open_store(store, readonly=True)
    try:
        source.run(run)
        if store_url is None:
            target = (root / (path or f'runs/{run}.fastwatch')).resolve()
            if not target.is_relative_to(root):
                raise UsageError(f'{target} is outside the repository {root}: Binder sees only files inside it')
            write_snapshot(source, [run], target, force)
    finally: source.close()
    where = store_url or target.relative_to(root).as_posix()
    url = binder_url(repo, ref, notebook, run, where)
    if store_url is None: print(f'wrote the snapshot of run {run} to {target}')
    print(f'\nBinder link:\n{url}\n\nBadge (Markdown):\n{badge(url)}\n')
    if store_url is None:
        print('Binder builds what is pushed: commit and push the snapshot, then open the link')
        if Path.cwd().resolve() != root: print(f'  cd {shlex.quote(str(root))}')
        print(f'  git add {shlex.quote(where)}\n  git commit -m "fastwatch snapshot of run {run}"\n'
              f'  git push origin {ref}')
    else:
        print(f'Upload the snapshot to {store_url} (`fastwatch export {run} -o FILE` writes it); '
              f'the link opens it once {repo} at {ref} has the Binder files (`fastwatch binder`).')


def share_published(run: str, published: str, repo: str = FASTWATCH_REPO, ref: str = 'main') -> None:
    "Print the Binder link that follows a published run live (`published`: its https URL, or where it was published)."
    url = published if published.startswith('https://') else public_url(published, run)
    if url is None:
        raise UsageError(f'give the https URL that serves {published} (fastwatch cannot tell it): --published https://…')
    link = published_binder_url(url, run, repo, ref)
    print(f'Binder link that follows run {run} live (anyone with the link can read the run):\n{link}\n\n'
          f'Badge (Markdown):\n{badge(link)}')


def binder_files() -> dict[str, str]:
    "The Binder files for a user's repository: the dashboard's requirements (no torch), Python, and the notebook."
    return {'binder/requirements.txt': f'fastwatch=={__version__}\n',
            'binder/runtime.txt': f'{PYTHON}\n',
            BINDER_NOTEBOOK: APP.read_text(encoding='utf-8')}


def binder(path: str = '.',  # The repository's working copy
           force: bool = False,  # Replace existing files
           ) -> None:
    "Write binder/ into a repository so that mybinder.org serves the fastwatch dashboard from it."
    root = Path(path)
    files = binder_files()
    for name in files: check_new(root / name, force)  # refuse before writing any of them
    for name, text in files.items():
        with writing(root / name, force) as tmp: tmp.write_text(text, encoding='utf-8')
        print(f'wrote {root / name}')
    print(f'\nCommit binder/, then share runs with `fastwatch share RUN --repo OWNER/NAME` '
          f'(the dashboard opens at urlpath=voila/render/{BINDER_NOTEBOOK}).')
