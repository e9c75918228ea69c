"""`timm-elastic train` / `validate` / `compare` on the built-in dataset: checkpoints, exact resume
after a kill, atomic checkpoint replacement, DDP with two CPU processes, bf16 and channels_last,
and one-line errors for bad arguments."""
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import timm
import torch

import timm_elastic  # noqa: F401
from timm_elastic.cli import build_parser
from timm_elastic.train import AtomicCheckpointSaver, train, validate

# a few seconds per epoch on 2 cores
SMALL = ['--train-num-samples', '192', '--val-num-samples', '112', '-b', '32', '--no-progress', '--log-interval', '0']


def cli(*args, env=None, **kwargs):
    exe = shutil.which('timm-elastic')
    assert exe, 'the timm-elastic console script is not installed (pip install -e .)'
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=900, env=env, **kwargs)


def torchrun(*args, nproc=2):
    """`timm-elastic ARGS` under torchrun with `nproc` CPU (gloo) processes of one thread each."""
    exe = os.path.join(os.path.dirname(sys.executable), 'torchrun')
    return subprocess.run([exe, '--standalone', '--nproc-per-node', str(nproc), '-m', 'timm_elastic', *args],
                          capture_output=True, text=True, timeout=900, env=dict(os.environ, OMP_NUM_THREADS='1'))


def validate_in_two_processes_and_one(common, tmp_path):
    """`timm-elastic COMMON` (a validate command) under torchrun with two processes and in one process: both
    results files, read back."""
    for run, name in ((torchrun, 'ddp.json'), (cli, 'one.json')):
        proc = run(*common, '--results-file', str(tmp_path / name))
        assert proc.returncode == 0, proc.stderr[-3000:]
    return tuple(json.loads((tmp_path / f).read_text()) for f in ('ddp.json', 'one.json'))


def in_a_terminal(*args):
    """`timm-elastic ARGS` with stderr on a pseudo-terminal (160 columns): (exit status, what the terminal
    showed, stdout)."""
    import fcntl
    import pty
    import struct
    import termios
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack('HHHH', 24, 160, 0, 0))  # a terminal's size
    proc = subprocess.Popen([shutil.which('timm-elastic'), *args], stdout=subprocess.PIPE, stderr=secondary,
                            text=True)
    os.close(secondary)
    out = b''
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # the other end closed
            break
        if not chunk:
            break
        out += chunk
    os.close(primary)
    status = proc.wait(timeout=600)
    return status, out.decode(errors='replace'), proc.stdout.read()


def summary(path):
    with open(path, newline='') as f:
        return list(csv.reader(f))


def state(path, key='state_dict'):
    return torch.load(path, map_location='cpu', weights_only=False)[key]


def random_checkpoint(path, name='resnext_tiny_elastic', seed=0):
    """A checkpoint of `name`'s initial weights (torch seed `seed`, 8 classes) at `path`, as validate reads one."""
    torch.manual_seed(seed)
    torch.save({'state_dict': timm.create_model(name, num_classes=8).state_dict(), 'arch': name}, path)
    return path


@pytest.mark.slow
def test_train_checkpoint_validate(tmp_path):
    out = tmp_path / 'runs'
    proc = cli('train', '--epochs', '2', '-j', '0', '--output', str(out), '--experiment', 'tiny',
               *[a for a in SMALL if a != '--no-progress'])
    assert proc.returncode == 0, proc.stderr
    run = out / 'tiny'
    assert {'last.pth.tar', 'model_best.pth.tar', 'checkpoint-0.pth.tar', 'checkpoint-1.pth.tar',
            'summary.csv'} <= set(os.listdir(run))
    assert not [f for f in os.listdir(run) if 'tmp' in f]
    rows = summary(run / 'summary.csv')
    head = rows[0]
    assert head[:5] == ['epoch', 'train_loss', 'eval_loss', 'eval_top1', 'eval_top5'] and head[-1] == 'lr'
    assert 'eval_top1_small' in head and 'eval_top1_large+medium+small' in head
    assert [r[0] for r in rows[1:]] == ['0', '1']
    # epochs count from 1 on the console (summary.csv counts from 0); in a pipe there is no bar (see
    # test_progress_bar_in_a_terminal_only)
    assert 'epoch 1/2: train loss' in proc.stdout and 'epoch 2/2: train loss' in proc.stdout
    assert 'epoch 0/' not in proc.stdout + proc.stderr and '\r' not in proc.stderr

    best = max(rows[1:], key=lambda r: float(r[3]))
    results = tmp_path / 'val.json'
    proc = cli('validate', '--checkpoint', str(run / 'model_best.pth.tar'),  # it records its --model
               '--val-num-samples', '112', '-j', '0', '--results-file', str(results), '--no-progress')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith('resnext_tiny_elastic: top-1 ')
    metrics = json.loads(results.read_text())
    assert metrics['count'] == 112 and metrics['num_classes'] == 8
    assert metrics['top1'] == pytest.approx(float(best[3]), abs=1e-9)  # the same images, the same weights
    assert metrics['loss'] == pytest.approx(float(best[2]), rel=1e-6)
    assert len(metrics['per_combination']) == 7
    assert sum(r['count'] for r in metrics['per_combination'].values()) == 112
    assert f'top-1 {metrics["top1"]:.2f}%' in proc.stdout and 'objects small' in proc.stdout


@pytest.mark.slow
def test_image_folder_round_trip(tmp_path):
    """`timm-elastic data` writes the built-in images as a folder that timm's reader trains on, with the built-in
    data's recipe (no random-resized crops, which would move objects between the size buckets), and validating on
    it gives exactly what the in-memory dataset gives (PNG is lossless), size combinations (from objects.csv)
    included; a split renamed since is validated without them."""
    folder = tmp_path / 'scaleshapes'
    proc = cli('data', '--out', str(folder), '--train-num-samples', '96', '--val-num-samples', '56')
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(folder)) == ['objects.csv', 'train', 'validation']
    for name, crop in (('folder', ['--scale', '1', '1', '--ratio', '1', '1']), ('default', [])):
        proc = cli('train', '--data-dir', str(folder), '--epochs', '1', '-j', '1', '--output', str(tmp_path),
                   '--experiment', name, '--no-progress', '-b', '32', *crop)
        assert proc.returncode == 0, proc.stderr
    assert summary(tmp_path / 'default' / 'summary.csv') == summary(tmp_path / 'folder' / 'summary.csv')
    ckpt = str(tmp_path / 'folder' / 'last.pth.tar')
    results = []
    for data in (['--data-dir', str(folder)], ['--val-num-samples', '56']):  # the folder's 56 images, in memory
        out = tmp_path / f'v{len(results)}.json'
        proc = cli('validate', '--model', 'resnext_tiny_elastic', '--checkpoint', ckpt, '-j', '0', '--no-progress',
                   '--results-file', str(out), *data)
        assert proc.returncode == 0, proc.stderr
        results.append(json.loads(out.read_text()))
    assert results[0]['count'] == 56 and len(results[0]['per_combination']) == 7
    assert results[0]['top1'] == results[1]['top1'] and results[0]['loss'] == pytest.approx(results[1]['loss'])
    assert results[0]['per_combination'] == results[1]['per_combination']
    renamed = tmp_path / 'renamed'
    shutil.copytree(folder, renamed)
    os.rename(renamed / 'validation', renamed / 'val')  # objects.csv still lists 'validation'
    out = tmp_path / 'renamed.json'
    proc = cli('validate', '--checkpoint', ckpt, '--data-dir', str(renamed), '--split', 'val', '-j', '0',
               '--no-progress', '--results-file', str(out))
    assert proc.returncode == 0, proc.stderr
    renamed_result = json.loads(out.read_text())
    assert renamed_result['top1'] == results[0]['top1'] and 'per_combination' not in renamed_result
    # one image of one's own added to the split: the table is left out, as it would not be the split's, and said
    extra = tmp_path / 'extra'
    shutil.copytree(folder, extra)
    shutil.copy(extra / 'validation' / 'checks' / os.listdir(extra / 'validation' / 'checks')[0],
                extra / 'validation' / 'checks' / 'mine.png')
    proc = cli('validate', '--checkpoint', ckpt, '--data-dir', str(extra), '-j', '0', '--no-progress')
    assert proc.returncode == 0 and 'objects small' not in proc.stdout, proc.stderr
    assert (f"no per-combination results: objects.csv of {extra} lists no object sizes for 1 of the 57 images of "
            f"split 'validation' (e.g. checks/mine.png)") in proc.stderr, proc.stderr
    proc = cli('data', '--out', str(folder))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.slow
def test_kill_and_resume_equals_an_uninterrupted_run(tmp_path):
    """A run killed during epoch 2 and resumed from last.pth.tar writes the same summary rows
    (losses, accuracies, lr: every digit) and ends with the same weights and EMA as a run that
    never stopped. Data workers (-j 1) and EMA included; one run is without --no-progress (a drawn bar:
    test_progress_bar_in_a_terminal_only)."""
    flags = ['--epochs', '3', '-j', '1', '--model-ema', '--seed', '7', '--output', str(tmp_path), *SMALL]
    # without --no-progress, to show that the flag does not change what is computed
    proc = cli('train', *[f for f in flags if f != '--no-progress'], '--experiment', 'straight')
    assert proc.returncode == 0, proc.stderr

    exe = shutil.which('timm-elastic')
    victim = subprocess.Popen([exe, 'train', *flags, '--experiment', 'killed'], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    killed = tmp_path / 'killed'
    deadline = time.time() + 600
    while time.time() < deadline:  # kill as soon as epoch 1's row is written, i.e. inside epoch 1's save or epoch 2
        if (killed / 'summary.csv').exists() and len(summary(killed / 'summary.csv')) >= 3:
            break
        assert victim.poll() is None, victim.stdout.read()
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert len(summary(killed / 'summary.csv')) <= 4  # it did not finish
    last = torch.load(killed / 'last.pth.tar', map_location='cpu', weights_only=False)  # complete, readable
    assert last['epoch'] in (0, 1)

    proc = cli('train', *flags, '--experiment', 'killed', '--resume', str(killed / 'last.pth.tar'))
    assert proc.returncode == 0, proc.stderr
    assert 'epoch 1/3:' not in proc.stdout and 'epoch 3/3:' in proc.stdout  # it continued, not restarted
    assert summary(killed / 'summary.csv') == summary(tmp_path / 'straight' / 'summary.csv')
    for key in ('state_dict', 'state_dict_ema'):
        a, b = state(tmp_path / 'straight' / 'last.pth.tar', key), state(killed / 'last.pth.tar', key)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), key


