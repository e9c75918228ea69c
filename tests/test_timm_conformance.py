"""timm's own model test suite, run against every registered Elastic model.

The suite is `tests/test_models.py` from the source distribution of the *installed* timm version,
fetched with pip at test time and cached outside the repository (TIMM_ELASTIC_CACHE, default
~/.cache/timm-elastic). It runs in a subprocess as `pytest -p timm_elastic test_models.py -k MODELS`,
exactly as a user would run it, for every model the package registers, and every selected test must
pass. "Like timm's own models": each of our models must pass every core test that the suite runs on
the stock timm model of its family (the suite excludes some families from some tests, e.g. DenseNet
from TorchScript).
"""
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

import pytest
import timm

import timm_elastic

from hub_cache import cache_every_release, offline_env

# the model tests every model must go through, where the installed timm's suite runs them on the
# stock model of the same family (timm selects the intermediates tests by the family's module name:
# 'resnet', 'dla', 'densenet')
CORE_TESTS = (
    'test_model_forward', 'test_model_backward', 'test_model_default_cfgs', 'test_model_forward_torchscript',
    'test_model_forward_features', 'test_model_forward_intermediates_features', 'test_model_forward_intermediates',
    'test_prune_intermediate_layers_contract', 'test_model_forward_fx', 'test_model_backward_fx',
    'test_model_forward_fx_torchscript',
)
# family module -> the stock timm model whose selection of tests ours must match
FAMILY_REFERENCE = {'resnet': 'resnext50_32x4d', 'dla': 'dla60x', 'densenet': 'densenet201'}


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


def run_suite(models, *extra_args, env=None, on_line=None) -> subprocess.CompletedProcess:
    """`pytest -p timm_elastic test_models.py -k 'm1 or m2 ...'` in the suite's folder.

    With `on_line`, the suite runs verbose (one line per finished test, `[done/total]` at its end), its
    stderr merged into its stdout, and `on_line` gets each line of output as it comes; the returned
    `stdout` holds the whole output either way.
    """
    test_dir = timm_test_dir()
    env = dict(os.environ, **(env or {}))
    # timm_elastic must be importable as a plugin from wherever the suite runs
    env['PYTHONPATH'] = os.pathsep.join(
        filter(None, [str(Path(timm_elastic.__file__).parents[1]), env.get('PYTHONPATH')]))
    output = ['-q'] if on_line is None else ['-v', '-o', 'console_output_style=count']
    cmd = [
        sys.executable, '-m', 'pytest', '-p', 'timm_elastic', str(test_dir / 'test_models.py'),
        '-k', ' or '.join(models), *output, '-p', 'no:cacheprovider', '-W', 'ignore::pytest.PytestUnknownMarkWarning',
        '--rootdir', str(test_dir), *extra_args,
    ]
    if on_line is None:
        return subprocess.run(cmd, cwd=test_dir, env=env, capture_output=True, text=True)
    env['PYTHONUNBUFFERED'] = '1'  # a line per test as it finishes, not a pipe buffer's worth
    lines = []
    # stderr merged and read as it comes: neither pipe can fill up and stall the suite
    proc = subprocess.Popen(cmd, cwd=test_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors='replace')
    try:
        for line in proc.stdout:
            lines.append(line)
            on_line(line.rstrip('\n'))
        proc.wait()
    except BaseException:  # a timeout or Ctrl-C of the outer run ends the suite too
        proc.kill()
        proc.wait()
        raise
    finally:
        proc.stdout.close()
    return subprocess.CompletedProcess(cmd, proc.returncode, ''.join(lines), '')


# a finished test in the verbose output: `test_models.py::test_model_forward[1-x] PASSED     [ 12/170]`
RESULT_LINE = re.compile(r'^\S*::(?P<test>\S+) (?P<outcome>[A-Z]+)\b.*\[\s*(?P<done>\d+)/(?P<total>\d+)\]\s*$')


