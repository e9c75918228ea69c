"""The benchmarks run: smoke tests of `benchmarks/speed.py --self-check` on the small twin and of
`benchmarks/resample_ops.py`, at sizes that take seconds (their numbers mean nothing here; that they are
produced and written out is what is checked); the scripts' argument checks, which come before any measurement;
and the shell logic of `benchmarks/cuda_check.sh`, with a fake python in place of the GPU's."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_speed_self_check_smoke(tmp_path):
    out = tmp_path / 'speed.json'
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'benchmarks', 'speed.py'), '--self-check', 'resnext_tiny_elastic',
         '--settings', 'eager-fp32,eager-fp32-cl', '--modes', 'infer,train', '--rounds', '2', '--min-time', '0.01',
         '--warmup', '1', '--batch-size', '2', '--train-batch-size', '2', '--img-size', '64', '--threads', '1',
         '--breakdown', '3', '--json', str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = result['results']
    assert [(r['setting'], r['mode']) for r in rows] == [
        ('eager-fp32', 'infer'), ('eager-fp32', 'train'), ('eager-fp32-cl', 'infer'), ('eager-fp32-cl', 'train')]
    for r in rows:
        assert r['elastic'] == r['baseline'] == 'resnext_tiny_elastic'
        assert len(r['rates'][0]) == len(r['rates'][1]) == 2 and all(v > 0 for v in r['rates'][0] + r['rates'][1])
        assert r['ratio_min'] <= r['ratio'] <= r['ratio_max']
    assert all(r['memory_ratio'] > 0 for r in rows if r['mode'] == 'train')
    for r in rows:  # --breakdown 3: each model's 3 costliest operators, costliest first
        for kernels in (r['breakdown']['elastic'], r['breakdown']['baseline']):
            assert len(kernels) == 3 and all(k['ms'] > 0 and k['calls'] > 0 for k in kernels)
            assert [k['ms'] for k in kernels] == sorted((k['ms'] for k in kernels), reverse=True)
        for which, kernels in r['breakdown'].items():
            # self times do not nest: one thread's operators are busy for at most the step's wall time, and
            # for at least the time of the costliest ones
            p = r['profiled'][which]
            assert sum(k['ms'] for k in kernels) <= p['busy_ms'] <= p['step_ms'], (which, p)
    assert '  resnext_tiny_elastic (profiled step ' in proc.stderr and ' ms, kernels busy ' in proc.stderr
    assert result['markdown'] in proc.stdout and '| resnext_tiny_elastic | ours | resnext_tiny_elastic |' in proc.stdout


@pytest.mark.parametrize('timer', [None, 'host'])
def test_resample_ops_smoke(tmp_path, timer):
    """benchmarks/resample_ops.py on the CPU at an even and an odd side, by torch.utils.benchmark and by the
    host's wall time: every op and the block (through autograd) timed on both sides, the two implementations
    agreeing (the same function, PyTorch's gradient taken over U's uncropped output)."""
    out = tmp_path / 'ops.json'
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'benchmarks', 'resample_ops.py'), '--sizes', '8x6,16x5',
         '--batch-size', '2', '--min-time', '0.01', '--threads', '1', '--json', str(out)]
        + (['--timer', timer] if timer else []),
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result['timer'] == (timer or 'torch.utils.benchmark')
    rows = result['results']
    assert [(r['op'], r['channels'], r['side']) for r in rows] == [
        (op, c, side) for c, side in ((8, 6), (16, 5)) for op in ('down', 'down grad', 'up + sum', 'up grad', 'block')]
    for r in rows:
        assert r['aten_ms'] > 0 and r['ours_ms'] > 0 and r['rel_error'] < 1e-6, r
    assert result['markdown'] in proc.stdout


def test_resample_ops_cuda_timers_need_cuda():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'benchmarks', 'resample_ops.py'), '--timer', 'graph'],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and '--timer graph times CUDA work' in proc.stderr, proc.stderr


@pytest.mark.parametrize('script, args, message', [
    ('speed.py', ['--settings', 'eager-fp33'], "speed.py: error: --settings: unknown setting 'eager-fp33'"),
    ('speed.py', ['--modes', 'both'], "speed.py: error: --modes takes infer and/or train, got 'both'"),
    ('startup.py', ['--runs', '0'], 'startup.py: error: --runs must be at least 1, got 0'),
])
def test_benchmark_arguments_are_refused_as_usage_errors(script, args, message):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'benchmarks', script), *args],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and message in proc.stderr and 'Traceback' not in proc.stderr, proc.stderr
    if script == 'speed.py':  # the help names what --modes takes
        helptext = ' '.join(subprocess.run([sys.executable, os.path.join(ROOT, 'benchmarks', script), '--help'],
                                           capture_output=True, text=True, timeout=600).stdout.split())
        assert 'comma separated: infer, train, or infer,train (default: infer,train)' in helptext


def test_launch_overhead_smoke(tmp_path):
    """benchmarks/launch_overhead.py through Triton's interpreter on the CPU: every layer of one op's call
    timed (the numbers mean nothing here), the table printed and written."""
    out = tmp_path / 'launch.json'
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'benchmarks', 'launch_overhead.py'), '--device', 'cpu', '--size', '4x6',
         '--json', str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, 'TRITON_INTERPRET': '1'})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert list(result['host_us']) == ['op', 'direct', 'prelude', 'launch', 'pytorch']
    assert all(v > 0 for v in result['host_us'].values()), result
    assert result['markdown'] in proc.stdout


def _benchmark(name):
    """benchmarks/NAME.py as a module."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, 'benchmarks', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _speed():
    """benchmarks/speed.py as a module."""
    return _benchmark('speed')