def test_checkpoint_replacement_is_atomic(tmp_path, monkeypatch):
    """A save that dies half-way (here: the disk fills up) leaves the previous last.pth.tar whole."""
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    saver = AtomicCheckpointSaver(model, opt, checkpoint_dir=str(tmp_path), recovery_dir=str(tmp_path))
    saver.save_checkpoint(0, metric=1.)
    before = (tmp_path / 'last.pth.tar').read_bytes()
    real_save = torch.save

    def save_then_fail(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        with open(f, 'r+b') as fh:  # what a full disk leaves: a truncated file
            fh.truncate(100)
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(torch, 'save', save_then_fail)
    with torch.no_grad():
        model.weight.add_(1.)
    with pytest.raises(OSError, match='No space left'):
        saver.save_checkpoint(1, metric=2.)
    assert (tmp_path / 'last.pth.tar').read_bytes() == before
    assert torch.load(tmp_path / 'last.pth.tar', weights_only=False)['epoch'] == 0


def test_last_checkpoint_is_whole_at_every_step(tmp_path, monkeypatch):
    """At every file-system step of a save, last.pth.tar is a complete checkpoint; a process that dies at
    the rename (here: the rename fails) leaves the previous one. (timm's own saver deletes last.pth.tar
    before renaming the new file over it: a kill in between leaves none.)"""
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    saver = AtomicCheckpointSaver(model, opt, checkpoint_dir=str(tmp_path), recovery_dir=str(tmp_path))
    last = tmp_path / 'last.pth.tar'
    epochs_seen = []

    def check_last():
        epochs_seen.append(torch.load(last, weights_only=False)['epoch'] if os.path.exists(last) else None)

    def checked(fn):
        def step(*args, **kwargs):
            check_last()
            result = fn(*args, **kwargs)
            check_last()
            return result
        return step
    for name in ('replace', 'rename', 'unlink', 'remove', 'link'):
        monkeypatch.setattr(os, name, checked(getattr(os, name)))
    saver.save_checkpoint(0, metric=1.)
    epochs_seen.clear()
    for epoch in (1, 2):
        saver.save_checkpoint(epoch, metric=1. + epoch)
    assert epochs_seen and None not in epochs_seen, epochs_seen

    def rename_fails(src, dst, **kwargs):
        check_last()
        raise OSError(5, 'Input/output error')
    monkeypatch.setattr(os, 'replace', rename_fails)
    monkeypatch.setattr(os, 'rename', rename_fails)
    with pytest.raises(OSError, match='Input/output error'):
        saver.save_checkpoint(3, metric=4.)
    assert epochs_seen[-1] == 2 and torch.load(last, weights_only=False)['epoch'] == 2


def test_ddp_two_cpu_processes(tmp_path):
    """torchrun with two gloo processes trains; evaluation counts each image once (113 images over 2
    ranks: the sampler pads one rank with a duplicate), so the summary's top-1 is what a single-process
    validate of its checkpoint gives; and --dist-bn reduce (the default) leaves both processes with the
    same BatchNorm statistics before evaluating; each process ends its process group."""
    torchrun = os.path.join(os.path.dirname(sys.executable), 'torchrun')
    dump = tmp_path / 'bn'
    dump.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS='1', BN_DUMP_DIR=str(dump))
    helper = os.path.join(os.path.dirname(__file__), 'ddp_bn_dump.py')
    small = [a if a != '112' else '113' for a in SMALL]
    proc = subprocess.run([torchrun, '--standalone', '--nproc-per-node', '2', helper, 'train',
                           '--epochs', '1', '-j', '0', '--output', str(tmp_path), '--experiment', 'ddp',
                           *small], capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = summary(tmp_path / 'ddp' / 'summary.csv')
    assert len(rows) == 2
    ckpt = torch.load(tmp_path / 'ddp' / 'last.pth.tar', map_location='cpu', weights_only=False)
    assert not any(k.startswith('module.') for k in ckpt['state_dict'])
    assert ckpt['args'].world_size == 2 and ckpt['args'].distributed
    args = build_parser().parse_args(['validate', '--model', 'resnext_tiny_elastic', '--checkpoint',
                                      str(tmp_path / 'ddp' / 'last.pth.tar'), '--val-num-samples', '113', '-j', '0',
                                      '--no-progress'])
    metrics = validate(args)
    assert metrics['count'] == 113
    assert metrics['top1'] == pytest.approx(float(rows[1][3]), abs=1e-9)
    assert metrics['loss'] == pytest.approx(float(rows[1][2]), rel=1e-6)
    ranks = [torch.load(dump / f'rank{r}.pt') for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys() and any('running_var' in k for k in ranks[0])
    for k in ranks[0]:
        torch.testing.assert_close(ranks[0][k], ranks[1][k], rtol=1e-6, atol=1e-7, msg=k)
    # each process ended its process group before exiting (left up, gloo's threads could abort it at exit)
    assert [(dump / f'group{r}.txt').read_text() for r in (0, 1)] == ['False', 'False']

    # SyncBatchNorm is CUDA-only in torch: a clear error from every process, not a traceback
    proc = subprocess.run([torchrun, '--standalone', '--nproc-per-node', '2', '-m', 'timm_elastic', 'train',
                           '--sync-bn', '--output', str(tmp_path), '--experiment', 'sync', *SMALL],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode != 0
    assert proc.stderr.count("timm-elastic train: error: --sync-bn needs CUDA (torch's SyncBatchNorm)") == 2
    assert 'timm_elastic/train.py' not in proc.stderr  # (torchrun adds its own report of the failed children)


@pytest.mark.slow
def test_bf16_autocast_and_channels_last_on_cpu(tmp_path, monkeypatch):
    """--amp --amp-dtype bfloat16 --channels-last: during training every convolution's weight is channels_last
    and its output bf16; the checkpoint keeps fp32 weights; --elastic-ratio reaches the model."""
    import timm_elastic.train as train_module
    seen = []

    def observe(m, inputs, output):
        if m.training:
            seen.append((m.weight.is_contiguous(memory_format=torch.channels_last), output.dtype))

    def create_and_observe(*args, **kwargs):
        model = create_model(*args, **kwargs)
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1):  # 1x1: both layouts at once
                m.register_forward_hook(observe)
        return model
    create_model = train_module.create_model
    monkeypatch.setattr(train_module, 'create_model', create_and_observe)
    args = build_parser().parse_args(['train', '--epochs', '1', '-j', '0', '--amp', '--amp-dtype', 'bfloat16',
                                      '--channels-last', '--output', str(tmp_path), '--experiment', 'bf16',
                                      '--elastic-ratio', '0.25', *SMALL])
    metrics = train(args)
    assert seen and set(seen) == {(True, torch.bfloat16)}, set(seen)
    assert metrics['count'] == 112 and 0 <= metrics['top1'] <= 100 and metrics['loss'] == metrics['loss']
    ckpt = torch.load(tmp_path / 'bf16' / 'last.pth.tar', map_location='cpu', weights_only=False)
    sd = ckpt['state_dict']
    # --elastic-ratio reached the model: 2 of 8 paths (4 of stage 2's 16 channels: 32 planes x 4 / 64 per path,
    # 8 paths) at low resolution
    assert sd['layer2.1.elastic.low.conv2.weight'].shape[0] == 4
    assert sd['layer2.1.elastic.high.conv2.weight'].shape[0] == 12
    assert all(t.dtype == torch.float32 for t in sd.values() if t.is_floating_point())
    val = build_parser().parse_args(['validate', '--model', 'resnext_tiny_elastic', '--elastic-ratio', '0.25',
                                     '--checkpoint', str(tmp_path / 'bf16' / 'last.pth.tar'), '--amp',
                                     '--channels-last', '--val-num-samples', '112', '-j', '0', '--no-progress'])
    assert abs(validate(val)['top1'] - metrics['top1']) <= 100 * 3 / 112  # bf16: a few images may flip


@pytest.mark.slow
def test_training_learns(tmp_path):
    """On a fixed seed, 64 training images and 6 epochs: the training loss falls to under half of the first
    epoch's, and top-1 on those same images (the train split as validation set, no augmentation) is far above
    chance (1 in 8 classes)."""
    args = build_parser().parse_args(['train', '--epochs', '6', '-j', '0', '-b', '16', '--train-num-samples', '64',
                                      '--val-num-samples', '64', '--val-split', 'train', '--no-aug', '--seed', '3',
                                      '--output', str(tmp_path), '--experiment', 'learn', '--no-progress',
                                      '--log-interval', '0'])
    metrics = train(args)
    rows = summary(tmp_path / 'learn' / 'summary.csv')
    losses = [float(r[1]) for r in rows[1:]]
    assert len(losses) == 6 and losses[-1] < 0.5 * losses[0], losses
    assert metrics['top1'] >= 50., metrics


def test_validate_builds_the_elastic_options_the_checkpoint_records(tmp_path):
    """A run trained with --elastic-resample nearest (no parameters of its own: the weights fit the default
    bilinear model too) is validated as it was trained, without the flag: validate rebuilt the default model and
    scored it silently. A flag given is used as given."""
    flags = ['-j', '0', '--val-num-samples', '32', '-b', '16', '--no-progress']
    metrics = train(build_parser().parse_args(
        ['train', '--epochs', '1', '--train-num-samples', '32', '--elastic-resample', 'nearest', '--log-interval', '0',
         '--output', str(tmp_path), '--experiment', 'n', *flags]))
    ckpt = str(tmp_path / 'n' / 'last.pth.tar')
    val = validate(build_parser().parse_args(['validate', '--checkpoint', ckpt, *flags]))
    assert val['loss'] == metrics['loss'] and val['top1'] == metrics['top1']
    given = validate(build_parser().parse_args(['validate', '--checkpoint', ckpt, '--elastic-resample', 'bilinear',
                                                *flags]))
    assert given['loss'] != metrics['loss']


def test_validate_builds_the_model_kwargs_of_a_timm_train_checkpoint(tmp_path, monkeypatch):
    """timm's train.py records --model-kwargs (not --elastic-*): validate --checkpoint built the default model,
    and with parameter-free options (nearest resampling, a max pool) its weights loaded into it silently (a
    loss of 18.5 for 29.4). The recorded kwargs build the model, below the options given; a --baseline is not
    given the model's."""
    import argparse
    import timm_elastic.train as train_module
    from timm_elastic.layers import Elastic
    name = 'resnext_tiny_elastic'
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=8, elastic_resample='nearest', global_pool='max')
    saved = argparse.Namespace(model=name, model_kwargs={'elastic_resample': 'nearest', 'global_pool': 'max'})
    ckpt = str(tmp_path / 'timm.pth.tar')
    torch.save({'epoch': 1, 'arch': name, 'state_dict': model.state_dict(), 'args': saved}, ckpt)
    built = []
    fits = train_module.check_checkpoint_fits
    monkeypatch.setattr(train_module, 'check_checkpoint_fits', lambda m, *a: (built.append(m), fits(m, *a))[1])
    flags = ['-j', '0', '--val-num-samples', '16', '-b', '16', '--no-progress']
    parse = build_parser().parse_args
    validate(parse(['validate', '--checkpoint', ckpt, *flags]))
    validate(parse(['validate', '--checkpoint', ckpt, '--elastic-resample', 'bilinear', *flags]))
    modes = [{m.resample_mode for m in b.modules() if isinstance(m, Elastic)} for b in built]
    assert modes == [{'nearest'}, {'bilinear'}], modes
    assert [b.global_pool.pool_type for b in built] == ['max', 'max']
    # policy loads its --baseline after the model: the model's recorded kwargs stay its own
    built.clear()
    torch.save({'arch': 'resnext_tiny', 'state_dict': timm.create_model('resnext_tiny', num_classes=8).state_dict()},
               tmp_path / 'b.pth.tar')
    from timm_elastic.cli import main
    assert main(['policy', '--checkpoint', ckpt, '--baseline', 'resnext_tiny', '--baseline-checkpoint',
                 str(tmp_path / 'b.pth.tar'), '--out', str(tmp_path / 'page'), *flags]) == 0
    assert [b.global_pool.pool_type for b in built] == ['max', 'avg']


def test_use_ema_without_ema_weights_is_refused(tmp_path):
    """--use-ema on a checkpoint without EMA weights evaluated its plain weights under the EMA's name (timm's
    loader falls back to them)."""
    from timm_elastic.train import UsageError
    path = str(tmp_path / 'plain.pth.tar')
    torch.save({'state_dict': timm.create_model('resnext_tiny', num_classes=8).state_dict(), 'arch': 'resnext_tiny'},
               path)
    flags = ['-j', '0', '--val-num-samples', '8', '--no-progress', '--use-ema']
    with pytest.raises(UsageError, match=re.escape(
            f"--use-ema: --checkpoint {path!r} holds no EMA weights (its run had no --model-ema); leave out "
            "--use-ema")):
        validate(build_parser().parse_args(['validate', '--checkpoint', path, *flags]))
    with pytest.raises(UsageError, match='--use-ema evaluates the EMA weights of a --checkpoint; released weights'):
        validate(build_parser().parse_args(['validate', '--model', 'resnext_tiny', '--pretrained', *flags]))


def test_a_checkpoint_that_does_not_fit_says_what_to_do(tmp_path):
    """--initial-checkpoint of another class count ended in torch's load_state_dict traceback (every key
    listed): now the line --resume and --checkpoint give. The authors' checkpoint (the original code's layout) as
    --checkpoint: the errors asked for --model NAME, then refused the names; they say how to convert it."""
    from original import as_release, stand_in_state
    from timm_elastic.train import UsageError
    parse = build_parser().parse_args
    three = str(tmp_path / 'three.pth.tar')
    torch.save({'state_dict': timm.create_model('resnext_tiny', num_classes=3).state_dict(), 'arch': 'resnext_tiny'},
               three)
    with pytest.raises(UsageError, match=re.escape(
            f'--initial-checkpoint {three!r} was trained with 3 classes, but the model has 8 (--num-classes 8); use '
            '--num-classes 3')):
        train(parse(['train', '--model', 'resnext_tiny', '--initial-checkpoint', three, '--output', str(tmp_path),
                     '-j', '0', *SMALL]))
    release = str(tmp_path / 'dla60x_elastic.pth.tar')
    torch.save(dict(as_release(stand_in_state('dla60x_elastic')), arch='dla60x_elastic'), release)  # as it saves
    convert = ("it is laid out as a checkpoint of the original ELASTIC code's dla60x_elastic (dla_x60_elastic "
               f'here): timm-elastic convert {release} --out DIR makes a model folder of it, --model local-dir:DIR '
               '--pretrained loads it')
    for flags, error in (
            ([], f"--checkpoint {release!r} does not record a model name (its arch is 'dla60x_elastic'); "),
            (['--model', 'dla_x60_elastic'],
             f'--checkpoint {release!r} is a checkpoint of --model dla60x_elastic, not dla_x60_elastic; ')):
        with pytest.raises(UsageError, match=re.escape(error + convert)):
            validate(parse(['validate', '--checkpoint', release, *flags, '--val-num-samples', '8', '-j', '0']))


def test_a_model_folder_that_is_not_there_or_a_folder_as_checkpoint(tmp_path, monkeypatch):
    """--model local-dir:DIR without DIR/config.json (a checkpoint's recorded relative path, read from another
    folder) was timm's traceback; a model folder given as --checkpoint was said not to exist."""
    from timm_elastic.train import UsageError
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'model').mkdir()
    parse = build_parser().parse_args
    with pytest.raises(UsageError, match=re.escape(
            f'--model local-dir:gone: gone has no config.json (from the working folder {tmp_path}); local-dir: '
            "names a model folder as timm-elastic convert (or timm's save_for_hf) writes it")):
        train(parse(['train', '--model', 'local-dir:gone', '-j', '0', *SMALL]))
    with pytest.raises(UsageError, match=re.escape(
            "--checkpoint 'model' is a folder; it takes a training checkpoint file (last.pth.tar), and a model "
            "folder (timm-elastic convert's) loads with --model local-dir:DIR --pretrained")):
        validate(parse(['validate', '--checkpoint', 'model', '-j', '0']))
    assert sorted(os.listdir(tmp_path)) == ['model']


