"""D and U of Eq. 3: the resampling around an Elastic block's low-resolution paths (Table 6).

Every `elastic_resample` mode is a pair of modules. `down(x)` is the low-resolution group's input;
`up(low, out)` returns `out + U(low)`, with U's output cropped to the size of `out` (an odd size was
rounded up by `down`). Where U makes a new tensor, the sum is written into it, so a block allocates
one full-size tensor for its output, not two.

Speed. The default pair, 2x2 average pooling and bilinear 2x upsampling, runs in every Elastic block
on the largest tensors of the network, so both run as one op, `timm_elastic::resample2x`, with its
transpose as its gradient:
- on a contiguous (NCHW) tensor on the CPU, as strided elementwise kernels written here (the 2-tap
  filters of bilinear upsampling as `lerp`, rows first so that the interleaving store along W runs on
  half the data). PyTorch's own kernels are slow there: on a (8, 256, 56, 56) tensor with 2 threads,
  avg_pool2d takes 6 ms in NCHW against 0.5 ms in channels_last, bilinear upsampling 13 ms against
  1 ms, their backward passes 7 and 12 ms. Same values up to fp32 rounding (the order of the sums);
- elsewhere (channels_last, CUDA, odd sizes when pooling), as PyTorch's aten kernels.
When training under torch.compile, the custom op is called as it is: traced through instead,
inductor turns bilinear upsampling's gradient into a scatter-add, which made a compiled
ResNeXt50+Elastic training step 25% slower on the CPU. Compiled without autograd, the aten ops run,
which inductor fuses with the sum. TorchScript and `torch.jit.trace` run the aten ops too, so that
scripted and traced models do not need this package.
"""
from typing import Callable, Dict, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import register_notrace_module

__all__ = ['RESAMPLE_MODES', 'make_resample', 'resample2x', 'AvgDown', 'InterpolateUp', 'FilterDown', 'FilterUp',
           'SmoothAvg', 'Sum']

# elastic_resample value -> the row of Table 6 it reproduces
RESAMPLE_MODES: Dict[str, str] = {
    'bilinear': 'Bilinear w/ AP',  # the paper's choice and the default
    'nearest': 'Nearest w/ AP',
    'filter': 'Trained Filter',
    'dilated': 'Trained Dilated Filter',
    'dilated_avg': 'Trained Dilated Filter w/ AP',
}


# ---- strided kernels for contiguous NCHW tensors on the CPU (no autograd: resample2x pairs them) ----

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


# kind -> (forward, its transpose), the strided kernels for contiguous NCHW tensors on the CPU
_STRIDED: Dict[str, Tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]] = {
    'avg_down': (lambda x: _sum_down2x(x).mul_(0.25), lambda g: _repeat_up2x(g * 0.25)),
    'nearest_up': (_repeat_up2x, _sum_down2x),
    'bilinear_up': (_bilinear_up2x, _bilinear_up2x_adjoint),
}


def _aten_forward(x: torch.Tensor, kind: str) -> torch.Tensor:
    """`resample2x` as PyTorch's ops (also what TorchScript runs: scriptable)."""
    if kind == 'avg_down':
        return F.avg_pool2d(x, 2, stride=2, ceil_mode=True)
    if kind == 'nearest_up':
        return F.interpolate(x, scale_factor=2., mode='nearest')
    return F.interpolate(x, scale_factor=2., mode='bilinear', align_corners=False)


def _aten_backward(grad: torch.Tensor, kind: str, height: int, width: int) -> torch.Tensor:
    n, c = grad.shape[:2]
    if kind == 'bilinear_up':
        return torch.ops.aten.upsample_bilinear2d_backward(grad, grad.shape[-2:], [n, c, height, width], False, 2., 2.)
    if kind == 'nearest_up':
        return torch.ops.aten.upsample_nearest2d_backward(grad, grad.shape[-2:], [n, c, height, width], 2., 2.)
    # avg_down: each input pixel gets its window's gradient over the window's size, 4 but at an odd
    # border, where ceil_mode's window holds 2 valid entries (1 in the corner)
    grad = grad * 0.25
    if height % 2:
        grad[:, :, -1].mul_(2.)
    if width % 2:
        grad[..., -1].mul_(2.)
    return F.interpolate(grad, scale_factor=2., mode='nearest')[:, :, :height, :width]


def _layout(x: torch.Tensor) -> torch.memory_format:
    """The memory format of what is computed from `x` (made explicit, so the fake kernels can say it)."""
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


