"""Links to the dashboard, for its Share control and for `fastwatch share`. Small pure functions:

- `dashboard_query(run, store)` -> `'run=ID&store=runs%2Fa.fastwatch'`: a view's query string (None parts left out).
- `local_url(base, run, store)` -> `'http://127.0.0.1:8866/?run=ID'`: a view on a running `fastwatch serve`.
- `binder_url(repo, ref, notebook, run, store)` -> `'https://mybinder.org/v2/gh/OWNER/REPO/REF?urlpath=voila%2F...'`:
  a Binder link that builds the repository and opens the view in Voila (`binder_request_url` from a launch request).
- `voila_urlpath(notebook, run, store)` -> `'voila/render/apps/dashboard.ipynb?run=ID'`: the path on a Jupyter server.
- `binder_url_from_env(environ, notebook, run, store)` -> this Binder session's link to the view; None off Binder.
- `find_notebook(root)` -> the dashboard notebook's path in a repository: `fastwatch binder`'s, else fastwatch's own.
- `published_binder_url(published, run)` -> the Binder link (fastwatch's own repository) that follows a run
  published at an https URL; `follow_links(published, run)` -> that and the `fastwatch serve` link, as lines.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote, urlencode

NOTEBOOK = 'apps/dashboard.ipynb'  # the Voila app's path in fastwatch's repository
BINDER_NOTEBOOK = 'binder/dashboard.ipynb'  # where `fastwatch binder` puts it in a user's repository
BINDER = 'https://mybinder.org'
DEFAULT_URL = 'http://127.0.0.1:8866/'  # where `fastwatch serve` listens unless told otherwise
FASTWATCH_REPO = 'fastwatch/fastwatch'  # its Binder image has the dashboard, without torch


def dashboard_query(run: str | None = None, store: str | None = None) -> str:
    "The dashboard's query string for a run and a store; empty when both are None."
    return urlencode({key: value for key, value in (('run', run), ('store', store)) if value})


def local_url(base: str, run: str | None = None, store: str | None = None) -> str:
    "The URL of a view on a dashboard served at `base` (e.g. `http://127.0.0.1:8866/`)."
    query = dashboard_query(run, store)
    return base + ('?' + query if query else '')


def voila_urlpath(notebook: str = NOTEBOOK, run: str | None = None, store: str | None = None) -> str:
    "The path, below a Jupyter server, of the notebook rendered by Voila: `voila/render/NOTEBOOK?run=...`."
    return local_url(f'voila/render/{notebook}', run, store)


def binder_url(repo: str, ref: str = 'HEAD', notebook: str = NOTEBOOK, run: str | None = None,
               store: str | None = None, host: str = BINDER) -> str:
    "A Binder link for GitHub repository `repo` (`owner/name`) at `ref` that opens the view in Voila."
    return binder_request_url(f'v2/gh/{repo}/{ref}', notebook, run, store, host)


def binder_request_url(request: str, notebook: str = NOTEBOOK, run: str | None = None, store: str | None = None,
                       host: str = BINDER) -> str:
    "A Binder link from a launch request such as `v2/gh/owner/name/ref` (as BinderHub names it)."
    urlpath = quote(voila_urlpath(notebook, run, store), safe='')
    return f"{host.rstrip('/')}/{request.strip('/')}?urlpath={urlpath}"


def binder_url_from_env(environ: Mapping[str, str], notebook: str = NOTEBOOK, run: str | None = None,
                        store: str | None = None) -> str | None:
    """The Binder link that reopens this view, from the variables BinderHub sets in its sessions (pinned to the
    commit when it can be); None when not on Binder."""
    host = environ.get('BINDER_LAUNCH_HOST')
    request = environ.get('BINDER_PERSISTENT_REQUEST') or environ.get('BINDER_REQUEST')
    if not (host and request): return None
    return binder_request_url(request, notebook, run, store, host)


def find_notebook(root: Path) -> str | None:
    "The dashboard notebook's path in the repository at `root`: the one `fastwatch binder` wrote, or fastwatch's own."
    return next((notebook for notebook in (BINDER_NOTEBOOK, NOTEBOOK) if (root / notebook).is_file()), None)


def published_binder_url(published: str, run: str | None = None, repo: str = FASTWATCH_REPO, ref: str = 'main') -> str:
    "The Binder link that follows, live, a run published at the https URL `published` (its folder or index.json)."
    return binder_url(repo, ref, NOTEBOOK, run, published)


def follow_links(published: str, run: str | None = None) -> str:
    "How to follow a published run, as two lines: on Binder, and on any `fastwatch serve`."
    return (f'  on Binder: {published_binder_url(published, run)}\n'
            f'  on any fastwatch serve: {local_url(DEFAULT_URL, run, published)}')
