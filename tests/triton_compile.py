"""Compile the Triton kernels of the CUDA path (timm_elastic/layers/resample_triton.py) for a CUDA GPU on a
machine that has none: Triton's whole compiler (Python to Triton IR, LLVM, PTX, then ptxas, which Triton's
wheel ships) runs on the CPU. The interpreter that tests/test_resample_triton.py uses without a GPU runs
the kernels as Python and accepts code the compiler rejects; this catches that.

The launches are the launchers' own: `_run`, the one place that launches, records (kernel, grid, arguments,
constexprs) instead of launching, for every op in every dtype and layout on small CPU tensors. Each is then
compiled by Triton's JIT itself, as a launch would compile it (`run(..., warmup=True)`: the same argument
specialization, nothing launched), with a stand-in for Triton's CUDA driver that names the target GPU: the
JIT asks the driver only for the device, the stream and the target. Through the JIT, rather than by building
its compiler's input by hand, the check works with every Triton from 3.0 (torch 2.4's) on, whose compiler
APIs differ.

    python tests/triton_compile.py --arch 90          # JSON lines: kernel, dtype, layout, registers, stack,
                                                      # and the widest global loads and stores in its PTX
A launch that the ops send to PyTorch's kernels on that GPU instead (`resample._triton_compiles_bf16`:
bfloat16 before Ampere with an older Triton) is compiled too, to show why: its line says `served: false` and
whether it compiled, and its error. A served launch that fails to compile fails the script.
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
from triton.runtime.driver import driver  # noqa: E402

from timm_elastic.layers import resample, resample_triton  # noqa: E402

TRITON_TYPES = {torch.float16: 'fp16', torch.bfloat16: 'bf16', torch.float32: 'fp32', torch.float64: 'fp64'}
LAYOUTS = {'nchw': torch.contiguous_format, 'channels_last': torch.channels_last}


def launches(dtype: torch.dtype, layout: str, int64: bool = False):
    """(kernel, grid, args, meta) of every launch the four ops make for `dtype` / `layout` tensors (bilinear and
    nearest U); with `int64`, as for tensors spanning 2^31 elements."""
    recorded = []
    run, limit = resample_triton._run, resample_triton.INT32_LIMIT
    resample_triton._run = lambda kernel, grid, args, meta: recorded.append((kernel, grid, args, meta))
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


class TargetDriver:
    """What Triton's JIT asks of the active driver before it compiles: the device and stream (never used:
    nothing is launched) and the GPU to compile for."""

    def __init__(self, arch: int):
        self.target = GPUTarget('cuda', arch, 32)

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device=None) -> int:
        return 0

    def get_current_target(self) -> GPUTarget:
        return self.target


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
    """Compile every launch for sm_`arch`; yield one line of the output per launch."""
    cases = [(d, layout, False) for d in dtypes for layout in LAYOUTS]
    cases += [(torch.float32, layout, True) for layout in LAYOUTS]
    # for the rest of this process, which is the script's own: without a GPU, Triton's own driver cannot
    # be created to be restored
    driver.set_active(TargetDriver(arch))
    bf16 = resample._triton_compiles_bf16(divmod(arch, 10), triton.__version__)
    for dtype, layout, int64 in cases:
        served = bf16 or dtype != torch.bfloat16
        for kernel, grid, args, meta in launches(dtype, layout, int64):
            line = dict(kernel=kernel.fn.__name__, dtype=TRITON_TYPES[dtype], layout=layout, int64=int64,
                        bilinear=meta.get('BILINEAR'), block=[meta['BLOCK_R'], meta['BLOCK_C']], served=served)
            if served:
                yield dict(line, **used(kernel.run(*args, grid=grid, warmup=True, **meta)))
                continue
            try:
                line.update(used(kernel.run(*args, grid=grid, warmup=True, **meta)), compiled=True)
            except Exception as e:  # noqa: BLE001 (what the compiler says, reported)
                line.update(compiled=False, error=f'{type(e).__name__}: {e}'[:1000])
            yield line


def used(compiled) -> dict:
    """What a compiled kernel uses: registers, stack, and the widest global load and store in its PTX."""
    ptx = compiled.asm['ptx']
    return dict(**resources(compiled.asm['cubin']), widest_load=widest(ptx, 'ld.global'),
                widest_store=widest(ptx, 'st.global'))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--arch', type=int, default=90, help='compute capability x10 (default: 90, Hopper)')
    parser.add_argument('--dtypes', default=','.join(TRITON_TYPES.values()),
                        help='comma separated, of ' + ', '.join(TRITON_TYPES.values()))
    args = parser.parse_args(argv)
    by_name = {v: k for k, v in TRITON_TYPES.items()}
    dtypes = [by_name[d] for d in args.dtypes.split(',')]
    for line in compile_all(args.arch, dtypes):
        print(json.dumps(line), flush=True)


if __name__ == '__main__':
    sys.exit(main())
