"""Registration without importing timm_elastic (the installed .pth hook), `timm-elastic run`, and the
hook in a regular (wheel) install beside the editable one the tests run in."""
import glob
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = ("import sys, timm; print(len(timm.list_models('*elastic*')), "
         "'timm_elastic' in sys.modules, timm.is_model('resnext_tiny_elastic'))")


def python(code, env_update=None, exe=sys.executable, cwd=None):
    env = {k: v for k, v in os.environ.items() if k != 'TIMM_ELASTIC_AUTOLOAD'}
    env.update(env_update or {})
    return subprocess.run([exe, '-c', code], capture_output=True, text=True, env=env, timeout=300, cwd=cwd)


def test_import_timm_registers_the_models(tmp_path):
    proc = python(PROBE, cwd=tmp_path)  # not the repository: the installed package serves it
    assert proc.returncode == 0, proc.stderr
    count, imported, known = proc.stdout.split()
    assert int(count) >= 10 and imported == 'True' and known == 'True'
    assert 'Warning' not in proc.stderr


def test_nothing_is_imported_without_timm(tmp_path):
    proc = python('import sys; print(sorted(m for m in sys.modules if m.split(".")[0] in '
                  '("timm", "torch", "timm_elastic", "_timm_elastic_autoload", "numpy")))', cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == '[]'


@pytest.mark.parametrize('value', ['0', 'false', 'OFF', ' no '])
def test_environment_variable_switches_it_off(tmp_path, value):
    proc = python(PROBE, {'TIMM_ELASTIC_AUTOLOAD': value}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ['0', 'False', 'False']
    # explicit import still registers
    proc = python('import timm_elastic, timm; print(timm.is_model("resnext50_elastic"))',
                  {'TIMM_ELASTIC_AUTOLOAD': value}, cwd=tmp_path)
    assert proc.stdout.strip() == 'True', proc.stderr


def test_timm_submodule_import_and_hub_name(tmp_path):
    # importing a timm submodule first still runs timm's __init__, and the hook after it
    proc = python('from timm.models import create_model, is_model; m = create_model("resnext_tiny_elastic"); '
                  'print(type(m).__name__, is_model("dla_x60_elastic"))', cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ['ResNet', 'True']


def test_a_broken_install_warns_and_timm_still_works(tmp_path):
    fake = tmp_path / 'shadow' / 'timm_elastic'
    fake.mkdir(parents=True)
    (fake / '__init__.py').write_text('raise ImportError("simulated broken timm_elastic")\n')
    proc = python('import timm; print(timm.is_model("resnet50"), timm.is_model("resnext50_elastic"))',
                  {'PYTHONPATH': str(fake.parent)}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ['True', 'False']
    assert 'simulated broken timm_elastic' in proc.stderr and 'TIMM_ELASTIC_AUTOLOAD=0' in proc.stderr


def _cli():
    exe = shutil.which('timm-elastic')
    assert exe, 'the timm-elastic console script is not installed (pip install -e .)'
    return exe


def test_run_script_with_models_registered(tmp_path):
    script = tmp_path / 'tool' / 'script.py'
    script.parent.mkdir()
    (script.parent / 'helper_mod.py').write_text('VALUE = 7\n')
    script.write_text(textwrap.dedent('''
        import sys
        import timm
        import helper_mod  # the script's folder is on sys.path, as with `python script.py`
        print(__name__, sys.argv[1:], timm.is_model('resnext50_elastic'), helper_mod.VALUE)
        sys.exit(int(sys.argv[-1]))
    '''))
    env = dict(os.environ, TIMM_ELASTIC_AUTOLOAD='0')  # run registers them explicitly
    proc = subprocess.run([_cli(), 'run', str(script), '--model', 'x', '3'], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.strip() == "__main__ ['--model', 'x', '3'] True 7"

    (tmp_path / 'mymod.py').write_text('import sys, timm\nprint(__name__, sys.argv[1:], timm.is_model("dla_x60"))\n')
    proc = subprocess.run([_cli(), 'run', '-m', 'mymod', 'a'], capture_output=True, text=True,
                          env=dict(env, PYTHONPATH=str(tmp_path)), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "__main__ ['a'] True"

    proc = subprocess.run([_cli(), 'run', str(tmp_path / 'missing.py')], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"timm-elastic run: error: script {str(tmp_path / 'missing.py')!r} does not exist"]


def test_regular_install_from_a_wheel(tmp_path):
    """pip builds the wheel (with build isolation, as users get it); the .pth lands at the top of
    site-packages in a fresh environment, whose `import timm` then registers the models."""
    wheels = tmp_path / 'wheels'
    proc = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '-q', '-w', str(wheels), ROOT],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    wheel, = glob.glob(str(wheels / 'timm_elastic-*.whl'))
    names = zipfile.ZipFile(wheel).namelist()
    assert 'timm_elastic_autoload.pth' in names and '_timm_elastic_autoload.py' in names
    record = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith('.dist-info/RECORD'))).decode()
    assert 'timm_elastic_autoload.pth,' in record  # pip uninstall removes it

    venv = tmp_path / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], check=True, timeout=300)
    vpy = str(venv / 'bin' / 'python')
    site = python('import sysconfig; print(sysconfig.get_paths()["purelib"])', exe=vpy).stdout.strip()
    # torch, timm... from this environment's site-packages folders; timm_elastic only from the wheel
    deps = [p for p in sys.path if os.path.basename(p) == 'site-packages' and os.path.isdir(p)]
    with open(os.path.join(site, 'zz_test_deps.pth'), 'w') as f:
        f.write('\n'.join(deps) + '\n')
    proc = subprocess.run([sys.executable, '-m', 'pip', '--python', vpy, 'install', '--no-deps', '--no-index', '-q',
                           wheel], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert os.path.isfile(os.path.join(site, 'timm_elastic_autoload.pth'))
    proc = python(PROBE + "; import timm_elastic; print(timm_elastic.__file__)", exe=vpy, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    count, imported, known, path = proc.stdout.split()
    assert int(count) >= 10 and imported == 'True' and known == 'True'
    assert path.startswith(site)
    proc = python(PROBE, {'TIMM_ELASTIC_AUTOLOAD': '0'}, exe=vpy, cwd=tmp_path)
    assert proc.stdout.split() == ['0', 'False', 'False'], proc.stderr


def test_this_environment_is_editable_or_regular():
    """The install the other tests ran against (CI: editable, `pip install -e`) lists the .pth in its
    RECORD, so pip uninstall removes it."""
    site = sysconfig.get_paths()['purelib']
    info, = glob.glob(os.path.join(site, 'timm_elastic-*.dist-info'))
    with open(os.path.join(info, 'RECORD')) as f:
        assert 'timm_elastic_autoload.pth,' in f.read()
    assert os.path.isfile(os.path.join(site, 'timm_elastic_autoload.pth'))
    direct = os.path.join(info, 'direct_url.json')
    editable = os.path.isfile(direct) and json.load(open(direct)).get('dir_info', {}).get('editable', False)
    print('editable install' if editable else 'regular install')
