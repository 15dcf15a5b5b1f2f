"""The ``medad`` command line.

Commands live in ``medad/commands/<area>.py``; each module defines ``register(app, bench_app)``
and adds its commands there. Heavy libraries are imported inside the command functions, so
``medad --help`` is fast. Every :class:`medad.errors.MedadError` becomes a one-line message
and exit code 2 instead of a traceback.
"""

from __future__ import annotations

import importlib
import sys

import typer

from medad.errors import MedadError

app = typer.Typer(
    help="medad: medical anomaly detection (lesion maps, recording screening, frame flagging, explanations).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(help="Benchmarks on real data: print figures and write <out>/<name>.json + .md.",
                        no_args_is_help=True)
app.add_typer(bench_app, name="bench")

_COMMAND_MODULES = (
    "medad.commands.data",       # inspect, datasets inspect
    "medad.commands.evaluate",   # evaluate
    "medad.commands.demo",       # demo
    "medad.commands.brain",      # brain train / brain score, bench brain-lesions
    "medad.commands.signals",    # screen, bench bonn / yaseen / mitbih / screening-speed
    "medad.commands.images",     # images train / screen, bench image-screening
    "medad.commands.explain",    # explain, report, bench explain
)

for _mod in _COMMAND_MODULES:
    try:
        importlib.import_module(_mod).register(app, bench_app)
    except ModuleNotFoundError as e:  # an area not built yet
        if e.name != _mod:
            raise


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``medad`` console script."""
    try:
        app(args=argv, standalone_mode=True)
    except MedadError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
