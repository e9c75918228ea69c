"""Where the host's time goes when timm-elastic launches one resampling kernel on CUDA, layer by layer.

On a GPU, an op's host time matters wherever the GPU waits for the host: a training step of many small
layers (densenet201_elastic: 70 Elastic blocks), small batches, inference. Measured on an H200 (2026-11-27,
`resample_ops.py --device cuda --timer host --batch-size 1`), our ops took the host 66-124 us a call against
PyTorch's 7-26 us. This splits one op's call (2x2 average pooling, forward) into its layers, each row the
host's least wall time per call (`resample_ops.host_ms`: 5 runs of 200 calls, enqueued without waiting for
the GPU):
- `op`: `torch.ops.timm_elastic.avg_down2x(x)`, the custom op (torch.library's dispatch, then the launcher);
- `direct`: `resample._run('avg_down2x', x)`, what the modules call when run eagerly (the launcher);
- `prelude`: the launcher with the launch itself left out (allocation, layout, grid, index width);
- `launch`: Triton's `kernel[grid](*args)` alone, with the launcher's arguments;
- `compiled launch`: the compiled kernel that call returns, launched through its own runner
  (`CompiledKernel[grid](*args)`, Triton 3.x): the launch without the JIT's argument binding,
  specialization and cache lookup, what a launcher that cached its compiled kernels would pay;
- `device guard`: entering and leaving `torch.cuda.device(x.device)`, which the launcher does once a call;
- `pytorch`: `F.avg_pool2d(x, 2, 2, ceil_mode=True)`, for comparison.
`op - direct` is the custom op's cost, `direct - prelude` about the launch with its guard.

    python benchmarks/launch_overhead.py                    # CUDA, batch 1, 256 channels at 56x56, bf16
    TRITON_INTERPRET=1 python benchmarks/launch_overhead.py --device cpu --size 8x6   # the code path, no GPU

With `--device cpu` (Triton's interpreter, TRITON_INTERPRET=1) the rows `direct`, `prelude` and `launch` call
the Triton launcher and kernel as on CUDA (`launch` is the interpreter running the kernel: its numbers mean
nothing), but `op` is not the same code: on the CPU the custom op dispatches to its generic CPU kernel
(PyTorch's pooling), not to the Triton launcher. It checks that the script runs, not what it measures.
"""
import argparse
import os
import sys
from typing import Dict

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _usage import at_least, output_path  # noqa: E402
from resample_ops import DTYPES, host_ms  # noqa: E402

from timm_elastic._io import write_json  # noqa: E402
from timm_elastic.layers import resample  # noqa: E402


def measure(x: torch.Tensor, device: str) -> Dict[str, float]:
    """Microseconds of host time per call, by layer (see the module's docstring)."""
    from timm_elastic.layers import resample_triton

    calls = 200 if device == 'cuda' else 10  # (the interpreter runs each kernel: slow)

    def us(fn) -> float:
        return host_ms(fn, device, calls=calls) * 1e3
    rows = {'op': us(lambda: torch.ops.timm_elastic.avg_down2x(x))}
    if device == 'cuda':
        rows['direct'] = us(lambda: resample._run('avg_down2x', x))
    else:  # the CPU's kernel is not Triton's: the launcher is called as the CUDA kernel would be
        rows['direct'] = us(lambda: resample_triton.avg_down2x(x))
    launches = []
    run = resample_triton._run
    resample_triton._run = lambda kernel, grid, args, meta: launches.append((kernel, grid, args, meta))
    try:
        rows['prelude'] = us(lambda: resample_triton.avg_down2x(x))
    finally:
        resample_triton._run = run
    kernel, grid, args, meta = launches[0]
    rows['launch'] = us(lambda: kernel[grid](*args, **meta))
    if device == 'cuda':
        compiled = compiled_launch(kernel, grid, args, meta)
        if compiled is not None:
            rows['compiled launch'] = us(compiled)
        rows['device guard'] = us(_guard(x.device))
    rows['pytorch'] = us(lambda: F.avg_pool2d(x, 2, stride=2, ceil_mode=True))
    return rows


def _guard(device: torch.device):
    def guard():
        with torch.cuda.device(device):
            pass
    return guard


def compiled_launch(kernel, grid, args, meta):
    """A call launching the compiled kernel that `kernel[grid](*args, **meta)` returns through its own runner,
    with every parameter in the kernel's order (constexprs included, as Triton's JIT passes them), checked to
    compute what the JIT's launch computed (`args[1]` is the result); None, with the reason printed, where
    this Triton's objects differ."""
    import inspect
    try:
        compiled = kernel[grid](*args, **meta)
        sig = inspect.signature(kernel.fn)
        values = list(sig.bind(*args, **{k: v for k, v in meta.items() if k in sig.parameters}).arguments.values())
        runner = compiled[grid]
        expected = args[1].clone()
        args[1].zero_()
        runner(*values)
        if not torch.equal(args[1], expected):
            raise RuntimeError('its result differs from the JIT launch\'s')
    except Exception as e:  # an API of Triton's internals: report, do not fail the other rows
        print(f'compiled launch: not measured ({type(e).__name__}: {e})', file=sys.stderr)
        return None
    return lambda: runner(*values)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0], epilog=__doc__.split('\n\n', 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cuda', help='cuda, or cpu under TRITON_INTERPRET=1 (default: cuda)')
    parser.add_argument('--size', default='256x56', help='the input map CHANNELSxSIDE (default: %(default)s)')
    parser.add_argument('--batch-size', type=int, default=1, help='batch (default: 1: the GPU keeps up)')
    parser.add_argument('--dtype', default='bf16', help='fp32, bf16 or fp16 (default: bf16)')
    parser.add_argument('--json', metavar='PATH', help='also write the results as JSON')
    args = parser.parse_args(argv)
    at_least(parser, args, 1, 'batch_size')
    output_path(parser, args.json)
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: no CUDA device is available (on the CPU: TRITON_INTERPRET=1 ... --device cpu)')
    if args.device == 'cpu' and os.environ.get('TRITON_INTERPRET') != '1':
        parser.error('--device cpu runs the Triton kernels through the interpreter: set TRITON_INTERPRET=1')
    if args.device not in ('cpu', 'cuda'):
        parser.error(f'--device must be cuda or cpu, got {args.device!r}')
    if args.dtype not in DTYPES:
        parser.error(f'--dtype must be one of {", ".join(DTYPES)}, got {args.dtype!r}')
    try:
        c, side = (int(v) for v in args.size.split('x'))
    except ValueError:
        c = side = 0
    if min(c, side) < 1:
        parser.error(f'--size takes CHANNELSxSIDE (positive integers), e.g. 256x56, got {args.size!r}')
    x = torch.randn(args.batch_size, c, side, side, device=args.device, dtype=DTYPES[args.dtype]).contiguous(
        memory_format=torch.channels_last)
    rows = measure(x, args.device)
    where = torch.cuda.get_device_name() if args.device == 'cuda' else 'CPU, Triton interpreter'
    import triton
    lines = [f'Host time of one avg_down2x call by layer ({where}; torch {torch.__version__}, Triton '
             f'{triton.__version__}; {tuple(x.shape)}, {args.dtype}, channels_last)', '',
             '| layer | host us per call |', '|---|---|']
    lines += [f'| {name} | {v:.1f} |' for name, v in rows.items()]
    print('\n'.join(lines))
    if args.json:
        write_json(args.json, dict(device=where, torch=torch.__version__, triton=triton.__version__,
                                   shape=list(x.shape), dtype=args.dtype, host_us=rows, markdown='\n'.join(lines)))


if __name__ == '__main__':
    main()
