"""Elastic models against the stock timm models they replace: throughput and peak memory.

Each pair (Elastic model, stock timm baseline) is built in one process and measured interleaved,
AB, BA, AB, ...: a fixed order biases the ratio on small machines (caches, clocks, the allocator),
alternating cancels it. After a warm-up (which includes `torch.compile`'s compilation), each round
times both models for at least `--min-time` seconds; a round's ratio is Elastic / baseline images
per second, and the table reports the median over rounds (with its spread, the lowest and highest
round), beside each model's median images per second.

Measured per setting (`--settings`, names `{eager|compile}-{fp32|bf16|fp16}[-cl]`: compiled or not,
fp32 or autocast to bf16 / fp16, channels_last or not):
- `infer`: eval mode under `torch.inference_mode()`;
- `train`: one SGD step (forward, cross-entropy, backward, SGD with momentum), train mode;
  and its peak memory: the model's own tensors alive at the step's start (parameters, buffers, optimizer
  state, batch) plus the highest net allocation during the step: on the CPU read from the profiler's memory
  events, on CUDA `torch.cuda.max_memory_allocated` during the step less `torch.cuda.memory_allocated` at its
  start (so that neither counts the other model's tensors, which share the device; CUDA's allocator rounds
  each block up to 512 bytes).
For `compile-*` settings the Elastic model's graph breaks are counted with `torch._dynamo.explain`.
Per eager Elastic row, `resample share`: the part of a step spent in resampling and the branch sum, from the
profiler (two steps; device time of the ops on CUDA, CPU time on the CPU, over the profiled steps' time);
for `ours`, also the bytes those ops must move at least (each input read once, each result written once,
counted on the meta device) and the bandwidth that makes over their time.
Ops counted: `timm_elastic::*` (pooling, U fused with the sum, their gradients) and, for `--resample aten`,
aten's average pooling and upsampling and their gradients (with the network's own average pooling,
DenseNet's transitions and DLA's head, and without the sum, an `aten::add` like the residual's).
Blank for `--resample free` (no such ops) and for every `compile-*` row: inductor fuses PyTorch's ops into
its own kernels (inference, and `aten` in training), and in compiled training the graph calls D's forward,
`timm_elastic::avg_down2x`, with gradients off as an op overload of one tensor argument, which leaves no
profiler event of that name with torch 2.14.1 (only its kernel's, bare `aten::` ops or a Triton launch; torch
2.4.1 records it): its time cannot be told apart, while its bytes would be counted (`shares_resampling`).

`--resample` runs the Elastic model with other resampling, each variant against the same baseline:
- `ours` (default): the package as installed;
- `aten`: PyTorch's ops (`F.avg_pool2d`, `F.interpolate`, then the sum): the implementation before
  timm-elastic had its own kernels;
- `free`: the floor, resampling made free with outputs of the same sizes and layouts: D and its gradient
  allocate their results and compute nothing, U and the sum are skipped (`out` passes; the low group's
  gradient is allocated, not computed). The values are meaningless, the work of every other layer is
  the same. What stays between `free` and the baseline is the cost of the Elastic structure itself (more,
  narrower layers at high resolution). (Until 2026-11-27 D was a strided view `x[..., ::2, ::2]` and the
  low gradient a strided view of the sum's: the next layers copied them, so that `free` was no floor.)

`--self-check MODEL` pairs a model with a second instance of itself: the harness must read
1.00 +- 0.03 there, or its ratios mean nothing on this machine.

    python benchmarks/speed.py                               # CPU, 2 threads, batch 8, the 5 pairs
    python benchmarks/speed.py --pairs resnext50 --settings eager-fp32,eager-fp32-cl --modes infer
    python benchmarks/speed.py --device cuda                 # AMP, channels_last, train batch 256
    python benchmarks/speed.py --device cuda --pairs resnext50 --resample ours,aten,free --settings eager-bf16-cl
    python benchmarks/speed.py --self-check resnext50_32x4d --modes infer

Prints a markdown table; `--json PATH` also writes every number and the machine it came from.
"""
import argparse
import contextlib
import dataclasses
import math
import os
import platform
import statistics
import sys
import time
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F

