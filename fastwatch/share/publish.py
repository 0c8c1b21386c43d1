"""`fastwatch publish`: publish a run that another process records, or that has finished, for followers (the
publish protocol itself is `remote/protocol.py`)."""
from __future__ import annotations

import time

from ..errors import UsageError
from ..remote.protocol import DEFAULT_EVERY, Publisher
from ..store import open_store


def publish(run: str,  # The run to publish
            to: str = None,  # Where: an fsspec URL (s3://, gs://, hf://datasets/…, webdav+https://…) or a folder
            every: float = DEFAULT_EVERY,  # Seconds between uploads while the run is live
            url: str = None,  # The https URL at which `to` is served, when fastwatch cannot tell (a local folder)
            store: str = None,  # Store path or URL to read the run from (default: $FASTWATCH_STORE, ./fastwatch.db)
            ) -> None:
    "Publish a run for followers (Binder, any fastwatch serve) until it ends; Ctrl-C stops."
    if not to: raise UsageError('give where to publish: --to URL (s3://…, hf://datasets/…, a folder, …)')
    source = open_store(store, readonly=True)
    try:
        state = source.run(run).state
        publisher = Publisher(store, run, to, every, url)
        print(f'fastwatch: publishing run {run} to {to.rstrip("/")}/{run}/ every {publisher.every:g} s')
        print(publisher.links or f'serve {to} over https, then open the dashboard with ?store=https://…/{run}/')
        try:
            while True:
                publisher.tick(last=state != 'live')
                if publisher.done or (state != 'live' and not publisher.failures): break
                time.sleep(min(1.0, publisher.every))
                state = source.run(run).state
        except KeyboardInterrupt: pass
        finally: publisher.close()
    finally: source.close()
    print(f'fastwatch: published {publisher.segments} segments of run {run}')
