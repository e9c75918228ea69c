"""D and U of Eq. 3: the resampling around an Elastic block's low-resolution paths (Table 6).

Every `elastic_resample` mode is a pair of modules. `down(x)` is the low-resolution group's input;
`up(low, out)` returns `out + U(low)`, with U's output cropped to the size of `out` (an odd size was
rounded up by `down`). Where U makes a new tensor, the sum is written into it, so a block allocates
one full-size tensor for its output, not two.

Speed. The default pair, 2x2 average pooling and bilinear 2x upsampling, runs in every Elastic block
on the largest tensors of the network, so each runs as one op with its transpose as its gradient:
`timm_elastic::avg_down2x(x)` and `timm_elastic::up2x_add(low, out, mode)`, U and the branch sum in
one op. Their kernels:
- CUDA: Triton kernels (`resample_triton.py`), gathers without atomics, the sum fused into U;
- CPU, contiguous (NCHW) tensors: strided elementwise kernels written here (the 2-tap filters of
  bilinear upsampling as `lerp`, rows first so that the interleaving store along W runs on half the
  data). PyTorch's own kernels are slow there: on a (8, 256, 56, 56) tensor with 2 threads,
  avg_pool2d takes 6 ms in NCHW against 0.5 ms in channels_last, bilinear upsampling 13 ms against
  1 ms, their backward passes 7 and 12 ms. Same values up to fp32 rounding (the order of the sums);
- elsewhere (channels_last on the CPU, CUDA without Triton, other devices): PyTorch's aten kernels; so
  are bfloat16 tensors on GPUs older than Ampere (T4, V100) with a Triton older than 3.3, which cannot
  compile bfloat16 for them.
Every kernel returns the dtype of its inputs: CUDA's autocast would run aten's upsampling in float32
(it is on autocast's fp32 list), and the sum, the block's norm and everything up to the next
convolution with it.
When training under torch.compile, the ops are called as they are: traced through instead, inductor
turns bilinear upsampling's gradient into a scatter-add (atomics on CUDA), which made a compiled
ResNeXt50+Elastic training step 25% slower on the CPU. Compiled without autograd, the aten ops run,
which inductor fuses with the sum. TorchScript and `torch.jit.trace` run the aten ops too, so that
scripted and traced models do not need this package. Run eagerly, the modules call the same kernels
and gradients without the ops' dispatch (the direct path, below).
The gradients are differentiable in turn (each op's gradient is its transpose, whose gradient is the op),
to any order, as PyTorch's pooling and upsampling are. Under torch.func's transforms and in forward-mode
AD, where PyTorch's custom ops fail, the modules run PyTorch's ops (`_route` decides what runs).
"""
import functools
import re
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.autograd.forward_ad as _forward_ad
import torch.nn as nn
import torch.nn.functional as F
from timm.models import register_notrace_module

__all__ = ['RESAMPLE_MODES', 'make_resample', 'avg_down2x', 'up2x_add', 'AvgDown', 'InterpolateUp', 'FilterDown',
           'FilterUp', 'SmoothAvg', 'Sum']

# elastic_resample value -> the row of Table 6 it reproduces
RESAMPLE_MODES: Dict[str, str] = {
    'bilinear': 'Bilinear w/ AP',  # the paper's choice and the default
    'nearest': 'Nearest w/ AP',
    'filter': 'Trained Filter',
    'dilated': 'Trained Dilated Filter',
    'dilated_avg': 'Trained Dilated Filter w/ AP',
}


# ---- strided kernels for contiguous NCHW tensors on the CPU (no autograd: the ops below pair them) ----

def _sum_down2x(x: torch.Tensor) -> torch.Tensor:
    """(N, C, 2h, 2w) -> (N, C, h, w): the sum of each 2x2 window. Rows first: adding whole rows
    vectorises, so the strided add along W runs on half the data."""
    rows = x[:, :, 0::2] + x[:, :, 1::2]
    return rows[..., 0::2] + rows[..., 1::2]


