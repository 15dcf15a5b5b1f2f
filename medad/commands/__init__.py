"""CLI command modules; each defines ``register(app, bench_app)``.

Option names: one spelling per idea across all commands (see ``tests/test_cli_option_names.py``).
An older spelling stays accepted as a *hidden alias*: declare it after the canonical name,
``typer.Option(None, "--text-sfreq", "--sfreq")``, and give the command ``cls=AliasedCommand``;
``--help`` then shows the canonical name only.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

from typer.core import TyperCommand


def canonical_opts(opts: list[str]) -> list[str]:
    """``["--text-sfreq", "--sfreq", "-t"]`` -> ``["--text-sfreq", "-t"]``: short options and
    the first long one (the canonical name); later long ones are aliases."""
    longs = [o for o in opts if o.startswith("--")]
    return [o for o in opts if not o.startswith("--") or o in longs[:1]]


def alias_opts(opts: list[str]) -> list[str]:
    """The hidden aliases among ``opts`` (every long option after the first)."""
    return [o for o in opts if o.startswith("--")][1:]


@contextmanager
def _canonical_only(params: list) -> Iterator[None]:
    """Show each option under its canonical name(s) only while help is written: the parser
    keeps every alias (click reads ``opts`` when it builds the parser, not from here)."""
    saved = [(p, p.opts, p.secondary_opts) for p in params if p.param_type_name == "option"]
    try:
        for p, opts, secondary in saved:
            p.opts, p.secondary_opts = canonical_opts(opts), canonical_opts(secondary)
        yield
    finally:
        for p, opts, secondary in saved:
            p.opts, p.secondary_opts = opts, secondary


def name_list(values: Iterable[str]) -> list[str]:
    """Names given repeated and/or comma-separated (``--parts brain --parts eeg`` or
    ``--parts brain,eeg``), in the order given, stripped, blanks dropped."""
    return [n.strip() for v in values for n in v.split(",") if n.strip()]


class AliasedCommand(TyperCommand):
    """A command whose options may carry older spellings as hidden aliases."""

    def format_help(self, ctx, formatter) -> None:  # noqa: ANN001 (click types differ by version)
        with _canonical_only(self.params):
            return super().format_help(ctx, formatter)
