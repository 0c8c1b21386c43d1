"""The layout's rules (`.importlinter`) hold for the tree, and each contract fails when the code breaks it."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
LINT_IMPORTS = Path(sys.executable).parent / 'lint-imports'


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    "`lint-imports` over the fastwatch package at `root`, with the repository's contract file."
    return subprocess.run([str(LINT_IMPORTS), '--config', str(ROOT / '.importlinter'), '--no-cache'], cwd=root,
                          env={'PATH': str(LINT_IMPORTS.parent), 'PYTHONPATH': str(root)}, capture_output=True,
                          text=True)


@pytest.fixture
def copy(tmp_path) -> Path:
    "A copy of the package to break."
    shutil.copytree(ROOT / 'fastwatch', tmp_path / 'fastwatch', ignore=shutil.ignore_patterns('__pycache__'))
    return tmp_path


def test_the_tree_keeps_every_contract():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout
    assert 'broken' not in result.stdout.split('Contracts:')[-1].replace('0 broken', '')


@pytest.mark.parametrize('module, line, contract', [
    ('store/store.py', 'from ..view import charts', 'The store imports nothing else'),
    ('store/schema.py', 'from ..formats import format_when', 'The store imports nothing else'),
    ('store/tables.py', 'from ..remote import protocol', 'The store imports nothing else'),
    ('view/charts.py', 'from ..record import writer', 'The data flow'),
    ('links.py', 'import fastwatch.record.validation', 'errors, formats and links are leaves'),
    ('share/exports.py', 'from ..view import terminal', 'The data flow'),
    ('record/writer.py', 'from .. import cli', 'The data flow'),
    ('share/binder.py', 'from ..record import callback', 'The data flow'),
    ('remote/protocol.py', 'from ..view import page', 'The data flow'),
    ('view/feed.py', 'import torch', 'Nothing but record and demo imports torch or fastai'),
    ('remote/fetch.py', 'import fastai', 'Nothing but record and demo imports torch or fastai'),
    ('cli.py', 'from fastai.learner import Learner', 'Nothing but record and demo imports torch or fastai'),
    ('errors.py', 'from .store import location', 'errors, formats and links are leaves'),
])
def test_a_broken_contract_fails_the_check(copy, module, line, contract):
    path = copy / 'fastwatch' / module
    path.write_text(path.read_text() + f'\n{line}  # broken on purpose\n')
    result = lint_imports(copy)
    assert result.returncode != 0
    broken = result.stdout.split('Broken contracts')[-1]
    assert contract in broken and module.replace('/', '.').removesuffix('.py') in broken
