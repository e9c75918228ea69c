"""Compile the Triton kernels of the CUDA path (timm_elastic/layers/resample_triton.py) for a CUDA GPU on a
machine that has none: Triton's whole compiler (Python to Triton IR, LLVM, PTX, then ptxas, which Triton's
wheel ships) runs on the CPU. The interpreter that tests/test_resample_triton.py uses without a GPU runs
the kernels as Python and accepts code the compiler rejects; this catches that.

The launches are the launchers' own: `_run`, the one place that launches, records (kernel, arguments,
constexprs) instead of launching, for every op in every dtype and layout on small CPU tensors; each is
then compiled with the specialization Triton's JIT gives those arguments (an integer equal to 1 becomes
a constant, pointers and integers divisible by 16 are marked so).

    python tests/triton_compile.py --arch 90          # JSON lines: kernel, dtype, layout, registers, stack,
                                                      # and the widest global loads and stores in its PTX
Run it as a separate process: TRITON_INTERPRET must not be set when Triton defines the kernels.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

if os.environ.pop('TRITON_INTERPRET', None) not in (None, '0'):  # must go before `import triton`
    raise SystemExit('run without TRITON_INTERPRET: the interpreter takes the place of the compiler')

import torch  # noqa: E402
import triton  # noqa: E402
import triton.backends.nvidia  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from timm_elastic.layers import resample_triton  # noqa: E402

TRITON_TYPES = {torch.float16: 'fp16', torch.bfloat16: 'bf16', torch.float32: 'fp32', torch.float64: 'fp64'}
LAYOUTS = {'nchw': torch.contiguous_format, 'channels_last': torch.channels_last}


def launches(dtype: torch.dtype, layout: str, int64: bool = False):
    """(kernel, args, meta) of every launch the four ops make for `dtype` / `layout` tensors (bilinear and
    nearest U); with `int64`, as for tensors spanning 2^31 elements."""
    recorded = []
    run, limit = resample_triton._run, resample_triton.INT32_LIMIT
    resample_triton._run = lambda kernel, grid, args, meta: recorded.append((kernel, args, meta))
    resample_triton.INT32_LIMIT = 0 if int64 else limit
    try:
        # 256 channels: the tile of a channels_last launch is as wide as in the models (128 channels)
        x = torch.randn(2, 256, 13, 14, dtype=dtype).contiguous(memory_format=LAYOUTS[layout])
        low = resample_triton.avg_down2x(x)
        resample_triton.avg_down2x_backward(low, *x.shape[-2:])
        for mode in ('bilinear', 'nearest'):
            resample_triton.up2x_add(low, x, mode)
            resample_triton.up2x_backward(x, mode, *low.shape[-2:])
    finally:
        resample_triton._run, resample_triton.INT32_LIMIT = run, limit
    return recorded


def source(kernel, args, meta) -> ASTSource:
    """The kernel specialized as Triton's JIT specializes it for `args` (see the module docstring)."""
    names = kernel.arg_names
    signature, constexprs, attrs = {}, {}, {}
    for i, (name, a) in enumerate(zip(names, args)):
        if torch.is_tensor(a):
            signature[name] = '*' + TRITON_TYPES[a.dtype]
            aligned = a.data_ptr() % 16 == 0
        elif a == 1:
            signature[name], constexprs[name], aligned = 'constexpr', 1, False
        else:
            signature[name] = 'i32' if -2 ** 31 <= a < 2 ** 31 else 'i64'
            aligned = a % 16 == 0
        if aligned:
            attrs[(i,)] = [['tt.divisibility', 16]]
    for name in names[len(args):]:
        signature[name], constexprs[name] = 'constexpr', meta[name]
    return ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)


def widest(ptx: str, op: str) -> int:
    """Bytes per thread of the widest `op` (ld.global / st.global) instruction in `ptx`, 0 if none."""
    best = 0
    for vec, bits in re.findall(rf'{re.escape(op)}(?:\.[a-z_0-9]+)*?(?:\.v(\d))?\.[bfu](\d+)', ptx):
        best = max(best, int(vec or 1) * int(bits) // 8)
    return best


def resources(cubin: bytes) -> dict:
    """Registers per thread and spill stores, read from the cubin by the cuobjdump Triton ships."""
    tool = os.path.join(os.path.dirname(triton.backends.nvidia.__file__), 'bin', 'cuobjdump')
    with tempfile.NamedTemporaryFile(suffix='.cubin') as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run([tool, '--dump-resource-usage', f.name], capture_output=True, text=True,
                               check=True).stdout
    registers, stack = re.search(r'REG:(\d+) STACK:(\d+)', usage).groups()
    return dict(registers=int(registers), stack=int(stack))


def compile_all(arch: int, dtypes=tuple(TRITON_TYPES)):
    """Compile every launch for sm_`arch`; yield one report per compiled kernel."""
    target = GPUTarget('cuda', arch, 32)
    cases = [(d, layout, False) for d in dtypes for layout in LAYOUTS]
    cases += [(torch.float32, layout, True) for layout in LAYOUTS]
    for dtype, layout, int64 in cases:
        for kernel, args, meta in launches(dtype, layout, int64):
            compiled = triton.compile(source(kernel, args, meta), target=target,
                                      options=dict(num_warps=meta['num_warps']))
            ptx = compiled.asm['ptx']
            yield dict(kernel=kernel.fn.__name__, dtype=TRITON_TYPES[dtype], layout=layout, int64=int64,
                       bilinear=meta.get('BILINEAR'), block=[meta['BLOCK_R'], meta['BLOCK_C']],
                       **resources(compiled.asm['cubin']),
                       widest_load=widest(ptx, 'ld.global'), widest_store=widest(ptx, 'st.global'))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--arch', type=int, default=90, help='compute capability x10 (default: 90, Hopper)')
    parser.add_argument('--dtypes', default=','.join(TRITON_TYPES.values()),
                        help='comma separated, of ' + ', '.join(TRITON_TYPES.values()))
    args = parser.parse_args(argv)
    by_name = {v: k for k, v in TRITON_TYPES.items()}
    dtypes = [by_name[d] for d in args.dtypes.split(',')]
    for report in compile_all(args.arch, dtypes):
        print(json.dumps(report), flush=True)


if __name__ == '__main__':
    sys.exit(main())