def test_resample_traffic_is_each_input_read_and_each_result_written_once():
    """The least traffic of the resampling ops, by hand from each Elastic block's input (N, Cin, H, W) and
    output (N, Cout, H, W), h x w = ceil(H / 2) x ceil(W / 2): forward, D reads x and writes the pooled map,
    U with the sum reads low (N, Cout, h, w) and out and writes the sum; in training, U's gradient reads the
    sum's and writes low's, D's reads the pooled map's and writes x's. Times 2 bytes (bf16) or 4 (fp32)."""
    import timm
    import torch

    from timm_elastic.layers import Elastic
    speed = _speed()
    shapes = []
    model = timm.create_model('resnext_tiny_elastic', num_classes=1000)
    for m in model.modules():
        if isinstance(m, Elastic):
            m.register_forward_hook(lambda m, args, y: shapes.append((args[0].shape, y.shape)))
    model(torch.randn(3, 3, 60, 60))  # feature maps of odd sizes: 15x15 at stride 4
    forward = backward = 0
    for (n, cin, H, W), (_, cout, _, _) in shapes:
        hw, HW = ((H + 1) // 2) * ((W + 1) // 2), H * W
        forward += n * cin * (HW + hw) + n * cout * (hw + 2 * HW)
        backward += n * cout * (HW + hw) + n * cin * (hw + HW)
    assert any(H % 2 for (_, _, H, _), _ in shapes)
    for setting, mode, expected in (('eager-bf16-cl', 'train', 2 * (forward + backward)),
                                    ('eager-fp32', 'infer', 4 * forward)):
        assert speed.resample_traffic('resnext_tiny_elastic', speed.Setting.parse(setting), mode, 3, 60) \
            == expected, (setting, mode)


def test_free_resampling_computes_nothing_and_keeps_layouts():
    """`--resample free`, the floor: in a training step of the swapped model no resampling op runs and no
    more copies than with the real resampling (strided views made the next layers copy them), and each
    result has the shape and layout the real op gives, so the layers after it do the same work."""
    import timm
    import torch
    from torch.profiler import profile

    from timm_elastic.layers.resample import avg_down2x, up2x_add
    speed = _speed()

    x = torch.randn(2, 3, 7, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    low = avg_down2x(x)
    free_low = speed.FreeDown()(x)
    assert (free_low.shape, free_low.stride()) == (low.shape, low.stride())
    out = speed.FreeUp()(free_low, x)
    assert out is x or torch.equal(out, x)
    g = torch.autograd.grad(speed.FreeUp()(speed.FreeDown()(x), x * 1.), x, torch.ones_like(x))[0]
    assert (g.shape, g.stride()) == (x.shape, x.stride())
    up = up2x_add(low.detach(), x.detach(), 'bilinear')
    assert up.stride() == x.stride()

    def ops(model):
        inp = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
        with profile() as prof:
            model(inp).sum().backward()
        return [e.name for e in prof.events()]
    torch.manual_seed(0)
    model = timm.create_model('resnext_tiny_elastic', num_classes=4).to(memory_format=torch.channels_last)
    real = ops(model)
    assert speed.swap_resampling(model, 'free') > 0
    free = ops(model)
    assert [n for n in real if n.startswith('timm_elastic::')]
    assert not [n for n in free if n.startswith('timm_elastic::')]
    copies = [n for n in free if n in ('aten::copy_', 'aten::clone', 'aten::contiguous')]
    assert len(copies) <= len([n for n in real if n in ('aten::copy_', 'aten::clone', 'aten::contiguous')]), copies


@pytest.mark.parametrize('script, args, message', [
    ('speed', ['--batch-size', '0'], '--batch-size must be at least 1, got 0'),  # was silently 8
    ('speed', ['--train-batch-size', '0'], '--train-batch-size must be at least 1, got 0'),
    ('speed', ['--batch-size', '-2'], '--batch-size must be at least 1, got -2'),
    ('speed', ['--threads', '0'], '--threads must be at least 1, got 0'),
    ('speed', ['--threads', '-1'], '--threads must be at least 1, got -1'),
    ('speed', ['--img-size', '0'], '--img-size must be at least 32, got 0'),
    ('speed', ['--img-size', '16'], '--img-size must be at least 32, got 16'),  # was a traceback, after building
    ('speed', ['--breakdown', '-1'], '--breakdown must be at least 0, got -1'),
    ('speed', ['--min-time', '-1'], '--min-time must be at least 0, got -1.0'),
    ('speed', ['--warmup', '-1'], '--warmup must be at least 0, got -1'),
    ('speed', ['--json', '{missing}'], 'does not exist; create it'),
    ('speed', ['--self-check', 'resnext_tiny_elastic', '--resample', 'aten'],
     "--resample takes only ours there, got 'aten'"),
    ('speed', ['--self-check', 'resnext_tiny_elastic', '--resample', 'ours,free'],
     "--resample takes only ours there, got 'ours,free'"),
    ('resample_ops', ['--threads', '0'], '--threads must be at least 1, got 0'),
    ('resample_ops', ['--batch-size', '-1'], '--batch-size must be at least 1, got -1'),
    ('resample_ops', ['--batch-size', '0'], '--batch-size must be at least 1, got 0'),  # was silently 8
    ('resample_ops', ['--min-time', '-0.5'], '--min-time must be at least 0, got -0.5'),
    ('resample_ops', ['--json', '{missing}'], 'does not exist; create it'),
    ('launch_overhead', ['--device', 'cpu', '--size', '0x4'],
     "--size takes CHANNELSxSIDE (positive integers), e.g. 256x56, got '0x4'"),
    ('launch_overhead', ['--device', 'cpu', '--size=-2x4'], "got '-2x4'"),
    ('launch_overhead', ['--device', 'cpu', '--size', '4x0'], "got '4x0'"),
    ('launch_overhead', ['--device', 'cpu', '--batch-size', '0'], '--batch-size must be at least 1, got 0'),
    ('launch_overhead', ['--device', 'cpu', '--json', '{missing}'], 'does not exist; create it'),
    ('policy_page', ['--rounds', '0'], '--rounds must be at least 1, got 0'),  # was a StatisticsError, late
    ('policy_page', ['--images', '0'], '--images must be at least 1, got 0'),
    ('startup', ['--json', '{missing}'], 'does not exist; create it'),
    ('startup', ['--json', '{folder}'], 'is a folder; name a file in it'),
])
def test_bad_options_are_refused_before_anything_is_measured(script, args, message, tmp_path, capsys, monkeypatch):
    """Numbers out of range and a --json file whose folder is missing (found only when the results were written,
    after the measurement, before) end each script at once, in its argument parsing, as one-line usage errors."""
    monkeypatch.setenv('TRITON_INTERPRET', '1')  # launch_overhead.py --device cpu
    monkeypatch.setattr(sys, 'argv', [f'{script}.py'])  # argparse's name for the script
    args = [a.format(missing=tmp_path / 'missing' / 'out.json', folder=tmp_path) for a in args]
    module = _benchmark(script)
    with pytest.raises(SystemExit) as exit_:
        (module.parse_args if script == 'speed' else module.main)(args)  # (speed.py's main parses first)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f'{script}.py: error: ' in err and message in err, err
    assert len(err.strip().splitlines()[-1]) > len(message) and 'Traceback' not in err
    assert not (tmp_path / 'missing').exists()


def test_compiled_rows_have_no_resampling_share():
    """A resampling share only where the profiler sees every resampling op (and so the ops agree with the bytes
    counted on the meta device): eager rows, ours and aten. Compiled, inductor fuses PyTorch's ops (inference,
    and aten in training: the share read 0.0%), and compiled training calls D's forward with no event of its
    name with torch 2.14.1 (speed.py's docstring): the share left it out."""
    speed = _speed()
    pair = ('resnext50_elastic', 'resnext50_32x4d')
    for setting in ('eager-fp32', 'eager-bf16-cl', 'compile-fp32', 'compile-bf16-cl'):
        compiled = setting.startswith('compile')
        for resample in speed.RESAMPLE_VARIANTS:
            expected = not compiled and resample != 'free'
            assert speed.shares_resampling(pair, speed.Setting.parse(setting), resample) == expected, \
                (setting, resample)
    assert not speed.shares_resampling(('resnext50_elastic',) * 2, speed.Setting.parse('eager-fp32'), 'ours')


def test_cuda_peak_memory_counts_only_the_models_own_tensors(monkeypatch):
    """On CUDA the peak is the model's own tensors at the step's start plus the step's highest allocation above
    what was allocated when it began, as on the CPU: `torch.cuda.max_memory_allocated` alone also counted the
    other model of the pair (parameters, gradients, optimizer state, batch). CUDA's counters faked: the device
    holds `others` bytes besides, and the step allocates `step` more at its highest."""
    import torch
    speed = _speed()
    runner = speed.Runner('resnext_tiny_elastic', speed.Setting.parse('eager-fp32'), 'train', torch.device('cpu'),
                          2, 32, 0)
    runner.step()  # the optimizer's momentum buffers exist from the first step on
    params = list(runner.model.parameters())
    own = sum(t.numel() * t.element_size() for t in [runner.x, runner.y, *params, *runner.model.buffers()]) \
        + sum(p.numel() * p.element_size() for p in params)  # momentum
    others, step = 10 ** 9, 12345
    counters = {}
    monkeypatch.setattr(torch.cuda, 'synchronize', lambda device=None: None)
    monkeypatch.setattr(torch.cuda, 'reset_peak_memory_stats', lambda device=None: counters.update(reset=True))
    monkeypatch.setattr(torch.cuda, 'memory_allocated', lambda device=None: others + own)
    monkeypatch.setattr(torch.cuda, 'max_memory_allocated', lambda device=None: others + own + step)
    runner.device = torch.device('cuda')
    assert runner.peak_memory() == own + step and counters == {'reset': True}


def test_startup_times_the_hook_on_whatever_the_environment_and_writes_json_atomically(tmp_path):
    """benchmarks/startup.py with TIMM_ELASTIC_AUTOLOAD=0 in its environment: the hooked runs clear it (the
    timing of the .pth line inherited it, found the hook off and stopped); and its JSON replaces the file by a
    rename (a new inode), not by rewriting it in place."""
    out = tmp_path / 'startup.json'
    out.write_text('{"old": true}\n')
    inode = out.stat().st_ino
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'benchmarks', 'startup.py'), '--runs', '1',
                           '--json', str(out)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, 'TIMM_ELASTIC_AUTOLOAD': '0'})
    assert proc.returncode in (0, 1) and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result['runs'] == 1 and result['pth_line_ms_median'] > 0 and result['imported_at_startup'] == '[]'
    assert out.stat().st_ino != inode


