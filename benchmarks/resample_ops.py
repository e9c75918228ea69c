"""The resampling ops alone: timm-elastic's kernels against PyTorch's, forward and backward, at the
feature-map sizes of ResNeXt50+Elastic (256 channels at 56x56, 512 at 28x28, 1024 at 14x14).

Per op and size: each implementation's median time, the bandwidth it reaches counting the fewest bytes
the op must move (each input read once, each output written once), and PyTorch's time over ours.
- `down`: 2x2 average pooling (ceil_mode): `F.avg_pool2d` / `timm_elastic::avg_down2x`;
- `down grad`: its transpose: `aten::avg_pool2d_backward` / `timm_elastic::avg_down2x_backward`;
- `up + sum`: `out + U(low)`, U bilinear 2x: `out + F.interpolate(low)` (two kernels) /
  `timm_elastic::up2x_add` (one);
- `up grad`: U's transpose: `aten::upsample_bilinear2d_backward` / `timm_elastic::up2x_backward`;
- `block`: an Elastic block's resampling as a training step runs it, through autograd: `out + U(D(x))`
  (`out` = `x`), then its backward, x's gradient the result: PyTorch's ops / the package's modules
  (`AvgDown`, `InterpolateUp`). Its bytes are the four ops' above. Not with `--timer graph` (autograd's
  backward is not captured in a CUDA graph here).
Each pair's outputs are compared first (relative error), so that a fast wrong kernel shows.

On CUDA it times with `--timer graph` (default): `triton.testing.do_bench_cudagraph`, replays of a
captured CUDA graph, the GPU's time alone, median; or `--timer events`: `triton.testing.do_bench`, CUDA
events around each call with the L2 cache flushed before it, median. Events also count any time the GPU
waits for the host to launch the op (a custom op and a Triton launch take the host longer than PyTorch's
dispatch); in a model's step the host runs ahead of the GPU, so graph replay is the op's cost there. The
two timers side by side show how much of a time is launching. `--timer host` times the host alone: the
least wall time per call over 5 runs of 200 calls, on CUDA enqueued without waiting for the GPU (use a
small `--batch-size`, so that the GPU keeps up and never holds the host back): what each call costs the
CPU thread that launches a model's step (on the CPU, the whole call). Otherwise, on the CPU it times with
`torch.utils.benchmark` (median of blocked runs), on `--threads` threads.

`--tiles` and `--warps` (CUDA) time our kernels at other tile sizes (elements per program) and warps per
program than the package's (resample_triton.TILE, NUM_WARPS), one row per combination.

    python benchmarks/resample_ops.py --device cuda --dtype bf16                 # batch 64, channels_last
    python benchmarks/resample_ops.py --device cuda --dtype fp32 --layout nchw
    python benchmarks/resample_ops.py --device cuda --tiles 1024,4096 --warps 4,8
    python benchmarks/resample_ops.py --device cuda --timer host --batch-size 1
    python benchmarks/resample_ops.py                                           # CPU, fp32, batch 8
"""
import argparse
import contextlib
import os
import sys
import time
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F

import timm_elastic  # noqa: F401  (registers the timm_elastic ops)
from timm_elastic._io import write_json
from timm_elastic.layers.resample import AvgDown, InterpolateUp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _usage import at_least, output_path  # noqa: E402

SIZES: List[Tuple[int, int]] = [(256, 56), (512, 28), (1024, 14)]  # (channels, side)
DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}
LAYOUTS = {'cl': torch.channels_last, 'nchw': torch.contiguous_format}