def test_a_run_of_a_relative_model_folder_validates_from_another_folder(tmp_path):
    """--model local-dir:DIR with a relative DIR was recorded as given: the checkpoint, which holds every weight,
    could be validated from the training's working folder only (DIR not found elsewhere)."""
    from timm.models import save_for_hf
    (tmp_path / 'a').mkdir()
    (tmp_path / 'b').mkdir()
    save_for_hf(timm.create_model('resnext_tiny_elastic', num_classes=8), str(tmp_path / 'a' / 'mine'))
    proc = cli('train', '--model', 'local-dir:mine', '--pretrained', '--epochs', '1', '-j', '0', *SMALL, '--output',
               'runs', '--experiment', 'x', cwd=tmp_path / 'a')
    assert proc.returncode == 0, proc.stderr
    ckpt = tmp_path / 'a' / 'runs' / 'x' / 'last.pth.tar'
    proc = cli('validate', '--checkpoint', str(ckpt), '--val-num-samples', '16', '-j', '0', '--no-progress',
               cwd=tmp_path / 'b')
    assert proc.returncode == 0, proc.stderr
    assert 'top-1' in proc.stdout, proc.stdout


def test_a_file_for_the_output_folder_or_a_bad_backend_is_refused_before_training(tmp_path, monkeypatch):
    """--output naming a file was a NotADirectoryError traceback; an --experiment that is a file failed after a
    whole epoch, in the first write. --dist-backend nccl on the CPU (or a name torch does not know) was a
    traceback on every process of the torchrun, after they met."""
    from timm_elastic.compare import compare
    from timm_elastic.train import UsageError
    parse = build_parser().parse_args
    (tmp_path / 'file').write_text('mine')
    (tmp_path / 'runs').mkdir()
    (tmp_path / 'runs' / 'e').write_text('mine')
    for flags, error in (
            (['--output', str(tmp_path / 'file')], f'--output: {tmp_path / "file"} is a file, not a folder; choose '
                                                   'another --output'),
            (['--output', str(tmp_path / 'runs'), '--experiment', 'e'],
             f'--experiment: {tmp_path / "runs" / "e"} is a file, not a folder; choose another --experiment'),
            (['--output', str(tmp_path / 'runs'), '--experiment', 'e/seed0'],  # a file above it: a traceback
             f'--experiment: {tmp_path / "runs" / "e"} is a file, not a folder; choose another --experiment'),
            (['--output', str(tmp_path / 'file' / 'x')], f'--output: {tmp_path / "file"} is a file, not a folder')):
        with pytest.raises(UsageError, match=re.escape(error)):
            train(parse(['train', *flags, '-j', '0', *SMALL]))
        # compare's runs lie in folders under its --experiment (e/seed0/resnext_tiny): refused before any work
        monkeypatch.setattr('timm_elastic.compare.create_datasets', lambda *a: pytest.fail('the data came first'))
        with pytest.raises(UsageError, match=re.escape(error.replace('e/seed0', 'e'))):
            compare(parse(['compare', *[f.replace('e/seed0', 'e') for f in flags], '-j', '0', *SMALL]))
    assert (tmp_path / 'file').read_text() == (tmp_path / 'runs' / 'e').read_text() == 'mine'
    monkeypatch.setenv('WORLD_SIZE', '2')  # as torchrun sets it
    for backend, error in (('nccl', '--dist-backend nccl needs CUDA; on --device cpu use gloo (the default)'),
                           ('bogus', "--dist-backend 'bogus' is not a torch.distributed backend; known: gloo, nccl")):
        with pytest.raises(UsageError, match=re.escape(error)):
            train(parse(['train', '--dist-backend', backend, '--device', 'cpu', '--output', str(tmp_path / 'x'),
                         '-j', '0', *SMALL]))
    assert not (tmp_path / 'x').exists()


def test_policy_refuses_another_tasks_checkpoint_without_naming_a_flag_it_lacks(tmp_path):
    """policy advised `use it with --task multilabel`, a flag it does not have."""
    import argparse
    from timm_elastic.report.demo import run
    from timm_elastic.train import UsageError
    path = str(tmp_path / 'ml.pth.tar')
    torch.save({'state_dict': timm.create_model('resnext_tiny_elastic', num_classes=8).state_dict(),
                'arch': 'resnext_tiny_elastic', 'args': argparse.Namespace(task='multilabel')}, path)
    with pytest.raises(UsageError, match=re.escape(
            f'--checkpoint {path!r} was trained with --task multilabel; this command takes checkpoints of --task '
            'classify only')):
        run(build_parser().parse_args(['policy', '--checkpoint', path, '--out', str(tmp_path / 'p'),
                                       '--val-num-samples', '8', '-j', '0', '--no-progress']))
    assert not (tmp_path / 'p').exists()


def test_resume_with_another_number_of_processes_says_it_is_not_exact(tmp_path, caplog):
    """A run resumed under another number of processes trains on (each process draws its own random numbers, so
    the result differs from the uninterrupted run's), and said nothing."""
    flags = ['-j', '0', '--train-num-samples', '32', '--val-num-samples', '16', '-b', '16', '--no-progress',
             '--log-interval', '0', '--output', str(tmp_path), '--experiment', 'r']
    train(build_parser().parse_args(['train', '--epochs', '1', *flags]))
    last = tmp_path / 'r' / 'last.pth.tar'
    ckpt = torch.load(last, map_location='cpu', weights_only=False)
    assert ckpt['args'].world_size == 1
    ckpt['args'].world_size = 2  # as a torchrun of two processes saves it
    torch.save(ckpt, last)
    with caplog.at_level('WARNING', logger='timm_elastic.train'):
        train(build_parser().parse_args(['train', '--epochs', '2', '--resume', str(last), *flags]))
    said = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING']
    assert said == [f'--resume {last}: the run trained in 2 processes, this one has 1; it continues, but not as the '
                    'run would have (every process draws its own random numbers): resume is exact with the same '
                    'number'], said
    caplog.clear()
    with caplog.at_level('WARNING', logger='timm_elastic.train'):  # the same number (1, saved by that run): no word
        train(build_parser().parse_args(['train', '--epochs', '3', '--resume', str(last), *flags]))
    assert [r for r in caplog.records if r.levelname == 'WARNING'] == []


def test_a_progress_bar_gives_logging_back_when_the_work_raises(monkeypatch):
    """While a bar shows (in a terminal), log lines are written through tqdm; an exception in the epoch (or
    Ctrl-C) left them redirected for the rest of the process (compare's next run, a caller's own logging)."""
    import io
    import logging
    from timm_elastic.train import Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    monkeypatch.setattr(sys, 'stderr', Terminal())
    root = logging.getLogger()
    console = logging.StreamHandler(sys.stderr)  # as timm's setup_default_logging has it
    root.addHandler(console)
    try:
        before = list(root.handlers)
        with pytest.raises(KeyboardInterrupt):
            with Progress(4, 'epoch 1/1', build_parser().parse_args(['validate'])) as progress:
                assert progress.bar is not None and root.handlers != before  # redirected while it shows
                raise KeyboardInterrupt
        assert root.handlers == before
    finally:
        root.removeHandler(console)


