"""What every benchmark shares: environment facts, how a figure was made (command, commit, date),
row selection by name, JSON + Markdown output, table formatting."""

from __future__ import annotations

import datetime as _dt
import fnmatch
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from medad.errors import ConfigError, InputError, ReadError
from medad.utils import write_json, write_text

NOT_RECORDED = "not recorded"  # rows computed before benchmarks recorded their command and commit
DATA_ROOT_ENV = "MEDAD_DATA_ROOT"


def environment() -> dict[str, Any]:
    """Facts that make a figure reproducible: versions, cores, device."""
    import torch

    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "machine": platform.machine(),
    }


def git_commit(where: str | Path | None = None) -> str:
    """The short hash of the medad checkout's HEAD, with ``-dirty`` when tracked files have
    uncommitted changes; ``"unknown"`` outside a git checkout of medad (an installed copy) or
    when git fails -- never an error."""
    here = Path(where) if where is not None else Path(__file__).resolve().parents[2]

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True, timeout=20,
                              check=True).stdout.strip()

    try:
        # a medad installed inside some other repository must not report that repository's commit
        if Path(git("rev-parse", "--show-toplevel")).resolve() != here.resolve():
            return "unknown"
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError, ValueError):
        return "unknown"
    return commit + ("-dirty" if dirty else "") if commit else "unknown"


def command_line(argv: Sequence[str] | None = None, *, uses_data_root: bool = True) -> str:
    """The ``medad ...`` command that is running (``argv``: default ``sys.argv``), as a shell line.
    A ``--data-root`` equal to ``$MEDAD_DATA_ROOT`` is written as ``$MEDAD_DATA_ROOT``; without
    one, a run that read ``$MEDAD_DATA_ROOT`` says so (``uses_data_root``: the benchmark reads the
    data root). A call from Python (not the ``medad`` command) says which program made it."""
    argv = list(sys.argv if argv is None else argv)
    prog, args = (Path(argv[0]).name if argv else "python"), argv[1:]
    env = os.environ.get(DATA_ROOT_ENV)
    given = False
    for i, a in enumerate(args):
        value = None
        if a == "--data-root" and i + 1 < len(args):
            value, given = args[i + 1], True
        elif a.startswith("--data-root="):
            value, given = a.split("=", 1)[1], True
        if value is not None and env and _same_path(value, env):
            args[i + 1 if a == "--data-root" else i] = ("$" + DATA_ROOT_ENV if a == "--data-root"
                                                        else "--data-root=$" + DATA_ROOT_ENV)
    line = " ".join(a if a.startswith(("$", "--data-root=$")) else shlex.quote(a) for a in args)
    if uses_data_root and not given and env:
        line += f" --data-root ${DATA_ROOT_ENV}"
    if prog in ("medad", "cli.py", "__main__.py") or prog.startswith("medad"):
        return ("medad " + line).strip()
    return f"not the medad command: {prog} {line}".strip()


def _same_path(a: str, b: str) -> bool:
    try:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    except (OSError, RuntimeError):
        return a == b


