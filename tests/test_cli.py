"""The `timm-elastic` command, driven as a user drives it: a subprocess."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import timm

import timm_elastic
from paper import MODELS, ORIGINAL_CODE, PAPER, PAPER_FLOPS_DIFFER


def run(*args, cwd=None):
    exe = shutil.which('timm-elastic')
    assert exe, 'the timm-elastic console script is not installed (pip install -e .)'
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=600, cwd=cwd)


@pytest.mark.slow
def test_models_table():
    proc = run('models')
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    twins = timm_elastic.TWINS
    assert set(PAPER) | set(twins) | set(twins.values()) == MODELS
    for elastic, base in twins.items():  # the small twins, beside each other
        line, = [ln for ln in lines if ln.startswith(elastic + ' ')]
        match = re.search(rf'([\d.]+)M params, ([\d.]+) MMACs at 64x64; twin {base}: ([\d.]+)M \(([-+\d.]+)%\), '
                          rf'([\d.]+) MMACs \(([-+\d.]+)%\)', line)
        assert match, line
        assert abs(float(match[4])) < 4 and abs(float(match[6])) < 4
    for name, (label, printed_params, printed_gmacs) in PAPER.items():
        line, = [ln for ln in lines if ln.startswith(name + ' ')]
        assert label in line
        cells = line.split()
        params, paper_params = float(cells[2]), float(cells[3])
        gmacs, paper_gmacs = float(cells[5]), float(cells[6])
        # the reference columns: the paper's numbers, or the original code's (more digits) where it says so
        if line.rstrip().endswith('original code') and name in ORIGINAL_CODE:
            original_params, original_gmacs = ORIGINAL_CODE[name]
            assert (paper_params, paper_gmacs) == (round(original_params / 1e6, 2), round(original_gmacs, 2))
        # the paper's one decimal against the table's two: half a unit of each
        assert abs(paper_params - printed_params) <= 0.055
        assert abs(paper_gmacs - printed_gmacs) <= 0.055 or name in PAPER_FLOPS_DIFFER
        if cells[4].endswith('*'):
            # DLA: the original counts projections it never uses; the footnote adds them back
            note, = [ln for ln in lines if ln.startswith(f'  {name} ')]
            match = re.search(r'\+([\d.]+)M params = ([\d.]+) .*\+([\d.]+) GMACs = ([\d.]+)', note)
            assert match, note
            assert float(match[2]) == pytest.approx(params + float(match[1]), abs=0.011)
            params, gmacs = float(match[2]), float(match[4])
        # measured and published params / GMACs side by side, within 0.5%
        assert params == pytest.approx(paper_params, rel=0.005) and gmacs == pytest.approx(paper_gmacs, rel=0.005)


@pytest.mark.slow
def test_models_json_and_filter():
    proc = run('models', '--filter', 'resnext50*', '--json')
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert {r['model'] for r in rows} == {'resnext50_elastic', 'resnext50x2_elastic', 'resnext50_selastic'}
    for r in rows:
        assert timm.is_model(r['model'])
        assert abs(r['params_m'] / r['paper_params_m'] - 1) < 0.005
    # the twins too, as the table lists them (--json printed [] for them)
    proc = run('models', '--filter', 'resnext_tiny*', '--json')
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(proc.stdout)
    assert (row['model'], row['twin'], row['img_size']) == ('resnext_tiny_elastic', 'resnext_tiny', 64)
    for name, key in (('resnext_tiny_elastic', 'params_m'), ('resnext_tiny', 'twin_params_m')):
        assert row[key] * 1e6 == pytest.approx(sum(p.numel() for p in timm.create_model(name).parameters()))
    assert abs(row['gmacs'] / row['twin_gmacs'] - 1) < 0.021  # README: within 2.1%


def test_module_entry_point():
    proc = subprocess.run([sys.executable, '-m', 'timm_elastic', 'models', '--filter', 'resnext50_selastic'],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and 'resnext50_selastic' in proc.stdout


@pytest.mark.parametrize('args,message', [
    (('models', '--filter', 'vit*'), "no registered model matches 'vit*'"),
    (('models', '--img-size', '8'), '--img-size must be at least 32, got 8'),
    # integer flags out of range: one line before any work (some were tracebacks of the loaders, one of timm's saver)
    (('validate', '--model', 'resnext_tiny', '--pretrained', '-b', '0'), '-b/--batch-size must be at least 1, got 0'),
    (('validate', '--model', 'resnext_tiny', '--pretrained', '-j', '-1'), '-j/--workers must be at least 0, got -1'),
    (('validate', '--model', 'resnext_tiny', '--pretrained', '--val-num-samples', '0'),
     '--val-num-samples must be at least 1, got 0'),
    (('train', '--checkpoint-hist', '0'), '--checkpoint-hist must be at least 1, got 0'),
    (('train', '--log-interval', '-1'), '--log-interval must be at least 0, got -1'),
    (('train', '-vb', '0'), '-vb/--validation-batch-size must be at least 1, got 0'),
    (('policy', '--model', 'resnext_tiny_elastic', '--pretrained', '--out', 'never-written', '-b', '0'),
     '-b/--batch-size must be at least 1, got 0'),
    (('data', '--out', 'never-written', '--val-num-samples', '3'),
     "num_samples must be at least 8 (one image per class) for an image folder, got 3 for split 'validation'"),
    (('validate', '--model', 'resnext_tiny', '--pretrained', '--img-size', '0'),
     '--img-size must be at least 32, got 0'),
    (('validate', '--model', 'resnext_tiny', '--pretrained', '--input-size', '3', '64', '8'),
     '--input-size H and W must be at least 32, got 64 8'),
    (('frobnicate',), "invalid choice: 'frobnicate'"),
    ((), 'the following arguments are required: COMMAND'),
])
def test_bad_arguments(tmp_path, args, message):
    proc = run(*args, cwd=tmp_path)  # where nothing may be written
    assert proc.returncode == 2
    assert message in proc.stderr
    assert 'Traceback' not in proc.stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('command', ['policy', 'data'])
def test_one_process_commands_refuse_torchrun(tmp_path, monkeypatch, capsys, command):
    """Under torchrun every process ran policy on its share of the images, each wrote the one --out (the page
    paired half the thumbnails with other images' scores): refused before any work, as torchrun sets it."""
    from timm_elastic.cli import main
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv('WORLD_SIZE', '2')
    monkeypatch.setenv('RANK', '1')
    flags = ['--model', 'resnext_tiny_elastic', '--pretrained'] if command == 'policy' else []
    assert main([command, *flags, '--out', 'out']) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f'timm-elastic {command}: error: {command} runs in one process, not under torchrun (WORLD_SIZE 2); the '
        'commands that use several are train, validate, compare and stress']
    assert os.listdir(tmp_path) == []


