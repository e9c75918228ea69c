"""The Elastic mechanism (Wang et al., CVPR 2019, Sec. 3.2, Eq. 3, Fig. 3).

    F(x) = sigma( sum_i U_{r_i}( T_i( D_{r_i}(x) ) ) )

A block's parallel paths T_i are split in two groups: the high-resolution group sees x as it is,
the low-resolution group sees x downsampled 2x (D) and its output is upsampled 2x (U) back to the
size of x. The two outputs are summed; sigma (the block's norm / activation / residual) is left to
the block that owns the paths. Everything here is family-agnostic: a family supplies `make_path`,
a function that builds its T_i for a given number of paths and dilation.

Resampling follows the paper's Table 6. The default, bilinear with average pooling, reproduces the
original implementation exactly, odd feature sizes included: there the pooled input is
replicate-padded on the bottom / right to an even size, and the upsampled output is cropped back.
"""
import math
from numbers import Real
from typing import Any, Callable, Dict, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['Elastic', 'RESAMPLE_MODES', 'split_paths', 'check_elastic_args', 'pop_elastic_args']

# elastic_resample value -> the row of Table 6 it reproduces
RESAMPLE_MODES: Dict[str, str] = {
    'bilinear': 'Bilinear w/ AP',  # the paper's choice and the default
    'nearest': 'Nearest w/ AP',
    'filter': 'Trained Filter',
    'dilated': 'Trained Dilated Filter',
    'dilated_avg': 'Trained Dilated Filter w/ AP',
}


def check_elastic_args(elastic_ratio: float = 0.5, elastic_resample: str = 'bilinear') -> None:
    """Reject Elastic options that cannot build a model, naming the argument and what is allowed."""
    if isinstance(elastic_ratio, bool) or not isinstance(elastic_ratio, Real) \
            or not 0. < float(elastic_ratio) < 1.:
        raise ValueError(f'elastic_ratio must be a number in (0, 1), got {elastic_ratio!r}')
    if elastic_resample not in RESAMPLE_MODES:
        allowed = ', '.join(repr(m) for m in RESAMPLE_MODES)
        raise ValueError(f'elastic_resample must be one of {allowed}, got {elastic_resample!r}')


def pop_elastic_args(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Take the Elastic options (`elastic_ratio`, `elastic_resample`) out of a model's kwargs,
    checked, so that a bad value fails before anything is built; the rest stay in `kwargs`."""
    args = {k: kwargs.pop(k) for k in ('elastic_ratio', 'elastic_resample') if k in kwargs}
    check_elastic_args(**args)
    return args


def split_paths(paths: int, elastic_ratio: float = 0.5) -> Tuple[int, int]:
    """Split `paths` parallel paths into (high-resolution, low-resolution) counts.

    `elastic_ratio` is the fraction at low resolution (Table 7: 0.25, 0.5, 0.75); both groups must
    keep at least one path.
    """
    check_elastic_args(elastic_ratio)
    low = int(math.floor(paths * elastic_ratio + 0.5))
    if not 0 < low < paths:
        raise ValueError(
            f'elastic_ratio={elastic_ratio} splits a block of {paths} paths into {paths - low} high- and '
            f'{low} low-resolution paths; both need at least one, so use a ratio in '
            f'[{0.5 / paths:.3g}, {1 - 0.5 / paths:.3g})')
    return paths - low, low


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


class FilterUp(nn.ConvTranspose2d):
    """Trained 2x upsampling (Table 6, 'Trained Filter'): a depthwise 4x4 stride-2 transposed
    filter, initialised to the bilinear kernel (exact bilinear away from the border)."""

    def __init__(self, channels: int, device=None, dtype=None):
        super().__init__(channels, channels, 4, stride=2, padding=1, groups=channels, bias=False,
                         device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        taps = torch.tensor([0.25, 0.75, 0.75, 0.25])
        with torch.no_grad():
            self.weight.copy_(torch.outer(taps, taps).expand_as(self.weight))


class SmoothAvg(nn.Module):
    """Stride-1 2x2 average ('w/ AP' for the dilated rows of Table 6): the smoothing of the
    default mode's pooling without the resolution change; bottom / right replicate-padded."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.pad(x, (0, 1, 0, 1), mode='replicate'), 2, stride=1)


def _make_down(mode: str, channels: int, **dd) -> nn.Module:
    if mode in ('bilinear', 'nearest'):
        # ceil_mode windows that hang over an odd border average only the valid entries, which is
        # exactly the original's replicate-pad-then-pool, without the padded copy
        return nn.AvgPool2d(2, stride=2, ceil_mode=True)
    if mode == 'filter':
        return FilterDown(channels, **dd)
    if mode == 'dilated_avg':
        return SmoothAvg()
    return nn.Identity()


def _make_up(mode: str, channels: int, **dd) -> nn.Module:
    if mode == 'bilinear':
        return nn.Upsample(scale_factor=2., mode='bilinear', align_corners=False)
    if mode == 'nearest':
        return nn.Upsample(scale_factor=2., mode='nearest')
    if mode == 'filter':
        return FilterUp(channels, **dd)
    return nn.Identity()


class Elastic(nn.Module):
    """Two groups of parallel paths at two resolutions, summed (Eq. 3 with q = 2, r = 1 and 2).

    Args:
        make_path: `make_path(num_paths, dilation) -> nn.Module`, one group of the block's paths
            (a T_i). It maps (N, in_chs, H, W) to (N, out_chs, H, W) without changing the size.
        paths: number of parallel paths of the whole block (ResNeXt cardinality, DenseNet
            bottleneck width).
        in_chs, out_chs: channels entering and leaving the paths (for the trained resamplers).
        elastic_ratio: fraction of paths at low resolution, in (0, 1).
        elastic_resample: one of RESAMPLE_MODES (Table 6).
        dilation: dilation of the block's 3x3 convolutions at full resolution.

    Shapes: (N, in_chs, H, W) -> (N, out_chs, H, W) for any H, W >= 1.
    """

    def __init__(
            self,
            make_path: Callable[[int, int], nn.Module],
            paths: int,
            in_chs: int,
            out_chs: int,
            elastic_ratio: float = 0.5,
            elastic_resample: str = 'bilinear',
            dilation: int = 1,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        check_elastic_args(elastic_ratio, elastic_resample)
        high_paths, low_paths = split_paths(paths, elastic_ratio)
        if elastic_resample.startswith('dilated'):
            # the low group stays at full resolution and widens its receptive field by dilation
            low_dilation = 2 * dilation
        else:
            # a dilation d at full resolution covers the same input span as d / 2 at half resolution
            low_dilation = max(1, dilation // 2)
        self.high = make_path(high_paths, dilation)
        self.down = _make_down(elastic_resample, in_chs, **dd)
        self.low = make_path(low_paths, low_dilation)
        self.up = _make_up(elastic_resample, out_chs, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.high(x)
        low = self.up(self.low(self.down(x)))
        # an odd size was padded up before pooling: crop back (a no-op view on even sizes)
        return out + low[:, :, :out.shape[-2], :out.shape[-1]]