# benchmarks/cuda_check.sh with a fake python (PYTHON): it answers the CUDA check with FAKE_DEVICES devices and
# otherwise prints its arguments, records its pid in FAKE_PIDS, then sleeps FAKE_SLEEP seconds where its
# arguments hold FAKE_SLEEP_ON, or exits with FAKE_RC where they hold FAKE_FAIL_ON
_FAKE_PYTHON = r"""#!/bin/bash
if [[ $1 == -c ]]; then echo "${FAKE_DEVICES-1}"; exit 0; fi
echo $$ >> "$FAKE_PIDS"
echo "fake python $* (inductor cache ${TORCHINDUCTOR_CACHE_DIR:-none})"
if [[ -n ${FAKE_SLOW_STOP:-} && "$*" == *"$FAKE_SLEEP_ON"* ]]; then  # a command that takes a while to stop
    trap 'kill $s; sleep "$FAKE_SLOW_STOP"; exit 143' TERM INT
    sleep 30 & s=$!
    wait $s
fi
[[ -n ${FAKE_SLEEP_ON:-} && "$*" == *"$FAKE_SLEEP_ON"* ]] && exec sleep "${FAKE_SLEEP:-30}"
[[ -n ${FAKE_FAIL_ON:-} && "$*" == *"$FAKE_FAIL_ON"* ]] && exit "${FAKE_RC:-3}"
exit 0
"""