def _repeat_up2x(x: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) -> (N, C, 2h, 2w): every value copied to its 2x2 window (the adjoint of the sum)."""
    n, c, h, w = x.shape
    # copies into new tensors (a reshape of the expanded view could be a view of x, at 1x1)
    wide = x.new_empty(n, c, h, w, 2)
    wide.copy_(x.unsqueeze(-1).expand(n, c, h, w, 2))
    out = x.new_empty(n, c, 2 * h, 2 * w)
    out.view(n, c, h, 2, 2 * w).copy_(wide.view(n, c, h, 1, 2 * w).expand(n, c, h, 2, 2 * w))
    return out


def _lerp_2x(src: torch.Tensor, dim: int, even: torch.Tensor, odd: torch.Tensor) -> None:
    """Bilinear 2x along `dim` (align_corners=False, clamped at the border) into the even and odd
    outputs: even[i] = 3/4 src[i] + 1/4 src[i-1], odd[i] = 3/4 src[i] + 1/4 src[i+1]."""
    n = src.shape[dim]
    torch.lerp(src.narrow(dim, 1, n - 1), src.narrow(dim, 0, n - 1), 0.25, out=even.narrow(dim, 1, n - 1))
    even.narrow(dim, 0, 1).copy_(src.narrow(dim, 0, 1))
    torch.lerp(src.narrow(dim, 0, n - 1), src.narrow(dim, 1, n - 1), 0.25, out=odd.narrow(dim, 0, n - 1))
    odd.narrow(dim, n - 1, 1).copy_(src.narrow(dim, n - 1, 1))


def _lerp_2x_adjoint(even: torch.Tensor, odd: torch.Tensor, dim: int) -> torch.Tensor:
    """The transpose of `_lerp_2x`: the gradient of `src` from the gradients of its even and odd outputs."""
    n = even.shape[dim]
    grad = torch.add(even, odd).mul_(0.75)
    grad.narrow(dim, 0, n - 1).add_(even.narrow(dim, 1, n - 1), alpha=0.25)
    grad.narrow(dim, 0, 1).add_(even.narrow(dim, 0, 1), alpha=0.25)
    grad.narrow(dim, 1, n - 1).add_(odd.narrow(dim, 0, n - 1), alpha=0.25)
    grad.narrow(dim, n - 1, 1).add_(odd.narrow(dim, n - 1, 1), alpha=0.25)
    return grad


def _bilinear_up2x(x: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) -> (N, C, 2h, 2w), F.interpolate(scale_factor=2, mode='bilinear', align_corners=False).
    Along W first, so the interleaving store (stride 2) runs on half the data; then whole rows."""
    n, c, h, w = x.shape
    wide = x.new_empty(n, c, h, w, 2)
    _lerp_2x(x, 3, wide[..., 0], wide[..., 1])
    wide = wide.view(n, c, h, 2 * w)
    out = x.new_empty(n, c, 2 * h, 2 * w)  # not a view: the caller adds into it in place
    rows = out.view(n, c, h, 2, 2 * w)
    _lerp_2x(wide, 2, rows[:, :, :, 0], rows[:, :, :, 1])
    return out