import timm
import timm_elastic
from timm_elastic._io import write_json
from timm_elastic.stress import MIN_SIZE

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _usage import at_least, output_path  # noqa: E402

# Elastic model -> the stock timm model it replaces (issue 6)
PAIRS: Dict[str, str] = {
    'resnext50_elastic': 'resnext50_32x4d',
    'resnext101_elastic': 'resnext101_32x4d',
    'seresnext50_elastic': 'seresnext50_32x4d',
    'dla_x60_elastic': 'dla60x',
    'densenet201_elastic': 'densenet201',
}
DEFAULT_SETTINGS = {
    'cpu': 'eager-fp32,eager-fp32-cl,eager-bf16-cl,compile-fp32,compile-fp32-cl',
    'cuda': 'eager-fp16-cl,eager-bf16-cl,eager-fp32-cl,compile-fp16-cl',
}
DTYPES = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str
    compiled: bool
    amp: Optional[torch.dtype]
    channels_last: bool

    @classmethod
    def parse(cls, name: str) -> 'Setting':
        parts = name.split('-')
        ok = len(parts) in (2, 3) and parts[0] in ('eager', 'compile') and parts[1] in DTYPES \
            and (len(parts) == 2 or parts[2] == 'cl')
        if not ok:
            raise ValueError(f'unknown setting {name!r}: use {{eager|compile}}-{{fp32|bf16|fp16}}[-cl], '
                             f'e.g. eager-fp32-cl')
        return cls(name, parts[0] == 'compile', DTYPES[parts[1]], len(parts) == 3)


class AtenDown(torch.nn.Module):
    """D as PyTorch's op (`--resample aten`)."""

    def forward(self, x):
        return F.avg_pool2d(x, 2, stride=2, ceil_mode=True)


class AtenUp(torch.nn.Module):
    """U as PyTorch's op, then the sum (`--resample aten`)."""

    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode

    def forward(self, low, out):
        kwargs = dict(align_corners=False) if self.mode == 'bilinear' else {}
        up = F.interpolate(low, scale_factor=2., mode=self.mode, **kwargs)
        return out + up[:, :, :out.shape[-2], :out.shape[-1]]


def _allocated(ref: torch.Tensor, size) -> torch.Tensor:
    """An uninitialised tensor of `size` in `ref`'s dtype, device and layout: a result that costs nothing."""
    from timm_elastic.layers.resample import _like
    return _like(ref, size)