def test_second_order_optimizer(tmp_path):
    """--opt adahessian, timm's second-order optimiser: the loss is backpropagated with create_graph, as timm's
    train.py does, and AdaHessian's Hessian estimate, taken through the gradients of every layer, the Elastic
    resampling's included (tests/test_resample.py checks their second derivatives), is in the checkpoint.
    Resume stays exact: AdaHessian's own generator (its probes) is reseeded every epoch too."""
    flags = ['-j', '0', '--opt', 'adahessian', '--lr', '0.1', '--seed', '3', '--output', str(tmp_path),
             '--train-num-samples', '32', '--val-num-samples', '16', '-b', '16', '--no-progress', '--log-interval', '0']
    for args in (('--epochs', '2', '--experiment', 'straight'), ('--epochs', '1', '--experiment', 'cut'),
                 ('--epochs', '2', '--experiment', 'cut', '--resume', str(tmp_path / 'cut' / 'last.pth.tar'))):
        proc = cli('train', *flags, *args)
        assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(tmp_path / 'straight' / 'last.pth.tar', map_location='cpu', weights_only=False)
    hessians = [s['exp_hessian_diag_sq'] for s in ckpt['optimizer']['state'].values()]
    assert len(hessians) == len(list(timm.create_model('resnext_tiny_elastic').parameters()))
    assert all(torch.isfinite(h).all() and h.sum() > 0 for h in hessians)
    assert summary(tmp_path / 'straight' / 'summary.csv') == summary(tmp_path / 'cut' / 'summary.csv')
    resumed = state(tmp_path / 'cut' / 'last.pth.tar')
    assert all(torch.equal(t, resumed[k]) for k, t in ckpt['state_dict'].items())


@pytest.mark.slow
def test_second_order_optimizer_under_ddp_is_refused(tmp_path):
    """Under torchrun, --opt adahessian ends with one line that says why (PyTorch's DistributedDataParallel does not
    support backward with create_graph: it would fail inside its gradient reduction), before anything is written."""
    proc = torchrun('train', '--epochs', '1', '-j', '0', '--opt', 'adahessian', '--output', str(tmp_path),
                    '--experiment', 'ddp', '--train-num-samples', '32', '--val-num-samples', '16', '-b', '8',
                    '--no-progress', '--log-interval', '0')
    assert proc.returncode != 0
    assert proc.stderr.count("timm-elastic train: error: --opt adahessian is a second-order optimiser: it "
                             "differentiates the gradients (backward with create_graph), which PyTorch's "
                             "DistributedDataParallel does not support; train it in one process") == 2, proc.stderr
    assert not (tmp_path / 'ddp').exists()


@pytest.mark.slow
def test_summary_rows_after_the_checkpoint_are_dropped_on_resume(tmp_path):
    """A run killed after writing epoch 1's summary row but before its checkpoint resumes from epoch 0's
    checkpoint: epoch 1's row is written once, and equals the uninterrupted run's (deterministically, by
    resuming from checkpoint-0.pth.tar beside that row)."""
    flags = ['--epochs', '2', '-j', '0', '--seed', '5', '--output', str(tmp_path), '--experiment', 'run', *SMALL]
    proc = cli('train', *flags)
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / 'run'
    straight = summary(run / 'summary.csv')
    assert [r[0] for r in straight[1:]] == ['0', '1']
    proc = cli('train', *flags, '--resume', str(run / 'checkpoint-0.pth.tar'))
    assert proc.returncode == 0, proc.stderr
    assert 'epoch 1/2:' not in proc.stdout and 'epoch 2/2:' in proc.stdout
    assert summary(run / 'summary.csv') == straight


COUNTING = 'timm_elastic_test_counting'
GRAPHS = []


def counting_backend(gm, example_inputs):
    """A torch.compile backend that records the graphs it is given and runs them as they are."""
    GRAPHS.append(gm)
    return gm.forward


@pytest.mark.slow
def test_torchcompile_mixup_and_cutmix(tmp_path, monkeypatch):
    """--torchcompile BACKEND compiles the model it trains (a counting backend here: inductor would
    take minutes) and saves plain (not `_orig_mod.`) keys; --mixup / --cutmix train on mixed images with
    soft targets (timm's SoftTargetCrossEntropy)."""
    import timm.loss
    if COUNTING not in torch._dynamo.list_backends():
        torch._dynamo.register_backend(counting_backend, COUNTING)
    GRAPHS.clear()
    targets = []
    soft_ce = timm.loss.SoftTargetCrossEntropy.forward

    def spy(self, x, target):
        targets.append(target.detach())
        return soft_ce(self, x, target)
    monkeypatch.setattr(timm.loss.SoftTargetCrossEntropy, 'forward', spy)
    args = build_parser().parse_args(['train', '--epochs', '1', '-j', '0', '--torchcompile', COUNTING,
                                      '--mixup', '0.8', '--cutmix', '1.0', '--output', str(tmp_path),
                                      '--experiment', 'c', *SMALL])
    metrics = train(args)
    torch._dynamo.reset()
    assert GRAPHS and metrics['count'] == 112
    sd = state(tmp_path / 'c' / 'last.pth.tar')
    assert not any(k.startswith('_orig_mod.') for k in sd) and 'fc.weight' in sd
    assert len(targets) == 192 // 32 and all(t.shape == (32, 8) for t in targets)
    # mixed: in every batch, images whose targets spread over two classes above the smoothing floor (one
    # mixing weight a batch; an image mixed with one of its own class keeps one class)
    off = min(float(t.min()) for t in targets)
    assert all(((t > off + 1e-6).sum(1) == 2).any() for t in targets)
    assert all(torch.allclose(t.sum(1), torch.ones(32)) for t in targets)


def _table(stdout):
    lines = stdout.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith('Top-1 (%) on the built-in validation set'))
    return lines[start:]


def test_compare_defaults_differ_from_train_where_the_readme_says():
    """compare: 3 seeds x 2 epochs at lr 4e-3, stepped every update, channels_last (what fits its 5 minutes);
    train keeps timm-like defaults. Either can be switched."""
    parse = build_parser().parse_args
    c, t = parse(['compare']), parse(['train'])
    assert (c.seeds, c.epochs, c.lr, c.sched_on_updates, c.channels_last) == ([0, 1, 2], 2, 4e-3, True, True)
    assert (t.epochs, t.lr, t.sched_on_updates, t.channels_last) == (4, 2e-3, False, False)
    assert parse(['compare', '--no-channels-last', '--no-sched-on-updates']).channels_last is False
    assert parse(['train', '--channels-last']).channels_last is True


def test_the_papers_multistep_milestones_lower_the_lr_at_the_originals_epochs(tmp_path):
    """The original lowers the lr from epochs 30, 60, 90 (classify.py: `epoch // 30`) and 24, 30
    (multilabel_classify.py: `epoch >= 24`), counted from 0. A train run shows where timm's milestone m lowers it
    (summary.csv's lr of each epoch); the default and the README's recipes must give the original's epochs."""
    proc = cli('train', '--epochs', '3', '-j', '0', *SMALL, '--lr', '0.01', '--sched', 'multistep',
               '--decay-milestones', '2', '--output', str(tmp_path), '--experiment', 'ms')
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / 'ms' / 'summary.csv') as f:
        lrs = [float(row['lr']) for row in csv.DictReader(f)]
    lowered_from = next(e for e, lr in enumerate(lrs) if lr < 0.01)  # milestone 2: from this epoch (from 0)
    assert lrs == pytest.approx([0.01 if e < lowered_from else 0.001 for e in range(3)])

    def epochs(milestones):
        return [m - 2 + lowered_from for m in milestones]
    assert epochs(build_parser().parse_args(['train']).decay_milestones) == [30, 60, 90]
    readme = open(os.path.join(os.path.dirname(__file__), '..', 'README.md'), encoding='utf-8').read()
    recipes = [[int(m) for m in found.split()] for found in re.findall(r'--decay-milestones ((?:\d+ ?)+)', readme)]
    assert sorted(epochs(r) for r in recipes) == [[24, 30], [30, 60, 90]], recipes


@pytest.mark.slow
def test_compare_table4_over_seeds_is_repeatable(tmp_path):
    """compare trains both models once per seed and prints the Table 4 layout with mean ± standard deviation
    over the seeds, a reading of it and the conclusion. Run twice in two processes it prints the same table,
    digit for digit, and every run ends with the same weights; the seeds give different runs."""
    flags = ['compare', '--epochs', '1', '-j', '0', '--seeds', '3', '4', *SMALL]
    proc = cli(*flags, '--output', str(tmp_path), '--experiment', 'cmp', '--results-file', str(tmp_path / 'cmp.json'))
    assert proc.returncode == 0, proc.stderr
    again = cli(*flags, '--output', str(tmp_path), '--experiment', 'again')
    assert again.returncode == 0, again.stderr
    # another seed into the same --experiment is refused: it replaced compare.json with its own seed's results
    before = (tmp_path / 'cmp' / 'compare.json').read_bytes()
    more = cli(*flags, '--seeds', '5', '--output', str(tmp_path), '--experiment', 'cmp')
    assert more.returncode == 2 and more.stderr.strip().splitlines() == [
        f"timm-elastic compare: error: --experiment 'cmp': {tmp_path / 'cmp'} holds a comparison already "
        "(compare.json); another --experiment (or --output) starts a new one"], more.stderr
    assert (tmp_path / 'cmp' / 'compare.json').read_bytes() == before and not (tmp_path / 'cmp' / 'seed5').exists()
    # a comparison that was interrupted (seed 3's runs, no compare.json) is not continued; train's advice,
    # --resume, does not apply to compare's runs
    shutil.copytree(tmp_path / 'again' / 'seed3', tmp_path / 'cut' / 'seed3')
    cut = cli(*flags, '--output', str(tmp_path), '--experiment', 'cut')
    assert cut.returncode == 2 and cut.stderr.strip().splitlines() == [
        f"timm-elastic compare: error: --experiment 'cut': {tmp_path / 'cut'} holds the runs of a comparison that "
        "did not finish (seed3); compare does not continue one; another --experiment (or --output) starts a new one"]
    table = _table(proc.stdout)
    assert table[:-3] == _table(again.stdout)[:-3]  # the last lines: training time and the folder
    for seed in (3, 4):
        for name in ('resnext_tiny', 'resnext_tiny_elastic'):
            run = tmp_path / 'cmp' / f'seed{seed}' / name
            assert summary(run / 'summary.csv') == summary(tmp_path / 'again' / f'seed{seed}' / name / 'summary.csv')
            a, b = state(run / 'last.pth.tar'), state(tmp_path / 'again' / f'seed{seed}' / name / 'last.pth.tar')
            assert all(torch.equal(a[k], b[k]) for k in a), (seed, name)
            # the best checkpoint and the last, not three best
            assert sorted(os.listdir(run)) == ['checkpoint-0.pth.tar', 'last.pth.tar', 'model_best.pth.tar',
                                               'summary.csv']
    a = state(tmp_path / 'cmp' / 'seed3' / 'resnext_tiny_elastic' / 'last.pth.tar')
    b = state(tmp_path / 'cmp' / 'seed4' / 'resnext_tiny_elastic' / 'last.pth.tar')
    assert not torch.equal(a['fc.weight'], b['fc.weight'])

    assert table[0].endswith('mean ± standard deviation over 2 seeds (3, 4):')
    assert table[2].split()[:3] == ['Large', 'Medium', 'Small'] and 'resnext_tiny_elastic' in table[2]
    rows = table[4:11]
    assert [r.split('|')[0].split() for r in rows] == [
        ['-', '-', 'x'], ['-', 'x', '-'], ['-', 'x', 'x'], ['x', '-', '-'], ['x', '-', 'x'], ['x', 'x', '-'],
        ['x', 'x', 'x']]
    res = json.loads((tmp_path / 'cmp.json').read_text())
    assert res == json.loads((tmp_path / 'cmp' / 'compare.json').read_text())
    assert list(res) == ['resnext_tiny', 'resnext_tiny_elastic'] and [r['seed'] for r in res['resnext_tiny']] == [3, 4]

    def cell(text):  # 'mean ± std' -> (mean, std)
        mean, std = text.split(' ± ')
        return float(mean), float(std)

    for r in rows:
        combo = '+'.join(s for s, m in zip(('large', 'medium', 'small'), r.split('|')[0].split()) if m == 'x')
        cells = [c.strip() for c in r.split('|')]
        for col, name in ((2, 'resnext_tiny'), (3, 'resnext_tiny_elastic')):
            per_seed = [run['per_combination'][combo]['top1'] for run in res[name]]
            mean = sum(per_seed) / 2
            std = abs(per_seed[0] - per_seed[1]) / 2 ** 0.5  # the sample standard deviation of two values
            assert cell(cells[col]) == pytest.approx((mean, std), abs=0.006), (combo, name)
        gains = [e['per_combination'][combo]['top1'] - b['per_combination'][combo]['top1']
                 for b, e in zip(res['resnext_tiny'], res['resnext_tiny_elastic'])]
        assert cell(cells[4]) == pytest.approx((sum(gains) / 2, abs(gains[0] - gains[1]) / 2 ** 0.5), abs=0.006)
    all_row = next(ln for ln in table if ln.strip().startswith('all'))
    cells = [c.strip() for c in all_row.split('|')]
    assert cell(cells[2])[0] == pytest.approx(sum(r['top1'] for r in res['resnext_tiny']) / 2, abs=0.006)
    assert cell(cells[3])[0] == pytest.approx(sum(r['top1'] for r in res['resnext_tiny_elastic']) / 2, abs=0.006)
    lines = proc.stdout.splitlines()
    assert lines[-5] == '' and lines[-4].startswith('Averaged over the 2 seeds, resnext_tiny_elastic is ahead of '
                                                    'resnext_tiny on ')
    verdict = lines[-3]
    assert verdict.startswith('Overall, resnext_tiny_elastic ') and ' points over 2 seeds (per seed ' in verdict
    assert ('stands above the noise' in verdict) != ('do not tell the two models apart' in verdict)
    # the console is the table: no checkpoint lists, data configs or per-batch lines; one line says where the files are
    folder = re.escape(str(tmp_path / 'cmp'))
    assert re.fullmatch(rf"Every run's checkpoints and summary.csv: {folder}/seed<N>/<model>/; the metrics: "
                        rf"{folder}/compare.json \(\d+ MB in all\)", lines[-1]), lines[-1]
    for noise in ('Current checkpoints', 'Data processing configuration', '[6/6] loss'):
        assert noise not in proc.stderr, noise


