import json

import numpy as np
from typer.testing import CliRunner

from medad.cli import app


def test_evaluate_writes_metrics_and_protocol(tmp_path):
    rng = np.random.default_rng(0)
    lines = ["score,label,subject,healthy_val"]
    for i in range(60):
        lines.append(f"{rng.normal():.4f},0,h{i % 20},{int(i < 20)}")
    for i in range(40):
        lines.append(f"{rng.normal(2.5):.4f},1,p{i % 10},0")
    csv = tmp_path / "scores.csv"
    csv.write_text("\n".join(lines))
    out = tmp_path / "ev.json"
    r = CliRunner().invoke(app, ["evaluate", str(csv), "--out", str(out), "--split", "test"])
    assert r.exit_code == 0, r.output
    d = json.loads(out.read_text())
    assert d["metrics"]["auroc"] > 0.9
    assert d["protocol"]["threshold_source"].startswith("healthy validation rows (n=20)")
    assert d["metrics"]["n_items"] == 80
    assert 0 <= d["metrics"]["at_threshold"]["specificity"] <= 1


def test_evaluate_bad_csv_names_the_file(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("value,truth\n1,0\n")
    r = CliRunner().invoke(app, ["evaluate", str(bad)])
    assert r.exit_code != 0
    from medad.cli import main
    import pytest

    with pytest.raises(SystemExit) as e:
        main(["evaluate", str(bad)])
    assert e.value.code == 2