def _cuda_check_setup(tmp_path, sections, **env):
    """The fake python in `tmp_path` and what runs cuda_check.sh with it: (its command, its environment, the $OUT
    folder, the file of the pids the fake had)."""
    fake = tmp_path / 'python'
    fake.write_text(_FAKE_PYTHON)
    fake.chmod(0o755)
    out, pids = tmp_path / 'out', tmp_path / 'pids'
    pids.write_text('')
    return (['bash', os.path.join(ROOT, 'benchmarks', 'cuda_check.sh')],
            {**os.environ, 'OUT': str(out), 'PYTHON': str(fake), 'FAKE_PIDS': str(pids), 'SECTIONS': sections, **env},
            out, pids)


def _cuda_check(tmp_path, sections, outer_timeout=None, **env):
    """Run cuda_check.sh with the fake python: (its exit status, check.log's lines, the pids the fake had)."""
    command, env, out, pids = _cuda_check_setup(tmp_path, sections, **env)
    if outer_timeout:
        command = ['timeout', str(outer_timeout)] + command
    proc = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=60, env=env)
    log = (out / 'check.log').read_text().splitlines() if (out / 'check.log').exists() else []
    return proc.returncode, log, [int(p) for p in pids.read_text().split()], proc.stderr


@pytest.mark.parametrize('bad, message', [
    ('bogus', "unknown section 'bogus' in SECTIONS="),
    ('infer:2min', "section 'infer:2min' in SECTIONS: its limit after ':' is a whole number of seconds > 0"),
    ('host:abc', "section 'host:abc' in SECTIONS: its limit"),
    ('gap:', "section 'gap:' in SECTIONS: its limit"),
])
def test_cuda_check_refuses_bad_sections_before_running_any(tmp_path, bad, message):
    rc, log, pids, err = _cuda_check(tmp_path, f'host {bad}')
    assert rc == 2 and len(log) == 1 and log[0].startswith(f'cuda_check.sh: {message}'), log
    assert message in err and pids == []


