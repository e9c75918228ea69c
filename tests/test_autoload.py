"""Registration without importing timm_elastic (the installed .pth hook), `timm-elastic run`, and the
hook in a regular (wheel) install beside the editable one the tests run in, with the PEP 829 `.start`
entry point beside the .pth (run as a Python >= 3.15 would: none is available here)."""
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import types
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = ("import sys, timm; print(len(timm.list_models('*elastic*')), "
         "'timm_elastic' in sys.modules, timm.is_model('resnext_tiny_elastic'))")


def python(code, env_update=None, exe=sys.executable, cwd=None, flags=(), argv=()):
    env = {k: v for k, v in os.environ.items() if k != 'TIMM_ELASTIC_AUTOLOAD'}
    env.update(env_update or {})
    return subprocess.run([exe, *flags, '-c', code, *argv], capture_output=True, text=True, env=env, timeout=300,
                          cwd=cwd)


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
    # through the .pth line nothing; a Python implementing PEP 829 (3.15+) runs the .start entry point
    # instead, and imports the small `_timm_elastic_autoload` to resolve it
    start = os.path.join(sysconfig.get_paths()['purelib'], 'timm_elastic_autoload.start')
    pep829 = sys.version_info >= (3, 15) and os.path.isfile(start)
    assert proc.stdout.strip() == ("['_timm_elastic_autoload']" if pep829 else '[]')


@pytest.mark.parametrize('value', ['0', *(pytest.param(v, marks=pytest.mark.slow) for v in ('false', 'OFF', ' no '))])
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


@pytest.mark.slow
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
    # found in the working folder, as `python -m mymod` finds it (it needed PYTHONPATH)
    proc = subprocess.run([_cli(), 'run', '-m', 'mymod', 'a'], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "__main__ ['a'] True"

    proc = subprocess.run([_cli(), 'run', str(tmp_path / 'missing.py')], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"timm-elastic run: error: script {str(tmp_path / 'missing.py')!r} does not exist"]


@pytest.fixture(scope='module')
def source_tree(tmp_path_factory):
    """A clean copy of the project to build: setuptools packs whatever a build dir holds, and a
    checkout's build/ keeps files of earlier builds (a file setup.py no longer writes would pass)."""
    src = tmp_path_factory.mktemp('source') / 'timm-elastic'
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        '.git', '.venv', 'build', 'dist', '*.egg-info', '__pycache__', '.pytest_cache', 'output'))
    return src