def test_progress_bar_in_a_terminal_only(tmp_path):
    """In a terminal one bar per epoch (through training and evaluation); in a pipe or a log, no bar fragments."""
    flags = ['train', '--epochs', '2', '-j', '0', '--train-num-samples', '64', '--val-num-samples', '32', '-b', '16',
             '--log-interval', '0', '--output', str(tmp_path)]
    piped = cli(*flags, '--experiment', 'piped')
    assert piped.returncode == 0, piped.stderr
    assert '\r' not in piped.stderr and '\r' not in piped.stdout and 'it/s' not in piped.stderr, piped.stderr

    status, bars, stdout = in_a_terminal(*flags, '--experiment', 'tty')
    assert status == 0
    # a bar counts the 4 training batches and the 2 evaluation ones of its epoch
    for epoch in (1, 2):
        assert re.search(rf'epoch {epoch}/2: +\d+%.*\| \d/6 ', bars), bars
    assert not re.search(r'(^|\r)\s*eval', bars), bars  # evaluation has no bar of its own
    assert 'epoch 2/2: train loss' in stdout
    # what is displayed does not change what is computed: the same losses, accuracies and weights with the bar
    assert summary(tmp_path / 'tty' / 'summary.csv') == summary(tmp_path / 'piped' / 'summary.csv')
    a, b = state(tmp_path / 'tty' / 'last.pth.tar'), state(tmp_path / 'piped' / 'last.pth.tar')
    assert all(torch.equal(a[k], b[k]) for k in a)
    # --log-interval's lines go above the bar, each on a line of its own (they were written into the bar's line)
    status, shown, _ = in_a_terminal(*flags, '--log-interval', '1', '--experiment', 'logged')
    assert status == 0
    # what a terminal shows of each line (a terminal's line ends are \r\n)
    visible = [line.rstrip('\r').rsplit('\r', 1)[-1] for line in shown.split('\n')]
    logged = [line for line in visible if re.search(r'epoch \d/2 \[\d/4\] loss', line)]
    assert len(logged) == 8 and all(line.startswith('epoch ') and '|' not in line for line in logged), shown


@pytest.mark.parametrize('args, message', [
    (['train', '--model', 'resnext_nope'], "unknown model 'resnext_nope'; timm-elastic registers "),
    # a typo, not the weights, is what is wrong (it said 'no weights to evaluate', then once given them, this)
    (['validate', '--model', 'resnext_nope'], "--model: unknown model 'resnext_nope'; timm-elastic registers "),
    (['train', '--data-dir', '/no/such/dir'], "--data-dir '/no/such/dir' does not exist or is not a folder"),
    # it generates the built-in data only: a folder read with it gave the seed-0 numbers without a word
    (['validate', '--checkpoint', 'x.pth.tar', '--data-dir', '.', '--data-seed', '5'],
     "--data-seed 5: --data-dir '.' is read as it is; the seed generates the built-in data"),
    (['train', '--amp', '--amp-dtype', 'float16', '--device', 'cpu'],
     '--amp-dtype float16 needs CUDA; on the CPU use --amp-dtype bfloat16'),
    (['train', '--elastic-ratio', '1.5'], 'elastic_ratio must be a number in (0, 1), got 1.5'),
    (['train', '--model', 'resnext_tiny', '--elastic-ratio', '0.25'],
     '--model resnext_tiny has no Elastic blocks, so --elastic-* options do not apply'),
    (['train', '--epochs', '0'], '--epochs must be at least 1, got 0'),
    (['validate', '--model', 'resnext_tiny_elastic', '--checkpoint', '/no/such.pth.tar'],
     "--checkpoint '/no/such.pth.tar' does not exist"),
    (['validate', '--model', 'resnext_tiny_elastic'],  # would score random weights
     'no weights to evaluate: pass --checkpoint PATH (a training checkpoint) or --pretrained'),
    (['validate', '--pretrained'], '--model is needed with --pretrained'),
    (['validate', '--model', 'resnext_tiny', '--pretrained'],  # timm's builder: none released
     '--pretrained: could not load the weights of resnext_tiny (RuntimeError: No pretrained weights exist'),
    (['validate', '--model', 'resnext50_32x4d', '--pretrained'],  # on the Hub, which is offline here
     '--pretrained: could not load the weights of resnext50_32x4d (LocalEntryNotFoundError: '),
    (['compare', '--model', 'resnext50_elastic'], "--model 'resnext50_elastic' has no registered non-Elastic twin"),
    (['compare', '--seeds', '1', '1'], '--seeds must be distinct integers of 0 or more, got 1 1'),
    # one checkpoint fits one model of the pair: the twin trained from it, then the Elastic model's load failed
    (['compare', '--resume', '/no/such.pth.tar'], '--resume: compare trains each model of the pair from scratch, '
                                                  'once per seed; timm-elastic train --resume starts or continues one'),
    (['compare', '--initial-checkpoint', 'a.pth.tar'], '--initial-checkpoint: compare trains each model of the pair'),
    # (it said "--dataset needs --data-dir", and with --data-dir: leave out --data-dir)
    (['compare', '--dataset', 'torch/cifar10'], 'compare trains on the built-in dataset; leave out --dataset '),
    (['compare', '--dataset', 'torch/cifar10', '--data-dir', '.'],
     'compare trains on the built-in dataset; leave out --data-dir and --dataset (timm-elastic train takes them)'),
    # a folder named as the built-in dataset (README: timm-elastic data --out scaleshapes) is a --data-dir all the same
    (['compare', '--data-dir', 'scaleshapes'],
     'compare trains on the built-in dataset; leave out --data-dir (timm-elastic train takes it)'),
    (['train', '--in-chans', '1'], "--in-chans 1 reads the images as greyscale through timm's create_dataset (an "
                                   "image folder, torch/..., hfds/...); the built-in data's images are RGB"),
    (['train', '--in-chans', '2'], '--in-chans 2: the loaders read images as RGB (3 channels) or, with --in-chans 1'),
    # known before the evaluation, not after it
    (['validate', '--model', 'resnext_tiny_elastic', '--pretrained', '--results-file', '/no/such/dir/r.json'],
     "--results-file '/no/such/dir/r.json': its folder does not exist"),
    (['validate', '--model', 'resnext_tiny_elastic', '--pretrained', '--results-file', '.'],
     "--results-file '.' is a folder; name a file in it"),
    (['stress', '--model', 'resnext_tiny_elastic', '--pretrained', '--baseline', 'resnext_tiny', '--plot',
      '/no/such/dir/fig7.png'], "--plot '/no/such/dir/fig7.png': its folder does not exist"),
    (['stress', '--model', 'resnext_tiny_elastic', '--pretrained', '--baseline', 'resnext_tiny', '--plot',
      'fig7.txt'], "--plot 'fig7.txt': matplotlib does not write .txt files"),  # (.svg held PNG bytes)
    # flags that would be ignored
    (['stress', '--model', 'resnext_tiny_elastic', '--pretrained', '--sizes', '64', '32', '64'],
     '--sizes repeats 64; each size is evaluated once'),
    (['stress', '--model', 'resnext_tiny_elastic', '--pretrained', '--img-size', '96', '--crop-pct', '0.5'],
     '--img-size/--crop-pct: stress evaluates the whole image resized to each of --sizes; leave them out'),
    (['compare', '--stress-sizes', '32', '64'], "--stress-sizes: compare's stress test is --task multilabel's"),
    # timm's other readers: a package missing (Hugging Face datasets is not a dependency), a dataset not downloaded
    (['train', '--data-dir', '/no/such/dir', '--dataset', 'hfds/someone/data'],
     "--dataset hfds/someone/data: No module named 'datasets'; install the package that timm reads it with"),
    (['train', '--data-dir', '/no/such/dir', '--dataset', 'torch/cifar10'],
     'Dataset not found or corrupted. You can use download=True to download it (--dataset-download fetches it)'),
    (['train', '--opt', 'adahessian', '--torchcompile'], "--opt adahessian is a second-order optimiser: it "
     "differentiates the gradients (backward with create_graph), which torch.compile's (aot_autograd's) backward does "
     'not support; leave out --torchcompile'),
])
def test_bad_arguments_are_one_line_errors(tmp_path, args, message):
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_HOME=str(tmp_path / 'hf'))  # an empty Hub cache, no network
    small = SMALL[4:] if '--data-dir' in args else SMALL  # the image counts are the built-in data's
    proc = cli(*args, '--output', str(tmp_path), *small, env=env) if args[0] in ('train', 'compare') else \
        cli(*args, env=env)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and 'Traceback' not in proc.stderr, proc.stderr
    assert err[0].startswith(f'timm-elastic {args[0]}: error: ') and message in err[0], err[0]