def test_cuda_check_stops_where_no_cuda_device_is_visible(tmp_path):
    rc, log, pids, err = _cuda_check(tmp_path, 'versions host', FAKE_DEVICES='0')
    assert rc == 1 and pids == [] and log == [
        f'cuda_check.sh: no CUDA device is visible to {tmp_path / "python"} (torch.cuda.device_count(): 0): nothing '
        f'run'], log


def test_cuda_check_logs_a_skipped_command_once_and_fails_for_a_timeout(tmp_path):
    """A section out of time skips its next command, logged once as skipped; the script's exit status says that
    a command ran out of time (the sections after it still run)."""
    rc, log, pids, err = _cuda_check(tmp_path, 'host:1 infer', FAKE_SLEEP_ON='launch_overhead.py')
    host = [line for line in log if line.startswith('=== host: ') and 'benchmarks/' not in line]
    assert host[0].startswith('=== host: exit 124, ') and host[0].endswith("stopped at the section's limit of 1 s")
    assert host[1:] == ["=== host: skipped, the section's 1 s are spent"], log
    assert len(pids) == 2 and any(line.startswith('=== infer: exit 0') for line in log), log
    assert rc == 1 and log[-1].endswith('1 command(s) failed or ran out of time: host (timed out)'), log


@pytest.mark.parametrize('fail', [None, 'resample_ops.py'])
def test_cuda_check_exit_status_says_whether_a_command_failed(tmp_path, fail):
    rc, log, pids, err = _cuda_check(tmp_path, 'host infer', FAKE_FAIL_ON=fail or 'nothing')
    assert len(pids) == 3, log
    if fail:
        assert rc == 1 and '=== host: exit 3, 0 s' in log and log[-1].endswith('failed or ran out of time: host '
                                                                               '(exit 3)'), log
    else:
        assert rc == 0 and log[-1].endswith('every command exited 0'), log