def cases(n: int, c: int, side: int, dtype: torch.dtype, layout: torch.memory_format, device: str,
          block: bool = True):
    """(name, bytes moved at least, PyTorch's fn, ours) for one size (the `block` case if `block`)."""
    h = (side + 1) // 2
    ops = torch.ops.timm_elastic

    def t(*size):
        return torch.randn(*size, device=device, dtype=dtype).contiguous(memory_format=layout)
    x, g_low, low, out, g = t(n, c, side, side), t(n, c, h, h), t(n, c, h, h), t(n, c, side, side), \
        t(n, c, side, side)
    full, quarter = x.numel() * x.element_size(), low.numel() * low.element_size()
    # PyTorch's U has a 2h x 2h output: at an odd side, the gradient of the cropped rows and columns is 0
    g_up = F.pad(g, (0, 2 * h - side, 0, 2 * h - side)).contiguous(memory_format=layout) if 2 * h != side else g

    def aten_down(t):
        return F.avg_pool2d(t, 2, stride=2, ceil_mode=True)

    def aten_up_add(lo, o):
        return o + F.interpolate(lo, scale_factor=2., mode='bilinear', align_corners=False)[..., :side, :side]
    ops_cases = [
        ('down', full + quarter, lambda: aten_down(x), lambda: ops.avg_down2x(x)),
        ('down grad', quarter + full,
         lambda: torch.ops.aten.avg_pool2d_backward(g_low, x, [2, 2], [2, 2], [0, 0], True, True, None),
         lambda: ops.avg_down2x_backward(g_low, side, side)),
        ('up + sum', quarter + 2 * full,
         lambda: aten_up_add(low, out), lambda: ops.up2x_add(low, out, 'bilinear')),
        ('up grad', full + quarter,
         lambda: torch.ops.aten.upsample_bilinear2d_backward(g_up, [2 * h, 2 * h], [n, c, h, h], False, 2., 2.),
         lambda: ops.up2x_backward(g, 'bilinear', h, h)),
    ]
    if not block:
        return ops_cases
    xg = x.detach().requires_grad_()
    down, up = AvgDown(), InterpolateUp('bilinear')

    def step(forward):
        def run():
            xg.grad = None
            forward().backward(g)
            return xg.grad
        return run
    return ops_cases + [('block', 5 * full + 4 * quarter, step(lambda: aten_up_add(aten_down(xg), xg)),
                         step(lambda: up(down(xg), xg)))]


def median_ms(fn: Callable, device: str, timer: str = 'graph', min_time: float = 0.5) -> float:
    if timer == 'host':
        return host_ms(fn, device)
    if device == 'cuda':
        import triton.testing
        if timer == 'graph':  # (it runs `fn` once, to compile, before capturing it)
            return triton.testing.do_bench_cudagraph(fn, rep=100, return_mode='median')
        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode='median')
    from torch.utils.benchmark import Timer
    return Timer('fn()', globals={'fn': fn}, num_threads=torch.get_num_threads()).blocked_autorange(
        min_run_time=min_time).median * 1e3


