"""Registers timm-elastic's models in every Python process that imports timm.

Installed beside it (both written by setup.py from the constants below):

* `timm_elastic_autoload.pth`: its one `import` line puts a stub finder on `sys.meta_path` at
  interpreter start-up, without importing this module;
* `timm_elastic_autoload.start` (PEP 829, Python 3.15+): the entry point `_timm_elastic_autoload:install`,
  which puts the same kind of stub there. A Python that implements PEP 829 runs it instead of the
  .pth's import line (same file stem: the .start disables that line; from 3.18 such lines are
  ignored anyway); older Pythons ignore .start files.

The stub does nothing until `import timm` runs; only then is `find_spec` below asked, and once
timm's own `__init__` has run it imports `timm_elastic`, which registers the models. So
`timm.list_models('*elastic*')`, timm's unmodified `train.py` / `validate.py --model
resnext50_elastic` and `timm.create_model('hf-hub:...')` of an exported Elastic model work without
importing anything, while processes that never import timm import nothing of timm-elastic (through
the .pth line not even this module; through the .start entry point only this small module, which
PEP 829 imports to resolve it).

Switch it off with the environment variable `TIMM_ELASTIC_AUTOLOAD=0` (also `false`, `no`,
`off`; case and surrounding spaces are ignored); `import timm_elastic` or `timm-elastic run
SCRIPT` then register the models explicitly. Standard library only: it runs at start-up and
inside the import of timm.
"""
import os
import sys
import warnings

__all__ = ['ENV', 'OFF', 'enabled', 'install', 'find_spec']

ENV = 'TIMM_ELASTIC_AUTOLOAD'
OFF = ('0', 'false', 'no', 'off')  # values of ENV, stripped and lower-cased, that switch it off
MARK = 'timm_elastic_autoload'  # attribute (true) of our stub finders on sys.meta_path

# What setup.py installs. The .pth line applies the same rule as `install` (a test runs both), but
# inline: no import at start-up on Pythons that run it.
PTH_NAME = 'timm_elastic_autoload.pth'
START_NAME = 'timm_elastic_autoload.start'  # the .pth's stem: PEP 829 pairs them by it
START_ENTRY_POINT = f'{__name__}:install'
PTH_LINE = (
    "import os, sys; "
    f"os.environ.get({ENV!r}, '1').strip().lower() in {OFF!r} "
    "or 'timm' in sys.modules "
    f"or any(getattr(f, {MARK!r}, False) for f in sys.meta_path) "
    f"or sys.meta_path.insert(0, __import__('types').SimpleNamespace({MARK}=True, "
    "find_spec=lambda name, path=None, target=None: "
    f"__import__({__name__!r}).find_spec(name, path, target) if name == 'timm' else None))"
)

_busy = False


def enabled():
    """False where the environment variable `TIMM_ELASTIC_AUTOLOAD` switches the hook off."""
    return os.environ.get(ENV, '1').strip().lower() not in OFF


class _Stub:
    """The stub finder that `install` puts on `sys.meta_path`: asked for `timm`, `find_spec`."""
    timm_elastic_autoload = True  # MARK

    def find_spec(self, name, path=None, target=None):
        return find_spec(name, path, target) if name == 'timm' else None

    def __repr__(self):
        return f'<{__name__} stub finder>'


def install():
    """Puts the stub finder on `sys.meta_path`: the entry point of `timm_elastic_autoload.start`
    (PEP 829), called with no arguments at interpreter start-up; the .pth line does the same where
    .start files are not read. Does nothing if `TIMM_ELASTIC_AUTOLOAD` switches the hook off, if
    timm is already imported, or if a stub (from either file) is there already."""
    if not enabled() or 'timm' in sys.modules or any(getattr(f, MARK, False) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _Stub())


def find_spec(name, path=None, target=None):
    """The `find_spec` of the stub finder, for `name == 'timm'`: timm's own spec, whose loader
    imports `timm_elastic` right after executing timm's `__init__`."""
    global _busy
    if name != 'timm' or _busy:
        return None
    _busy = True  # the finders asked below include the stub itself
    try:
        spec = None
        for finder in sys.meta_path:
            if getattr(finder, MARK, False) or not hasattr(finder, 'find_spec'):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
    finally:
        _busy = False
    if spec is None or spec.loader is None or not hasattr(spec.loader, 'exec_module'):
        return spec
    loader = spec.loader
    exec_timm = loader.exec_module

    def exec_module(module):
        # the loader keeps serving timm's resources (`__loader__`): only this one call is wrapped
        try:
            exec_timm(module)
        finally:
            if loader.__dict__.get('exec_module') is exec_module:
                del loader.exec_module
        _register()

    loader.exec_module = exec_module
    return spec


def _register():
    try:
        import timm_elastic  # noqa: F401  (registers every model)
    except Exception as e:  # timm itself works; say why the Elastic models are missing
        warnings.warn(
            f'timm-elastic: importing timm_elastic to register its models failed ({type(e).__name__}: {e}); '
            f'timm works without them. Set {ENV}=0 to stop trying.', RuntimeWarning, stacklevel=3)
