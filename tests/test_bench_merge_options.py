"""``--merge`` means the same in every ``medad bench`` command that has it: repeatable (several
earlier runs), a later run's rows replace an earlier one's and this run's replace both, and every
file is read once and checked (``medad.bench.common.earlier_run``) before any data is read.
``--detectors`` help says truthfully whether names may be comma-separated. Tiny fakes only: the
data loading is replaced by a stand-in that raises, nothing is trained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import medad.bench.common as common
from medad.cli import app
from medad.errors import InputError, MedadError

REPO = Path(__file__).resolve().parents[1]
MERGE_BENCHES = ("brain-lesions", "image-screening", "bonn", "yaseen", "mitbih")


class _Stop(Exception):
    """Raised by the stand-in for the first data read: reaching it means every check passed."""


def _stop(*a, **k):
    raise _Stop


def _bench_commands() -> dict[str, object]:
    group = typer.main.get_command(app).commands["bench"]
    return dict(group.commands)


def _write(path: Path, content: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))
    return path


def _earlier_file(bench: str, *, quick: bool = False, date: str = "D1") -> dict:
    """A minimal earlier run of ``bench`` that its --merge check accepts (with ``quick`` as given)."""
    import medad.bench.signals as sig

    env = {"date": date}
    if bench == "brain-lesions":
        return {"benchmark": bench, "quick": quick, "environment": env,
                "results": [{"modality": "flair", "detector": "ae"}]}
    if bench == "image-screening":
        return {"benchmark": bench, "quick": quick, "budget": 1.0, "environment": env,
                "tasks": {"wce": {"results": {"pca": {"auroc": 0.7}}}}}
    task = {"bonn": sig.BONN_CD_TASK, "mitbih": sig.MITBIH_TASK,
            "yaseen": "one-class on normal: held-out normal vs abnormal"}[bench]
    return {"benchmark": bench, "environment": env, "protocol": {"quick": quick},
            "results": {task: {"features": {"auroc": 0.9}}}}


@pytest.fixture
def no_data(monkeypatch, tmp_path):
    """Every benchmark's first data read raises :class:`_Stop`; returns the command-line tail each
    bench needs to get that far (a data root, and for image-screening a data folder of one task)."""
    import medad.bench.brain_lesions as bl
    import medad.bench.image_screening as ims
    import medad.bench.signals as sig
    import medad.datasets

    monkeypatch.setattr(medad.datasets, "dataset_root", _stop)  # bonn
    monkeypatch.setattr(sig, "_load_yaseen", _stop)
    monkeypatch.setattr(sig, "load_mitbih_beats", _stop)
    monkeypatch.setattr(bl, "BenchData", _stop)
    monkeypatch.setattr(ims, "TASKS", {t: _stop for t in ims.ALL_TASKS})
    root = tmp_path / "data"
    (root / ims.TASK_DATA["brain"][0]).mkdir(parents=True)
    extra = {"brain-lesions": ["--config-dir", str(REPO / "configs")], "image-screening": ["--tasks", "brain"],
             "bonn": ["-m", "features"], "yaseen": ["-m", "features"], "mitbih": ["-m", "isolation_forest"]}
    return {b: ["--data-root", str(root), "--out", str(tmp_path / "out")] + extra[b] for b in MERGE_BENCHES}


def _invoke(bench: str, merges: list[Path], tail: list[str]):
    args = ["bench", bench] + [a for m in merges for a in ("--merge", str(m))] + tail
    return CliRunner().invoke(app, args)


# ----------------------------------------------------------------------------- the option itself


def test_the_benches_with_merge_are_these_and_all_take_several():
    """One declaration of the idea: a repeatable --merge of paths, with the same help (bonn and
    mitbih took one path -- a second --merge silently replaced the first -- and yaseen refused it)."""
    cmds = _bench_commands()
    have = {name for name, cmd in cmds.items()
            if any("--merge" in p.opts for p in cmd.params if p.param_type_name == "option")}
    assert have == set(MERGE_BENCHES)
    for name in MERGE_BENCHES:
        cmd = cmds[name]
        p = next(p for p in cmd.params if "--merge" in p.opts)
        assert p.multiple, f"bench {name} --merge takes one path"
        ctx = cmd.make_context(name, ["--merge", "a", "--merge", "b"])
        assert [str(v) for v in ctx.params[p.name]] == ["a", "b"], name
        same = "--quick and --budget" if name == "image-screening" else "--quick"
        assert p.help == common.merge_help(name, same)
        assert f"{name}.json" in p.help and "repeatable: a later one's rows replace an earlier one's" in p.help


# ----------------------------------------------------------------------------- checked before data, read once


@pytest.mark.parametrize("bench", MERGE_BENCHES)
def test_two_merge_sources_are_each_read_once_and_checked_before_any_data(bench, no_data, tmp_path, monkeypatch):
    reads: list[Path] = []
    real = common.earlier_run

    def counted(given, *a, **k):
        reads.append(Path(given))
        return real(given, *a, **k)

    monkeypatch.setattr(common, "earlier_run", counted)
    first = _write(tmp_path / "first" / f"{bench}.json", _earlier_file(bench, date="D1")).parent
    second = _write(tmp_path / "second" / f"{bench}.json", _earlier_file(bench, date="D2"))
    res = _invoke(bench, [first, second], no_data[bench])
    # both accepted, each read once, both before the data: the run got as far as its first data read
    assert isinstance(res.exception, _Stop), (res.output, res.exception)
    assert reads == [first, second]


@pytest.mark.parametrize("bench", MERGE_BENCHES)
def test_a_bad_merge_source_fails_first_whichever_place_it_has(bench, no_data, tmp_path):
    """The bad file given first used to be dropped unread by bonn/mitbih (the last --merge won)."""
    good = _write(tmp_path / "good" / f"{bench}.json", _earlier_file(bench))
    bad = _write(tmp_path / "quick" / f"{bench}.json", _earlier_file(bench, quick=True))
    for merges in ([bad, good], [good, bad]):
        res = _invoke(bench, merges, no_data[bench])
        assert isinstance(res.exception, InputError), (merges, res.output, res.exception)
        assert "cannot merge a full run with this quick one" in str(res.exception) and res.exception.path == bad
    missing = tmp_path / "empty"
    missing.mkdir()
    res = _invoke(bench, [good, missing], no_data[bench])
    assert isinstance(res.exception, MedadError) and f"no {bench}.json here" in str(res.exception)


# ----------------------------------------------------------------------------- later replaces earlier


def test_signal_tables_later_run_replaces_earlier_rows_in_place():
    from medad.bench.signals import _merge_tables, _merged_note

    a = {"t": {"x": 1, "y": 1, "z": 1}, "only a": {"x": 1}}
    b = {"t": {"y": 2, "w": 2}, "only b": {"x": 2}}
    this = {"t": {"z": 3, "v": 3}}
    merged = _merge_tables([a, b, this])
    assert merged == {"t": {"x": 1, "y": 2, "z": 3, "w": 2, "v": 3}, "only a": {"x": 1}, "only b": {"x": 2}}
    assert list(merged["t"]) == ["x", "y", "z", "w", "v"] and list(merged) == ["t", "only a", "only b"]
    one = _merged_note(["t: z"], [({}, "the run of D1")])
    assert one == "this run: t: z; every other row is kept from the run of D1"
    two = _merged_note([], [({}, "the run of D1"), ({}, "the run of D2")])
    assert two.endswith("the last of these runs (given in this order) that holds it: (1) the run of D1; "
                        "(2) the run of D2") and two.startswith("this run: nothing;")


def test_mitbih_several_earlier_runs_later_wins(tmp_path):
    from medad.bench.signals import MITBIH_TASK, SCREENING_CONFIG, _merge_mitbih_runs, _previous_runs

    one = {"benchmark": "mitbih", "environment": {"date": "D1"}, "protocol": {"quick": False},
           "results": {MITBIH_TASK: {"a": {"auroc": 0.1}, "b": {"auroc": 0.1}, "c": {"auroc": 0.1}}},
           "per_record": {"a": {"100": 1}, "b": {"100": 1}}, "pipeline": {"auroc": 0.5}}
    two = {"benchmark": "mitbih", "environment": {"date": "D2"}, "protocol": {"quick": False},
           "results": {MITBIH_TASK: {"b": {"auroc": 0.2}, "d": {"auroc": 0.2}}},
           "per_record": {"b": {"100": 2}}, "pipelines": {SCREENING_CONFIG.name: {"auroc": 0.6}}}
    first = _write(tmp_path / "1" / "mitbih.json", one)
    _write(tmp_path / "2" / "mitbih.json", two)
    earlier = _previous_runs([first, tmp_path / "2"], False, MITBIH_TASK, bench="mitbih")
    assert [s for _, s in earlier] == ["the run of D1", "the run of D2"]
    res, per, pipes = _merge_mitbih_runs(earlier, {"c": {"auroc": 0.3}}, {"c": {"100": 3}}, {})
    assert {k: v["auroc"] for k, v in res.items()} == {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.2}
    assert list(res) == ["a", "b", "c", "d"]
    assert per == {"a": {"100": 1}, "b": {"100": 2}, "c": {"100": 3}}
    assert pipes == {SCREENING_CONFIG.name: {"auroc": 0.6}}


def test_image_screening_later_merge_replaces_earlier_results(monkeypatch, tmp_path):
    """Of two --merge files holding the same task, the first given used to win (and, with
    different methods, the merge crashed: a task taken whole named its source as one string)."""
    import medad.bench.image_screening as ims

    ran = []
    monkeypatch.setattr(ims, "TASKS", {t: (lambda root, quick, only, t=t: ran.append(t) or
                                           {"results": {"pca": {"auroc": 0.3}}}) for t in ims.ALL_TASKS})
    monkeypatch.delenv("MEDAD_DATA_ROOT", raising=False)
    root = tmp_path / "data"
    (root / ims.TASK_DATA["brain"][0]).mkdir(parents=True)
    base = {"benchmark": "image-screening", "quick": False, "budget": 1.0}
    a = _write(tmp_path / "a" / "image-screening.json", {
        **base, "environment": {"date": "D1"},
        "tasks": {"wce": {"results": {"pca": {"auroc": 0.1}, "ae": {"auroc": 0.1}}},
                  "brain": {"results": {"pca": {"auroc": 0.1}, "ae": {"auroc": 0.1}}},
                  "covid": {"results": {"pca": {"auroc": 0.1}}}}})
    b = _write(tmp_path / "b" / "image-screening.json", {
        **base, "environment": {"date": "D2"},
        "tasks": {"wce": {"results": {"pca": {"auroc": 0.2}}}, "kvasir": {"results": {"pca": {"auroc": 0.2}}}}})
    res = ims.run_image_screening(root, tmp_path / "out", tasks=["brain"], merge=[a, b])
    t = res["tasks"]
    assert ran == ["brain"]
    assert list(t) == ["brain", "wce", "covid", "kvasir"]  # this run's, then the files' in the order given
    assert {k: v["auroc"] for k, v in t["brain"]["results"].items()} == {"pca": 0.3, "ae": 0.1}
    assert {k: v["auroc"] for k, v in t["wce"]["results"].items()} == {"pca": 0.2, "ae": 0.1}
    assert t["wce"]["merged_from"] == {str(b): {"methods": ["pca"], "run_date": "D2"},
                                       str(a): {"methods": ["ae"], "run_date": "D1"}}
    assert t["covid"]["merged_from"] == str(a) and t["kvasir"]["merged_from"] == str(b)
    md = (tmp_path / "out" / "image-screening.md").read_text()
    assert f"`wce` methods pca from {b}, run D2" in md and f"`wce` methods ae from {a}, run D1" in md


# ----------------------------------------------------------------------------- --detectors: commas


def test_image_screening_names_hold_no_comma_so_both_options_split_on_commas(monkeypatch, tmp_path):
    import medad.bench.image_screening as ims

    names = {n for t in ims.ALL_TASKS for n in ims.detector_names(t)} | set(ims.ALL_TASKS)
    assert not [n for n in names if "," in n], "a name with a comma: --detectors/--tasks must not split on commas"
    seen = []
    monkeypatch.setattr(ims, "run_image_screening", lambda root, out, **k: seen.append((k["tasks"], k["detectors"])))
    for args in (["--tasks", "brain,covid", "--detectors", "pca, ae"],
                 ["--tasks", "brain", "--tasks", "covid", "--detectors", "pca", "--detectors", "ae"]):
        r = CliRunner().invoke(app, ["bench", "image-screening", "--data-root", str(tmp_path)] + args)
        assert r.exit_code == 0, r.output
    assert seen == [(["brain", "covid"], ["pca", "ae"])] * 2
    help_text = " ".join(CliRunner().invoke(app, ["bench", "image-screening", "--help"],
                                            env={"COLUMNS": "300"}).output.split())
    assert "repeated or comma-separated (--detectors pca,ae" in help_text


@pytest.mark.parametrize("bench", ["bonn", "mitbih", "yaseen"])
def test_signal_bench_labels_are_not_split_and_the_help_says_why(bench, monkeypatch, tmp_path):
    """bonn/yaseen/mitbih take one label per --detectors (bonn and mitbih labels hold commas); the
    help says so without claiming that yaseen's own labels hold commas."""
    import medad.bench.signals as sig

    labels = {"bonn": sig.bonn_methods, "yaseen": sig.yaseen_methods, "mitbih": sig.mitbih_methods}[bench](False, None)
    given = sig.COMMA_LABEL.get(bench, "features")
    assert given in labels  # the help's example is a real label
    text = " ".join(next(p for p in _bench_commands()[bench].params if p.name == "method").help.split())
    assert "one label per --detectors, repeated (not comma-separated:" in text
    if bench == "yaseen":
        assert not [m for m in labels if "," in m]
        assert "as in bench bonn and mitbih, whose labels hold commas" in text
    else:
        assert f"labels hold commas, e.g. '{given}'" in text
    seen = []

    def asked(requested, known, what="row"):
        seen.append(list(requested))
        raise _Stop

    monkeypatch.setattr(sig, "select_rows", asked)  # the run's first step: the rows asked for
    res = CliRunner().invoke(app, ["bench", bench, "--detectors", given, "-m", "cnn*", "--data-root", str(tmp_path),
                                   "--out", str(tmp_path / "out")])
    assert isinstance(res.exception, _Stop), res.output
    assert seen == [[given, "cnn*"]]  # each value whole: a label's commas are not split


def test_brain_lesions_detectors_help_no_longer_points_at_a_wrong_example():
    cmd = _bench_commands()["brain-lesions"]
    text = " ".join(next(p for p in cmd.params if p.name == "detectors").help.split())
    assert "as bench image-screening takes them" not in text and "repeated or comma-separated" in text
