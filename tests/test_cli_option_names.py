"""One spelling per idea across the CLI's options (user audit): canonical names are accepted
where the idea exists, older spellings still work as hidden aliases, ``--help`` shows the
canonical name only, and no idea is spelled two ways (or one name used for two ideas)."""

from __future__ import annotations

import json
import re
import typing
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from medad.cli import app
from medad.commands import alias_opts, canonical_opts

# idea -> (canonical option, older spellings kept as hidden aliases, commands that have the idea)
IDEAS = {
    "sampling rate of plain-text recordings": (
        "--text-sfreq", ("--sfreq",), ("inspect", "explain", "screen train", "screen run")),
    "target false-positive rate of the calibration": (
        "--fpr", ("--window-fpr",), ("evaluate", "images train", "screen train")),
    "write a PNG per flagged item": (
        "--overlays", ("--plots",), ("brain score", "images screen", "screen run")),
    "intensity normalization of the input": ("--normalize", ("--normalise",), ("explain",)),
    "working (resampling) sampling rate": ("--sfreq", (), ("screen train", "explain")),
    "number of generated channels": ("--n-channels", ("--channels",), ("bench screening-speed",)),
    "recording channels to use, by name (comma-separated)": (
        "--channels", (), ("screen train", "screen run", "explain")),
    "which parts of a multi-part run run": ("--parts", ("--part",), ("demo", "bench explain")),
    "which benchmark rows run (exact name or glob)": (
        "--detectors", ("--method",),
        ("bench brain-lesions", "bench image-screening", "bench bonn", "bench yaseen", "bench mitbih")),
}
# where an alias is kept, the command that takes it (the other commands never had that spelling
# for this idea; e.g. `screen train --sfreq` is the working rate, not an alias)
ALIAS_IN = {
    "--sfreq": ("inspect",),
    "--window-fpr": ("screen train",),
    "--plots": ("screen run",),
    "--normalise": ("explain",),
    "--channels": ("bench screening-speed",),
    "--part": ("bench explain",),
    "--method": ("bench bonn", "bench yaseen", "bench mitbih"),  # `explain --method` is the explanation method
}
# values to parse each option with (flags take none)
VALUES = {"--text-sfreq": "100", "--sfreq": "100", "--fpr": "0.02", "--window-fpr": "0.02", "--normalize": "zscore",
          "--normalise": "zscore", "--n-channels": "4", "--channels": "4", "--parts": "eeg", "--part": "eeg",
          "--detectors": "pca", "--method": "pca"}
# British -> American spellings, and synonyms the audit found for one idea
SPELLING = {"normalise": "normalize", "normalisation": "normalization", "colour": "color", "grey": "gray",
            "centre": "center", "tumour": "tumor", "analyse": "analyze", "visualise": "visualize"}
SYNONYMS = {"plots": "overlays", "window-fpr": "fpr", "part": "parts"}


def _commands() -> dict[str, object]:
    """Every leaf command of the ``medad`` app by its path (``"screen train"``)."""
    out: dict[str, object] = {}

    def walk(cmd, path: list[str]) -> None:
        subs = getattr(cmd, "commands", None)
        if subs is None:
            out[" ".join(path)] = cmd
            return
        for name, sub in subs.items():
            walk(sub, path + [name])

    walk(typer.main.get_command(app), [])
    return out


COMMANDS = _commands()


def _options(cmd) -> list:
    return [p for p in cmd.params if p.param_type_name == "option"]


def _visible(cmd) -> set[str]:
    return {o for p in _options(cmd) for o in canonical_opts(p.opts) + canonical_opts(p.secondary_opts)
            if o.startswith("--")}


def _param_of(cmd, opt: str):
    return next(p for p in _options(cmd) if opt in p.opts or opt in p.secondary_opts)


def _parse(path: str, args: list[str]) -> dict:
    """Parse ``args`` for command ``path`` (its required arguments filled with dummies) without
    running it: the values each parameter receives."""
    cmd = COMMANDS[path]
    filler = ["x" for p in cmd.params if p.param_type_name == "argument" and p.required]
    if any(p.required for p in _options(cmd) if "--out" in p.opts):
        filler += ["--out", "o"]
    return cmd.make_context(path.split()[-1], filler + args).params


