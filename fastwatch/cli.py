"""The `fastwatch` command: one plain function per subcommand, its parser derived from the signature (fastcore).

Each command lives in the part it belongs to and raises fastwatch's own errors; here alone they become one line on
stderr."""
from __future__ import annotations

import importlib
import inspect
import sys

from fastcore.script import anno_parser

from .errors import FastwatchError

# name: (module, function, positional parameters). Modules are imported only for the command that runs.
COMMANDS = {
    'ls': ('fastwatch.view.terminal', 'ls', []),
    'show': ('fastwatch.view.terminal', 'show', ['run']),
    'suspects': ('fastwatch.view.terminal', 'suspects', ['run']),
    'serve': ('fastwatch.view.server', 'serve', []),
    'export': ('fastwatch.share.exports', 'export', []),
    'import': ('fastwatch.share.exports', 'import_snapshot', ['path']),
    'share': ('fastwatch.share.binder', 'share', ['run']),
    'publish': ('fastwatch.share.publish', 'publish', ['run']),
    'binder': ('fastwatch.share.binder', 'binder', ['path']),
    'cleanup': ('fastwatch.clean.cleanup', 'cleanup', ['run']),
    'demo': ('fastwatch.demo.command', 'demo', []),
}


def _usage() -> str:
    lines = ['usage: fastwatch COMMAND [options]   (fastwatch COMMAND --help for its options)', '', 'commands:']
    for name, (module, function, _) in COMMANDS.items():
        doc = (getattr(importlib.import_module(module), function).__doc__ or '').strip().splitlines()[0]
        lines.append(f'  {name:<8} {doc}')
    return '\n'.join(lines)


def run_command(name: str, argv: list[str]) -> int:
    "Run subcommand `name` with command-line arguments `argv`; a fastwatch error becomes one line on stderr."
    module, function, positional = COMMANDS[name]
    command = getattr(importlib.import_module(module), function)
    # Intermixed, so that positionals may follow options: `fastwatch export RUN --format tensorboard DIR`.
    kwargs = vars(anno_parser(command, prog=f'fastwatch {name}', pos=positional).parse_intermixed_args(argv))
    for hidden in ('pdb', 'xtra'): kwargs.pop(hidden, None)  # fastcore's own flags
    variadic = next((k for k, p in inspect.signature(command).parameters.items() if p.kind is p.VAR_POSITIONAL), None)
    try: result = command(*(kwargs.pop(variadic) if variadic else ()), **kwargs)
    except FastwatchError as e:
        print(f'fastwatch {name}: {e}', file=sys.stderr)
        return 1
    return result if isinstance(result, int) else 0


def main() -> None:
    "Entry point of the `fastwatch` console script."
    argv = sys.argv[1:]
    if not argv or argv[0] in ('-h', '--help'):
        print(_usage())
        sys.exit(0 if argv else 2)
    if argv[0] not in COMMANDS:
        print(f"fastwatch: unknown command {argv[0]!r}\n{_usage()}", file=sys.stderr)
        sys.exit(2)
    sys.exit(run_command(argv[0], argv[1:]))
