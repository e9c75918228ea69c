"""The resampling ops alone: timm-elastic's kernels against PyTorch's, forward and backward, at the
feature-map sizes of ResNeXt50+Elastic (256 channels at 56x56, 512 at 28x28, 1024 at 14x14).

Per op and size: each implementation's median time, the bandwidth it reaches counting the fewest bytes
the op must move (each input read once, each output written once), and PyTorch's time over ours.
- `down`: 2x2 average pooling (ceil_mode): `F.avg_pool2d` / `timm_elastic::avg_down2x`;
- `down grad`: its transpose: `aten::avg_pool2d_backward` / `timm_elastic::avg_down2x_backward`;
- `up + sum`: `out + U(low)`, U bilinear 2x: `out + F.interpolate(low)` (two kernels) /
  `timm_elastic::up2x_add` (one);
- `up grad`: U's transpose: `aten::upsample_bilinear2d_backward` / `timm_elastic::up2x_backward`.
Each pair's outputs are compared first (relative error), so that a fast wrong kernel shows.

On CUDA it times with `triton.testing.do_bench` (CUDA events, the L2 cache flushed before each run,
median); on the CPU with `torch.utils.benchmark` (median of blocked runs), on `--threads` threads.

    python benchmarks/resample_ops.py --device cuda --dtype bf16                 # batch 64, channels_last
    python benchmarks/resample_ops.py --device cuda --dtype fp32 --layout nchw
    python benchmarks/resample_ops.py                                           # CPU, fp32, batch 8
"""
import argparse
import sys
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F

import timm_elastic  # noqa: F401  (registers the timm_elastic ops)
from timm_elastic._io import write_json

SIZES: List[Tuple[int, int]] = [(256, 56), (512, 28), (1024, 14)]  # (channels, side)
DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}
LAYOUTS = {'cl': torch.channels_last, 'nchw': torch.contiguous_format}


def cases(n: int, c: int, side: int, dtype: torch.dtype, layout: torch.memory_format, device: str):
    """(name, bytes moved at least, PyTorch's fn, ours) for one size."""
    h = (side + 1) // 2
    ops = torch.ops.timm_elastic

    def t(*size):
        return torch.randn(*size, device=device, dtype=dtype).contiguous(memory_format=layout)
    x, g_low, low, out, g = t(n, c, side, side), t(n, c, h, h), t(n, c, h, h), t(n, c, side, side), \
        t(n, c, side, side)
    full, quarter = x.numel() * x.element_size(), low.numel() * low.element_size()
    return [
        ('down', full + quarter, lambda: F.avg_pool2d(x, 2, stride=2, ceil_mode=True), lambda: ops.avg_down2x(x)),
        ('down grad', quarter + full,
         lambda: torch.ops.aten.avg_pool2d_backward(g_low, x, [2, 2], [2, 2], [0, 0], True, True, None),
         lambda: ops.avg_down2x_backward(g_low, side, side)),
        ('up + sum', quarter + 2 * full,
         lambda: out + F.interpolate(low, scale_factor=2., mode='bilinear', align_corners=False)[..., :side, :side],
         lambda: ops.up2x_add(low, out, 'bilinear')),
        ('up grad', full + quarter,
         lambda: torch.ops.aten.upsample_bilinear2d_backward(g, [2 * h, 2 * h], [n, c, h, h], False, 2., 2.),
         lambda: ops.up2x_backward(g, 'bilinear', h, h)),
    ]


def median_ms(fn: Callable, device: str) -> float:
    if device == 'cuda':
        import triton.testing
        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode='median')
    from torch.utils.benchmark import Timer
    return Timer('fn()', globals={'fn': fn}, num_threads=torch.get_num_threads()).blocked_autorange(
        min_run_time=0.5).median * 1e3


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0], epilog=__doc__.split('\n\n', 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cpu', help='cpu or cuda (default: cpu)')
    parser.add_argument('--dtype', default=None, help='fp32, bf16 or fp16 (default: bf16 on cuda, fp32 on cpu)')
    parser.add_argument('--layout', default='cl', help='cl (channels_last) or nchw (default: cl)')
    parser.add_argument('--batch-size', type=int, help='batch (default: 64 on cuda, 8 on cpu)')
    parser.add_argument('--threads', type=int, default=2, help='CPU threads (default: 2)')
    parser.add_argument('--json', metavar='PATH', help='also write the results as JSON')
    args = parser.parse_args(argv)
    if args.device not in ('cpu', 'cuda'):
        parser.error(f'--device must be cpu or cuda, got {args.device!r}')
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: no CUDA device is available')
    args.dtype = args.dtype or ('bf16' if args.device == 'cuda' else 'fp32')
    if args.dtype not in DTYPES:
        parser.error(f'--dtype must be one of {", ".join(DTYPES)}, got {args.dtype!r}')
    if args.layout not in LAYOUTS:
        parser.error(f'--layout must be cl or nchw, got {args.layout!r}')
    if args.device == 'cpu':
        torch.set_num_threads(args.threads)
    n = args.batch_size or (64 if args.device == 'cuda' else 8)
    where = torch.cuda.get_device_name() if args.device == 'cuda' else f'CPU, {torch.get_num_threads()} threads'
    lines = [f'Resampling ops, PyTorch / timm-elastic ({where}; torch {torch.__version__}; batch {n}, '
             f'{args.dtype}, {args.layout})', '',
             '| op | size | PyTorch ms | ours ms | PyTorch GB/s | ours GB/s | PyTorch / ours | rel. error |',
             '|---|---|---|---|---|---|---|---|']
    rows: List[Dict] = []
    for c, side in SIZES:
        for name, nbytes, aten, ours in cases(n, c, side, DTYPES[args.dtype], LAYOUTS[args.layout], args.device):
            err = rel_error(ours(), aten())
            t_aten, t_ours = median_ms(aten, args.device), median_ms(ours, args.device)
            row = dict(op=name, channels=c, side=side, batch=n, bytes=nbytes, aten_ms=t_aten, ours_ms=t_ours,
                       aten_gb_s=nbytes / t_aten / 1e6, ours_gb_s=nbytes / t_ours / 1e6, speedup=t_aten / t_ours,
                       rel_error=err)
            rows.append(row)
            lines.append(f'| {name} | {c}x{side}x{side} | {t_aten:.3f} | {t_ours:.3f} | {row["aten_gb_s"]:.0f} '
                         f'| {row["ours_gb_s"]:.0f} | **{row["speedup"]:.2f}x** | {err:.1e} |')
            print(lines[-1], file=sys.stderr, flush=True)
    print('\n'.join(lines))
    if args.json:
        write_json(args.json, dict(device=where, torch=torch.__version__, dtype=args.dtype, layout=args.layout,
                                   results=rows, markdown='\n'.join(lines)))


if __name__ == '__main__':
    main()
