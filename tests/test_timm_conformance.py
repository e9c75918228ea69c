"""timm's own model test suite, run against every registered Elastic model.

The suite is `tests/test_models.py` from the source distribution of the *installed* timm version,
fetched with pip at test time and cached outside the repository (TIMM_ELASTIC_CACHE, default
~/.cache/timm-elastic). It runs in a subprocess as `pytest -p timm_elastic test_models.py -k elastic`,
exactly as a user would run it, and every selected test must pass.
"""
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest
import timm

import timm_elastic

# the model tests every Elastic model must go through, where the installed timm's suite has them
# (timm selects the intermediates tests by the family's module name: 'resnet', 'dla', 'densenet')
CORE_TESTS = (
    'test_model_forward', 'test_model_backward', 'test_model_default_cfgs', 'test_model_forward_torchscript',
    'test_model_forward_features', 'test_model_forward_intermediates_features', 'test_model_forward_intermediates',
    'test_prune_intermediate_layers_contract', 'test_model_forward_fx', 'test_model_backward_fx',
    'test_model_forward_fx_torchscript',
)


def timm_test_dir() -> Path:
    """The `tests/` folder of the installed timm's source distribution, downloaded once."""
    root = Path(os.environ.get('TIMM_ELASTIC_CACHE', Path.home() / '.cache' / 'timm-elastic'))
    target = root / f'timm-{timm.__version__}-tests'
    if (target / 'test_models.py').exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        subprocess.run(
            [sys.executable, '-m', 'pip', 'download', '--quiet', '--no-deps', '--no-binary', ':all:',
             f'timm=={timm.__version__}', '--dest', tmp],
            check=True)
        sdist, = Path(tmp).glob('timm-*.tar.gz')
        staging = Path(tmp) / 'tests'
        staging.mkdir()
        with tarfile.open(sdist) as tar:
            for member in tar.getmembers():
                parts = Path(member.name).parts
                if len(parts) == 3 and parts[1] == 'tests' and member.isfile() and parts[2].endswith('.py'):
                    (staging / parts[2]).write_bytes(tar.extractfile(member).read())
        if not (staging / 'test_models.py').exists():
            raise RuntimeError(f'{sdist.name} has no tests/test_models.py')
        try:
            os.replace(staging, target)  # atomic: a concurrent or interrupted run never sees half a folder
        except OSError:
            if not (target / 'test_models.py').exists():
                raise
    return target


def run_conformance(junit: Path, extra_args=()) -> subprocess.CompletedProcess:
    test_dir = timm_test_dir()
    env = dict(os.environ)
    # timm_elastic must be importable as a plugin from wherever the suite runs
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(Path(timm_elastic.__file__).parents[1]), env.get('PYTHONPATH')]))
    cmd = [
        sys.executable, '-m', 'pytest', '-p', 'timm_elastic', str(test_dir / 'test_models.py'),
        '-k', 'elastic', '-q', '-p', 'no:cacheprovider', '-W', 'ignore::pytest.PytestUnknownMarkWarning', f'--junitxml={junit}', '--rootdir', str(test_dir),
        *extra_args,
    ]
    return subprocess.run(cmd, cwd=test_dir, env=env, capture_output=True, text=True)


def read_junit(junit: Path):
    """[(test name, model name, outcome, message)] from a junit xml report."""
    rows = []
    for case in ET.parse(junit).getroot().iter('testcase'):
        name = case.get('name')
        test, _, params = name.partition('[')
        outcome, message = 'passed', ''
        for tag in ('failure', 'error', 'skipped'):
            node = case.find(tag)
            if node is not None:
                outcome, message = tag, (node.get('message') or '')[:300]
        rows.append((test, params.rstrip(']'), outcome, message))
    return rows


@pytest.mark.conformance
@pytest.mark.timeout(3000)
def test_timm_model_suite(tmp_path):
    junit = tmp_path / 'timm_test_models.xml'
    proc = run_conformance(junit)
    assert junit.exists(), f'timm test suite did not run:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}'
    rows = read_junit(junit)
    counts = Counter(outcome for *_, outcome, _ in rows)
    print(f'timm {timm.__version__} tests/test_models.py -k elastic: ' + ', '.join(
        f'{n} {k}' for k, n in sorted(counts.items())))

    bad = [r for r in rows if r[2] in ('failure', 'error')]
    assert not bad, 'timm conformance failures:\n' + '\n'.join(f'{t}[{p}]: {m}' for t, p, _, m in bad)

    models = timm.list_models('*elastic*')
    suite = (timm_test_dir() / 'test_models.py').read_text()
    core = [t for t in CORE_TESTS if f'def {t}(' in suite]
    assert 'test_model_forward' in core and 'test_model_default_cfgs' in core
    passed = {(t, p.split('-')[-1]) for t, p, o, _ in rows if o == 'passed'}
    missing = [(t, m) for t in core for m in models if (t, m) not in passed]
    assert not missing, f'tests that did not pass for some Elastic models: {missing[:20]}'
    assert proc.returncode == 0, proc.stdout[-3000:]
