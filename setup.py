"""Build hook: installs `timm_elastic_autoload.pth` at the top of site-packages, in wheels and in
editable installs alike. The project's metadata is in pyproject.toml.

The .pth line runs at every interpreter start-up, so it only puts a stub finder on `sys.meta_path`
(no import) unless `TIMM_ELASTIC_AUTOLOAD` switches it off; `_timm_elastic_autoload` does the rest
when, and only if, timm is imported.
"""
import os

from setuptools import setup
from setuptools.command.build_py import build_py

PTH_NAME = 'timm_elastic_autoload.pth'
PTH_LINE = (
    "import os, sys; "
    "os.environ.get('TIMM_ELASTIC_AUTOLOAD', '1').strip().lower() in ('0', 'false', 'no', 'off') "
    "or 'timm' in sys.modules "
    "or sys.meta_path.insert(0, __import__('types').SimpleNamespace(timm_elastic_autoload=True, "
    "find_spec=lambda name, path=None, target=None: "
    "__import__('_timm_elastic_autoload').find_spec(name, path, target) if name == 'timm' else None))\n"
)


class BuildPyWithPth(build_py):
    """build_py that also writes the .pth: into the wheel's root (build_lib) for a regular
    install, or, in an editable install, into the editable wheel's root, which setuptools packs
    as it is (its `install_lib`)."""

    def run(self):
        super().run()
        if getattr(self, 'editable_mode', False):
            root = self.get_finalized_command('install').install_lib
        else:
            root = self.build_lib
        os.makedirs(root, exist_ok=True)
        with open(os.path.join(root, PTH_NAME), 'w', encoding='utf-8') as f:
            f.write('# timm-elastic: registers its models when timm is imported; TIMM_ELASTIC_AUTOLOAD=0 disables\n')
            f.write(PTH_LINE)

    def get_outputs(self, *args, **kwargs):
        outputs = super().get_outputs(*args, **kwargs)
        if not getattr(self, 'editable_mode', False):
            outputs = [*outputs, os.path.join(self.build_lib, PTH_NAME)]
        return outputs


setup(cmdclass={'build_py': BuildPyWithPth})
