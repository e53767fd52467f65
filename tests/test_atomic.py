"""Atomic writes: the destination appears complete or not at all, and nothing is left behind."""

from pathlib import Path

import numpy as np
import pytest

from erasure.atomic import atomic_dir, atomic_path, atomic_write
from erasure.world.data import render_dataset


def test_a_file_appears_only_when_complete_and_readable(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    with atomic_path(path) as tmp:
        tmp.write_text("new")
        assert tmp.parent == path.parent and not path.exists()
    assert path.read_text() == "new" and path.stat().st_mode & 0o777 == 0o644
    atomic_write(path, lambda tmp: Path(tmp).write_text("again"))
    assert path.read_text() == "again" and sorted(p.name for p in path.parent.iterdir()) == ["a.txt"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError
    assert path.read_text() == "old" and list(tmp_path.iterdir()) == [path]


def test_a_folder_is_replaced_whole(tmp_path):
    folder = tmp_path / "model"
    (folder / "stale").mkdir(parents=True)
    with atomic_dir(folder) as tmp:
        (tmp / "weights").write_text("w")
    assert sorted(p.name for p in folder.iterdir()) == ["weights"] and folder.stat().st_mode & 0o777 == 0o755
    with pytest.raises(RuntimeError):
        with atomic_dir(folder) as tmp:
            (tmp / "weights").write_text("half")
            raise RuntimeError
    assert (folder / "weights").read_text() == "w" and list(tmp_path.iterdir()) == [folder]


def test_rendered_datasets_are_cached_under_their_own_name(tmp_path):
    first = render_dataset(4, seed=3, size=16, cache_dir=tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["world_n4_s3_px16.npy"]
    np.testing.assert_array_equal(render_dataset(4, seed=3, size=16, cache_dir=tmp_path).images, first.images)