def test_cuda_check_removes_only_an_inductor_cache_of_its_own(tmp_path):
    """`compile` compiles into a new cache that the script makes and removes; a TORCHINDUCTOR_CACHE_DIR of the
    caller's is used and kept as it is (it was `rm -rf`'d)."""
    mine = tmp_path / 'my_cache'
    mine.mkdir()
    (mine / 'kept').write_text('')
    rc, log, pids, err = _cuda_check(tmp_path, 'compile', TORCHINDUCTOR_CACHE_DIR=str(mine))
    assert rc == 0 and f'(inductor cache {mine})' in '\n'.join(log) and (mine / 'kept').exists(), log
    (tmp_path / 'own').mkdir()
    rc, log, pids, err = _cuda_check(tmp_path / 'own', 'compile', TORCHINDUCTOR_CACHE_DIR='')
    own = next(line for line in log if line.startswith('fake python')).split('(inductor cache ')[1].rstrip(')')
    assert rc == 0 and own not in ('none', str(mine)) and not os.path.exists(own), log


def test_cuda_check_logs_its_stop_when_the_signal_comes_twice(tmp_path):
    """The outer `timeout` sends TERM to the script and then to its whole process group, the script again: on a busy
    machine the second came while the script waited for the stopped command, and killed it unlogged (CI, once)."""
    command, env, out, pids = _cuda_check_setup(tmp_path, 'host infer', FAKE_SLEEP_ON='launch_overhead.py',
                                                FAKE_SLOW_STOP='1')
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 30
        while not pids.read_text().split() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # the fake has set its trap
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)  # the script is waiting for the command, which takes 1 s to stop
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 143
    finally:
        proc.kill()
    log = (out / 'check.log').read_text().splitlines()
    assert log[-1].startswith('=== stopped by SIGTERM after ') and log[-1].endswith(
        ', in section host: the sections after it did not run'), log


def test_cuda_check_passes_term_on_to_the_running_command(tmp_path):
    """Under the documented outer `timeout`, the TERM reaches the running command too, which under a section's
    limit runs in a process group of its own (it outlived the script); the log says the run was stopped."""
    rc, log, pids, err = _cuda_check(tmp_path, 'host:60 infer', outer_timeout=2, FAKE_SLEEP_ON='launch_overhead.py')
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        alive.append(pid)
        os.kill(pid, 9)  # (the fake's sleep, which this test started)
    assert rc == 124 and len(pids) == 1 and alive == [], (alive, log)
    assert log[-1].startswith('=== stopped by SIGTERM after ') and log[-1].endswith(
        ', in section host: the sections after it did not run'), log
    assert not any(line.startswith('=== infer') for line in log)


def test_cuda_check_header_counts_the_files_it_writes():
    import re
    with open(os.path.join(ROOT, 'benchmarks', 'cuda_check.sh')) as f:
        script = f.read()
    files = set(re.findall(r'\$OUT/([\w.]+)', script.split('\nset -uo pipefail\n', 1)[1]))
    assert 'check.log' in files and f'$OUT holds {len(files)} files at most' in ' '.join(script.split()), files
