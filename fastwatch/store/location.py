"""Where a store is: the SQLAlchemy URL for a path or URL, and how to name it to people (passwords masked)."""
from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import quote

from sqlalchemy.engine import make_url

DEFAULT_STORE = 'fastwatch.db'
SQLITE_PREFIX = 'sqlite:///'


def store_url(location: str | os.PathLike | None = None) -> str:
    "The SQLAlchemy URL for a path or URL, defaulting to `$FASTWATCH_STORE`, then `fastwatch.db` here."
    location = str(location or os.environ.get('FASTWATCH_STORE') or DEFAULT_STORE)
    if '://' not in location: return f'{SQLITE_PREFIX}{Path(location).expanduser().resolve()}'
    for prefix in ('postgresql://', 'postgres://'):  # psycopg 3 is the driver fastwatch installs
        if location.startswith(prefix): return 'postgresql+psycopg://' + location[len(prefix):]
    return location


def sqlite_path(url: str) -> Path | None:
    "The file of a SQLite store's URL; None for a database server."
    return Path(url.removeprefix(SQLITE_PREFIX)) if url.startswith(SQLITE_PREFIX) else None


def display_location(location: str | os.PathLike | None) -> str:
    "How a store is named in messages: a SQLite store's path, a server's URL with its password masked."
    url = store_url(location)
    path = sqlite_path(url)
    if path is not None: return str(path)
    try: return make_url(url).render_as_string(hide_password=True)
    except Exception: return url.split('://', 1)[0] + '://…'  # not a URL SQLAlchemy reads: show no part of it


def hide_password(text: str, location: str | os.PathLike | None) -> str:
    """`text` (an error message, say) with the store URL's password masked where a URL (`user:PASSWORD@`) or a
    libpq connection string (`password=PASSWORD`) shows it, quoted or not."""
    try: password = make_url(store_url(location)).password
    except Exception: return text
    if not password: return text
    for form in {password, quote(password, safe='')}:
        text = re.sub(rf"(:|password\s*=\s*['\"]?){re.escape(form)}(?=[@'\"\s&]|$)", r'\1***', text)
    return text
