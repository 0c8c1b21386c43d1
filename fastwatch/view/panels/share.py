"""The Share control: the URL of the current view (the Binder link on Binder, the link that follows a published run
live), with a button that copies it."""
from __future__ import annotations

from collections.abc import Mapping

import ipywidgets as widgets

from ...links import NOTEBOOK, binder_url_from_env, find_notebook, local_url, published_binder_url
from ..html import escape
from ..page import served_root

COPY_JS = ("const i=this.previousElementSibling;i.select();"
           "(navigator.clipboard?navigator.clipboard.writeText(i.value):Promise.reject())"
           ".catch(()=>document.execCommand('copy'));this.textContent='Copied'")


def share_html(url: str, note: str = '') -> str:
    "The Share control: the URL of the current view, and a button that copies it."
    return (f"<div class='fw-share'><b>Share</b><input class='fw-share-url' readonly value='{escape(url)}' "
            f"onclick='this.select()'><button class='fw-copy' onclick=\"{escape(COPY_JS)}\">Copy</button></div>"
            + (f"<div class='fw-muted'>{escape(note)}</div>" if note else ''))


def share_url(environ: Mapping[str, str], run_id: str | None, store_param: str | None,
              published: str | None = None) -> tuple[str, str]:
    "The URL of a view (the Binder link on Binder), and a note for the person sharing it."
    notebook = find_notebook(served_root()) or NOTEBOOK
    binder = binder_url_from_env(environ, notebook, run=run_id, store=store_param)
    if binder: return binder, 'Opens this run on Binder.'
    if published:
        return (published_binder_url(published, run_id),
                'Follows this published run live on Binder: anyone with the link can read the run.')
    host = environ.get('SERVER_NAME') or '127.0.0.1'
    port = f":{environ['SERVER_PORT']}" if environ.get('SERVER_PORT') else ''
    url = local_url(f"http://{host}{port}{environ.get('SCRIPT_NAME') or '/'}", run_id, store_param)
    note = 'The server asks for its token: send it separately.' if 'token=' in environ.get('QUERY_STRING', '') else ''
    if host in ('127.0.0.1', 'localhost', '::1'):
        note = 'This server listens on this machine only: serve with --host 0.0.0.0 to share on your network.'
    return url, note


class SharePanel:
    "The link to the shown run, as the page's store and environment make it."
    css = """
.fw-share { display: flex; flex-wrap: wrap; gap: 6px; align-items: center; }
.fw-share input { flex: 1 1 240px; min-width: 0; font-family: monospace; font-size: 12px; padding: 3px; }
"""

    def __init__(self, environ: Mapping[str, str], store_param: str | None, published: str | None):
        self.environ, self.store_param, self.published = environ, store_param, published
        self.widget = widgets.HTML()
        self.url = ''

    def render(self, run_id: str) -> None:
        self.url, note = share_url(self.environ, run_id, self.store_param, self.published)
        self.widget.value = share_html(self.url, note)
