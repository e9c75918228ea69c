"""The Elastic mechanism (Wang et al., CVPR 2019, Sec. 3.2, Eq. 3, Fig. 3).

    F(x) = sigma( sum_i U_{r_i}( T_i( D_{r_i}(x) ) ) )

A block's parallel paths T_i are split in two groups: the high-resolution group sees x as it is,
the low-resolution group sees x downsampled 2x (D) and its output is upsampled 2x (U) back to the
size of x. The two outputs are summed; sigma (the block's norm / activation / residual) is left to
the block that owns the paths. Everything here is family-agnostic: a family supplies `make_path`,
a function that builds its T_i for a given number of paths and dilation.

Resampling follows the paper's Table 6 (`resample.py`: each mode's D and U, and the fast kernels of
the default). The default, bilinear with average pooling, reproduces the original implementation
exactly, odd feature sizes included: there the pooled input is replicate-padded on the bottom / right
to an even size, and the upsampled output is cropped back.
"""
import math
from numbers import Real
from typing import Any, Callable, Dict, Tuple

import torch
import torch.nn as nn

from .resample import RESAMPLE_MODES, make_resample

__all__ = ['Elastic', 'RESAMPLE_MODES', 'split_paths', 'check_elastic_args', 'pop_elastic_args']


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
            f'[{0.5 / paths!r}, {1 - 0.5 / paths!r})')  # unrounded: a rounded bound could lie on the wrong side
    return paths - low, low


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
        self.resample_mode = elastic_resample
        down, up = make_resample(elastic_resample, in_chs, out_chs, **dd)
        self.high = make_path(high_paths, dilation)
        self.down = down
        self.low = make_path(low_paths, self._low_dilation(dilation))
        self.up = up

    def _low_dilation(self, dilation: int) -> int:
        if self.resample_mode.startswith('dilated'):
            # the low group stays at full resolution and widens its receptive field by dilation
            return 2 * dilation
        # a block dilated by d stands for one at a d times coarser stride (the algorithme a trous); there its low
        # group's 3x3 taps are 2 of the block's pixels apart (one pixel of the pooled map), so here, on the pooled
        # map of the finer one, they are d apart: the same input span as the stride model's low group, and as the
        # dilated rows' 2d at full resolution
        return dilation

    def dilate(self, dilation: int) -> None:
        """Set the dilation of the paths' 3x3 (or larger) convolutions in place, as if the block had been
        built with `dilation` (a family's `output_stride`, after construction); the weights stay."""
        for group, d in ((self.high, dilation), (self.low, self._low_dilation(dilation))):
            for m in group.modules():
                if isinstance(m, nn.Conv2d) and m.kernel_size[0] > 1:
                    m.dilation = (d, d)
                    m.padding = (d * (m.kernel_size[0] // 2), d * (m.kernel_size[1] // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.high(x)
        # up(low, out) = out + U(low), cropped to out's size
        return self.up(self.low(self.down(x)), out)