@pytest.fixture(scope='module')
def wheel_install(tmp_path_factory, source_tree):
    """pip builds the wheel (with build isolation, as users get it) and installs it in a fresh
    environment, which takes torch, timm... from this environment's site-packages folders and
    timm_elastic only from the wheel."""
    tmp = tmp_path_factory.mktemp('wheel_install')
    wheels = tmp / 'wheels'
    proc = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '-q', '-w', str(wheels),
                           str(source_tree)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    wheel, = glob.glob(str(wheels / 'timm_elastic-*.whl'))

    venv = tmp / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], check=True, timeout=300)
    vpy = str(venv / 'bin' / 'python')
    site = python('import sysconfig; print(sysconfig.get_paths()["purelib"])', exe=vpy).stdout.strip()
    deps = [p for p in sys.path if os.path.basename(p) == 'site-packages' and os.path.isdir(p)]
    with open(os.path.join(site, 'zz_test_deps.pth'), 'w') as f:
        f.write('\n'.join(deps) + '\n')
    proc = subprocess.run([sys.executable, '-m', 'pip', '--python', vpy, 'install', '--no-deps', '--no-index', '-q',
                           wheel], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return types.SimpleNamespace(wheel=wheel, python=vpy, site=site, tmp=tmp)


def _wheel_record(wheel):
    with zipfile.ZipFile(wheel) as z:
        return z.read(next(n for n in z.namelist() if n.endswith('.dist-info/RECORD'))).decode()


@pytest.mark.slow
def test_regular_install_from_a_wheel(wheel_install, tmp_path):
    """The .pth lands at the top of site-packages in a fresh environment, whose `import timm` then
    registers the models."""
    names = zipfile.ZipFile(wheel_install.wheel).namelist()
    assert 'timm_elastic_autoload.pth' in names and '_timm_elastic_autoload.py' in names
    assert 'timm_elastic_autoload.pth,' in _wheel_record(wheel_install.wheel)  # pip uninstall removes it

    vpy, site = wheel_install.python, wheel_install.site
    assert os.path.isfile(os.path.join(site, 'timm_elastic_autoload.pth'))
    proc = python(PROBE + "; import timm_elastic; print(timm_elastic.__file__)", exe=vpy, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    count, imported, known, path = proc.stdout.split()
    assert int(count) >= 10 and imported == 'True' and known == 'True'
    assert path.startswith(site)
    proc = python(PROBE, {'TIMM_ELASTIC_AUTOLOAD': '0'}, exe=vpy, cwd=tmp_path)
    assert proc.stdout.split() == ['0', 'False', 'False'], proc.stderr


# --- PEP 829: the .start entry point beside the .pth ----------------------------------------------

START = 'timm_elastic_autoload.start'
ENTRY_POINT = r'[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*'  # pkg.mod:callable, no other form

# What a Python implementing PEP 829 (3.15 to 3.17) does at start-up with one site-packages folder
# (argv[1]). Run under `python -S`, so that this Python's site.py processes nothing. Files in
# alphabetical order, utf-8-sig, blank and `#` lines skipped; the .pth path lines extend sys.path
# first; then run the import lines of each .pth *without* a .start of the same stem, and the entry
# points of the .start files: one that is not `pkg.mod:callable` is skipped, the others are resolved
# with pkgutil.resolve_name and called with no arguments; an exception is printed, the next runs.
PEP829_STARTUP = r"""
import os, pkgutil, re, sys, traceback
site_dir = sys.argv[1]
sys.path.append(site_dir)
names = sorted(n for n in os.listdir(site_dir) if not n.startswith('.'))
starts = {n[:-len('.start')] for n in names if n.endswith('.start')}

def lines(name):
    with open(os.path.join(site_dir, name), encoding='utf-8-sig') as f:
        return [line.rstrip('\r\n') for line in f if line.strip() and not line.lstrip().startswith('#')]

import_lines, entry_points = [], []
for name in names:
    if name.endswith('.pth'):
        for line in lines(name):
            if line.startswith(('import ', 'import\t')):
                if name[:-len('.pth')] not in starts:
                    import_lines.append(line)
                continue
            path = os.path.join(site_dir, line.rstrip())
            if os.path.exists(path) and path not in sys.path:
                sys.path.append(path)
for name in names:
    if name.endswith('.start'):
        entry_points += [line.strip() for line in lines(name) if line.strip() not in entry_points]
for line in import_lines:
    exec(line)
for ep in entry_points:
    if not re.fullmatch(%r, ep):
        continue
    try:
        pkgutil.resolve_name(ep)()
    except Exception:
        traceback.print_exc()
""" % ENTRY_POINT

# after that start-up: our stub finders, which of ours was imported before timm, then `import timm`
STARTUP_PROBE = """
import json, sys
stubs = [type(f).__name__ for f in sys.meta_path if getattr(f, 'timm_elastic_autoload', False)]
early = sorted(m for m in sys.modules if m.split('.')[0] in
               ('timm', 'torch', 'timm_elastic', '_timm_elastic_autoload', 'numpy'))
import timm
imported = 'timm_elastic' in sys.modules
count, known = len(timm.list_models('*elastic*')), timm.is_model('dla_x60_elastic')
import _timm_elastic_autoload, timm_elastic
print(json.dumps(dict(stubs=stubs, early=early, imported=imported, count=count, known=known,
                      files=[_timm_elastic_autoload.__file__, timm_elastic.__file__])))
"""


def _start_lines(text):
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith('#')]


def _pep829_start(wheel_install, env_update=None):
    """Start-up as a PEP 829 Python does it, then STARTUP_PROBE: (its JSON, stderr)."""
    proc = python(PEP829_STARTUP + STARTUP_PROBE, env_update, exe=wheel_install.python, flags=['-S'],
                  argv=[wheel_install.site], cwd=wheel_install.tmp)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc.stderr


@pytest.mark.slow
def test_wheel_ships_the_start_file_beside_the_pth(wheel_install):
    """The wheel's root has `timm_elastic_autoload.start`, with the .pth's stem (how PEP 829 pairs
    them), UTF-8, naming one `pkg.mod:callable` that resolves to a callable; RECORD lists it."""
    with zipfile.ZipFile(wheel_install.wheel) as z:
        names = z.namelist()
        text = z.read(START).decode('utf-8-sig')
    assert 'timm_elastic_autoload.pth' in names and START in names
    assert os.path.splitext(START)[0] == os.path.splitext('timm_elastic_autoload.pth')[0]
    entry_points = _start_lines(text)
    assert entry_points == ['_timm_elastic_autoload:install']
    assert re.fullmatch(ENTRY_POINT, entry_points[0])
    assert f'{START},' in _wheel_record(wheel_install.wheel)  # pip uninstall removes it
    with open(os.path.join(wheel_install.site, START), encoding='utf-8-sig') as f:
        assert f.read() == text
    proc = python('import pkgutil, sys; f = pkgutil.resolve_name(sys.argv[1]); print(callable(f), f.__module__)',
                  {'PYTHONPATH': wheel_install.site}, exe=wheel_install.python, flags=['-S'], argv=entry_points)
    assert proc.stdout.split() == ['True', '_timm_elastic_autoload'], proc.stderr


@pytest.mark.slow
def test_pep829_start_up_registers_the_models(wheel_install):
    """A Python that reads the .start (and so skips the .pth's import line) registers the models
    when timm is imported; until then, of ours only the small `_timm_elastic_autoload` is imported."""
    out, err = _pep829_start(wheel_install)
    assert out['stubs'] == ['_Stub']  # install()'s, not the .pth line's SimpleNamespace
    assert out['early'] == ['_timm_elastic_autoload']
    assert out['imported'] and out['count'] >= 10 and out['known']
    assert all(f.startswith(wheel_install.site) for f in out['files']), out['files']
    assert 'Traceback' not in err and 'Warning' not in err, err


@pytest.mark.slow
def test_pep829_start_up_environment_variable_switches_it_off(wheel_install):
    out, err = _pep829_start(wheel_install, {'TIMM_ELASTIC_AUTOLOAD': ' Off '})  # the other values: next test
    assert out['stubs'] == [] and not out['imported'] and out['count'] == 0 and not out['known']
    assert 'Traceback' not in err, err


RULE = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
import _timm_elastic_autoload as a
with open(os.path.join(sys.argv[1], 'timm_elastic_autoload.pth'), encoding='utf-8-sig') as f:
    line, = [line for line in f if line.startswith('import ')]
result = {}
for value in [None, '', '1', 'yes', 'on', 'true', 'disable', '0', 'false', 'FALSE', ' no ', 'Off', '\toff\n']:
    os.environ.pop(a.ENV, None)
    if value is not None:
        os.environ[a.ENV] = value
    result[repr(value)] = got = []
    for run in (lambda: exec(line, {}), a.install):
        run()
        got.append(sum(bool(getattr(f, a.MARK, False)) for f in sys.meta_path))
        sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, a.MARK, False)]
