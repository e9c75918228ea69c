"""Triton's compiler, not its interpreter, on the kernels of the CUDA path: `triton_compile.py` (beside this file)
compiles every launch of the four resampling ops for an NVIDIA GPU on the CPU. The interpreter that
test_resample_triton.py uses without a GPU runs the kernels as Python and accepts code the compiler rejects,
and what the compiler accepts depends on the GPU it compiles for."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from timm_elastic.layers.resample import _triton_compiles_bf16


def _nvidia_backend() -> bool:
    """Whether Triton can compile for NVIDIA GPUs here (its wheel ships ptxas and cuobjdump)."""
    try:
        import triton.backends.nvidia as nvidia
    except ImportError:
        return False
    return all(os.path.exists(os.path.join(os.path.dirname(nvidia.__file__), 'bin', t)) for t in ('ptxas', 'cuobjdump'))


needs_ptxas = pytest.mark.skipif(not _nvidia_backend(), reason="needs Triton's NVIDIA backend (ptxas)")


def compile_for(arch: int):
    """triton_compile.py's lines for sm_`arch` (every launch of the four ops: float16 to float64, both layouts,
    bilinear and nearest, and 32- and 64-bit offsets for float32); skips where this Triton's ptxas does not know
    the GPU (Blackwell's before Triton 3.3)."""
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    script = os.path.join(os.path.dirname(__file__), 'triton_compile.py')
    run = subprocess.run([sys.executable, script, '--arch', str(arch)], env=env, capture_output=True, text=True)
    if run.returncode and f"Value 'sm_{arch}' is not defined for option 'gpu-name'" in run.stderr:
        pytest.skip(f"this Triton's ptxas does not compile for sm_{arch}")
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    # 6 launches (down, its gradient, U + sum and U's gradient for 2 modes) per dtype and layout, and for
    # the 64-bit float32 kernels in both layouts
    assert len(lines) == 6 * (4 * 2 + 2)
    assert len({(r['kernel'], r['dtype'], r['layout'], r['bilinear'], r['int64']) for r in lines}) == len(lines)
    return lines


def check_served(lines) -> None:
    """What the ops launch compiled: without spilling in the training dtypes, 16 bytes per access in
    channels_last."""
    for r in lines:
        if r['served']:
            if r['dtype'] != 'fp64':
                assert r['stack'] == 0, r
            if r['layout'] == 'channels_last':
                assert r['widest_load'] == r['widest_store'] == 16, r


@needs_ptxas
def test_kernels_compile_for_a_hopper_gpu():
    """Triton's compiler, not its interpreter: every launch compiles to a cubin for sm_90 (H100, H200) with the
    arguments' own specialization; the ops launch all of them there.
    (A float64 kernel once passed the interpreted tests and failed to compile on an H200.)"""
    lines = compile_for(90)
    assert all(r['served'] for r in lines)
    check_served(lines)


@needs_ptxas
def test_kernels_compile_for_a_turing_gpu_in_every_dtype_triton_serves_there():
    """sm_75 (T4): float16, float32 and float64 compile with every Triton; bfloat16 only from Triton 3.3 on:
    Triton 3.0-3.2 emit `cvt.bf16.f32`, an sm_80 instruction that ptxas refuses, and a bfloat16 model would fail
    at its first Elastic block. The ops send bfloat16 to PyTorch's kernels exactly where it does not compile."""
    import triton
    lines = compile_for(75)
    check_served(lines)
    bf16 = [r for r in lines if r['dtype'] == 'bf16']
    assert all(r['served'] for r in lines if r['dtype'] != 'bf16')
    if _triton_compiles_bf16((7, 5), triton.__version__):
        assert all(r['served'] for r in bf16)
    else:  # what the rule is for: the compiler refuses these launches
        assert not any(r['served'] or r['compiled'] for r in bf16), [r for r in bf16 if r.get('compiled')]
        assert all('sm_80' in r['error'] for r in bf16), bf16[0]['error']


@pytest.mark.slow
@needs_ptxas
@pytest.mark.parametrize('arch', [70, 80, 86, 89, 100, 120])
def test_kernels_compile_for_the_gpus_people_train_on(arch):
    """sm_70 (V100), sm_80 (A100), sm_86 (RTX 30, A10), sm_89 (L4, RTX 40), sm_100 (B200), sm_120 (RTX 50):
    every launch the ops make there compiles, as on Hopper."""
    lines = compile_for(arch)
    check_served(lines)
    assert all(r['served'] or not r['compiled'] for r in lines)  # else the rule sends them away for nothing


@pytest.mark.parametrize('capability, triton_version, compiles', [
    ((7, 5), '3.2.0', False), ((7, 0), '3.0.0', False), ((7, 5), '3.3.0', True), ((7, 0), '3.8.0+git1234', True),
    ((8, 0), '3.0.0', True), ((9, 0), '3.1.0', True), ((12, 0), '3.3.1', True), ((7, 5), '3.10.0', True),
    ((7, 5), '4.0.0', True)])
def test_triton_bf16_rule(capability, triton_version, compiles):
    """The rule the ops dispatch by (from compiling with Triton 3.0.0, 3.1.0, 3.2.0, 3.3.0, 3.3.1 and 3.4.0-3.8.0
    for sm_70 and sm_75, 2026-11-27): bfloat16 before Ampere from Triton 3.3 on."""
    assert _triton_compiles_bf16(capability, triton_version) is compiles


@pytest.mark.skipif(importlib.util.find_spec('triton') is None, reason='needs Triton')
@pytest.mark.parametrize('triton_version', ['3.2.0', '3.3.0'])
def test_bfloat16_runs_pytorchs_kernels_on_a_t4_where_triton_cannot_compile_it(monkeypatch, triton_version):
    """The kernel each op call gets on a T4 (compute capability 7.5; CUDA tensors faked): Triton's, but for calls
    with a bfloat16 tensor among their arguments under Triton 3.2, which go to PyTorch's kernels (the op's own
    function)."""
    import triton
    from torch._subclasses.fake_tensor import FakeTensorMode

    from timm_elastic.layers import resample, resample_triton
    monkeypatch.setattr(torch.version, 'hip', None)
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda device=None: (7, 5))
    monkeypatch.setattr(triton, '__version__', triton_version)
    with FakeTensorMode():
        x = {d: torch.empty(2, 8, 6, 5, device='cuda', dtype=d) for d in (torch.bfloat16, torch.float16, torch.float32)}
        low = {d: torch.empty(2, 8, 3, 3, device='cuda', dtype=d) for d in x}
    bf16, fp16, fp32 = torch.bfloat16, torch.float16, torch.float32
    calls = [('avg_down2x', (x[fp16],), False), ('avg_down2x', (x[bf16],), True),
             ('avg_down2x_backward', (low[bf16], 6, 5), True), ('up2x_add', (low[fp32], x[fp32], 'bilinear'), False),
             ('up2x_add', (low[fp32], x[bf16], 'bilinear'), True), ('up2x_add', (low[bf16], x[fp32], 'nearest'), True),
             ('up2x_backward', (x[bf16], 'bilinear', 3, 3), True), ('up2x_backward', (x[fp16], 'nearest', 3, 3), False)]
    resample._triton_kernels.cache_clear()
    try:
        for name, args, has_bf16 in calls:
            pytorchs = has_bf16 and triton_version == '3.2.0'
            expected = resample._GENERIC[name] if pytorchs else getattr(resample_triton, name)
            assert resample._kernel(name, args) is expected, (name, [getattr(a, 'dtype', a) for a in args])
    finally:
        resample._triton_kernels.cache_clear()  # the patched GPU's answer must not outlive the test
