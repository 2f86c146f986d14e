"""Atomic writes (lsg/atomic.py): the new content appears whole, a failure keeps the old one, nothing is left over."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lsg.atomic import clear_stale_staging, staged_directory, staged_file, write_json


def test_write_json_creates_parents_and_replaces_the_old_file(tmp_path: Path):
    path = tmp_path / "run" / "metrics.json"
    write_json(path, {"bpc": 1.5})
    write_json(path, {"bpc": 1.25, "name": "é"})
    assert path.read_text(encoding="utf-8") == json.dumps({"bpc": 1.25, "name": "é"}, indent=2) + "\n"
    assert os.listdir(path.parent) == ["metrics.json"]


def test_a_value_json_refuses_leaves_the_old_file(tmp_path: Path):
    path = tmp_path / "metrics.json"
    write_json(path, {"bpc": 1.5})
    with pytest.raises(TypeError):
        write_json(path, {"bpc": object()})
    assert json.loads(path.read_text()) == {"bpc": 1.5}
    assert os.listdir(tmp_path) == ["metrics.json"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failure_mid_file_keeps_the_old_file_and_no_staging(tmp_path: Path, error: type[BaseException]):
    path = tmp_path / "plot.png"
    path.write_text("old")
    with pytest.raises(error), staged_file(path) as staging:
        assert staging.parent == tmp_path and staging.suffix == ".png" and staging != path
        staging.write_text("half of the new")
        raise error("killed")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["plot.png"]


def test_staged_directory_replaces_the_whole_directory(tmp_path: Path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "stale.bin").write_text("from the previous model")
    with staged_directory(out) as staging:
        assert staging.parent == tmp_path and not any(staging.iterdir())
        (staging / "config.json").write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]  # the old files do not survive the swap
    assert os.listdir(tmp_path) == ["model"]


def test_staged_directory_creates_a_missing_destination(tmp_path: Path):
    out = tmp_path / "deep" / "model"
    with staged_directory(out) as staging:
        (staging / "weights").write_text("w")
    assert (out / "weights").read_text() == "w"
    assert os.listdir(out.parent) == ["model"]


def test_a_failure_mid_directory_keeps_the_old_directory_and_no_staging(tmp_path: Path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "weights").write_text("old")
    with pytest.raises(RuntimeError, match="disk full"), staged_directory(out) as staging:
        (staging / "weights").write_text("half")
        raise RuntimeError("disk full")
    assert (out / "weights").read_text() == "old"
    assert os.listdir(tmp_path) == ["model"]


def test_a_failed_swap_puts_the_old_directory_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    out = tmp_path / "model"
    out.mkdir()
    (out / "weights").write_text("old")
    real_replace = os.replace

    def replace(source: os.PathLike, target: os.PathLike) -> None:
        if Path(source).name.startswith(".model.new."):  # the swap-in step
            raise OSError("rename failed")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="rename failed"), staged_directory(out) as staging:
        (staging / "weights").write_text("new")
    assert (out / "weights").read_text() == "old"
    assert os.listdir(tmp_path) == ["model"]


def _dead_pid() -> int:
    """The pid of a process that has exited (a kill -9'd writer looks like this)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_staging_left_by_a_killed_writer_is_cleared(tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "weights").write_text("current")
    dead, alive = _dead_pid(), os.getppid()
    for name in (f".out.new.{dead}.abc", ".out.new.legacy1", f".out.old.{dead}.abc", f".out.new.{alive}.xyz"):
        (tmp_path / name).mkdir()
    clear_stale_staging(out)
    # the dead writers' staging is gone, the live writer's is kept, the current directory untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".out.new.{alive}.xyz", "out"]
    assert (out / "weights").read_text() == "current"
    with staged_directory(out) as staging:
        assert staging.name.startswith(f".out.new.{os.getpid()}.")
        (staging / "weights").write_text("new")
    assert (out / "weights").read_text() == "new"


def test_a_kill_between_the_two_renames_gets_the_old_directory_back(tmp_path: Path):
    """Killed after `out` was renamed aside and before the new one was renamed in: `out` is missing."""
    retired = tmp_path / f".out.old.{_dead_pid()}.abc"
    retired.mkdir()
    (retired / "weights").write_text("previous, complete")
    (tmp_path / retired.name.replace(".old.", ".new.")).mkdir()  # the new one, never swapped in
    clear_stale_staging(tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (tmp_path / "out" / "weights").read_text() == "previous, complete"


def test_results_and_saved_directories_get_the_usual_permissions(tmp_path):
    """Staged writes end with the modes a plain write would give (umask 022: 644 / 755), not the 600 / 700 of
    temp files, so a group on a shared cluster can read the results and the saved models."""
    import os

    from lsg.atomic import staged_directory, write_json

    previous = os.umask(0o022)
    try:
        write_json(tmp_path / "metrics.json", {"a": 1})
        with staged_directory(tmp_path / "final") as staging:
            (staging / "config.json").write_text("{}")
    finally:
        os.umask(previous)
    assert (tmp_path / "metrics.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "final").stat().st_mode & 0o777 == 0o755
