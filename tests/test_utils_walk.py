"""Folder walking follows links to folders (a case folder linked into a study) and does not loop."""

from __future__ import annotations

import os

import pytest

from medad.utils import walk_files, walk_folders


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symbolic links here")
def test_walk_follows_folder_links_once(tmp_path):
    study, elsewhere = tmp_path / "study", tmp_path / "elsewhere"
    (study / "a" / "b").mkdir(parents=True)
    (elsewhere / "case").mkdir(parents=True)
    (study / "a" / "b" / "x.nii.gz").write_bytes(b"")
    (elsewhere / "case" / "y.nii.gz").write_bytes(b"")
    (study / "notes.txt").write_text("n")
    (study / "linked").symlink_to(elsewhere, target_is_directory=True)
    (study / "a" / "loop").symlink_to(study, target_is_directory=True)  # a link back up
    names = [p.relative_to(study).as_posix() for p in walk_files(study, "*.nii*")]
    assert names == ["a/b/x.nii.gz", "linked/case/y.nii.gz"]
    folders = [p.relative_to(study).as_posix() for p in walk_folders(study)]
    assert folders == [".", "a", "a/b", "linked", "linked/case"]
    assert [p.name for p in walk_files(study)] == ["x.nii.gz", "y.nii.gz", "notes.txt"]
