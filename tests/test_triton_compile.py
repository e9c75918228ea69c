"""Triton's compiler, not its interpreter, on the kernels of the CUDA path: `triton_compile.py` (beside this file)
compiles every launch of the four resampling ops for a Hopper GPU on the CPU. The interpreter that
test_resample_triton.py uses without a GPU runs the kernels as Python and accepts code the compiler rejects."""
import json
import os
import subprocess
import sys

import pytest


def _nvidia_backend() -> bool:
    """Whether Triton can compile for NVIDIA GPUs here (its wheel ships ptxas and cuobjdump)."""
    try:
        import triton.backends.nvidia as nvidia
    except ImportError:
        return False
    return all(os.path.exists(os.path.join(os.path.dirname(nvidia.__file__), 'bin', t)) for t in ('ptxas', 'cuobjdump'))


@pytest.mark.skipif(not _nvidia_backend(), reason="needs Triton's NVIDIA backend (ptxas)")
def test_kernels_compile_for_a_hopper_gpu():
    """Triton's compiler, not its interpreter: every launch of the four ops (float16 to float64, both layouts,
    bilinear and nearest, 32- and 64-bit offsets) compiles to a cubin for sm_90 with the arguments' own
    specialization, without spilling in the training dtypes; channels_last moves 16 bytes per access.
    (A float64 kernel once passed the interpreted tests and failed to compile on an H200.)"""
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    script = os.path.join(os.path.dirname(__file__), 'triton_compile.py')
    run = subprocess.run([sys.executable, script, '--arch', '90'], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    reports = [json.loads(line) for line in run.stdout.splitlines()]
    # 6 launches (down, its gradient, U + sum and U's gradient for 2 modes) per dtype and layout, and for
    # the 64-bit float32 kernels in both layouts
    assert len(reports) == 6 * (4 * 2 + 2)
    seen = {(r['kernel'], r['dtype'], r['layout'], r['bilinear'], r['int64']) for r in reports}
    assert len(seen) == len(reports)
    for r in reports:
        if r['dtype'] != 'fp64':
            assert r['stack'] == 0, r
        if r['layout'] == 'channels_last':
            assert r['widest_load'] == r['widest_store'] == 16, r
