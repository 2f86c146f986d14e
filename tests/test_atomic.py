"""Atomic writes (lsg/atomic.py): the new content appears whole, a failure keeps the old one, nothing is left over."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lsg.atomic import staged_directory, staged_file, write_json


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