@pytest.mark.parametrize('flags, message', [
    (['--elastic-resample', 'bogus'], "elastic_resample must be one of 'bilinear', "),
    (['--elastic-ratio', '0.95'], 'elastic_ratio=0.95 splits a block of 8 paths into 0 high- and 8 low-resolution'),
])
def test_compare_refuses_bad_elastic_options_before_training(tmp_path, flags, message):
    """What only the Elastic model checks is found before the twin trains (it was found when the Elastic model
    was built, after the twin's training, which left a folder that compare refuses to continue)."""
    proc = cli('compare', '--seeds', '0', '--epochs', '1', *flags, '--output', str(tmp_path), '--experiment', 'c',
               *TINY)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and err[0].startswith(f'timm-elastic compare: error: {message}'), err
    assert '== seed' not in proc.stdout, proc.stdout
    assert not (tmp_path / 'c').exists() or not os.listdir(tmp_path / 'c')


def test_a_written_file_never_replaces_an_input(tmp_path):
    """--results-file / --plot naming the checkpoint being scored, a file of the data (an annotation file, an image)
    or of a local-dir: model folder is refused before any work: the run used to end by replacing it."""
    data = tmp_path / 'coco'
    (data / 'annotations').mkdir(parents=True)
    (data / 'val2014').mkdir()
    ann, image = data / 'annotations' / 'instances_val2014.json', data / 'val2014' / 'a.png'
    ann.write_text('{"images": []}')
    image.write_bytes(b'an image')
    ckpt, folder = tmp_path / 'ck.pth.tar', tmp_path / 'model'
    ckpt.write_bytes(b'the weights')
    folder.mkdir()
    (folder / 'config.json').write_text('{}')
    data_args = ['--task', 'multilabel', '--data-dir', str(data)]
    for args, says in (
            (['validate', *data_args, '--checkpoint', str(ckpt), '--results-file', str(ckpt)],
             f"--results-file '{ckpt}' is the --checkpoint file that this command reads; name another file"),
            (['validate', *data_args, '--checkpoint', str(ckpt), '--results-file', str(ann)],
             f"--results-file '{ann}' is a file in --data-dir '{data}', which this command reads; name a file "
             'outside it'),
            (['validate', '--model', f'local-dir:{folder}', '--pretrained', '--results-file',
              str(folder / 'config.json')],
             f"--results-file '{folder / 'config.json'}' is a file in --model 'local-dir:{folder}', which"),
            (['stress', *data_args, '--checkpoint', str(ckpt), '--baseline', 'resnext_tiny', '--plot', str(image)],
             f"--plot '{image}' is a file in --data-dir '{data}', which this command reads")):
        proc = cli(*args)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert f'timm-elastic {args[0]}: error: {says}' in proc.stderr, proc.stderr
    assert ckpt.read_bytes() == b'the weights' and ann.read_text() == '{"images": []}'
    assert image.read_bytes() == b'an image' and (folder / 'config.json').read_text() == '{}'


def test_a_results_file_replaces_only_a_json_file(tmp_path):
    """--results-file replaces an earlier results file (JSON), as timm's validate.py does, but not another file at
    the path, e.g. another run's checkpoint (it was replaced by the JSON, found unreadable only when next used)."""
    ckpt, other = tmp_path / 'scored.pth.tar', tmp_path / 'other' / 'last.pth.tar'
    other.parent.mkdir()
    for path in (ckpt, other):
        random_checkpoint(path)
    before = other.read_bytes()
    common = ['validate', '--checkpoint', str(ckpt), '--val-num-samples', '8', '-j', '0', '--no-progress']
    for command in (common, ['compare', '--seeds', '0', '--epochs', '1', '--output', str(tmp_path), *TINY]):
        proc = cli(*command, '--results-file', str(other))
        assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
            f"timm-elastic {command[0]}: error: --results-file '{other}' exists and is not a JSON results file; it "
            "would be replaced: name a new file (or a results file of an earlier run)"], proc.stderr
    assert other.read_bytes() == before
    earlier = tmp_path / 'r.json'
    earlier.write_text('{"top1": 0}')
    proc = cli(*common, '--results-file', str(earlier))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(earlier.read_text())['count'] == 8


def test_dataset_download_reaches_timms_reader(monkeypatch):
    """--dataset-download is timm's flag: create_dataset(download=True) fetches a torch/ or tfds/ dataset (offline
    here, so timm's reader is replaced by one that records its arguments)."""
    from timm_elastic.train import create_datasets
    seen = _record_timms_reader(monkeypatch)
    for flags, download in (([], False), (['--dataset-download'], True)):
        args = build_parser().parse_args(['train', '--data-dir', '/data', '--dataset', 'torch/cifar10', *flags])
        with pytest.raises(ValueError, match='recorded' + ('' if download else r' \(--dataset-download fetches it\)')):
            create_datasets(args)
        name, kwargs = seen.pop()
        assert (name, kwargs['split'], kwargs['download']) == ('torch/cifar10', 'train', download)


def _record_timms_reader(monkeypatch) -> list:
    """timm's create_dataset replaced by one that records (name, kwargs) of each call in the returned list and
    raises RuntimeError('recorded')."""
    import timm.data
    seen = []

    def reader(name, **kwargs):
        seen.append((name, kwargs))
        raise RuntimeError('recorded')
    monkeypatch.setattr(timm.data, 'create_dataset', reader)
    return seen


def _image_folder(root, per_class: int) -> str:
    """train/ and validation/ of classes a and b, `per_class` black 8x8 PNGs each, in `root` (returned)."""
    from PIL import Image
    for split in ('train', 'validation'):
        for c in ('a', 'b'):
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                Image.new('RGB', (8, 8)).save(root / split / c / f'{i}.png')
    return str(root)


def test_a_split_that_is_not_there_is_refused(tmp_path):
    """timm's create_dataset reads the whole --data-dir when no folder has the split's name: a mistyped --split
    of a folder with train/ and validation/ scored both splits as one (320 images for 64). Refused; a folder of
    class folders alone is still read as the split (timm's use of it); the built-in data names its splits."""
    from timm_elastic.train import UsageError, create_datasets
    data = _image_folder(tmp_path / 'd', 1)
    parse = build_parser().parse_args
    with pytest.raises(UsageError, match=re.escape(
            f"--data-dir {data!r} has no folder for split 'valdiation'; its split folders are train, validation "
            "(timm would read the whole folder, every split, as 'valdiation')")):
        create_datasets(parse(['validate', '--data-dir', data, '--split', 'valdiation']), training=False)
    with pytest.raises(UsageError, match="no folder for split 'trian'"):
        create_datasets(parse(['train', '--data-dir', data, '--train-split', 'trian']))
    for split, folder in (('val', data), ('validation', data), ('anything', os.path.join(data, 'validation'))):
        _, ds, classes = create_datasets(parse(['validate', '--data-dir', folder, '--split', split]), training=False)
        assert len(ds) == 2 and classes == 2
    with pytest.raises(UsageError, match=re.escape(
            "the built-in data: split must be one of 'train', 'validation', got 'bogus'")):
        create_datasets(parse(['validate', '--split', 'bogus', '--val-num-samples', '8']), training=False)


def test_image_counts_of_data_read_whole_are_refused(tmp_path, monkeypatch):
    """--train-num-samples / --val-num-samples size the built-in data; timm's create_dataset drops num_samples for
    an image folder (and torch/, hfds/, COCO, VOC): `validate --data-dir D --val-num-samples 8` scored every
    image of D. Refused there; timm's iterable readers (tfds/, wds/, hfids/) still get the count."""
    from timm_elastic.train import UsageError, create_datasets
    data = _image_folder(tmp_path / 'd', 3)
    parse = build_parser().parse_args
    with pytest.raises(UsageError, match=re.escape(
            f"--val-num-samples 2: --data-dir {data!r} is read whole; the image counts size the built-in data (no "
            "--data-dir) and timm's iterable datasets (tfds/, wds/, hfids/) only")):
        create_datasets(parse(['validate', '--data-dir', data, '--val-num-samples', '2']), training=False)
    with pytest.raises(UsageError, match=re.escape("--train-num-samples 2 and --val-num-samples 1: --dataset "
                                                   "torch/cifar10 is read whole")):
        create_datasets(parse(['train', '--data-dir', data, '--dataset', 'torch/cifar10', '--train-num-samples', '2',
                               '--val-num-samples', '1']))
    with pytest.raises(UsageError, match='--train-num-samples 2: --data-dir'):
        create_datasets(parse(['compare', '--data-dir', data, '--train-num-samples', '2']))
    # compare --task segment's 2000 training images are the built-in data's: a --data-dir is read whole
    assert parse(['compare', '--task', 'segment', '--data-dir', data]).train_num_samples is None
    train, val, _ = create_datasets(parse(['train', '--data-dir', data]))
    assert (len(train), len(val)) == (6, 6)
    seen = _record_timms_reader(monkeypatch)
    for name in ('tfds/x', 'wds/x', 'hfids/x'):
        with pytest.raises(UsageError, match='recorded'):
            create_datasets(parse(['validate', '--data-dir', data, '--dataset', name, '--val-num-samples', '2']),
                            training=False)
        reader, kwargs = seen.pop()
        assert (reader, kwargs['num_samples']) == (name, 2)


def test_a_greyscale_image_folder_with_in_chans_1(tmp_path):
    """--in-chans 1 reads an image folder as greyscale (timm's input_img_mode 'L', as its train.py) and
    normalises by the mean of the pretrained cfg's mean and std (0.449, 0.226 for ImageNet's); it crashed in
    the first convolution (3-channel images for a 1-channel stem), and, without a size flag, in the
    normalisation (timm's size from the pretrained cfg says 3 channels)."""
    from PIL import Image
    g = torch.Generator().manual_seed(0)
    for split, n in (('train', 8), ('validation', 4)):
        for c in ('dark', 'light'):
            (tmp_path / 'grey' / split / c).mkdir(parents=True)
            for i in range(n):
                shade = int(torch.randint(0, 100, (1,), generator=g)) + (150 if c == 'light' else 0)
                Image.new('L', (40, 40), shade).save(tmp_path / 'grey' / split / c / f'{i}.png')
    flags = ['--in-chans', '1', '--data-dir', str(tmp_path / 'grey'), '-j', '0', '--no-progress']  # the model's 64
    proc = cli('train', *flags, '--epochs', '1', '-b', '4', '--log-interval', '0', '--output', str(tmp_path),
               '--experiment', 'g')
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'mean (0.449,), std (0.226,)' in proc.stderr
    assert state(tmp_path / 'g' / 'last.pth.tar')['conv1.0.weight'].shape[1] == 1
    ckpt = str(tmp_path / 'g' / 'last.pth.tar')
    proc = cli('validate', *flags, '--checkpoint', ckpt)
    assert proc.returncode == 0 and '(8 images at 64x64)' in proc.stdout, proc.stderr[-2000:]
    for wrong, message in (
            (['--in-chans', '3'], f"--checkpoint {ckpt!r} was trained with 1 input channels, but the model has 3 "
                                  '(--in-chans 3); use --in-chans 1'),
            (['--input-size', '3', '64', '64'], '--input-size 3 64 64: its C is the input channels, 1 (--in-chans)')):
        proc = cli('validate', *flags, *wrong, '--checkpoint', ckpt)
        assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
            f'timm-elastic validate: error: {message}'], proc.stderr[-2000:]