def _args(opt: str) -> list[str]:
    return [opt] + ([VALUES[opt]] if opt in VALUES else [])


def _help(path: str) -> str:
    r = CliRunner().invoke(app, path.split() + ["--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    return r.output


def test_table_commands_exist():
    for idea, (_, _, paths) in IDEAS.items():
        for path in paths:
            assert path in COMMANDS, f"{idea}: no command {path!r}"


@pytest.mark.parametrize("idea", sorted(IDEAS))
def test_canonical_option_is_accepted_by_every_command_with_the_idea(idea):
    canonical, _, paths = IDEAS[idea]
    for path in paths:
        cmd = COMMANDS[path]
        assert canonical in _visible(cmd), f"{path}: {canonical} missing (shown: {sorted(_visible(cmd))})"
        name = _param_of(cmd, canonical).name
        parsed = _parse(path, _args(canonical))
        expected = {"--text-sfreq": 100.0, "--sfreq": 100.0, "--fpr": 0.02, "--normalize": "zscore",
                    "--n-channels": 4, "--overlays": True, "--parts": ["eeg"], "--detectors": ["pca"],
                    "--channels": "4"}[canonical]  # names, split later (_channel_list): "4" parses as is
        assert parsed[name] == expected or parsed[name] == tuple(expected), (path, canonical, parsed[name])


@pytest.mark.parametrize("alias", sorted(ALIAS_IN))
def test_old_spelling_still_works_and_means_the_same(alias):
    canonical = next(c for c, aliases, _ in IDEAS.values() if alias in aliases)
    for path in ALIAS_IN[alias]:
        cmd = COMMANDS[path]
        p = _param_of(cmd, canonical)
        assert alias in alias_opts(p.opts), f"{path}: {alias} is not an alias of {canonical}"
        assert _parse(path, _args(alias))[p.name] == _parse(path, _args(canonical))[p.name]


def test_negative_flag_alias():
    """``screen run --no-plots`` (older scripts) still turns the PNGs off, like --no-overlays."""
    for flag in ("--no-plots", "--no-overlays"):
        assert _parse("screen run", [flag])["overlays"] is False
    assert _parse("screen run", [])["overlays"] is True


def test_help_shows_canonical_names_only():
    for path, cmd in COMMANDS.items():
        aliases = {a for p in _options(cmd) for a in alias_opts(p.opts) + alias_opts(p.secondary_opts)}
        aliases -= _visible(cmd)
        if not aliases:
            continue
        text = _help(path)
        for a in aliases:
            assert not re.search(rf"(?<![\w-]){re.escape(a)}(?![\w-])", text), f"{path} --help shows alias {a}"
        for p in _options(cmd):
            if alias_opts(p.opts):
                assert canonical_opts(p.opts)[0] in text


def _spelling_key(name: str) -> str:
    name = SYNONYMS.get(name.lstrip("-"), name.lstrip("-"))
    return "-".join(SPELLING.get(t, t) for t in name.split("-"))


def test_no_idea_under_two_spellings():
    """Among the names ``--help`` shows (aliases are hidden by the test above), one spelling per
    word and per idea: no ``normalise`` beside ``normalize``, no ``--plots`` beside ``--overlays``."""
    names = {o for cmd in COMMANDS.values() for o in _visible(cmd)}
    by_key: dict[str, set[str]] = {}
    for n in names:
        by_key.setdefault(_spelling_key(n), set()).add(n)
    clashes = {k: v for k, v in by_key.items() if len(v) > 1}
    assert not clashes, f"one idea, several spellings: {clashes}"
    words: dict[str, set[str]] = {}
    for n in names:
        for t in n.lstrip("-").split("-"):
            words.setdefault(SPELLING.get(t, t), set()).add(t)
    mixed = {k: v for k, v in words.items() if len(v) > 1}
    assert not mixed, f"British and American spellings mixed: {mixed}"


def _base_type(hint):
    """``Optional[List[float]]`` -> ``float``: the kind of one value, whether optional or repeatable."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return _base_type(args[0]) if args else hint


def test_one_name_one_kind_of_value():
    """A name shown by several commands takes the same kind of value everywhere (``--channels``
    used to be a count in one command and channel names in another)."""
    kinds: dict[str, dict[str, str]] = {}
    for path, cmd in COMMANDS.items():
        hints = typing.get_type_hints(cmd.callback)  # the annotation: click's type API differs by version
        for p in _options(cmd):
            kind = _base_type(hints[p.name]).__name__
            for o in canonical_opts(p.opts):
                if o.startswith("--"):
                    kinds.setdefault(o, {})[path] = kind
    differ = {o: k for o, k in kinds.items() if len(set(k.values())) > 1}
    assert not differ, f"same option name, different kinds of value: {differ}"


def test_alias_and_canonical_give_the_same_result_end_to_end(tmp_path):
    """``medad inspect`` of a plain-text recording: ``--sfreq`` (old) == ``--text-sfreq``."""
    f = tmp_path / "rec.txt"
    np.savetxt(f, np.random.default_rng(0).normal(size=(500, 1)))
    outs = []
    for opt in ("--text-sfreq", "--sfreq"):
        r = CliRunner().invoke(app, ["inspect", str(f), opt, "100", "--json"])
        assert r.exit_code == 0, r.output
        outs.append(json.loads(r.output))
    assert outs[0] == outs[1] and outs[0]["sfreq"] == 100.0


@pytest.mark.parametrize("opt", ["--fpr", "--window-fpr"])
def test_bad_fpr_is_refused_under_either_name(tmp_path, opt):
    r = CliRunner().invoke(app, ["screen", "train", str(tmp_path / "absent"), opt, "0", "--out", str(tmp_path / "m")])
    assert r.exit_code == 2 and opt in r.output and "not found" not in r.output
    assert not (tmp_path / "m").exists()


def test_config_keys_accept_the_option_names(tmp_path):
    """A YAML key mirroring an option is accepted under the option's canonical name (``-`` -> ``_``);
    the screening key ``window_fpr`` (older) is still read, and giving both is an error."""
    from medad.errors import ConfigError
    from pipelines.frames import FramesConfig
    from pipelines.screening import ScreeningConfig

    mirrored = {"screen train": (ScreeningConfig, ("--fpr", "--sfreq", "--text-sfreq", "--detector", "--channels")),
                "images train": (FramesConfig, ("--fpr", "--image-size", "--detector"))}
    for path, (cls, opts) in mirrored.items():
        for o in opts:
            assert o in _visible(COMMANDS[path]), (path, o)
    assert {o[2:].replace("-", "_") for o in mirrored["images train"][1]} <= set(FramesConfig.__dataclass_fields__)
    y = tmp_path / "s.yaml"
    y.write_text("screening:\n  fpr: 0.03\n  sfreq: 128\n  text_sfreq: 100\n")
    cfg = ScreeningConfig.from_yaml(y)
    assert (cfg.window_fpr, cfg.sfreq, cfg.text_sfreq) == (0.03, 128, 100)
    y.write_text("screening:\n  window_fpr: 0.04\n")
    assert ScreeningConfig.from_yaml(y).window_fpr == 0.04
    y.write_text("screening:\n  window_fpr: 0.04\n  fpr: 0.03\n")
    with pytest.raises(ConfigError, match="not both"):
        ScreeningConfig.from_yaml(y)
    y.write_text("screening:\n  fpr: 1.5\n")
    with pytest.raises(ConfigError, match="window_fpr"):
        ScreeningConfig.from_yaml(y)


def test_explain_text_rate_and_resampling_rate_are_distinct(tmp_path):
    """``explain``: --text-sfreq is a text file's own rate, --sfreq the resampling rate; a text
    file cannot be given one and resampled to another."""
    from medad.commands.explain import _read_rate

    txt, edf = Path("r.txt"), Path("r.edf")
    assert _read_rate(txt, 100.0, None) == 100.0
    assert _read_rate(txt, None, 100.0) == 100.0  # the older use of --sfreq
    assert _read_rate(edf, 100.0, None) is None  # an EDF has its own rate: not resampled
    assert _read_rate(edf, None, 128.0) == 128.0
    with pytest.raises(typer.BadParameter):
        _read_rate(txt, 100.0, 128.0)


@pytest.mark.parametrize("path,module,func,key", [("demo", "medad.demo", "run_demo", "parts"),
                                                  ("bench explain", "medad.bench.explain", "run", "part")])
def test_parts_repeated_comma_separated_or_old_spelling_reach_the_run(monkeypatch, tmp_path, path, module, func, key):
    """``--parts`` (demo, bench explain) takes names repeated or comma-separated, default all;
    ``bench explain --part`` (older) still works."""
    import importlib

    seen = []
    monkeypatch.setattr(importlib.import_module(module), func, lambda *a, **k: seen.append(k[key]))
    a, b = ("brain", "eeg") if path == "demo" else ("brats", "ecg")
    calls = [[], ["--parts", f"{a}, {b}"], ["--parts", a, "--parts", b], ["--parts", a]]
    if path == "bench explain":
        calls.append(["--part", a])
    for args in calls:
        r = CliRunner().invoke(app, path.split() + ["--out", str(tmp_path)] + args)
        assert r.exit_code == 0, r.output
    assert seen[:4] == [["all"], [a, b], [a, b], [a]] and seen[4:] == ([[a]] if path == "bench explain" else [])
    assert "repeatable or comma-separated" in _help(path)


def test_demo_parts_are_checked_before_anything_is_written(monkeypatch, tmp_path):
    import medad.demo as demo
    from medad.errors import ConfigError

    ran = []
    monkeypatch.setattr(demo, "run_brain_demo", lambda out, **k: ran.append("brain") or {"cases": []})
    monkeypatch.setattr(demo, "run_eeg_demo", lambda out, **k: ran.append("eeg") or {"recordings": []})
    for parts, match in (([], "no demo part"), (["brain", "ecg"], "unknown demo part"), ("eeg", "list of part names")):
        with pytest.raises(ConfigError, match=match):
            demo.run_demo(tmp_path / "d", parts=parts)
    assert not (tmp_path / "d").exists() and ran == []
    demo.run_demo(tmp_path / "d", parts=["all"])
    assert ran == ["brain", "eeg"]


def test_bench_explain_runs_several_parts_and_keeps_the_others(monkeypatch, tmp_path):
    """``bench explain --parts ecg,brats`` runs those two (in the benchmark's order) and keeps Bonn
    from the earlier explain.json; the error messages name the parts as --parts takes them."""
    import shutil

    import medad.bench.explain as ex
    from medad.errors import InputError

    class Stop(Exception):
        pass

    ran = []

    def fake(name):
        def bench(*a, **k):
            ran.append(name)
            if name == "ecg":
                raise Stop
            return {}
        return bench

    for name in ex.PARTS:
        monkeypatch.setattr(ex, f"bench_{name}", fake(name))
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(Path(__file__).resolve().parents[1] / "benchmarks" / "explain.json", out / "explain.json")
    with pytest.raises(Stop):
        ex.run(data_root=tmp_path, out=out, threads=1, part=["ecg", "brats"])
    assert ran == ["brats", "ecg"]
    quick = json.loads((out / "explain.json").read_text())["quick"]
    with pytest.raises(InputError, match=r"--parts bonn,ecg( --quick)? would keep the other parts"):
        ex.run(data_root=tmp_path, out=out, threads=1, part=["ecg", "bonn"], quick=not quick)
    for bad in ([], ["ecg", "nosuch"]):
        with pytest.raises(InputError, match="part must be all, brats, bonn, ecg"):
            ex.run(data_root=tmp_path, out=out, part=bad)
    assert ran == ["brats", "ecg"]