def _strided(x: torch.Tensor, kind: str, height: int, width: int) -> bool:
    """Whether the strided kernels apply: a tensor on the CPU that is not channels_last (it is made
    contiguous); for pooling, of an even-sized input."""
    return x.device.type == 'cpu' and _layout(x) == torch.contiguous_format \
        and (kind != 'avg_down' or (height % 2 == 0 and width % 2 == 0))


@torch.library.custom_op('timm_elastic::resample2x', mutates_args=())
def resample2x(x: torch.Tensor, kind: str) -> torch.Tensor:
    """2x resampling of (N, C, H, W): `kind` 'avg_down' (2x2 average, stride 2, odd sizes rounded up)
    -> (N, C, ceil(H / 2), ceil(W / 2)); 'bilinear_up' (align_corners=False) or 'nearest_up' ->
    (N, C, 2H, 2W). A new tensor in the memory format of `x`."""
    if _strided(x, kind, *x.shape[-2:]):
        return _STRIDED[kind][0](x.contiguous())
    return _aten_forward(x, kind).contiguous(memory_format=_layout(x))


@resample2x.register_fake
def _(x: torch.Tensor, kind: str) -> torch.Tensor:
    n, c, h, w = x.shape
    size = (n, c, (h + 1) // 2, (w + 1) // 2) if kind == 'avg_down' else (n, c, 2 * h, 2 * w)
    return x.new_empty(size).contiguous(memory_format=_layout(x))


@torch.library.custom_op('timm_elastic::resample2x_backward', mutates_args=())
def resample2x_backward(grad: torch.Tensor, kind: str, height: int, width: int) -> torch.Tensor:
    """The gradient of `resample2x(x, kind)` with respect to `x` of size (height, width): the
    transposed operation. In the memory format of `grad`."""
    if _strided(grad, kind, height, width):
        return _STRIDED[kind][1](grad.contiguous())
    return _aten_backward(grad, kind, height, width).contiguous(memory_format=_layout(grad))


@resample2x_backward.register_fake
def _(grad: torch.Tensor, kind: str, height: int, width: int) -> torch.Tensor:
    return grad.new_empty(*grad.shape[:2], height, width).contiguous(memory_format=_layout(grad))


def _setup_context(ctx, inputs, output) -> None:
    # only the input's size: saving the input itself would keep it alive where nothing else needs it
    x, ctx.kind = inputs
    ctx.size = x.shape[-2:]


def _backward(ctx, grad: torch.Tensor):
    return resample2x_backward(grad, ctx.kind, *ctx.size), None


resample2x.register_autograd(_backward, setup_context=_setup_context)


def _resample(x: torch.Tensor, kind: str) -> torch.Tensor:
    """`resample2x`, or the aten ops where they serve better: in `torch.jit.trace`, which records what
    runs (a traced model then needs nothing of this package), and in `torch.compile` without autograd,
    where inductor fuses them with the sum and the block's norm."""
    no_grad = not (torch.is_grad_enabled() and x.requires_grad)
    if torch.jit.is_tracing() or (torch.compiler.is_compiling() and no_grad):
        return _aten_forward(x, kind)
    return resample2x(x, kind)


def _merge(up: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """`out + up`, `up` cropped to `out`'s size. Run eagerly, the sum is written into `up` where the
    sizes agree: `up` must be a new tensor that no autograd node saved (true of every U below).
    Compiled, it stays out of place, so that inductor computes U inside the sum's kernel."""
    if up.shape == out.shape and up.dtype == out.dtype and not torch.compiler.is_compiling():
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
            return _aten_forward(x, 'avg_down')
        return self._resample(x)

    @torch.jit.unused
    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        return _resample(x, 'avg_down')


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
            return _merge(_aten_forward(low, self.mode + '_up'), out)
        return _merge(self._resample(low), out)

    @torch.jit.unused
    def _resample(self, low: torch.Tensor) -> torch.Tensor:
        return _resample(low, f'{self.mode}_up')

    def extra_repr(self) -> str:
        return f'mode={self.mode!r}'


class FilterDown(nn.Module):
    """Trained 2x downsampling (Table 6, 'Trained Filter'): a depthwise 2x2 stride-2 filter,
    initialised to the 2x2 average so that training starts from the default mode."""

    def __init__(self, channels: int, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels, 1, 2, 2), 0.25, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # replicate-pad odd sizes on the bottom / right, as the original implementation does
        x = F.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2), mode='replicate')
        return F.conv2d(x, self.weight, stride=2, groups=self.weight.shape[0])


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
