"""Writing outputs so that a kill or a full disk never leaves a half-written one behind."""
import contextlib
import json
import math
import os
import shutil
import tempfile
from typing import Any, Callable, Optional, Sequence

__all__ = ['OutputExistsError', 'check_not_a_link', 'check_outside_cwd', 'replace_dir', 'staged_dir', 'write_text',
           'write_json', 'json_finite', 'fsync_dir', 'first_names']


class OutputExistsError(FileExistsError):
    """An output path that is there already. `template` names the way to replace it as `{force}`:
    the Python message says `force=True`, the command line's (`message('--force')`) its flag."""

    def __init__(self, template: str):
        self.template = template
        super().__init__(self.message('force=True'))

    def message(self, force: str) -> str:
        return self.template.format(force=force)


def first_names(names: Sequence[str]) -> str:
    """The first three of `names` (files found where an output would go) for a message, '...' after them if there
    are more."""
    return ', '.join([*names[:3], *(['...'] if len(names) > 3 else [])])


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


def check_outside_cwd(out_dir: str) -> None:
    """Refuse an output folder that is the working folder or holds it: replacing it would delete the folder a
    shell stands in (`--out .`), with whatever else it holds."""
    out_dir, cwd = os.path.realpath(out_dir), os.path.realpath(os.getcwd())
    if os.path.commonpath([out_dir, cwd]) == out_dir:
        raise ValueError(f'{out_dir} is the current working folder or holds it: an output folder is written whole '
                         f'and put in place of what is there; choose a new folder (e.g. {os.path.join(cwd, "out")})')


def check_not_a_link(out_dir: str) -> None:
    """Refuse an output folder that is a symbolic link: written whole and put in place, the new folder would
    replace the link, and the folder it names would keep its old files."""
    if os.path.islink(out_dir):
        raise FileExistsError(f'{out_dir} is a symbolic link (to {os.readlink(out_dir)}); name the folder itself, '
                              'or another folder')


@contextlib.contextmanager
def staged_dir(out_dir: str, recheck: Optional[Callable[[], None]] = None):
    """A temporary folder beside `out_dir` to write into; renamed to `out_dir` (replacing it) when the block
    ends normally, removed when it raises: `out_dir` is the complete new folder, or what it was before.

    A symbolic link `out_dir` is refused (FileExistsError): the link would be replaced by a folder, the folder it
    names left as it was. `recheck`, called just before the replacement, raises to keep what is there: `out_dir`
    may have changed while the block ran (a file put there would be deleted)."""
    out_dir = os.path.abspath(out_dir)
    check_not_a_link(out_dir)
    check_outside_cwd(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f'.{os.path.basename(out_dir)}.', suffix='.tmp', dir=parent)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp and some writers make their files private
        for name in os.listdir(tmp):
            os.chmod(os.path.join(tmp, name), 0o666 & ~umask)
        if recheck is not None:
            recheck()
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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


def json_finite(obj: Any) -> Any:
    """`obj` (dicts, lists, tuples, numbers, strings) with every NaN or infinite float as None: JSON has no NaN
    (Python writes a bare `NaN` that JSON.parse and most other readers refuse), null is how JSON says it."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_finite(v) for v in obj]
    return obj


def write_json(path: str, obj: Any) -> None:
    """Write `obj` as standard JSON (a NaN or infinity as null, `json_finite`) to `path` atomically."""
    write_text(path, json.dumps(json_finite(obj), indent=2, allow_nan=False) + '\n')


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