def test_a_run_in_the_experiment_folder_is_kept(tmp_path):
    """A second run with the same --experiment is refused before anything is written (timm's saver would replace
    model_best and last, and summary.csv was emptied); --resume continues it."""
    flags = ['--epochs', '1', '-j', '0', '--output', str(tmp_path), '--experiment', 'a', *SMALL]
    assert cli('train', *flags).returncode == 0
    run = tmp_path / 'a'
    files = {p.name: p.read_bytes() for p in run.iterdir()}
    proc = cli('train', *flags, '--lr', '0.5')
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"timm-elastic train: error: --experiment 'a': {run} holds a run already (checkpoint-0.pth.tar, "
        f"last.pth.tar, model_best.pth.tar, ...); --resume {run / 'last.pth.tar'} continues it, another "
        "--experiment (or --output) starts a new one"], proc.stderr
    assert {p.name: p.read_bytes() for p in run.iterdir()} == files
    proc = cli('train', *flags, '--epochs', '2', '--resume', str(run / 'last.pth.tar'))
    assert proc.returncode == 0, proc.stderr
    assert [r[0] for r in summary(run / 'summary.csv')] == ['epoch', '0', '1']
    # a finished run resumed has nothing to train: said, not a silent exit 0
    files = {p.name: p.read_bytes() for p in run.iterdir()}
    proc = cli('train', *flags, '--epochs', '2', '--resume', str(run / 'last.pth.tar'))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == (  # after timm's lines of the resume
        f"timm-elastic train: error: --resume '{run / 'last.pth.tar'}': the run has trained 2 epochs, all that "
        "--epochs 2 asks for; a larger --epochs trains it further"), proc.stderr
    # fewer than it trained: the count is the run's (it said 'all its 1 epochs' of a run of 2)
    proc = cli('train', *flags, '--epochs', '1', '--resume', str(run / 'last.pth.tar'))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == (
        f"timm-elastic train: error: --resume '{run / 'last.pth.tar'}': the run has trained 2 epochs, all that "
        "--epochs 1 asks for; a larger --epochs trains it further"), proc.stderr
    assert {p.name: p.read_bytes() for p in run.iterdir()} == files
    # --resume of one run into the folder of another: refused, that run kept (its checkpoints were replaced and its
    # summary.csv mixed with the resumed run's rows)
    other = tmp_path / 'b'
    shutil.copytree(run, other)
    files = {p.name: p.read_bytes() for p in other.iterdir()}
    proc = cli('train', *flags, '--experiment', 'b', '--epochs', '3', '--resume', str(run / 'last.pth.tar'))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"timm-elastic train: error: --experiment 'b': {other} holds another run (checkpoint-0.pth.tar, "
        f"checkpoint-1.pth.tar, last.pth.tar, ...), not the one of --resume {run / 'last.pth.tar'}; continue that "
        "run in its own folder, or name a new --experiment"], proc.stderr
    assert {p.name: p.read_bytes() for p in other.iterdir()} == files


@pytest.mark.parametrize('task', ['multilabel', 'segment'])
def test_resume_of_another_tasks_checkpoint_is_refused(tmp_path, task):
    proc = cli('train', '--epochs', '1', '-j', '0', '--output', str(tmp_path), '--experiment', 'a', *SMALL)
    assert proc.returncode == 0, proc.stderr
    last = tmp_path / 'a' / 'last.pth.tar'
    proc = cli('train', '--task', task, '--resume', str(last), '--output', str(tmp_path), '--experiment', 'b', *SMALL)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"timm-elastic train: error: --resume '{last}' was trained with --task classify; use it with --task "
        "classify"], proc.stderr
    assert not (tmp_path / 'b').exists()


def test_a_batch_larger_than_the_training_data_is_refused(tmp_path):
    # the training loader drops an incomplete last batch: 24 images at -b 32 would make no step at all
    proc = cli('train', '--train-num-samples', '24', '--val-num-samples', '16', '-b', '32', '-j', '0', '--no-progress',
               '--output', str(tmp_path), '--experiment', 'a')
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        'timm-elastic train: error: -b/--batch-size 32 is more than the 24 training images: training drops an '
        'incomplete last batch, so no step would be made; lower -b'], proc.stderr
    assert not (tmp_path / 'a').exists()


def test_plateau_schedule_on_the_loss_waits_for_the_loss_to_stop_falling(tmp_path, monkeypatch):
    """--sched plateau --eval-metric loss lowers the rate when the loss stops falling (timm's train.py: mode
    'min' for a loss), not while it falls."""
    import timm.scheduler
    made = []

    def create_and_keep(*args, **kwargs):
        made.append(create_scheduler_v2(*args, **kwargs))
        return made[-1]
    create_scheduler_v2 = timm.scheduler.create_scheduler_v2
    monkeypatch.setattr(timm.scheduler, 'create_scheduler_v2', create_and_keep)
    args = build_parser().parse_args(['train', '--epochs', '1', '-j', '0', '--sched', 'plateau', '--eval-metric',
                                      'loss', '--lr', '0.1', '--output', str(tmp_path), '--experiment', 'p', *SMALL])
    train(args)
    (scheduler, _), = made
    optimizer = scheduler.optimizer
    for epoch, loss in enumerate([2.0 - 0.1 * i for i in range(15)], 2):  # timm's patience is 10 epochs
        scheduler.step(epoch, loss)
    assert optimizer.param_groups[0]['lr'] == 0.1
    for epoch in range(17, 30):  # then the loss stays: the rate drops
        scheduler.step(epoch, 0.6)
    assert optimizer.param_groups[0]['lr'] < 0.1


@pytest.mark.slow
def test_resume_with_other_classes_or_model_is_refused(tmp_path):
    proc = cli('train', '--epochs', '1', '-j', '0', '--output', str(tmp_path), '--experiment', 'a', *SMALL)
    assert proc.returncode == 0, proc.stderr
    last = str(tmp_path / 'a' / 'last.pth.tar')
    for extra, message in (
            (['--num-classes', '10'], f"--resume '{last}' was trained with 8 classes, but the model has 10 "
                                      f"(--num-classes 10); use --num-classes 8"),
            (['--model', 'resnext_tiny'], f"--resume '{last}' is a checkpoint of --model resnext_tiny_elastic, "
                                          f"not resnext_tiny"),
    ):
        proc = cli('train', '--resume', last, '--output', str(tmp_path), '--experiment', 'b', *SMALL, *extra)
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines() == [f'timm-elastic train: error: {message}'], proc.stderr
        assert not os.path.exists(tmp_path / 'b')


@pytest.mark.slow
def test_validate_takes_the_class_count_from_the_checkpoint(tmp_path):
    proc = cli('train', '--epochs', '1', '-j', '0', '--num-classes', '10', '--output', str(tmp_path),
               '--experiment', 'ten', *SMALL)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / 'v.json'
    proc = cli('validate', '--model', 'resnext_tiny_elastic', '--checkpoint', str(tmp_path / 'ten' / 'last.pth.tar'),
               '--val-num-samples', '112', '-j', '0', '--no-progress', '--results-file', str(out))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())['num_classes'] == 10
    # a contradicting --model is refused; a checkpoint that does not record its model needs --model
    proc = cli('validate', '--model', 'resnext_tiny', '--checkpoint', str(tmp_path / 'ten' / 'last.pth.tar'))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"timm-elastic validate: error: --checkpoint '{tmp_path / 'ten' / 'last.pth.tar'}' is a checkpoint of "
        f"--model resnext_tiny_elastic, not resnext_tiny"], proc.stderr
    bare = tmp_path / 'weights.pth'
    torch.save({'state_dict': torch.load(tmp_path / 'ten' / 'last.pth.tar', weights_only=False)['state_dict']}, bare)
    proc = cli('validate', '--checkpoint', str(bare))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"timm-elastic validate: error: --checkpoint '{bare}' does not record a model name (its arch is None); "
        f"pass --model NAME"], proc.stderr


TINY = ['-j', '0', '--train-num-samples', '32', '--val-num-samples', '16', '-b', '16', '--no-progress',
        '--log-interval', '0']


def test_resume_without_experiment_continues_in_the_folder_of_its_checkpoint(tmp_path):
    """`--resume OUTPUT/NAME/last.pth.tar` without --experiment continues the run in OUTPUT/NAME, as a run's
    folder holds it (timm's train.py starts a new dated folder: the summary split in two, model_best ranked
    afresh), NAME of several parts too (compare's runs); a checkpoint outside --output starts a new run there."""
    parse = build_parser().parse_args
    out = ['--output', str(tmp_path / 'runs')]
    train(parse(['train', '--epochs', '1', *TINY, *out, '--experiment', 'e/seed0/m']))
    run = tmp_path / 'runs' / 'e' / 'seed0' / 'm'
    train(parse(['train', '--epochs', '2', '--resume', str(run / 'last.pth.tar'), *TINY, *out]))
    assert [p.name for p in (tmp_path / 'runs').iterdir()] == ['e'] and os.listdir(run.parent) == ['m']
    assert [row[0] for row in summary(run / 'summary.csv')] == ['epoch', '0', '1']
    assert state(run / 'last.pth.tar', 'epoch') == 1
    # from another --output: a new run (named by date and time) that starts from that checkpoint
    train(parse(['train', '--epochs', '3', '--resume', str(run / 'last.pth.tar'), *TINY,
                 '--output', str(tmp_path / 'other')]))
    [new] = (tmp_path / 'other').iterdir()
    assert new.name.endswith('-resnext_tiny_elastic-64')
    assert [row[0] for row in summary(new / 'summary.csv')] == ['epoch', '2']
    assert [row[0] for row in summary(run / 'summary.csv')] == ['epoch', '0', '1']


def test_resume_with_other_flags_says_so(tmp_path, caplog):
    """A run resumed with other training flags (a resume line without the run's own: the defaults train on)
    continues, with a warning naming each flag that differs; with the run's flags and a larger --epochs, none."""
    parse = build_parser().parse_args
    flags = [*TINY, '--output', str(tmp_path), '--experiment', 'r']
    train(parse(['train', '--epochs', '1', *flags]))
    last = str(tmp_path / 'r' / 'last.pth.tar')
    changed = [f if f != '16' else '8' for f in flags]  # -b 8; --val-num-samples 8
    with caplog.at_level('WARNING', logger='timm_elastic.train'):
        train(parse(['train', '--epochs', '2', '--resume', last, *changed, '--lr', '0.001',
                     '--weight-decay', '0.5']))
    said = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING']
    # the lr and weight decay are the optimizer state's (timm's resume): they were listed among the flags that
    # train on, and recorded as if they had
    not_applied = (f"--resume {last}: --lr 0.001 not applied: the optimizer state of the checkpoint keeps the run's "
                   f"lr 0.002 (timm's resume); --initial-checkpoint {last} starts a new run from its weights with "
                   'them')
    assert said[0] == not_applied.replace('--lr 0.001', '--lr 0.001, --weight-decay 0.5').replace(
        'lr 0.002', 'lr 0.002, weight decay 0.05'), said[0]
    assert said[1:] == [f'--resume {last}: the run was trained with other flags (--batch-size 16 (now 8), '
                        '--val-num-samples 16 (now 8)); it continues, but not as the run would have: resume is exact '
                        'with the same flags'], said
    assert torch.load(last, map_location='cpu', weights_only=False)['args'].lr == 0.002  # what trained
    caplog.clear()
    with caplog.at_level('WARNING', logger='timm_elastic.train'):
        train(parse(['train', '--epochs', '3', '--resume', last, *changed, '--lr', '0.001']))
    assert [r.getMessage() for r in caplog.records if r.levelname == 'WARNING'] == [not_applied]
    caplog.clear()
    with caplog.at_level('WARNING', logger='timm_elastic.train'):
        train(parse(['train', '--epochs', '4', '--resume', last, *changed]))
    assert [r for r in caplog.records if r.levelname == 'WARNING'] == []


