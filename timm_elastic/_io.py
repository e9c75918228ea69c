"""Writing outputs so that a kill or a full disk never leaves a half-written one behind."""
import json
import os
import shutil
import tempfile
from typing import Any

__all__ = ['OutputExistsError', 'replace_dir', 'write_text', 'write_json', 'fsync_dir']


class OutputExistsError(FileExistsError):
    """An output path that is there already. `template` names the way to replace it as `{force}`:
    the Python message says `force=True`, the command line's (`message('--force')`) its flag."""

    def __init__(self, template: str):
        self.template = template
        super().__init__(self.message('force=True'))

    def message(self, force: str) -> str:
        return self.template.format(force=force)


def replace_dir(tmp: str, dest: str) -> None:
    """Put the finished folder `tmp` at `dest` (on the same file system), replacing what is there.

    The old `dest` is moved aside first and put back if the rename of `tmp` fails, so `dest` is
    always either the old folder or the new one; the old one is deleted last."""
    if not os.path.lexists(dest):
        os.rename(tmp, dest)
        return
    parent, name = os.path.split(os.path.abspath(dest))
    old = tempfile.mkdtemp(prefix=f'.{name}.old-', dir=parent)
    os.rename(dest, os.path.join(old, name))
    try:
        os.rename(tmp, dest)
    except BaseException:
        os.rename(os.path.join(old, name), dest)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_bytes(path: str, data: bytes) -> None:
    """Write `data` to `path` through a temporary file beside it and one rename."""
    tmp = f'{path}.tmp{os.getpid()}'
    try:
        with open(tmp, 'wb') as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_text(path: str, text: str) -> None:
    """Write `text` (UTF-8, newlines as given) to `path` through a temporary file and one rename."""
    write_bytes(path, text.encode('utf-8'))


def write_json(path: str, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2) + '\n')


def fsync_dir(path: str) -> None:
    """Flush a folder's entries (a rename into it) to disk, where the platform allows it; the
    rename itself is atomic regardless."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