def host_ms(fn: Callable, device: str, calls: int = 200, runs: int = 5) -> float:
    """The host's least wall time per call of `fn`, over `runs` runs of `calls` calls each; on CUDA enqueued
    without waiting for the GPU, which finishes each run's work before the next run starts."""
    sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
    fn()
    sync()
    best = float('inf')
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, time.perf_counter() - start)
        sync()
    return best / calls * 1e3


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
    parser.add_argument('--sizes', default=','.join(f'{c}x{side}' for c, side in SIZES),
                        help='feature maps CHANNELSxSIDE, comma separated (default: %(default)s)')
    parser.add_argument('--min-time', type=float, default=0.5,
                        help='CPU: seconds each op is timed for at least (default: 0.5)')
    parser.add_argument('--timer', choices=('graph', 'events', 'host'), default=None,
                        help='CUDA: graph replays (the GPU\'s time) or events per call; host: the host\'s time '
                        'per call, on either device (default: graph on CUDA, torch.utils.benchmark on the CPU)')
    parser.add_argument('--tiles', help='CUDA: our kernels\' elements per program, comma separated '
                        '(default: the package\'s)')
    parser.add_argument('--warps', help='CUDA: our kernels\' warps per program, comma separated '
                        '(default: the package\'s)')
    parser.add_argument('--json', metavar='PATH', help='also write the results as JSON')
    args = parser.parse_args(argv)
    at_least(parser, args, 1, 'batch_size', 'threads')
    at_least(parser, args, 0, 'min_time')
    output_path(parser, args.json)
    if args.device not in ('cpu', 'cuda'):
        parser.error(f'--device must be cpu or cuda, got {args.device!r}')
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: no CUDA device is available')
    args.dtype = args.dtype or ('bf16' if args.device == 'cuda' else 'fp32')
    if args.dtype not in DTYPES:
        parser.error(f'--dtype must be one of {", ".join(DTYPES)}, got {args.dtype!r}')
    if args.layout not in LAYOUTS:
        parser.error(f'--layout must be cl or nchw, got {args.layout!r}')
    try:
        sizes = [tuple(int(v) for v in size.split('x')) for size in args.sizes.split(',')]
    except ValueError:
        sizes = []
    if not sizes or any(len(size) != 2 or min(size) < 1 for size in sizes):
        parser.error(f'--sizes takes CHANNELSxSIDE (positive integers), comma separated, e.g. 256x56, '
                     f'got {args.sizes!r}')
    args.sizes = sizes
    if args.device == 'cpu' and args.timer in ('graph', 'events'):
        parser.error(f'--timer {args.timer} times CUDA work: add --device cuda, or use --timer host on the CPU')
    args.timer = args.timer or ('graph' if args.device == 'cuda' else 'torch.utils.benchmark')
    if args.device == 'cpu' and (args.tiles or args.warps):
        parser.error('--tiles and --warps set the Triton kernels, which run on CUDA: add --device cuda')
    variants = [(None, None)]
    if args.tiles or args.warps:
        from timm_elastic.layers import resample_triton
        try:
            tiles = [int(t) for t in (args.tiles or str(resample_triton.TILE)).split(',')]
            warps = [int(w) for w in (args.warps or str(resample_triton.NUM_WARPS)).split(',')]
        except ValueError:
            parser.error(f'--tiles and --warps take integers, got {args.tiles!r} and {args.warps!r}')
        bad = [t for t in tiles + warps if t < 1 or t & (t - 1)]
        if bad:
            parser.error(f'--tiles and --warps must be powers of 2, got {bad}')
        variants = [(t, w) for t in tiles for w in warps]
    if args.device == 'cpu':
        torch.set_num_threads(args.threads)
    n = (64 if args.device == 'cuda' else 8) if args.batch_size is None else args.batch_size
    where = torch.cuda.get_device_name() if args.device == 'cuda' else f'CPU, {torch.get_num_threads()} threads'
    lines = [f'Resampling ops, PyTorch / timm-elastic ({where}; torch {torch.__version__}; batch {n}, '
             f'{args.dtype}, {args.layout}, timed by {args.timer})', '',
             '| op | size | tile / warps | PyTorch ms | ours ms | PyTorch GB/s | ours GB/s | PyTorch / ours '
             '| rel. error |',
             '|---|---|---|---|---|---|---|---|---|']
    rows: List[Dict] = []
    for c, side in args.sizes:
        for name, nbytes, aten, ours in cases(n, c, side, DTYPES[args.dtype], LAYOUTS[args.layout], args.device,
                                              block=args.timer != 'graph'):
            reference = aten()
            t_aten = median_ms(aten, args.device, args.timer, args.min_time)
            for tile, warps in variants:
                with kernel_shape(tile, warps):
                    err = rel_error(ours(), reference)
                    t_ours = median_ms(ours, args.device, args.timer, args.min_time)
                row = dict(op=name, channels=c, side=side, batch=n, bytes=nbytes, tile=tile, warps=warps,
                           aten_ms=t_aten, ours_ms=t_ours, aten_gb_s=nbytes / t_aten / 1e6,
                           ours_gb_s=nbytes / t_ours / 1e6, speedup=t_aten / t_ours, rel_error=err)
                rows.append(row)
                shape = f'{tile} / {warps}' if tile else 'default'
                lines.append(f'| {name} | {c}x{side}x{side} | {shape} | {t_aten:.3f} | {t_ours:.3f} '
                             f'| {row["aten_gb_s"]:.0f} | {row["ours_gb_s"]:.0f} | **{row["speedup"]:.2f}x** '
                             f'| {err:.1e} |')
                print(lines[-1], file=sys.stderr, flush=True)
    print('\n'.join(lines))
    if args.json:
        write_json(args.json, dict(device=where, torch=torch.__version__, dtype=args.dtype, layout=args.layout,
                                   timer=args.timer,
                                   results=rows, markdown='\n'.join(lines)))


@contextlib.contextmanager
def kernel_shape(tile, warps):
    """Our Triton kernels with `tile` elements and `warps` warps per program (None: the package's)."""
    if tile is None:
        yield
        return
    from timm_elastic.layers import resample_triton
    saved = resample_triton.TILE, resample_triton.NUM_WARPS
    resample_triton.TILE, resample_triton.NUM_WARPS = tile, warps
    try:
        yield
    finally:
        resample_triton.TILE, resample_triton.NUM_WARPS = saved


if __name__ == '__main__':
    main()
