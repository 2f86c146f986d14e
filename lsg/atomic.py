"""Atomic writes of files and directories: a reader never sees half a result, a crash never loses the old one.

Everything is first written to a hidden staging path in the destination's own directory (same filesystem,
so the final `os.replace` is a rename, not a copy), then swapped in:

* `staged_file(path)` / `write_json(path, obj)`: one file; `os.replace` swaps it in atomically on POSIX
  and Windows.
* `staged_directory(path)`: a whole directory (a saved model, a checkpoint). A directory cannot be renamed
  over a non-empty one, so the old one is first renamed aside, the new one renamed in, and only then the old
  one deleted: a crash before the swap leaves the old directory untouched.

A failure while writing (an exception, a Ctrl-C) removes the staging path and re-raises; nothing is left
behind but the untouched old file or directory. A kill -9 cannot clean up: staging directories carry the
writer's pid (`.<name>.new.<pid>.<tag>`, `.<name>.old.<pid>.<tag>`), and `clear_stale_staging` (run by every
`staged_directory`) deletes those of dead writers, after putting back an old directory a kill left renamed
aside between the two renames.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _usual_mode(base: int) -> int:
    """The mode `open()` / `mkdir()` would give under the process umask (`base` 0o666 for files, 0o777 for
    directories). The temp-file functions create 0o600 / 0o700 for privacy, which would leave results and saved
    models unreadable to the rest of a group on a shared cluster once renamed into place."""
    umask = os.umask(0)
    os.umask(umask)
    return base & ~umask


@contextmanager
def staged_file(path: Path) -> Iterator[Path]:
    """A staging file to write; on a clean exit it replaces `path`, on an error it is deleted.

    Args:
        path: the destination file; its parent directory is created if needed.

    Returns:
        (yields) a new empty file beside `path` with the same suffix, so writers that pick their format
        from the name (matplotlib's `savefig`) write the right one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(handle)
    staging = Path(name)
    staging.chmod(_usual_mode(0o666))
    try:
        yield staging
        os.replace(staging, path)
    except BaseException:  # KeyboardInterrupt too: a killed sweep must not leave staging files behind
        staging.unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    """Write `obj` as indented JSON (plus a final newline) to `path`, atomically.

    Args:
        path: the destination file; its parent directory is created if needed.
        obj: anything `json.dumps` accepts; a value it refuses raises before `path` is touched.
    """
    text = json.dumps(obj, indent=2) + "\n"
    with staged_file(path) as staging:
        staging.write_text(text, encoding="utf-8")


@contextmanager
def staged_directory(path: Path) -> Iterator[Path]:
    """A staging directory to fill; on a clean exit it replaces the directory `path`, on an error it is deleted.

    Args:
        path: the destination directory; it may exist (it is then replaced whole) or not.

    Returns:
        (yields) a new empty directory beside `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clear_stale_staging(path)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.new.{os.getpid()}.", dir=path.parent))
    staging.chmod(_usual_mode(0o777))
    retired = path.parent / f".{path.name}.old.{staging.name.removeprefix(f'.{path.name}.new.')}"  # same tag
    try:
        yield staging
        if path.exists():
            os.replace(path, retired)
        try:
            os.replace(staging, path)
        except BaseException:
            if retired.exists():  # put the old directory back before the cleanup below deletes it
                os.replace(retired, path)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # only still there when writing or the swap failed
        shutil.rmtree(retired, ignore_errors=True)


def _writer_alive(name: str, prefix: str) -> bool:
    """Whether the pid in a staging name `<prefix><pid>.<tag>` is a live process (False for other names)."""
    pid = name.removeprefix(prefix).split(".", 1)[0]
    if not pid.isdigit():
        return False  # written before staging names carried the pid: its writer is long gone
    if int(pid) == os.getpid():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clear_stale_staging(path: Path) -> None:
    """Remove the staging directories a killed `staged_directory(path)` left beside `path`.

    A `.old.` directory is the previous `path`, renamed aside just before the new one was renamed in: if the
    kill fell between the two renames, `path` is missing and that directory is put back instead of deleted.
    Directories of a live writer are left alone.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return
    for kind in ("old", "new"):  # old first: a restored directory must not be a new one's leftover
        prefix = f".{path.name}.{kind}."
        for stale in sorted(path.parent.glob(f"{glob.escape(prefix)}*")):
            if not stale.is_dir() or _writer_alive(stale.name, prefix):
                continue
            if kind == "old" and not path.exists():
                os.replace(stale, path)
            else:
                shutil.rmtree(stale, ignore_errors=True)