def test_the_epoch_line_says_when_it_scores_the_ema_weights(tmp_path, capsys):
    """With --model-ema the epoch's evaluation (its line, summary.csv, model_best) is the EMA weights', as in
    timm's train.py: the line says so, and `validate --use-ema` of the checkpoint gives the summary's numbers
    (without --use-ema, as timm's validate.py, the model's own weights)."""
    parse = build_parser().parse_args
    flags = ['--epochs', '1', *TINY, '--output', str(tmp_path), '--model-ema']
    train(parse(['train', *flags, '--experiment', 'ema']))
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith('epoch 1/1:'))
    assert ', eval (EMA weights) top-1 ' in line, line
    row = dict(zip(*summary(tmp_path / 'ema' / 'summary.csv')))
    common = ['validate', '--checkpoint', str(tmp_path / 'ema' / 'last.pth.tar'), '--val-num-samples', '16', '-j',
              '0', '--no-progress']
    ema, own = validate(parse([*common, '--use-ema'])), validate(parse(common))
    assert ema['loss'] == pytest.approx(float(row['eval_loss']), rel=1e-6)
    assert own['loss'] != pytest.approx(float(row['eval_loss']), rel=1e-6)
    train(parse(['train', *[f for f in flags if 'ema' not in f], '--experiment', 'plain']))
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith('epoch 1/1:'))
    assert ', eval top-1 ' in line, line


@pytest.mark.slow
def test_ddp_compare_trains_every_model_of_the_pair(tmp_path):
    """compare under torchrun trains its models one after another in each process: the second joins the process
    group the first started (it started another: "trying to initialize the default process group twice", after
    the first model had trained); the table and compare.json come from the first process alone."""
    proc = torchrun('compare', '--seeds', '0', '--epochs', '1', *TINY, '--val-num-samples', '9', '--output',
                    str(tmp_path), '--experiment', 'c')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count('== seed 0: training') == 2 and proc.stdout.count('Every run') == 1, proc.stdout
    got = json.loads((tmp_path / 'c' / 'compare.json').read_text())
    for name in ('resnext_tiny', 'resnext_tiny_elastic'):
        assert got[name][0]['count'] == 9
        assert state(tmp_path / 'c' / 'seed0' / name / 'last.pth.tar', 'args').world_size == 2


@pytest.mark.slow
def test_ddp_seed_orders_the_training_images(tmp_path):
    """Under torchrun the training images' order follows --seed as every other draw (torch's DistributedSampler
    shuffles by its own seed, 0 unless set: every --seed trained on one order, and compare's seed-to-seed spread
    left the data order out): from one initial checkpoint, without augmentation or dropout, two seeds train
    differently, and the same seed twice alike."""
    torch.manual_seed(0)
    init = tmp_path / 'init.pth'
    torch.save(timm.create_model('resnext_tiny_elastic', num_classes=8).state_dict(), init)
    losses = []
    for seed, name in (('1', 'a'), ('2', 'b'), ('1', 'again')):
        proc = torchrun('train', '--epochs', '1', *TINY, '--no-aug', '--initial-checkpoint', str(init), '--seed',
                        seed, '--output', str(tmp_path), '--experiment', name)
        assert proc.returncode == 0, proc.stderr[-3000:]
        losses.append(dict(zip(*summary(tmp_path / name / 'summary.csv')))['train_loss'])
    assert losses[0] != losses[1] and losses[0] == losses[2], losses


def test_stress_sizes_default_to_the_papers_in_proportion_to_the_model(tmp_path):
    """Without --sizes, stress evaluates at the paper's 96, 224, 448 and 896 in proportion to the model's input
    size: for the built-in data's 64-pixel models 96 * 64 / 224 = 27.4 (at least 32), 64, 128 and 256 (the paper's
    pixels were its default: 1.5 to 14 times the size these models train at, 896 costing 196 evaluations at 64)."""
    ckpt = random_checkpoint(tmp_path / 'm.pth.tar')
    proc = cli('stress', '--checkpoint', str(ckpt), '--val-num-samples', '9', '-j', '0', '--no-progress',
               '--results-file', str(tmp_path / 's.json'))
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads((tmp_path / 's.json').read_text())
    assert got['sizes'] == [32, 64, 128, 256] and list(got['metrics']['model']) == ['32', '64', '128', '256']


# a torchrun process that logs, per rank, every file the stress command writes
LOGGED_WRITES = """
import os
import sys

import timm_elastic._io
import timm_elastic.report.plots
from timm_elastic.cli import main


def logged(module, name, at):
    real = getattr(module, name)

    def write(*args, **kwargs):
        with open(os.environ['WRITES_LOG'], 'a') as f:
            f.write(f"{os.environ['RANK']} {os.path.basename(args[at])}\\n")
        return real(*args, **kwargs)
    setattr(module, name, write)


logged(timm_elastic._io, 'write_json', 0)  # (path, data)
logged(timm_elastic.report.plots, 'plot_stress', 1)  # (relative, path, title)
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_ddp_stress_writes_its_files_once(tmp_path):
    """Under torchrun, stress's --results-file and --plot are written by the first process alone (every process
    wrote both, each the same file)."""
    ckpts = {name: random_checkpoint(tmp_path / f'{name}.pth.tar', name, seed)
             for seed, name in ((0, 'resnext_tiny'), (1, 'resnext_tiny_elastic'))}
    script = tmp_path / 'logged.py'
    script.write_text(LOGGED_WRITES)
    log = tmp_path / 'writes.log'
    exe = os.path.join(os.path.dirname(sys.executable), 'torchrun')
    proc = subprocess.run(
        [exe, '--standalone', '--nproc-per-node', '2', str(script), 'stress', '--checkpoint',
         str(ckpts['resnext_tiny_elastic']), '--baseline', 'resnext_tiny', '--baseline-checkpoint',
         str(ckpts['resnext_tiny']), '--sizes', '32', '64', '--val-num-samples', '9', '-j', '0', '--no-progress',
         '--results-file', str(tmp_path / 's.json'), '--plot', str(tmp_path / 'fig7.png')],
        capture_output=True, text=True, timeout=900, env=dict(os.environ, OMP_NUM_THREADS='1', WRITES_LOG=str(log)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(log.read_text().splitlines()) == ['0 fig7.png', '0 s.json']
    assert json.loads((tmp_path / 's.json').read_text())['metrics']['model']['64']['count'] == 9


def test_runs_named_by_the_same_second_get_folders_of_their_own(tmp_path):
    """Two compares (or trains) started in the same second took the same default folder, compare-DATE-TIME, and
    wrote into each other's runs (a summary.csv with both runs' rows, one run's checkpoints under the other's
    table; or died on the other's tmp.pth.tar). The default folder is created by one os.mkdir now, numbered as
    timm's get_outdir(inc=True) numbers: NAME-1, NAME-2, ..."""
    from timm_elastic.train import new_folder
    root = tmp_path / 'out'
    (root / 'run').mkdir(parents=True)
    (root / 'run' / 'summary.csv').write_text('another run\n')
    assert new_folder(str(root), 'run') == str(root / 'run-1') and (root / 'run-1').is_dir()
    assert new_folder(str(root), 'run') == str(root / 'run-2') and (root / 'run-2').is_dir()
    assert (root / 'run' / 'summary.csv').read_text() == 'another run\n'
    assert new_folder(str(tmp_path / 'new' / 'root'), 'x') == str(tmp_path / 'new' / 'root' / 'x')
    # compare: every name its start could take (the next 120 seconds) is another comparison's, cut short
    start = time.time()
    taken = [time.strftime('compare-%Y%m%d-%H%M%S', time.localtime(start + s)) for s in range(-1, 120)]
    for name in taken:
        (root / name / 'seed0').mkdir(parents=True)
    proc = cli('compare', '--seeds', '0', '--epochs', '1', '--output', str(root), *TINY)
    assert proc.returncode == 0, proc.stderr
    made = sorted(p.name for p in root.iterdir() if p.name not in taken and p.name.startswith('compare-'))
    assert len(made) == 1 and made[0][:-2] in taken and made[0].endswith('-1'), made
    assert (root / made[0] / 'compare.json').is_file() and all(os.listdir(root / name) == ['seed0'] for name in taken)


def test_resume_from_an_earlier_checkpoint_drops_the_best_of_the_discarded_epochs(tmp_path):
    """Resumed from checkpoint-0 of a 2-epoch run, the run trains epoch 1 again; summary.csv drops the old
    epoch 1's row, but model_best.pth.tar stayed the old epoch 1's where that had scored best (here: said to
    have scored 100%), a file that no row of the run scored and no kept epoch replaced. It is the best kept
    epoch's now, and the new epoch 1 replaces it where it ranks above."""
    parse = build_parser().parse_args
    flags = ['--epochs', '2', *TINY, '--output', str(tmp_path), '--experiment', 'r']
    train(parse(['train', *flags]))
    run = tmp_path / 'r'
    best = torch.load(run / 'model_best.pth.tar', map_location='cpu', weights_only=False)
    best.update(epoch=1, metric=100.)  # the discarded epoch 1 ranked best
    torch.save(best, run / 'doctored')
    os.replace(run / 'doctored', run / 'model_best.pth.tar')  # (a new file: model_best is a hard link to a checkpoint)
    train(parse(['train', *flags, '--resume', str(run / 'checkpoint-0.pth.tar')]))
    rows = summary(run / 'summary.csv')
    column = rows[0].index('eval_top1')
    scores = [float(r[column]) for r in rows[1:]]
    assert [r[0] for r in rows[1:]] == ['0', '1']
    kept = torch.load(run / 'model_best.pth.tar', map_location='cpu', weights_only=False)
    assert kept['metric'] == pytest.approx(scores[kept['epoch']])  # a kept epoch's, as its row scored it
    if hasattr(AtomicCheckpointSaver, 'load_state_dict_from_checkpoint'):  # timm restores the saver's ranking on
        # resume (1.0.26 does not: it ranks the epochs from the resumed one on, and the first of them writes the file)
        assert kept['epoch'] == scores.index(max(scores))  # ties: the earlier epoch, as timm's saver ranks them
    same = torch.load(run / f'checkpoint-{kept["epoch"]}.pth.tar', map_location='cpu', weights_only=False)
    assert all(torch.equal(kept['state_dict'][k], same['state_dict'][k]) for k in same['state_dict'])
