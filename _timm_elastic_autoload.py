"""Registers timm-elastic's models in every Python process that imports timm.

Installed beside it, `timm_elastic_autoload.pth` (written by setup.py) puts a stub finder on
`sys.meta_path` at interpreter start-up. The stub does nothing until `import timm` runs; only then
is this module imported, and once timm's own `__init__` has run it imports `timm_elastic`, which
registers the models. So `timm.list_models('*elastic*')`, timm's unmodified `train.py` /
`validate.py --model resnext50_elastic` and `timm.create_model('hf-hub:...')` of an exported
Elastic model work without importing anything, while processes that never import timm import
nothing at all (not even this module).

Switch it off with the environment variable `TIMM_ELASTIC_AUTOLOAD=0` (also `false`, `no`,
`off`); `import timm_elastic` or `timm-elastic run SCRIPT` then register the models explicitly.
Standard library only: it runs inside the import of timm.
"""
import sys
import warnings

__all__ = ['ENV', 'find_spec']

ENV = 'TIMM_ELASTIC_AUTOLOAD'

_busy = False


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
            if getattr(finder, 'timm_elastic_autoload', False) or not hasattr(finder, 'find_spec'):
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