def run_record(*, uses_data_root: bool = True) -> dict[str, str]:
    """How this run's figures are made: ``command``, ``commit`` (:func:`git_commit`) and ``date``."""
    return {"command": command_line(uses_data_root=uses_data_root), "commit": git_commit(),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def stamp_rows(rows: Iterable[Any], record: dict[str, str]) -> None:
    """Give every result row (a dict) computed by this run its ``run`` record. Rows that already
    have a ``run`` key (taken from an earlier run's file, its record or ``None``) keep it: call
    this before merging earlier rows in, or mark reused rows with :func:`keep_run` first."""
    for r in rows:
        if isinstance(r, dict) and "run" not in r:
            r["run"] = record


def keep_run(row: Any) -> Any:
    """A row copied from an earlier run's file, marked so :func:`stamp_rows` leaves it alone
    (its own record, or ``None``: not recorded)."""
    return {**row, "run": row.get("run")} if isinstance(row, dict) else row


def select_rows(requested: Sequence[str] | None, known: Iterable[str], what: str = "row") -> list[str]:
    """The known row names that ``requested`` selects, in the order asked (a glob's matches in
    ``known``'s order): each entry is an exact name or a shell glob (``features*``), never a
    substring; ``None`` selects every row. An entry that matches nothing is a
    :class:`ConfigError` listing the known names -- raised before any work starts."""
    known = list(dict.fromkeys(known))
    if requested is None:
        return known
    picked: list[str] = []
    bad = []
    for req in requested:
        hits = [k for k in known if k == req] or (
            [k for k in known if fnmatch.fnmatchcase(k, req)] if any(c in req for c in "*?[") else [])
        if not hits:
            bad.append(req)
        picked += hits
    if bad:
        raise ConfigError(f"unknown {what}{'s' if len(bad) > 1 else ''} {', '.join(repr(b) for b in bad)}; "
                          f"known {what}s (exact names, or a glob such as 'name*'): {', '.join(known)}")
    return list(dict.fromkeys(picked))


def quick_of(results: dict[str, Any]) -> bool | None:
    """Whether a loaded benchmark file is a ``--quick`` run (top-level ``quick``, or the signal
    benchmarks' ``protocol.quick``); ``None`` when the file does not say."""
    q = results.get("quick")
    if q is None and isinstance(results.get("protocol"), dict):
        q = results["protocol"].get("quick")
    return None if q is None else bool(q)


def earlier_run(given: str | Path, name: str, *, quick: bool | None = None, what: str = "--merge",
                check: Callable[[dict[str, Any]], None] | None = None) -> tuple[Path, dict[str, Any]]:
    """An earlier run's ``<name>.json`` given to ``--merge`` (or ``--reuse-cv``) -- its output
    folder (``<folder>/<name>.json``) or the file itself -- read and checked, so that a wrong file
    fails BEFORE any data is read: it exists, is a JSON object, is a ``name`` benchmark (its
    ``benchmark`` field, where it has one), and ``check(results)`` (the benchmark's own test of its
    content; raise ``KeyError``/``TypeError``/``ValueError`` to refuse it) passes; with ``quick``
    given, a quick run is never mixed with a full one. Returns the file and its content."""
    import json

    p = Path(given).expanduser()
    f = p / f"{name}.json" if p.is_dir() else p
    if not f.is_file():
        raise ReadError(f"{what}: no {name}.json here (give an earlier run's output folder or its {name}.json)"
                        if p.is_dir() else f"{what}: no such file (give an earlier run's output folder or its "
                        f"{name}.json)", f)
    try:
        results = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ReadError(f"{what}: not a readable JSON file ({e})", f) from None
    if not isinstance(results, dict):
        raise ReadError(f"{what}: not a {name} benchmark file (not a JSON object)", f)
    other = results.get("benchmark")
    if other is not None and other != name:
        raise InputError(f"{what}: this is the {other} benchmark's file, not {name}'s", f)
    if check is not None:
        try:
            check(results)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ReadError(f"{what}: not a {name} benchmark file this run can use ({type(e).__name__}: {e})",
                            f) from None
    was = quick_of(results)
    if quick is not None and was is not None and was != bool(quick):
        raise InputError(f"{what}: cannot merge a {'quick' if quick else 'full'} run with this "
                         f"{'quick' if was else 'full'} one (run with{'' if was else 'out'} --quick, or give "
                         f"another file)", f)
    return f, results


def earlier_runs(given: str | Path | Iterable[str | Path] | None, name: str, *, quick: bool | None = None,
                 what: str = "--merge",
                 check: Callable[[dict[str, Any]], None] | None = None) -> list[tuple[Path, dict[str, Any]]]:
    """Every earlier run given to a repeatable ``--merge`` (one path, several, or ``None``: none),
    each read and checked once by :func:`earlier_run` -- all of them before any data is read, so a
    wrong one fails before the run, naming its file. Returns ``(file, content)`` in the order
    given; benchmarks merge them in that order with this run last, so a later run's row replaces
    an earlier run's row of the same name, and this run's rows replace both."""
    if given is None:
        return []
    items = [given] if isinstance(given, (str, Path)) else list(given)
    return [earlier_run(g, name, quick=quick, what=what, check=check) for g in items]


def merge_help(name: str, same: str = "--quick") -> str:
    """The ``--help`` text of ``--merge`` in every benchmark command that has it (``name``: the
    benchmark; ``same``: the settings a merged run must share with this one)."""
    return (f"an earlier run's output folder or its {name}.json (same {same}), whose rows this run does not "
            "redo are kept; repeatable: a later one's rows replace an earlier one's, this run's replace both; "
            "each is read and checked before anything runs")


def reproduce_markdown(record: dict[str, str], rows: Sequence[tuple[str, str, Any]] | None = None) -> str:
    """The "How to reproduce" section: the command, commit and date of each group of rows.
    ``rows``: ``(group, name, run record or None)`` per result row (``group`` e.g. a task, may be
    empty); without rows, or when every row comes from this run, one line for the whole file."""
    def head(rec: Any) -> str:
        if not isinstance(rec, dict) or not rec.get("command"):
            return f"{NOT_RECORDED} (computed before benchmarks recorded their command and commit)"
        return f"`{rec['command']}` (medad commit {rec.get('commit', 'unknown')}, {rec.get('date', 'date unknown')})"

    lines = ["", "## How to reproduce", ""]
    runs = {} if rows is None else {head(run): None for _, _, run in rows}
    if not runs or list(runs) == [head(record)]:
        return "\n".join(lines + [f"Every figure here: {head(record)}.", ""])
    lines.append(f"This file was written by {head(record)}; its rows come from these runs:")
    lines.append("")
    for h in runs:
        groups: dict[str, list[str]] = {}
        for g, name, run in rows or ():
            if head(run) == h:
                groups.setdefault(g, []).append(name)
        lines.append(f"- {h}:")
        lines += [f"  - {g + ': ' if g else ''}{', '.join(names)}" for g, names in groups.items()]
    return "\n".join(lines + [""])


def fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 3) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append("| " + " | ".join(fmt(v, digits) for v in r) + " |")
    return "\n".join(lines) + "\n"


def write_benchmark(out: str | Path, name: str, results: dict[str, Any], markdown: str, *,
                    record: dict[str, str] | None = None,
                    rows: Sequence[tuple[str, str, Any]] | None = None) -> tuple[Path, Path]:
    """Write ``<out>/<name>.json`` (results + environment + ``run``: command, commit, date) and
    ``<out>/<name>.md`` (with a "How to reproduce" section) atomically.

    ``record``: this run's :func:`run_record` (default: made now); ``rows``: ``(group, name, run
    record or None)`` per result row when rows come from different runs (``--merge``)."""
    out = Path(out)
    record = record or run_record()
    results = {"benchmark": name, "environment": environment(), **results, "run": record}
    j = write_json(out / f"{name}.json", results)
    m = write_text(out / f"{name}.md", markdown.rstrip("\n") + "\n" + reproduce_markdown(record, rows))
    print(f"wrote {j} and {m}")
    return j, m
