"""The argument checks that the benchmark scripts share: each refuses a bad value before anything is built or
measured, as a usage error (`parser.error`: one line, exit status 2), so that no measurement is lost to it."""
import argparse
import os
from typing import Optional


def at_least(parser: argparse.ArgumentParser, args: argparse.Namespace, minimum: float, *dests: str) -> None:
    """Refuse each option of `dests` (its name in `args`, e.g. 'batch_size') that is given and below `minimum`."""
    for dest in dests:
        value = getattr(args, dest)
        if value is not None and value < minimum:
            parser.error(f'--{dest.replace("_", "-")} must be at least {minimum}, got {value}')


def output_path(parser: argparse.ArgumentParser, path: Optional[str], option: str = '--json') -> None:
    """Refuse an output file `path` (None: none asked for) that is a folder, or whose folder is missing or not
    writable: found before the measurement, not when its results are written."""
    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        parser.error(f'{option} {path}: is a folder; name a file in it, e.g. {os.path.join(path, "results.json")}')
    if not os.path.isdir(folder):
        parser.error(f'{option} {path}: the folder {folder} does not exist; create it, or name a file in an '
                     f'existing folder')
    if not os.access(folder, os.W_OK | os.X_OK):
        parser.error(f'{option} {path}: the folder {folder} is not writable')