os.environ.pop(a.ENV, None)
sys.modules['timm'] = sys  # timm imported already: neither adds a stub
result['timm imported'] = got = []
for run in (lambda: exec(line, {}), a.install):
    run()
    got.append(sum(bool(getattr(f, a.MARK, False)) for f in sys.meta_path))
print(json.dumps(result))
"""


@pytest.mark.slow
def test_pth_line_and_install_apply_the_same_rule(wheel_install):
    """The installed .pth line and install() agree on every value of TIMM_ELASTIC_AUTOLOAD, and
    both switch off for the documented ones, or where timm is imported already."""
    proc = python(RULE, exe=wheel_install.python, flags=['-S'], argv=[wheel_install.site])
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    off = {"'0'", "'false'", "'FALSE'", "' no '", "'Off'", r"'\toff\n'", 'timm imported'}
    assert len(result) == 14 and off <= set(result)
    assert result == {value: [0, 0] if value in off else [1, 1] for value in result}


IDEMPOTENCE = """
import site, sys
sys.path.insert(0, sys.argv[1])
import _timm_elastic_autoload as a
calls = []
register = a._register
a._register = lambda: (calls.append(1), register())
for step in sys.argv[2].split(','):
    a.install() if step == 'install' else site.addsitedir(sys.argv[1])  # 'pth': site runs the .pth line again
stubs = [type(f).__name__ for f in sys.meta_path if getattr(f, 'timm_elastic_autoload', False)]
import timm
print(stubs, len(calls), len(timm.list_models('*elastic*')) >= 10, timm.is_model('resnext_tiny_elastic'))
"""


@pytest.mark.parametrize('flags, steps, stub', [
    ([], 'install,install,pth', 'SimpleNamespace'),  # start-up ran the .pth line; then both run again
    (['-S'], 'install,pth,install', '_Stub'),  # the entry point first, then the .pth line
])
@pytest.mark.slow
def test_pth_line_and_start_entry_point_both_run(wheel_install, flags, steps, stub):
    """Where a Python < 3.15 runs the .pth line and something also calls install() (or the line
    runs twice): one stub finder, the models registered once, no warnings."""
    proc = python(IDEMPOTENCE, exe=wheel_install.python, flags=flags, argv=[wheel_install.site, steps],
                  cwd=wheel_install.tmp)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"['{stub}'] 1 True True"
    assert 'Warning' not in proc.stderr and 'Traceback' not in proc.stderr, proc.stderr


@pytest.mark.slow
def test_editable_wheel_ships_both_files(source_tree, tmp_path):
    """An editable install (`pip install -e .`) gets the .pth and the .start too, listed in RECORD."""
    proc = subprocess.run([sys.executable, '-c', 'import sys; from setuptools import build_meta; '
                           'print(build_meta.build_editable(sys.argv[1]))', str(tmp_path)],
                          capture_output=True, text=True, cwd=source_tree, timeout=600)
    assert proc.returncode == 0, proc.stderr
    wheel = str(tmp_path / proc.stdout.strip().splitlines()[-1])
    with zipfile.ZipFile(wheel) as z:
        assert {'timm_elastic_autoload.pth', START} <= set(z.namelist())
        assert _start_lines(z.read(START).decode('utf-8-sig')) == ['_timm_elastic_autoload:install']
    record = _wheel_record(wheel)
    assert 'timm_elastic_autoload.pth,' in record and f'{START},' in record


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