def test_run_of_a_module_that_is_not_there_is_one_line(capsys):
    from timm_elastic.cli import main
    for target in ('nonexistent_module_x', 'nonexistent_package_x.module'):  # runpy's traceback before
        assert main(['run', '-m', target]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [f'timm-elastic run: error: no module named {target!r}']


def test_run_takes_what_python_runs(tmp_path, monkeypatch, capsys):
    """`timm-elastic run` runs what `python X` runs: a script, whose __file__ is absolute (a relative one broke
    os.path.dirname(__file__) once the script changed folder), a folder or a zip archive with a __main__.py (said not
    to exist); a missing SCRIPT is named alone (argparse asked for ARGS too, which are optional)."""
    import zipfile
    from timm_elastic.cli import main
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, 'argv', list(sys.argv))  # run sets both for the script
    monkeypatch.setattr(sys, 'path', list(sys.path))
    code = 'import sys, timm\nprint(__file__, sys.argv[1:], timm.is_model("resnext_tiny_elastic"))\n'
    (tmp_path / 'tool').mkdir()
    (tmp_path / 'tool' / 's.py').write_text(code)
    (tmp_path / 'app').mkdir()
    (tmp_path / 'app' / '__main__.py').write_text(code)
    with zipfile.ZipFile(tmp_path / 'app.zip', 'w') as z:
        z.writestr('__main__.py', code)
    for target, file in (('tool/s.py', 'tool/s.py'), ('app', 'app/__main__.py'), ('app.zip', 'app.zip/__main__.py')):
        assert main(['run', target, '--x', '1']) == 0
        assert capsys.readouterr().out == f"{tmp_path / file} ['--x', '1'] True\n", target
    (tmp_path / 'empty').mkdir()
    assert main(['run', 'empty']) == 2
    assert capsys.readouterr().err == "timm-elastic run: error: folder 'empty' has no __main__.py to run\n"
    for args in (['run'], ['run', '-m']):
        assert main(args) == 2
        assert capsys.readouterr().err == ('timm-elastic run: error: name the script to run (or, with -m, the module): '
                                           'timm-elastic run SCRIPT [ARGS ...]\n')


def test_help():
    proc = run('models', '--help')
    assert proc.returncode == 0 and '--filter' in proc.stdout and 'GMACs' not in proc.stderr


def test_compare_help_names_no_data_dir_layout(capsys):
    """compare trains on the built-in data and refuses --data-dir, but its help (train's) offered --data-dir and
    MS COCO's and VOC's layouts in it."""
    from timm_elastic.cli import main
    helps = {}
    for command in ('compare', 'train'):
        with pytest.raises(SystemExit):
            main([command, '--help'])
        helps[command] = ' '.join(capsys.readouterr().out.split())
    for layout in ("MS COCO's layout in --data-dir", 'a VOC folder in --data-dir'):
        assert layout not in helps['compare'] and layout in helps['train']
    assert "the built-in data's multi-label mode; segment:" in helps['compare']
    # nor the checkpoints it refuses to start from (each model of the pair trains from scratch)
    for flag in ('--data-dir DIR', '--dataset NAME', '--dataset-download', '--resume PATH',
                 '--initial-checkpoint PATH'):
        assert flag not in helps['compare'] and flag in helps['train']


def test_data_help_gives_the_default_counts():
    from timm_elastic.data import DEFAULT_SAMPLES
    text = ' '.join(run('data', '--help').stdout.split())
    assert f'training images (default: {DEFAULT_SAMPLES["train"]})' in text
    assert f'validation images (default: {DEFAULT_SAMPLES["validation"]})' in text


def test_existing_output_names_the_flag(tmp_path):
    """Each interface speaks its own: the command line says --force (Python's functions say force=True)."""
    out = tmp_path / 'data'
    out.mkdir()
    (out / 'mine.txt').write_text('keep me')
    proc = run('data', '--out', str(out), '--train-num-samples', '8', '--val-num-samples', '8')
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f'timm-elastic data: error: {out} exists and is not empty; pass --force to replace it'], proc.stderr
    proc = run('data', '--out', str(out), '--train-num-samples', '8', '--val-num-samples', '8', '--force')
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f'timm-elastic data: error: {out} is not a dataset written by write_image_folder (no objects.csv of its '
        f'columns); '
        f'not replacing it even with --force, remove it yourself'], proc.stderr
    assert os.listdir(out) == ['mine.txt']