def _bilinear_up2x_adjoint(grad: torch.Tensor) -> torch.Tensor:
    n, c, h2, w2 = grad.shape
    rows = grad.view(n, c, h2 // 2, 2, w2)
    wide = _lerp_2x_adjoint(rows[:, :, :, 0], rows[:, :, :, 1], 2)
    cols = wide.view(n, c, h2 // 2, w2 // 2, 2)
    return _lerp_2x_adjoint(cols[..., 0], cols[..., 1], 3)


# U's mode -> (U, its transpose), the strided kernels for contiguous NCHW tensors on the CPU
_STRIDED_UP: Dict[str, Tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]] = {
    'bilinear': (_bilinear_up2x, _bilinear_up2x_adjoint),
    'nearest': (_repeat_up2x, _sum_down2x),
}


# ---- PyTorch's ops: the fallback, and what TorchScript, torch.jit.trace and inference under torch.compile run ----

def _aten_down(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 2, stride=2, ceil_mode=True)


def _aten_up(low: torch.Tensor, mode: str) -> torch.Tensor:
    # CUDA's autocast runs upsampling in float32 (its fp32 op list): cast back, or the branch sum, and
    # every layer after it up to the next convolution, would run in float32 too
    if mode == 'nearest':
        return F.interpolate(low, scale_factor=2., mode='nearest').to(low.dtype)
    return F.interpolate(low, scale_factor=2., mode='bilinear', align_corners=False).to(low.dtype)


def _aten_up_add(low: torch.Tensor, out: torch.Tensor, mode: str) -> torch.Tensor:
    return out + _aten_up(low, mode)[:, :, :out.shape[-2], :out.shape[-1]]


def _aten_up_backward(grad: torch.Tensor, mode: str, height: int, width: int) -> torch.Tensor:
    """The gradient of `_aten_up(low)` for `low` of size (height, width), `grad` of U's full size."""
    n, c = grad.shape[:2]
    if mode == 'nearest':
        return torch.ops.aten.upsample_nearest2d_backward(grad, grad.shape[-2:], [n, c, height, width], 2., 2.)
    return torch.ops.aten.upsample_bilinear2d_backward(grad, grad.shape[-2:], [n, c, height, width], False, 2., 2.)


def _aten_down_backward(grad: torch.Tensor, height: int, width: int) -> torch.Tensor:
    # each input pixel gets its window's gradient over the window's size, 4 but at an odd border,
    # where ceil_mode's window holds 2 valid entries (1 in the corner)
    grad = grad * 0.25
    if height % 2:
        grad[:, :, -1].mul_(2.)
    if width % 2:
        grad[..., -1].mul_(2.)
    return F.interpolate(grad, scale_factor=2., mode='nearest')[:, :, :height, :width]


# ---- the ops: one per function, with a kernel per device ----

def _layout(x: torch.Tensor) -> torch.memory_format:
    """The memory format of what is computed from `x` (made explicit, so the fake kernels can say it): NCHW
    where `x` is NCHW-contiguous (a map that is both, 1x1 or one channel, included), channels_last where it
    is channels_last-contiguous or, dense in neither, has its strides in channels_last's order: a slice of
    channels of a channels_last tensor, which is what autograd passes as the gradient of a layer whose output
    was concatenated (DenseNet)."""
    if x.is_contiguous():
        return torch.contiguous_format
    channels_last = x.is_contiguous(memory_format=torch.channels_last) or _channels_last_strides(x)
    return torch.channels_last if channels_last else torch.contiguous_format


def _channels_last_strides(x: torch.Tensor) -> bool:
    """Whether the strides of a 4-D `x` run channels, width, height, batch from the smallest: PyTorch's own
    test (c10's `is_channels_last_strides_2d`, which `empty_like` and convolutions follow), with its
    ambiguous cases read as NCHW."""
    if x.dim() != 4 or x.stride(1) == 0:
        return False
    smallest = 0
    for d in (1, 3, 2, 0):
        if x.size(d) == 0 or x.stride(d) < smallest or (d == 0 and smallest == x.stride(1)):
            return False
        smallest = x.stride(d) * x.size(d)  # sizes are >= 1 here
    return True


def _like(ref: torch.Tensor, size, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """An empty tensor of `size` in the dtype (by default) and memory format of `ref`: what every op
    returns, on every device, and what its fake kernel says it returns."""
    # allocated in that format: `new_empty(size).contiguous(format)` would copy the uninitialised tensor
    return torch.empty(size, dtype=dtype or ref.dtype, device=ref.device, memory_format=_layout(ref))


def _as(t: torch.Tensor, ref: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """`t` in the dtype (by default) and memory format of `ref` (no copy where it already is)."""
    return t.to(dtype or ref.dtype).contiguous(memory_format=_layout(ref))


def _cpu_nchw(x: torch.Tensor) -> bool:
    """Whether the strided CPU kernels apply: a tensor on the CPU that is not channels_last."""
    return x.device.type == 'cpu' and _layout(x) == torch.contiguous_format


def _even(height: int, width: int) -> bool:
    return height % 2 == 0 and width % 2 == 0


def _triton_compiles_bf16(capability: Tuple[int, int], triton_version: str) -> bool:
    """Whether Triton compiles bfloat16 kernels for an NVIDIA GPU of compute `capability` (7.0 or more: older
    GPUs are not served at all): always from 8.0 (Ampere) on; below it (V100, T4) from Triton 3.3 on. Triton
    3.0-3.2 (torch 2.4-2.6's) convert to bfloat16 with `cvt.bf16.f32`, an sm_80 instruction that ptxas refuses
    for sm_70 and sm_75 (tests/triton_compile.py checks this against the installed Triton's compiler)."""
    if capability >= (8, 0):
        return True
    release = re.match(r'(\d+)\.(\d+)', triton_version)
    return release is not None and tuple(int(v) for v in release.groups()) >= (3, 3)


@functools.lru_cache(maxsize=None)
def _triton_kernels(device: torch.device):
    """(`resample_triton`, the CUDA kernels, imported on first use; whether they serve bfloat16 tensors) if
    Triton serves `device`, else (None, False): Triton is missing, or the GPU predates what Triton compiles
    for (NVIDIA compute capability 7.0)."""
    capability = None if torch.version.hip is not None else torch.cuda.get_device_capability(device)
    if capability is not None and capability < (7, 0):
        return None, False
    try:
        import triton

        from . import resample_triton
    except ImportError:
        return None, False
    return resample_triton, capability is None or _triton_compiles_bf16(capability, triton.__version__)


_GENERIC: Dict[str, Callable] = {}  # op name -> the function below: its kernel on every device but CUDA


def _check(name: str, args: Sequence) -> None:
    """Refuse arguments that op `name` does not define a result for (the Triton kernels would read past a tensor
    that is too small, the CPU kernels give a wrong shape for a 3-D tensor): 4-D (N, C, H, W) tensors, a mode of
    `up2x_add`, low = (N, C, ceil(H / 2), ceil(W / 2)) for an output or gradient of (N, C, H, W)."""
    first = args[0]
    if first.dim() != 4:
        raise ValueError(f'timm_elastic::{name} takes 4-D (N, C, H, W) tensors, got one of size {tuple(first.shape)}')
    if name == 'avg_down2x':
        return
    if name == 'avg_down2x_backward':  # (grad, height, width): grad of the pooled size of (height, width)
        full, low = (*first.shape[:2], *args[1:]), tuple(first.shape)
    else:
        mode = args[2] if name == 'up2x_add' else args[1]
        if mode not in _STRIDED_UP:
            raise ValueError(f"timm_elastic::{name}: mode must be 'bilinear' or 'nearest', got {mode!r}")
        if name == 'up2x_add':  # (low, out, mode)
            if args[1].dim() != 4:
                raise ValueError(f'timm_elastic::{name} takes 4-D (N, C, H, W) tensors, got out of size '
                                 f'{tuple(args[1].shape)}')
            full, low = tuple(args[1].shape), tuple(first.shape)
        else:  # up2x_backward (grad, mode, height, width): grad of the output's size
            full, low = tuple(first.shape), (*first.shape[:2], *args[2:])
    n, c, h, w = full
    if low != (n, c, (h + 1) // 2, (w + 1) // 2):
        raise ValueError(f'timm_elastic::{name}: the low-resolution size must be (N, C, ceil(H / 2), ceil(W / 2)) = '
                         f'{(n, c, (h + 1) // 2, (w + 1) // 2)} for the full size {full}, got {low}')


def _kernel(name: str, args: Sequence) -> Callable:
    """The kernel of op `name` for its arguments `args` (the first a tensor), once `_check` has accepted them: the
    Triton kernel of that name on CUDA where Triton serves the GPU and the arguments' dtypes, else the op's own
    function."""
    _check(name, args)
    device = args[0].device
    if device.type == 'cuda':
        kernels, bf16 = _triton_kernels(device)
        if kernels is not None and (bf16 or not any(torch.is_tensor(a) and a.dtype == torch.bfloat16 for a in args)):
            return getattr(kernels, name)
    return _GENERIC[name]


def _op(fn):
    """`fn` as the custom op `timm_elastic::<its name>`, whose kernel on every device is `_kernel`'s: `fn`, but
    on CUDA the Triton kernel of the same name (`fn` too where Triton does not serve the GPU or the dtype)."""
    name = fn.__name__
    _GENERIC[name] = fn
    op = torch.library.custom_op(f'timm_elastic::{name}', fn, mutates_args=())
    op.register_kernel(None, lambda *args: _kernel(name, args)(*args))  # the dispatcher passes them by position
    return op


@_op
def avg_down2x(x: torch.Tensor) -> torch.Tensor:
    """D: 2x2 average pooling, stride 2, of (N, C, H, W) -> (N, C, ceil(H / 2), ceil(W / 2)); an odd size
    rounds up, the window over the border averaging its valid entries. A new tensor in the dtype and
    memory format of `x`."""
    if _cpu_nchw(x) and _even(*x.shape[-2:]):
        return _sum_down2x(x.contiguous()).mul_(0.25)
    return _as(_aten_down(x), x)


@avg_down2x.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    return _like(x, (n, c, (h + 1) // 2, (w + 1) // 2))


@_op
def avg_down2x_backward(grad: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The gradient of `avg_down2x(x)` for `x` of size (height, width): the transposed pooling."""
    if _cpu_nchw(grad) and _even(height, width):
        return _repeat_up2x(grad.contiguous() * 0.25)
    return _as(_aten_down_backward(grad, height, width), grad)


@avg_down2x_backward.register_fake
def _(grad: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return _like(grad, (*grad.shape[:2], height, width))


@_op
def up2x_add(low: torch.Tensor, out: torch.Tensor, mode: str) -> torch.Tensor:
    """The branch sum `out + U(low)`: U 2x upsampling of `low` (N, C, h, w), 'bilinear'
    (align_corners=False) or 'nearest', cropped to the size (H, W) of `out`, h = ceil(H / 2) and
    w = ceil(W / 2). A new tensor in the memory format of `out`, of the dtype of `out + low`."""
    up = _STRIDED_UP[mode][0](low.contiguous()) if _cpu_nchw(low) else _aten_up(low, mode)
    dtype = torch.result_type(out, low)
    # the sum goes into U's new output where it can: one full-size tensor, not two
    if up.shape == out.shape and up.dtype == dtype and _layout(up) == _layout(out):
        return up.add_(out)
    return _as(out + up[:, :, :out.shape[-2], :out.shape[-1]], out, dtype)


@up2x_add.register_fake
def _(low: torch.Tensor, out: torch.Tensor, mode: str) -> torch.Tensor:
    return _like(out, out.shape, torch.result_type(out, low))


@_op
def up2x_backward(grad: torch.Tensor, mode: str, height: int, width: int) -> torch.Tensor:
    """The gradient of `low` (of size (height, width)) in `up2x_add(low, out, mode)` from the gradient
    of the sum, of the size (H, W) of `out`: U's transpose. (The gradient of `out` is `grad` itself.)"""
    full = grad
    if grad.shape[-2:] != (2 * height, 2 * width):  # cropped: what was cut off had no gradient
        full = F.pad(grad, (0, 2 * width - grad.shape[-1], 0, 2 * height - grad.shape[-2]))
    if _cpu_nchw(grad):
        return _STRIDED_UP[mode][1](full.contiguous())
    return _as(_aten_up_backward(full, mode, height, width), grad)


@up2x_backward.register_fake
def _(grad: torch.Tensor, mode: str, height: int, width: int) -> torch.Tensor:
    return _like(grad, (*grad.shape[:2], height, width))


# autograd saves the input's size and dtype only: saving the input itself would keep it alive where
# nothing else needs it. `backward` is the gradient's op, or its kernel (the direct path below).
def _down_context(ctx, inputs, output) -> None:
    ctx.size = inputs[0].shape[-2:]


def _down_grad(ctx, grad: torch.Tensor, backward: Callable = None):
    return (backward or avg_down2x_backward)(grad, *ctx.size)


def _up_context(ctx, inputs, output) -> None:
    low, out, ctx.mode = inputs
    ctx.size, ctx.low_dtype, ctx.out_dtype = low.shape[-2:], low.dtype, out.dtype


def _up_grad(ctx, grad: torch.Tensor, backward: Callable = None):
    return (backward or up2x_backward)(grad, ctx.mode, *ctx.size).to(ctx.low_dtype), grad.to(ctx.out_dtype), None


avg_down2x.register_autograd(_down_grad, setup_context=_down_context)
up2x_add.register_autograd(_up_grad, setup_context=_up_context)


# The gradients are linear in the incoming gradient (each is its op's transpose), so their own gradients are the
# forward ops: the ops are differentiable to any order, as PyTorch's pooling and upsampling are (timm's second-order
# optimiser AdaHessian, gradient penalties, Hessian-vector products, torch.autograd.functional.hessian).
def _down_grad_grad(ctx, gg: torch.Tensor):
    return avg_down2x(gg), None, None


def _up_grad_context(ctx, inputs, output) -> None:
    grad, ctx.mode = inputs[:2]
    ctx.size, ctx.dtype = grad.shape, grad.dtype


def _up_grad_grad(ctx, gg: torch.Tensor):
    # U's output cropped to the incoming gradient's size: the sum with zeros, in the op that computes it
    return up2x_add(gg, _like(gg, ctx.size, ctx.dtype).zero_(), ctx.mode), None, None, None


avg_down2x_backward.register_autograd(_down_grad_grad)
up2x_backward.register_autograd(_up_grad_grad, setup_context=_up_grad_context)


# ---- the direct path: the same kernels and gradients, called without the custom ops' dispatch ----
# A custom op called through autograd runs Python layers of torch.library (dispatch, the generated autograd
# function, argument handling) around its kernel. On a GPU that is host time that a step of many small
# layers waits for: on an H200 (2026-11-27, `resample_ops.py --device cuda --timer host --batch-size 1`),
# an Elastic block's D and U + sum, forward and backward, took the host 1.0 ms against 0.19 ms for
# PyTorch's ops. Run eagerly on plain tensors, the modules call the kernels directly (on this 2-core CPU
# that cut the block's host time on a tiny map from 99 to 66 us; PyTorch's ops: 23 us).

def _route(*tensors: torch.Tensor) -> str:
    """What the modules run on `tensors`: 'direct' (the ops' kernels and gradients, called directly), 'op' (the
    custom ops) or 'aten' (PyTorch's ops).
    - 'aten' in `torch.jit.trace`, which records what runs (a traced model then needs nothing of this package);
      in `torch.compile` without autograd, where inductor fuses them with the sum and the block's norm; under
      functorch's transforms (`torch.func.grad`, `hessian`, `vmap`, `jvp`): `grad` fails on a custom op with a
      registered gradient (pytorch/pytorch#168393), and `vmap` has no batching rule for one (it loops); in
      forward-mode AD (dual tensors), for which a custom op has no formula;
    - 'op' where anything else must see the ops: compiled training, export, fake tensors, dispatch modes, tensor
      subclasses;
    - 'direct' run eagerly on plain tensors."""
    if torch.jit.is_tracing():
        return 'aten'
    if torch.compiler.is_compiling():
        return 'op' if _needs_grad(*tensors) else 'aten'
    if torch._C._are_functorch_transforms_active() or _forward_ad._current_level >= 0:
        return 'aten'
    if torch._C._len_torch_dispatch_stack() or any(type(t) is not torch.Tensor for t in tensors):
        return 'op'
    return 'direct'


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _run(name: str, *args):
    """Op `name`'s kernel on `args` (the first a tensor), called directly; under the profiler in a range named
    as the op, so that its time reads as the op's."""
    kernel = _kernel(name, args)
    if torch.autograd._profiler_enabled():
        with torch.profiler.record_function(f'timm_elastic::{name}'):
            return kernel(*args)
    return kernel(*args)


def _grad_kernel(name: str) -> Optional[Callable]:
    """What a direct path's backward pass calls: the kernel of gradient op `name`, directly; but with
    `create_graph` (grad mode on in a backward pass), where the gradient is differentiated in turn, None: the
    op, whose gradient is registered."""
    return None if torch.is_grad_enabled() else functools.partial(_run, name)


class _DirectDown(torch.autograd.Function):
    """`avg_down2x` on the direct path."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        _down_context(ctx, (x,), None)
        return _run('avg_down2x', x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _down_grad(ctx, grad, _grad_kernel('avg_down2x_backward'))


class _DirectUpAdd(torch.autograd.Function):
    """`up2x_add` on the direct path."""

    @staticmethod
    def forward(ctx, low: torch.Tensor, out: torch.Tensor, mode: str) -> torch.Tensor:
        _up_context(ctx, (low, out, mode), None)
        return _run('up2x_add', low, out, mode)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _up_grad(ctx, grad, _grad_kernel('up2x_backward'))


def _merge(up: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """`out + up`, `up` cropped to `out`'s size. Run eagerly, the sum is written into `up` where the
    sizes agree: `up` must be a new tensor that no autograd node saved (true of FilterUp's).
    Compiled, it stays out of place, so that inductor computes U inside the sum's kernel; traced too."""
    if up.shape == out.shape and up.dtype == out.dtype and not torch.compiler.is_compiling() \
            and not torch.jit.is_tracing():  # a trace records one branch: the crop serves every size
        return up.add_(out)
    return out + up[:, :, :out.shape[-2], :out.shape[-1]]


# ---- the modules of Table 6 ----

# opaque to torch.fx (a leaf module): an FX graph then runs the aten ops once scripted, as TorchScript does
@register_notrace_module
class AvgDown(nn.Module):
    """2x2 average pooling, stride 2 ('w/ AP'). An odd size rounds up (`ceil_mode`): the window that
    hangs over the border averages its valid entries, which is exactly the original's replicate
    padding to an even size followed by pooling, without the padded copy."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return _aten_down(x)
        return self._resample(x)

    @torch.jit.unused
    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        route = _route(x)
        if route == 'direct':
            return _DirectDown.apply(x) if _needs_grad(x) else _run('avg_down2x', x)
        return avg_down2x(x) if route == 'op' else _aten_down(x)


@register_notrace_module
class InterpolateUp(nn.Module):
    """`out + U(low)`, U 2x upsampling, 'bilinear' (align_corners=False, the original's and the
    paper's) or 'nearest'."""

    def __init__(self, mode: str = 'bilinear'):
        super().__init__()
        if mode not in ('bilinear', 'nearest'):
            raise ValueError(f"InterpolateUp mode must be 'bilinear' or 'nearest', got {mode!r}")
        self.mode = mode

    def forward(self, low: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return _aten_up_add(low, out, self.mode)
        return self._up_add(low, out)

    @torch.jit.unused
    def _up_add(self, low: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        route = _route(low, out)
        if route == 'direct':
            if _needs_grad(low, out):
                return _DirectUpAdd.apply(low, out, self.mode)
            return _run('up2x_add', low, out, self.mode)
        return up2x_add(low, out, self.mode) if route == 'op' else _aten_up_add(low, out, self.mode)

    def extra_repr(self) -> str:
        return f'mode={self.mode!r}'


class FilterDown(nn.Module):
    """Trained 2x downsampling (Table 6, 'Trained Filter'): a depthwise 2x2 stride-2 filter,
    initialised to the 2x2 average so that training starts from the default mode."""

    def __init__(self, channels: int, device=None, dtype=None):
        super().__init__()
        # an int, not read from the weight's shape in forward: torch.fx traces that read as a Proxy, which
        # torch 2.4's `conv2d` does not take for `groups`
        self.channels = channels
        self.weight = nn.Parameter(torch.full((channels, 1, 2, 2), 0.25, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # replicate-pad odd sizes on the bottom / right, as the original implementation does
        x = F.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2), mode='replicate')
        return F.conv2d(x, self.weight, stride=2, groups=self.channels)


@register_notrace_module  # compares sizes in _merge
class FilterUp(nn.ConvTranspose2d):
    """`out + U(low)`, U trained 2x upsampling (Table 6, 'Trained Filter'): a depthwise 4x4 stride-2
    transposed filter, initialised to the bilinear kernel (exact bilinear away from the border)."""

    def __init__(self, channels: int, device=None, dtype=None):
        super().__init__(channels, channels, 4, stride=2, padding=1, groups=channels, bias=False,
                         device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        taps = torch.tensor([0.25, 0.75, 0.75, 0.25])
        with torch.no_grad():
            self.weight.copy_(torch.outer(taps, taps).expand_as(self.weight))

    def forward(self, low: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        up = F.conv_transpose2d(low, self.weight, None, self.stride, self.padding, self.output_padding,
                                self.groups, self.dilation)
        return _merge(up, out)


class SmoothAvg(nn.Module):
    """Stride-1 2x2 average ('w/ AP' for the dilated rows of Table 6): the smoothing of the
    default mode's pooling without the resolution change; bottom / right replicate-padded."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.pad(x, (0, 1, 0, 1), mode='replicate'), 2, stride=1)


class Sum(nn.Module):
    """`out + low`: the dilated rows of Table 6 keep the low group at full resolution."""

    def forward(self, low: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return out + low


def make_resample(mode: str, in_chs: int, out_chs: int, device=None, dtype=None) -> Tuple[nn.Module, nn.Module]:
    """(down, up) of one `elastic_resample` mode; the trained filters get `in_chs` / `out_chs` channels."""
    dd = {'device': device, 'dtype': dtype}
    if mode in ('bilinear', 'nearest'):
        return AvgDown(), InterpolateUp(mode)
    if mode == 'filter':
        return FilterDown(in_chs, **dd), FilterUp(out_chs, **dd)
    if mode == 'dilated':
        return nn.Identity(), Sum()
    if mode == 'dilated_avg':
        return SmoothAvg(), Sum()
    raise ValueError(f'unknown elastic_resample {mode!r} (check_elastic_args lists the modes)')
