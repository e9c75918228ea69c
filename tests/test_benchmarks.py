"""The benchmarks run: smoke tests of `benchmarks/speed.py --self-check` on the small twin and of
`benchmarks/resample_ops.py`, at sizes that take seconds (their numbers mean nothing here; that they are
produced and written out is what is checked)."""
import json
import os
import subprocess
import sys

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


def _speed():
    """benchmarks/speed.py as a module."""
    import importlib.util
    spec = importlib.util.spec_from_file_location('speed', os.path.join(ROOT, 'benchmarks', 'speed.py'))
    speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(speed)
    return speed


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
