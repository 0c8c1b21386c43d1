"""`fastwatch demo`: fine_tune an untrained resnet18 on scikit-learn's digits, recorded by `WatchCallback`, while
`fastwatch serve` shows it live."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

from ..errors import FastwatchError
from ..store import display_location, open_store, store_url
from ..store.location import sqlite_path
from ..view.server import check_port


def _cache_dir() -> Path:
    return Path(os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache') / 'fastwatch'


def _wait_for_port(host: str, port: int, server: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None: raise FastwatchError('the dashboard server stopped: see its message above')
        try:
            with socket.create_connection(('127.0.0.1' if host in ('0.0.0.0', '::') else host, port), timeout=1):
                return
        except OSError: time.sleep(0.2)
    raise FastwatchError(f'the dashboard server did not start within {timeout:.0f} s')


def train_digits(store: str, epochs: int, size: int = 28) -> None:
    "fine_tune an untrained resnet18 on the digits (an image folder made once in the cache), recorded by WatchCallback."
    # torch's, about fastai's use of torch.jit: nothing the person running the demo can act on.
    warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated', category=FutureWarning)
    from ..record.callback import WatchCallback
    from .digits import digits_dls, digits_folder, digits_learner
    dls = digits_dls(digits_folder(_cache_dir() / 'digits'), size=size, bs=32)
    watch = WatchCallback(store=store, name='digits demo', config={'epochs': epochs, 'size': size})
    digits_learner(dls, arch='resnet18', cbs=watch).fine_tune(epochs, base_lr=1e-2)


def demo(epochs: int = 6,  # epochs of fine_tune after its frozen one
         store: str = None,  # store to record into (default: demo.db in ~/.cache/fastwatch)
         port: int = 8866,  # port of the dashboard
         host: str = '127.0.0.1',  # interface the dashboard listens on
         no_serve: bool = False,  # only train, without serving the dashboard
         exit_after: bool = False,  # stop serving when training ends, instead of serving until Ctrl-C
         ) -> None:
    "Train a small classifier on scikit-learn's digits with fine_tune and WatchCallback while serving the dashboard."
    url = store_url(store or _cache_dir() / 'demo.db')
    location = str(sqlite_path(url) or url)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stopped like Ctrl-C: the server child stops too
    open_store(location).close()  # create it, so that the dashboard can open it before the first run
    server = None
    if not no_serve:
        check_port(host, port)
        command = ['serve', '--store', location, '--port', str(port), '--host', host]
        server = subprocess.Popen([sys.executable, '-c', 'from fastwatch.cli import main; main()', *command])
    try:
        if server: _wait_for_port(host, port, server)
        print(f'training on the digits, {epochs} epochs of fine_tune, recording into {display_location(url)}',
              flush=True)
        train_digits(location, epochs)
        if server and not exit_after:
            print('the dashboard keeps serving: Ctrl-C to stop', flush=True)
            server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if server and server.poll() is None:
            server.terminate()
            server.wait(10)
