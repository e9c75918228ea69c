"""The `timm-elastic` command, driven as a user drives it: a subprocess."""
import json
import re
import shutil
import subprocess
import sys

import pytest
import timm

import timm_elastic


def run(*args):
    exe = shutil.which('timm-elastic')
    assert exe, 'the timm-elastic console script is not installed (pip install -e .)'
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=600)


def test_models_table():
    proc = run('models')
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    twins = timm_elastic.TWINS
    assert set(timm_elastic.PAPER_ROWS) | set(twins) | set(twins.values()) == set(timm_elastic.list_models())
    for elastic, base in twins.items():  # the small twins, beside each other
        line, = [ln for ln in lines if ln.startswith(elastic + ' ')]
        match = re.search(rf'([\d.]+)M params, ([\d.]+) MMACs at 64x64; twin {base}: ([\d.]+)M \(([-+\d.]+)%\), '
                          rf'([\d.]+) MMACs \(([-+\d.]+)%\)', line)
        assert match, line
        assert abs(float(match[4])) < 4 and abs(float(match[6])) < 4
    for name, row in timm_elastic.PAPER_ROWS.items():
        line, = [ln for ln in lines if ln.startswith(name + ' ')]
        assert row.row in line
        cells = line.split()
        params, paper_params = float(cells[2]), float(cells[3])
        gmacs, paper_gmacs = float(cells[5]), float(cells[6])
        assert paper_params == pytest.approx(row.params_m) and paper_gmacs == pytest.approx(row.gmacs)
        if cells[4].endswith('*'):
            # DLA: the original counts projections it never uses; the footnote adds them back
            note, = [ln for ln in lines if ln.startswith(f'  {name} ')]
            match = re.search(r'\+([\d.]+)M params = ([\d.]+) .*\+([\d.]+) GMACs = ([\d.]+)', note)
            assert match, note
            assert float(match[2]) == pytest.approx(params + float(match[1]), abs=0.011)
            params, gmacs = float(match[2]), float(match[4])
        # measured and published params / GMACs side by side, within 0.5%
        assert params == pytest.approx(paper_params, rel=0.005) and gmacs == pytest.approx(paper_gmacs, rel=0.005)


def test_models_json_and_filter():
    proc = run('models', '--filter', 'resnext50*', '--json')
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert {r['model'] for r in rows} == {'resnext50_elastic', 'resnext50x2_elastic', 'resnext50_selastic'}
    for r in rows:
        assert timm.is_model(r['model'])
        assert abs(r['params_m'] / r['paper_params_m'] - 1) < 0.005


def test_module_entry_point():
    proc = subprocess.run([sys.executable, '-m', 'timm_elastic', 'models', '--filter', 'resnext50_selastic'],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and 'resnext50_selastic' in proc.stdout


@pytest.mark.parametrize('args,message', [
    (('models', '--filter', 'vit*'), "no registered model matches 'vit*'"),
    (('models', '--img-size', '8'), '--img-size must be at least 32, got 8'),
    (('frobnicate',), "invalid choice: 'frobnicate'"),
    ((), 'the following arguments are required: COMMAND'),
])
def test_bad_arguments(args, message):
    proc = run(*args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert 'Traceback' not in proc.stderr


def test_help():
    proc = run('models', '--help')
    assert proc.returncode == 0 and '--filter' in proc.stdout and 'GMACs' not in proc.stderr
