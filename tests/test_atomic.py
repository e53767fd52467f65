"""Atomic writes: the destination appears complete or not at all, never replaces one it must
not, and nothing is left behind; outputs checked and claimed before any work."""

import errno
import os
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest

from erasure.atomic import atomic_dir, atomic_path, atomic_write, remove_orphans, reported_write_errors
from erasure.errors import ErasureError
from erasure.paths import check_free_space, check_output, claimed_outputs, read_text_file
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


def test_without_replace_an_existing_file_is_refused_and_kept(tmp_path):
    path = tmp_path / "a.txt"
    atomic_write(path, lambda tmp: Path(tmp).write_text("first"), replace=False)
    with pytest.raises(ErasureError, match="already exists: pass --overwrite"):
        atomic_write(path, lambda tmp: Path(tmp).write_text("second"), replace=False)
    assert path.read_text() == "first" and list(tmp_path.iterdir()) == [path]


def test_without_hard_links_the_name_is_still_claimed_exclusively(tmp_path, monkeypatch):
    def no_links(source, target):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / "a.txt"
    atomic_write(path, lambda tmp: Path(tmp).write_text("first"), replace=False)
    with pytest.raises(ErasureError, match="already exists"):
        atomic_write(path, lambda tmp: Path(tmp).write_text("second"), replace=False)
    assert path.read_text() == "first" and list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize("occupant", ["folder", "empty folder", "file"])
def test_without_replace_a_folder_is_never_published_over_anything(tmp_path, occupant):
    folder = tmp_path / "model"
    if occupant == "file":
        folder.write_text("x")
    else:
        folder.mkdir()
        if occupant == "folder":
            (folder / "weights").write_text("old")
    before = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else folder.read_text()
    with pytest.raises(ErasureError, match="already exists"):
        with atomic_dir(folder, replace=False) as tmp:
            (tmp / "weights").write_text("new")
    after = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else folder.read_text()
    assert after == before and list(tmp_path.iterdir()) == [folder]


def test_an_empty_folder_is_published_without_replacing(tmp_path):
    with atomic_dir(tmp_path / "empty", replace=False):
        pass
    assert (tmp_path / "empty").is_dir() and list(tmp_path.iterdir()) == [tmp_path / "empty"]


def test_orphans_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    child = subprocess.Popen(["true"])
    child.wait()
    host = socket.gethostname()
    dead_file = tmp_path / f".w.safetensors.{host}-{child.pid}.abc.tmp"
    dead_folder = tmp_path / f".w.safetensors.{host}-{child.pid}.def"
    live = tmp_path / f".w.safetensors.{host}-{os.getpid()}.ghi.tmp"
    other_host = tmp_path / f".w.safetensors.elsewhere-{child.pid}.jkl.tmp"
    other_name = tmp_path / f".v.safetensors.{host}-{child.pid}.mno.tmp"
    for path in (dead_file, live, other_host, other_name):
        path.write_text("x")
    (dead_folder / "unet").mkdir(parents=True)
    assert sorted(remove_orphans(tmp_path / "w.safetensors")) == sorted([dead_file, dead_folder])
    assert sorted(tmp_path.iterdir()) == sorted([live, other_host, other_name])


def test_write_errors_are_one_line(tmp_path):
    def fail(tmp):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(ErasureError, match=r"could not write .*a.bin \(No space left on device\): nothing was written"):
        with reported_write_errors(tmp_path / "a.bin"):
            atomic_write(tmp_path / "a.bin", fail)
    assert list(tmp_path.iterdir()) == []


def test_text_files_are_read_or_refused_in_one_line(tmp_path):
    (tmp_path / "bom.txt").write_bytes("\ufeffairplane\n".encode("utf-8"))
    assert read_text_file(tmp_path / "bom.txt", "concepts file") == "airplane\n"
    (tmp_path / "binary").write_bytes(b"\x89PNG\r\n\x1a\n\xff")
    with pytest.raises(ErasureError, match="is not UTF-8 text .*give a plain-text config file"):
        read_text_file(tmp_path / "binary", "config file")
    with pytest.raises(ErasureError, match="is a folder, not a config file"):
        read_text_file(tmp_path, "config file")
    with pytest.raises(ErasureError, match="no such config file"):
        read_text_file(tmp_path / "missing.yaml", "config file")


def test_outputs_are_checked_before_any_work(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir.safetensors").mkdir()
    check_output(tmp_path / "new" / "deeper" / "w.safetensors", overwrite=False)  # folders to be made are fine
    with pytest.raises(ErasureError, match="is a file, not a folder"):
        check_output(tmp_path / "file" / "new" / "w.safetensors", overwrite=False)
    with pytest.raises(ErasureError, match="is a folder: give a file name"):
        check_output(tmp_path / "dir.safetensors", overwrite=True)
    with pytest.raises(ErasureError, match="already exists"):
        check_output(tmp_path / "file", overwrite=False)
    with pytest.raises(ErasureError, match="exists and is not a folder"):
        check_output(tmp_path / "file", overwrite=True, folder=True)
    with pytest.raises(ErasureError, match=r"GiB free in .*, the output needs about 1073741824.0 GiB: free some space"):
        check_free_space(tmp_path / "new", 2**60)
    check_free_space(tmp_path / "new", 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.safetensors", "file"]


def test_a_claimed_output_refuses_a_second_claim_and_cleans_up(tmp_path):
    output = tmp_path / "new" / "w.safetensors"
    with claimed_outputs([output]):
        assert (tmp_path / "new").is_dir()
        with pytest.raises(ErasureError, match="being written by another run \\(pid"):
            with claimed_outputs([output]):
                pass
        output.write_text("result")
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["w.safetensors"]  # no lock left
    with claimed_outputs([tmp_path / "other" / "w.safetensors"]):
        pass
    assert not (tmp_path / "other").exists()  # the folder it made, still empty, is gone again