def terminal_writer(config):
    """A function that writes a line to the terminal right away, past pytest's output capture (as
    pytest's live logging does), so that a long test can show its progress while it runs."""
    capman = config.pluginmanager.getplugin('capturemanager')
    reporter = config.pluginmanager.getplugin('terminalreporter')

    def write(line):
        with capman.global_and_fixture_disabled() if capman else nullcontext():
            if reporter is None:  # -p no:terminal
                print(line, file=sys.stderr, flush=True)
                return
            reporter.ensure_newline()
            if getattr(reporter._tw, 'width_of_current_line', 0):  # -q: after the dots of earlier tests
                reporter.write('\n')
            reporter.write_line(line)
            reporter.flush()
    return write


def suite_progress(write, start):
    """An `on_line` for `run_suite` that writes a line per finished test: count, elapsed time, outcome."""
    def on_line(line):
        m = RESULT_LINE.match(line)
        if m:
            minutes, seconds = divmod(int(time.monotonic() - start), 60)
            total = m['total']
            write(f'  timm conformance [{m["done"]:>{len(total)}}/{total} {minutes:2d}m{seconds:02d}s] '
                  f'{m["test"]} {m["outcome"]}')
    return on_line


def model_of(params: str) -> str:
    """The model of a test's parameters: '1-densenet201.tv_in1k]' -> 'densenet201'."""
    return params.rstrip(']').split('-')[-1].split('.')[0]


def collected(models):
    """{(test name, model name)} that the suite selects for these models."""
    proc = run_suite(models, '--collect-only')
    pairs = set()
    for line in proc.stdout.splitlines():
        if '::' in line and '[' in line:
            test, _, params = line.split('::', 1)[1].partition('[')
            pairs.add((test, model_of(params)))
    assert pairs, f'collecting timm\'s suite failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}'
    return pairs


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
@pytest.mark.slow
@pytest.mark.timeout(3000)
def test_timm_model_suite(tmp_path, request):
    # the run takes ~4 minutes on 2 idle CPU cores, ~30 on a busy machine: show a line per finished test of the
    # suite as it goes, whatever pytest captures (the full output still goes into the failure messages below)
    write = terminal_writer(request.config)
    start = time.monotonic()
    models = timm_elastic.list_models()
    write(f'  timm conformance: timm {timm.__version__} tests/test_models.py on {len(models)} models, '
          f'in a subprocess (~4 minutes on 2 idle CPU cores, ~30 on a busy machine); preparing the stand-in weights')
    # the suite loads every pretrained tag (test_model_load_pretrained, test_model_features_pretrained):
    # stand-ins of the authors' releases, in torch.hub's cache where their download would be; no network
    cache_every_release(str(tmp_path / 'torch'))
    junit = tmp_path / 'timm_test_models.xml'
    env = dict(offline_env(str(tmp_path / 'hf')), TORCH_HOME=str(tmp_path / 'torch'))
    proc = run_suite(models, f'--junitxml={junit}', env=env, on_line=suite_progress(write, start))
    assert junit.exists(), f'timm test suite did not run:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}'
    rows = read_junit(junit)
    counts = Counter(outcome for *_, outcome, _ in rows)
    summary = f'timm {timm.__version__} tests/test_models.py, {len(models)} models: ' + ', '.join(
        f'{n} {k}' for k, n in sorted(counts.items()))
    print(summary)
    minutes, seconds = divmod(int(time.monotonic() - start), 60)
    write(f'  timm conformance: {summary}, in {minutes}m{seconds:02d}s')

    bad = [r for r in rows if r[2] in ('failure', 'error')]
    assert not bad, 'timm conformance failures:\n' + '\n'.join(f'{t}[{p}]: {m}' for t, p, _, m in bad)

    reference = collected(list(FAMILY_REFERENCE.values()))
    passed = {(t, model_of(p)) for t, p, o, _ in rows if o == 'passed'}
    missing = []
    for m in models:
        family = timm.models.model_entrypoint(m).__module__.rsplit('.', 1)[-1]
        required = [t for t in CORE_TESTS if (t, FAMILY_REFERENCE[family]) in reference]
        assert 'test_model_forward' in required and 'test_model_default_cfgs' in required, (m, required)
        missing += [(t, m) for t in required if (t, m) not in passed]
    assert not missing, (
        f'core tests that did not pass, though timm runs them on the family\'s stock model: {missing[:20]}')
    assert proc.returncode == 0, proc.stdout[-3000:]
