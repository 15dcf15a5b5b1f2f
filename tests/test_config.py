"""YAML configs: a variant names a ``base`` config and only what differs; loops and missing
bases are clear errors naming the file."""

from __future__ import annotations

import pytest

from medad.config import load_config
from medad.errors import ConfigError


def test_base_config_is_merged_key_by_key(tmp_path):
    (tmp_path / "a.yaml").write_text("detector: dae\ndetector_params:\n  epochs: 12\n  polarity: positive\nerode: 2\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\ndetector_params:\n  polarity: abs\n")
    cfg = load_config(tmp_path / "b.yaml")
    assert cfg == {"detector": "dae", "detector_params": {"epochs": 12, "polarity": "abs"}, "erode": 2}


def test_base_config_errors_name_the_file(tmp_path):
    (tmp_path / "loop1.yaml").write_text("base: loop2.yaml\n")
    (tmp_path / "loop2.yaml").write_text("base: loop1.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_config(tmp_path / "loop1.yaml")
    (tmp_path / "c.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml") as e:
        load_config(tmp_path / "c.yaml")
    assert "c.yaml" in str(e.value)


def test_every_shipped_brain_config_loads():
    from pathlib import Path

    from medad import registry
    from pipelines.brain_lesions import BrainLesionConfig

    configs = sorted((Path(__file__).parents[1] / "configs").glob("brain_*.yaml"))
    assert len(configs) >= 12
    for p in configs:
        cfg = BrainLesionConfig.from_yaml(p)
        for c in cfg.member_configs() or [cfg]:
            det = registry.create(c.detector, **c.detector_params)
            if p.stem.endswith("_t1c") and hasattr(det, "polarity"):  # T1c lesions are not only brighter
                assert det.polarity == "abs", p


def test_unknown_detector_parameter_is_a_config_error():
    from medad import registry
    from medad.errors import ConfigError

    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) for detector 'ae': chanels; known: .*channels"):
        registry.create("ae", chanels=[8, 16])
    assert registry.create("ae", channels=[8, 16]).channels == [8, 16]


def test_configs_that_come_with_medad_are_found_by_name_from_anywhere(tmp_path, monkeypatch):
    """`--config configs/brain_intensity.yaml` run outside the repository, or `--config
    brain_intensity`, read medad's own config; an unknown name lists the ones there are."""
    from medad.config import CONFIG_DIR, load_config
    from medad.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    own = load_config(CONFIG_DIR / "brain_intensity.yaml")
    assert load_config("configs/brain_intensity.yaml") == own == load_config("brain_intensity")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "brain_intensity.yaml").write_text("detector: ae\n")  # a file that exists wins
    assert load_config("configs/brain_intensity.yaml") == {"detector": "ae"}
    with pytest.raises(ConfigError, match="config file not found; configs that come with medad.*brain_intensity"):
        load_config("no_such_config")
