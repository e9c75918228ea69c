"""Build hook: installs `timm_elastic_autoload.pth` and `timm_elastic_autoload.start` at the top of
site-packages, in wheels and in editable installs alike. The project's metadata is in pyproject.toml.

The .pth line runs at every interpreter start-up, so it only puts a stub finder on `sys.meta_path`
(no import) unless `TIMM_ELASTIC_AUTOLOAD` switches it off; `_timm_elastic_autoload` does the rest
when, and only if, timm is imported. The .start file (PEP 829) names the entry point
`_timm_elastic_autoload:install`, which does what that line does: Pythons implementing PEP 829 call
it and skip the import line of the .pth with the same stem; older Pythons ignore .start files.
Both files are written from the constants of `_timm_elastic_autoload.py`, the one place of the rule.
"""
import importlib.util
import os

from setuptools import setup
from setuptools.command.build_py import build_py


def _autoload_module():
    """`_timm_elastic_autoload` of this source tree (stdlib only; the build's sys.path may lack it)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), '_timm_elastic_autoload.py')
    spec = importlib.util.spec_from_file_location('_timm_elastic_autoload', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_autoload = _autoload_module()
# name -> text; UTF-8 (PEP 829 reads .start files as utf-8-sig), one comment line each
STARTUP_FILES = {
    _autoload.PTH_NAME: (
        f'# timm-elastic: registers its models when timm is imported; {_autoload.ENV}=0 disables\n'
        f'{_autoload.PTH_LINE}\n'),
    _autoload.START_NAME: (
        f'# timm-elastic (PEP 829): registers its models when timm is imported; {_autoload.ENV}=0 disables\n'
        f'{_autoload.START_ENTRY_POINT}\n'),
}


class BuildPyWithPth(build_py):
    """build_py that also writes the .pth and the .start: into the wheel's root (build_lib) for a regular
    install, or, in an editable install, into the editable wheel's root, which setuptools packs
    as it is (its `install_lib`)."""

    def run(self):
        super().run()
        if getattr(self, 'editable_mode', False):
            root = self.get_finalized_command('install').install_lib
        else:
            root = self.build_lib
        os.makedirs(root, exist_ok=True)
        for name, text in STARTUP_FILES.items():
            with open(os.path.join(root, name), 'w', encoding='utf-8', newline='\n') as f:
                f.write(text)

    def get_outputs(self, *args, **kwargs):
        outputs = super().get_outputs(*args, **kwargs)
        if not getattr(self, 'editable_mode', False):
            outputs = [*outputs, *(os.path.join(self.build_lib, name) for name in STARTUP_FILES)]
        return outputs


setup(cmdclass={'build_py': BuildPyWithPth})