class _FreeDown(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.size = x.shape
        return _allocated(x, (*x.shape[:2], (x.shape[2] + 1) // 2, (x.shape[3] + 1) // 2))

    @staticmethod
    def backward(ctx, grad):
        return _allocated(grad, ctx.size)


class FreeDown(torch.nn.Module):
    """D replaced by an allocation of its output (`--resample free`); its gradient likewise."""

    def forward(self, x):
        return _FreeDown.apply(x)


class _SkipSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, low, out):
        ctx.size = low.shape
        return out

    @staticmethod
    def backward(ctx, grad):
        return _allocated(grad, ctx.size), grad


class FreeUp(torch.nn.Module):
    """U and the sum replaced by nothing (`--resample free`): `out` passes; the low group's gradient is
    allocated, not computed, so that the low paths' backward still runs, on meaningless values."""

    def forward(self, low, out):
        return _SkipSum.apply(low, out)


RESAMPLE_VARIANTS = ('ours', 'aten', 'free')


def swap_resampling(model: torch.nn.Module, variant: str) -> int:
    """Replace the default resampling of every Elastic block of `model` by `variant`'s; the blocks changed."""
    from timm_elastic.layers import Elastic
    from timm_elastic.layers.resample import AvgDown, InterpolateUp
    count = 0
    for m in model.modules():
        if variant != 'ours' and isinstance(m, Elastic) and isinstance(m.down, AvgDown) \
                and isinstance(m.up, InterpolateUp):
            m.down, m.up = (AtenDown(), AtenUp(m.up.mode)) if variant == 'aten' else (FreeDown(), FreeUp())
            count += 1
    return count


# per variant, the ops whose time is the step's resampling time (ours: U fused with the sum)
RESAMPLE_OPS = {
    'ours': ('timm_elastic::',),
    'aten': ('aten::avg_pool2d', 'aten::upsample_bilinear2d', 'aten::upsample_nearest2d'),
    'free': (),
}


class Runner:
    """One model in one setting and mode, ready to run `step()` on a fixed random batch."""

    def __init__(self, name: str, setting: Setting, mode: str, device: torch.device, batch_size: int,
                 img_size: int, seed: int, resample: str = 'ours'):
        torch.manual_seed(seed)
        self.name, self.setting, self.mode, self.device, self.resample = name, setting, mode, device, resample
        fmt = torch.channels_last if setting.channels_last else torch.contiguous_format
        model = timm.create_model(name, num_classes=1000)
        if resample != 'ours' and not swap_resampling(model, resample):
            raise SystemExit(f'--resample {resample}: {name} has no Elastic block with the default resampling')
        model = model.to(device=device, memory_format=fmt)
        model.train(mode == 'train')
        self.model = model
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(batch_size, 3, img_size, img_size, generator=g).to(device, memory_format=fmt)
        self.y = torch.randint(0, 1000, (batch_size,), generator=g).to(device)
        self.fn = torch.compile(model) if setting.compiled else model
        self.optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9) if mode == 'train' else None
        use_scaler = setting.amp == torch.float16 and device.type == 'cuda' and mode == 'train'
        self.scaler = torch.amp.GradScaler(device.type) if use_scaler else None

    def autocast(self):
        if self.setting.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.setting.amp)

    def step(self) -> None:
        if self.mode == 'infer':
            with torch.inference_mode(), self.autocast():
                self.fn(self.x)
            return
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            loss = F.cross_entropy(self.fn(self.x), self.y)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()

    def sync(self) -> None:
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)

    def timed(self, iters: int) -> float:
        """Seconds for `iters` steps."""
        self.sync()
        t = time.perf_counter()
        for _ in range(iters):
            self.step()
        self.sync()
        return time.perf_counter() - t

    def peak_memory(self) -> int:
        """Peak bytes of this model's live tensors during one step: its own tensors alive at the step's start
        and the highest net allocation during the step (see the module docstring). The same quantity on both
        devices: what other objects hold on the device (the other model of the pair) is in neither term."""
        # set_to_none: no gradients are alive at the step's start, as in `step`
        self.optimizer.zero_grad(set_to_none=True) if self.optimizer else None
        alive = [self.x, self.y, *self.model.parameters(), *self.model.buffers()]
        if self.optimizer is not None:
            alive += [t for s in self.optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
        start = sum(t.untyped_storage().nbytes() for t in {t.untyped_storage().data_ptr(): t for t in alive}.values())
        return start + self.step_allocation()

    def step_allocation(self) -> int:
        """The highest net allocation during one step, in bytes: above what was allocated at its start."""
        if self.device.type == 'cuda':
            self.sync()
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
            self.step()
            self.sync()
            return torch.cuda.max_memory_allocated(self.device) - before
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            self.step()
        events = [e for e in prof.profiler.kineto_results.events()
                  if e.name() == '[memory]' and e.device_type() == torch._C._autograd.DeviceType.CPU]
        net = peak = 0
        for e in sorted(events, key=lambda e: e.start_ns()):
            net += e.nbytes()
            peak = max(peak, net)
        return peak

    def profiled(self, steps: int = 2) -> 'Profiled':
        """The profiler's record of `steps` steps (CPU activity, and CUDA's on a GPU) and their wall time."""
        from torch.profiler import ProfilerActivity, profile
        cuda = self.device.type == 'cuda'
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        self.sync()
        with profile(activities=activities) as prof:
            t = time.perf_counter()
            for _ in range(steps):
                self.step()
            self.sync()
            wall = time.perf_counter() - t
        return Profiled(prof, steps, wall * 1e3 / steps, cuda)

    def resample_share(self, profiled: 'Profiled') -> Dict:
        """Milliseconds per step in the resampling ops (RESAMPLE_OPS of the variant, outermost calls only) and
        their share of the profiled steps' time: device time on CUDA, CPU time on the CPU."""
        def resampling(e) -> bool:
            return e.name.startswith(RESAMPLE_OPS[self.resample])
        spent_us = 0.
        for e in profiled.prof.events():
            parent, nested = e.cpu_parent, False
            while parent is not None and not nested:
                nested, parent = resampling(parent), parent.cpu_parent
            if resampling(e) and not nested:
                spent_us += e.device_time_total if profiled.cuda else e.cpu_time_total
        ms = spent_us / 1e3 / profiled.steps
        return dict(resample_ms=ms, step_ms=profiled.step_ms, resample_share=ms / profiled.step_ms)


class Profiled(NamedTuple):
    prof: Any  # torch.profiler.profile, after its steps
    steps: int
    step_ms: float  # wall time of one step
    cuda: bool


def _costs(profiled: Profiled) -> Tuple[list, Any]:
    """The profiled kernels (on the CPU: operators), averaged by name, and their cost: self time, device time
    on CUDA."""
    kind = torch.autograd.DeviceType.CUDA if profiled.cuda else torch.autograd.DeviceType.CPU
    events = [e for e in profiled.prof.key_averages() if e.device_type == kind]
    cost = (lambda e: e.self_device_time_total) if profiled.cuda else (lambda e: e.self_cpu_time_total)
    return events, cost


def breakdown(profiled: Profiled, top: int) -> List[Dict]:
    """The `top` costliest kernels of a profiled step (on the CPU: operators): name, milliseconds per step
    (self time, device time on CUDA), calls per step."""
    events, cost = _costs(profiled)
    events.sort(key=cost, reverse=True)
    return [dict(name=e.key, ms=cost(e) / 1e3 / profiled.steps, calls=e.count / profiled.steps)
            for e in events[:top]]


def busy_ms(profiled: Profiled) -> float:
    """Milliseconds per step that kernels ran (on the CPU: operators' self time): the profiled step's time
    less this is time the GPU waited for work (launches, Python, synchronisation)."""
    events, cost = _costs(profiled)
    return sum(cost(e) for e in events) / 1e3 / profiled.steps


def graph_breaks(runner: Runner) -> int:
    """Graph breaks that `torch._dynamo.explain` finds in the runner's model (its own forward)."""
    import torch._dynamo
    torch._dynamo.reset()
    with torch.inference_mode() if runner.mode == 'infer' else contextlib.nullcontext(), runner.autocast():
        explained = torch._dynamo.explain(runner.model)(runner.x)
    torch._dynamo.reset()
    return explained.graph_break_count


def resample_traffic(name: str, setting: Setting, mode: str, batch_size: int, img_size: int) -> int:
    """Bytes that the resampling ops (`timm_elastic::*`) of one step must move at least: every input read
    once, every result written once. Counted on the meta device (a model of `name` built there, nothing
    computed), elements in the setting's compute dtype: autocast keeps every Elastic tensor in it. Over the
    ops' measured time, the bandwidth they reached."""
    from torch.utils._python_dispatch import TorchDispatchMode
    elements = 0

    class Census(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            nonlocal elements
            out = func(*args, **(kwargs or {}))
            if func.namespace == 'timm_elastic':
                elements += sum(t.numel() for t in (*args, out) if torch.is_tensor(t))
            return out
    fmt = torch.channels_last if setting.channels_last else torch.contiguous_format
    with torch.device('meta'):
        model = timm.create_model(name, num_classes=1000)
    model = model.to(memory_format=fmt).train(mode == 'train')
    x = torch.empty(batch_size, 3, img_size, img_size, device='meta').contiguous(memory_format=fmt)
    with Census(), torch.no_grad() if mode == 'infer' else contextlib.nullcontext():
        y = model(x)
        if mode == 'train':
            y.sum().backward()
    return elements * (setting.amp or torch.float32).itemsize


def shares_resampling(names: Tuple[str, str], setting: Setting, resample: str) -> bool:
    """Whether a row of (Elastic, baseline) gets a resampling share (and the bytes behind it): an Elastic model
    against another (not `--self-check`), whose resampling runs ops (not `free`), eager. Under torch.compile the
    profiler cannot see them all (the module docstring says why): a share would leave some out, but not their
    bytes, so every compiled row is blank."""
    return names[0] != names[1] and bool(RESAMPLE_OPS[resample]) and not setting.compiled


def calibrate(runner: Runner, min_time: float) -> int:
    """Steps per measurement so that one measurement lasts at least `min_time` seconds."""
    return max(1, math.ceil(min_time / max(runner.timed(1), 1e-6)))


def compare(names: Tuple[str, str], setting: Setting, mode: str, args, device: torch.device,
            resample: str = 'ours') -> Dict:
    """Interleaved measurement of (Elastic, baseline) in one setting and mode."""
    batch = args.train_batch_size if mode == 'train' else args.batch_size
    runners = [Runner(n, setting, mode, device, batch, args.img_size, args.seed, resample if i == 0 else 'ours')
               for i, n in enumerate(names)]
    t0 = time.perf_counter()
    for r in runners:
        for _ in range(args.warmup):
            r.step()
    iters = [calibrate(r, args.min_time) for r in runners]
    warm_s = time.perf_counter() - t0
    rates: List[List[float]] = [[], []]
    for rnd in range(args.rounds):
        order = (0, 1) if rnd % 2 == 0 else (1, 0)
        for i in order:
            rates[i].append(batch * iters[i] / runners[i].timed(iters[i]))
    ratios = sorted(e / b for e, b in zip(*rates))
    row = dict(
        elastic=names[0], resample=resample, baseline=names[1], setting=setting.name, mode=mode, batch_size=batch,
        img_size=args.img_size, rounds=args.rounds, iters_per_round=iters, warmup_s=round(warm_s, 1),
        elastic_img_s=statistics.median(rates[0]), baseline_img_s=statistics.median(rates[1]),
        ratio=statistics.median(ratios), ratio_min=ratios[0], ratio_max=ratios[-1],
        rates=rates,
    )
    if mode == 'train':
        mem = [r.peak_memory() for r in runners]
        row.update(elastic_peak_mb=mem[0] / 2 ** 20, baseline_peak_mb=mem[1] / 2 ** 20, memory_ratio=mem[0] / mem[1])
    share = shares_resampling(names, setting, resample)
    # one profiled run per model serves both the resampling share and the breakdown
    profiles = [r.profiled() if args.breakdown or (share and i == 0) else None for i, r in enumerate(runners)]
    if share:
        row.update(runners[0].resample_share(profiles[0]))
        if resample == 'ours':
            try:  # device-independent (it can be counted again anywhere): it never costs a measured row
                traffic = resample_traffic(names[0], setting, mode, batch, args.img_size)
            except Exception as e:  # noqa: BLE001
                print(f'{names[0]}: the resampling traffic could not be counted on the meta device: {e!r}',
                      file=sys.stderr, flush=True)
            else:
                row.update(resample_gb=traffic / 1e9,
                           resample_gb_s=traffic / 1e9 / max(row['resample_ms'] / 1e3, 1e-9))
    if args.breakdown:
        row['breakdown'] = {which: breakdown(p, args.breakdown) for which, p in zip(('elastic', 'baseline'), profiles)}
        row['profiled'] = {which: dict(step_ms=p.step_ms, busy_ms=busy_ms(p))
                           for which, p in zip(('elastic', 'baseline'), profiles)}
    if setting.compiled and names[0] != names[1]:
        row['elastic_graph_breaks'] = graph_breaks(runners[0])
    return row


def machine(device: torch.device) -> Dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    info = dict(cpu=cpu, cores=os.cpu_count(), threads=torch.get_num_threads(), python=platform.python_version(),
                torch=torch.__version__, timm=timm.__version__, timm_elastic=getattr(timm_elastic, '__version__', ''))
    if device.type == 'cuda':
        info['gpu'] = torch.cuda.get_device_name(device)
    return info


def markdown(rows: List[Dict], info: Dict) -> str:
    where = info.get('gpu') or f'{info["cpu"]}, {info["threads"]} threads'
    lines = [
        f'Elastic / stock timm, same process, interleaved ({where}; torch {info["torch"]}, timm {info["timm"]})',
        '',
        '| Elastic | resample | baseline | setting | mode | batch | Elastic img/s | baseline img/s | ratio [min, max] '
        '| peak MB Elastic / baseline (ratio) | resample share (ms / step), least traffic at bandwidth '
        '| graph breaks |',
        '|---|---|---|---|---|---|---|---|---|---|---|---|',
    ]
    for r in rows:
        mem = (f'{r["elastic_peak_mb"]:.0f} / {r["baseline_peak_mb"]:.0f} ({r["memory_ratio"]:.2f}x)'
               if 'memory_ratio' in r else '')
        share = (f'{100 * r["resample_share"]:.1f}% ({r["resample_ms"]:.1f} / {r["step_ms"]:.1f})'
                 if r.get('resample_share') is not None else '')
        if 'resample_gb' in r:
            share += f', {r["resample_gb"]:.3g} GB at {r["resample_gb_s"]:.4g} GB/s'
        lines.append(
            f'| {r["elastic"]} | {r.get("resample", "ours")} | {r["baseline"]} | {r["setting"]} | {r["mode"]} '
            f'| {r["batch_size"]} | {r["elastic_img_s"]:.2f} | {r["baseline_img_s"]:.2f} '
            f'| **{r["ratio"]:.2f}x** [{r["ratio_min"]:.2f}, {r["ratio_max"]:.2f}] | {mem} | {share} '
            f'| {r.get("elastic_graph_breaks", "")} |')
    return '\n'.join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0], epilog=__doc__.split('\n\n', 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--pairs', default=','.join(PAIRS),
                        help='Elastic models to measure, comma separated (a prefix is enough: resnext50); '
                             f'each against its baseline: {", ".join(f"{k}/{v}" for k, v in PAIRS.items())}')
    parser.add_argument('--self-check', metavar='MODEL',
                        help='instead of the pairs, measure MODEL against a second instance of itself')
    parser.add_argument('--device', default='cpu', help='cpu or cuda (default: cpu)')
    parser.add_argument('--settings', help='comma separated; default for cpu: '
                        f'{DEFAULT_SETTINGS["cpu"]}; for cuda: {DEFAULT_SETTINGS["cuda"]}')
    parser.add_argument('--modes', default='infer,train',
                        help='comma separated: infer, train, or infer,train (default: infer,train)')
    parser.add_argument('--resample', default='ours',
                        help='the Elastic models\' resampling, comma separated: ours (the package\'s), aten '
                             '(PyTorch\'s ops), free (the floor: no resampling cost); default: ours')
    parser.add_argument('--threads', type=int, default=2, help='CPU threads (default: 2)')
    parser.add_argument('--batch-size', type=int, help='inference batch (default: 8 on cpu, 256 on cuda)')
    parser.add_argument('--train-batch-size', type=int, help='training batch (default: 8 on cpu, 256 on cuda)')
    parser.add_argument('--img-size', type=int, default=224, help='input side in pixels (default: 224)')
    parser.add_argument('--rounds', type=int, default=10, help='interleaved rounds, even (default: 10)')
    parser.add_argument('--warmup', type=int, default=3, help='untimed steps per model first (default: 3)')
    parser.add_argument('--min-time', type=float, default=1.0,
                        help='seconds one model is timed for in each round (default: 1.0)')
    parser.add_argument('--breakdown', type=int, default=0, metavar='N',
                        help='also profile each model\'s N costliest kernels (CPU: operators) per step, and the '
                             'time kernels ran against the step\'s (idle GPU: launch-bound), printed and in the '
                             'JSON (default: 0, none)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--json', metavar='PATH', help='also write the results and the machine as JSON')
    args = parser.parse_args(argv)
    at_least(parser, args, 1, 'threads', 'batch_size', 'train_batch_size')
    at_least(parser, args, MIN_SIZE, 'img_size')  # below the models' total stride their last map is empty
    at_least(parser, args, 0, 'warmup', 'min_time', 'breakdown')
    output_path(parser, args.json)
    if args.rounds < 2 or args.rounds % 2:
        parser.error(f'--rounds must be an even number >= 2 (AB, BA, ...), got {args.rounds}')
    if args.device not in ('cpu', 'cuda'):
        parser.error(f'--device must be cpu or cuda, got {args.device!r}')
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: no CUDA device is available')
    modes = args.modes.split(',')
    if not modes or any(m not in ('infer', 'train') for m in modes):
        parser.error(f'--modes takes infer and/or train, got {args.modes!r}')
    args.modes = modes
    args.resample = args.resample.split(',')
    if not args.resample or any(v not in RESAMPLE_VARIANTS for v in args.resample):
        parser.error(f'--resample takes {", ".join(RESAMPLE_VARIANTS)}, got {",".join(args.resample)!r}')
    try:
        args.settings = [Setting.parse(s) for s in (args.settings or DEFAULT_SETTINGS[args.device]).split(',')]
    except ValueError as e:
        parser.error(f'--settings: {e}')
    if args.device == 'cpu' and any(s.amp == torch.float16 for s in args.settings):
        parser.error('fp16 autocast is for CUDA; on the CPU use bf16')
    default_batch = 256 if args.device == 'cuda' else 8
    args.batch_size = default_batch if args.batch_size is None else args.batch_size
    args.train_batch_size = default_batch if args.train_batch_size is None else args.train_batch_size
    if args.self_check:
        if args.self_check not in timm.list_models():
            parser.error(f'--self-check: unknown model {args.self_check!r}')
        if args.resample != ['ours']:
            parser.error(f'--self-check measures MODEL against itself as built, with the package\'s resampling: '
                         f'--resample takes only ours there, got {",".join(args.resample)!r}')
        args.pairs = [(args.self_check, args.self_check)]
    else:
        pairs = []
        for p in args.pairs.split(','):
            match = [k for k in PAIRS if k.startswith(p)]
            if len(match) != 1:
                parser.error(f'--pairs: {p!r} matches {match or "none"} of {", ".join(PAIRS)}')
            pairs.append((match[0], PAIRS[match[0]]))
        args.pairs = pairs
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == 'cpu':
        torch.set_num_threads(args.threads)
    else:
        torch.backends.cudnn.benchmark = True  # as timm's benchmark.py and train.py
    info = machine(device)
    rows = []
    for names in args.pairs:
        for setting in args.settings:
            for mode in args.modes:
                for resample in args.resample:
                    row = compare(names, setting, mode, args, device, resample)
                    rows.append(row)
                    print(f'{row["elastic"]} [{resample}] / {row["baseline"]} {setting.name} {mode}: '
                          f'{row["ratio"]:.3f}x [{row["ratio_min"]:.3f}, {row["ratio_max"]:.3f}] '
                          f'({row["elastic_img_s"]:.2f} / {row["baseline_img_s"]:.2f} img/s)'
                          + (f', peak memory {row["memory_ratio"]:.3f}x' if 'memory_ratio' in row else '')
                          + (f', resample share {100 * row["resample_share"]:.1f}%'
                             if row.get('resample_share') is not None else '')
                          + (f' ({row["resample_gb"]:.3g} GB at {row["resample_gb_s"]:.4g} GB/s)'
                             if 'resample_gb' in row else '')
                          + (f', graph breaks {row["elastic_graph_breaks"]}' if 'elastic_graph_breaks' in row
                             else ''), file=sys.stderr, flush=True)
                    for which, kernels in row.get('breakdown', {}).items():
                        costliest = '; '.join(f'{k["ms"]:.2f} ms x{k["calls"]:g} {k["name"][:60]}' for k in kernels)
                        p = row['profiled'][which]
                        print(f'  {row[which]} (profiled step {p["step_ms"]:.1f} ms, kernels busy {p["busy_ms"]:.1f} '
                              f'ms): {costliest}', file=sys.stderr, flush=True)
                    if args.json:  # after every row, so that a run cut short keeps what it measured
                        write_results(args, info, rows)
    print(markdown(rows, info))


def write_results(args, info: Dict, rows: List[Dict]) -> None:
    write_json(args.json, dict(machine=info, args=dict(
        device=args.device, threads=args.threads, img_size=args.img_size, rounds=args.rounds, warmup=args.warmup,
        min_time=args.min_time, seed=args.seed, resample=args.resample), results=rows, markdown=markdown(rows, info)))


if __name__ == '__main__':
    main()
