"""The dashboard page's script checked in (`fastwatch/view/app/static/`) is what its sources build (`make page`)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).parent.parent
SOURCES, BUILT = ROOT / 'fastwatch' / 'view' / 'app' / 'page', ROOT / 'fastwatch' / 'view' / 'app' / 'static'


def test_the_page_script_checked_in_is_what_its_sources_build(tmp_path):
    assert shutil.which('npm'), 'npm is missing: `make services` installs it'
    build = tmp_path / 'page'
    shutil.copytree(SOURCES, build, ignore=shutil.ignore_patterns('node_modules'))
    for command in (['npm', 'ci', '--no-audit', '--no-fund'], ['node', 'build.mjs', str(tmp_path / 'static')]):
        subprocess.run(command, cwd=build, check=True, capture_output=True, timeout=300)
    built = sorted(p.name for p in (tmp_path / 'static').iterdir())
    assert built == sorted(p.name for p in BUILT.iterdir()) == ['fastwatch-page.css', 'fastwatch-page.js']
    for name in built:
        assert (tmp_path / 'static' / name).read_bytes() == (BUILT / name).read_bytes(), f'{name}: run `make page`'
