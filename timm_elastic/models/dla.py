"""DLA-X with Elastic bottlenecks (paper Sec. 3.3, Appendix B Table 9), and the faithful DLA-X
baselines of the paper's rows marked `*`.

Built on timm's `DLA`, `DlaTree`, `DlaRoot` and `DlaBottleneck`. Which blocks are Elastic (Sec. 4,
"Implementation details"; the original code's `stride == 1 and planes < 1024`): every stride-1
bottleneck below the last level. Stride-2 blocks and level 5 (7x7 at 224, "high level blocks
operating at resolution 7") stay timm's plain `DlaBottleneck`.

| model               | levels             | paths (Table 9) | root     | Elastic            |
|---------------------|--------------------|-----------------|----------|--------------------|
| dla_x60             | 1, 1, 1, 2, 3, 1   | Split32         | plain    | none (DLA-X60*)    |
| dla_x102            | 1, 1, 1, 3, 4, 1   | Split32         | residual | none (DLA-X102)    |
| dla_x60_elastic     | 1, 1, 1, 2, 3, 1   | Split32         | plain    | = sElastic         |
| dla_x102_selastic   | 1, 1, 1, 3, 4, 1   | Split32         | residual | sElastic (Table 8) |
| dla_x102_elastic    | 1, 1, 3, 3, 3, 1   | Split50         | residual | Elastic            |

Differences from timm's `dla60x` / `dla102x`, which compute the same function as the originals at
multiples of 32 (so the baselines are registered here, not borrowed):
- any input size from 32 up: a tree's stride-2 max pool rounds up (`ceil_mode`), as its stride-2
  convolution does, so shortcut and block output always agree; at multiples of 32 nothing changes.
  timm's and the original DLA raise a size mismatch at, e.g., 240x240;
- `head_window=7` reproduces the original head, a fixed 7x7 average pool (at 256x256 it averages the
  top-left 7x7 of the 8x8 map) followed by a global average, which is what the paper does for its
  larger test sizes ("change the last average pooling layer accordingly", Sec. 4.2); a map smaller than
  7x7 (inputs below 193x193, where the original fails) is averaged whole; the default is timm's global
  pool, identical at 224x224 and below;
- gradient checkpointing per level;
- `output_stride` 16 or 8 (timm's DLA has 32 only), for DeepLab-style heads: the last one or two levels
  work at the resolution before them (their stride-2 convolution and 2x2 max pools at every position,
  `layers.atrous`, their other 3x3 convolutions dilated by 2, then 4; an Elastic block's by
  `Elastic.dilate`), with the same weights. A level without Elastic blocks then computes, at the positions
  the stride model computes, exactly its values.

Parameter counts. The original `Tree` builds a 1x1 projection (conv + BN) in every tree whose in-
and out-channels differ, but uses it only in trees of one level: in deeper trees its output is
computed and discarded. timm omits those projections (see its `DlaTree`), and so do we: parameters
that never reach the output get no gradient, which timm's model tests reject. The released
checkpoints hold them; `ElasticDLA.unused_original_counts()` counts them, and conversion drops them.
"""
import math
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import register_model
from timm.models._manipulate import checkpoint_seq
from timm.models.dla import DLA, DlaBottleneck, DlaTree

from ..complexity import PaperRow
from ..layers import Elastic, pop_elastic_args
from ..layers.atrous import PoolEveryPosition, check_output_stride
from ._builder import build_elastic
from ._cfg import elastic_cfg, generate_release_cfgs
from .resnet import BottleneckPath

__all__ = ['ElasticDLA', 'ElasticDlaBottleneck', 'DlaBlocks', 'PAPER_ROWS']


class ElasticDlaBottleneck(nn.Module):
    """A stride-1 DLA-X bottleneck whose paths are split across two resolutions (Fig. 3 left).

    Same constructor and call as timm's `DlaBottleneck` (`forward(x, shortcut, children)`), plus
    `elastic_ratio` and `elastic_resample`. Paths sum, then bn3, residual, ReLU.
    """
    expansion = 2

    def __init__(
            self,
            inplanes: int,
            outplanes: int,
            stride: int = 1,
            dilation: int = 1,
            cardinality: int = 1,
            base_width: int = 64,
            elastic_ratio: float = 0.5,
            elastic_resample: str = 'bilinear',
            device=None,
            dtype=None,
    ):
        super().__init__()
        if stride != 1:
            raise ValueError(f'ElasticDlaBottleneck is for stride-1 blocks (paper Sec. 4), got stride={stride}')
        dd = {'device': device, 'dtype': dtype}
        # the width of timm's DlaBottleneck (= the original's planes * cardinality // 32 for DLA-X)
        mid_planes = int(math.floor(outplanes * (base_width / 64)) * cardinality) // self.expansion
        if mid_planes % cardinality:
            raise ValueError(
                f'a DLA-X bottleneck of width {mid_planes} cannot be split into {cardinality} equal paths '
                f'(outplanes={outplanes}, base_width={base_width})')

        def make_path(groups: int, path_dilation: int) -> nn.Module:
            return BottleneckPath(
                inplanes, outplanes, groups, mid_planes // cardinality, dilation=path_dilation, **dd)

        self.elastic = Elastic(
            make_path, cardinality, inplanes, outplanes, elastic_ratio=elastic_ratio,
            elastic_resample=elastic_resample, dilation=dilation, **dd)
        self.bn3 = nn.BatchNorm2d(outplanes, **dd)
        self.relu = nn.ReLU(inplace=True)
        self.stride = stride

    def forward(
            self,
            x: torch.Tensor,
            shortcut: Optional[torch.Tensor] = None,
            children: Optional[List[torch.Tensor]] = None,
    ) -> torch.Tensor:
        if shortcut is None:
            shortcut = x
        out = self.bn3(self.elastic(x))
        out += shortcut
        return self.relu(out)


class DlaBlocks:
    """The block factory of an Elastic DLA: `ElasticDlaBottleneck` on stride-1 blocks with fewer
    than `elastic_below` output channels (the levels before the last), timm's `DlaBottleneck`
    elsewhere. timm's `DlaTree` calls it like a block class.
    """
    expansion = DlaBottleneck.expansion

    def __init__(self, elastic_below: int, elastic_ratio: float = 0.5, elastic_resample: str = 'bilinear'):
        self.elastic_below = elastic_below
        self.elastic_args = dict(elastic_ratio=elastic_ratio, elastic_resample=elastic_resample)

    def __call__(self, inplanes: int, outplanes: int, stride: int = 1, **kwargs) -> nn.Module:
        if stride == 1 and outplanes < self.elastic_below:
            return ElasticDlaBottleneck(inplanes, outplanes, stride, **self.elastic_args, **kwargs)
        return DlaBottleneck(inplanes, outplanes, stride, **kwargs)

    def __repr__(self) -> str:
        return f'{type(self).__name__}(elastic_below={self.elastic_below}, {self.elastic_args})'


class ElasticDLA(DLA):
    """timm's `DLA` with DLA-X bottlenecks that are Elastic where the paper puts them.

    Args (beyond timm's `DLA`; `block` is chosen here):
        elastic: make the stride-1 bottlenecks of levels 2-4 Elastic; False builds the faithful
            baseline.
        elastic_ratio, elastic_resample: see `timm_elastic.layers.Elastic`.
        head_window: None for timm's global average pool; 7 for the original head (a fixed 7x7
            average pool, then a global average over its windows; a smaller map is one window).
        output_stride: 32 (default), 16 or 8 (see the module docstring).

    Input: (N, in_chans, H, W) with H, W >= 32; output (N, num_classes).
    """

    def __init__(
            self,
            levels: Tuple[int, ...],
            channels: Tuple[int, ...],
            output_stride: int = 32,
            elastic: bool = True,
            head_window: Optional[int] = None,
            **kwargs,
    ):
        check_output_stride(output_stride)
        if head_window is not None and (isinstance(head_window, bool) or not isinstance(head_window, int)
                                        or head_window < 1):
            raise ValueError(f'head_window must be None or a positive int, got {head_window!r}')
        elastic_args = pop_elastic_args(kwargs)
        if elastic_args and not elastic:
            raise TypeError(f'{", ".join(elastic_args)} given to a DLA without Elastic blocks (elastic=False)')
        block = DlaBlocks(channels[-1] if elastic else 0, **elastic_args)
        super().__init__(levels, channels, output_stride=32, block=block, **kwargs)
        for m in self.modules():
            if isinstance(m, DlaTree) and isinstance(m.downsample, nn.MaxPool2d):
                # round up like the stride-2 3x3 convolution beside it, so odd sizes line up
                m.downsample.ceil_mode = True
        dilated = {32: 0, 16: 1, 8: 2}[output_stride]
        for k in range(6 - dilated, 6):
            self._dilate(k, 2 ** (k - 5 + dilated))
        self.head_window = head_window
        self.grad_checkpointing = False

    def _dilate(self, k: int, dilation: int) -> None:
        """Level k at the resolution of the level before (the algorithme a trous): its stride-2 3x3
        convolution and 2x2 max pool work at every position, its other 3x3 convolutions dilate by
        `dilation` (the Elastic ones by `Elastic.dilate`'s rule), the feature reductions stop growing."""
        before = dilation // 2  # the previous level's dilation: the strided convolution's own
        for m in getattr(self, f'level{k}').modules():
            if isinstance(m, DlaTree) and isinstance(m.downsample, nn.MaxPool2d):
                m.downsample = PoolEveryPosition('max', before)
            elif isinstance(m, DlaBottleneck):
                d = before if m.conv2.stride[0] > 1 else dilation
                m.conv2.stride, m.conv2.dilation, m.conv2.padding = (1, 1), (d, d), (d, d)
                m.stride = 1
            elif isinstance(m, Elastic):
                m.dilate(dilation)
        limit = self.feature_info[k - 1]['reduction']
        for info in self.feature_info[k:]:
            info['reduction'] = limit

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def unused_original_counts(self, img_size: int = 224) -> Tuple[int, float]:
        """(parameters, GMACs at img_size x img_size) of the projections that the original
        implementation builds and runs but never uses: one per tree deeper than one level whose in-
        and out-channels differ (see the module docstring). The original's counts are ours plus these.
        """
        params, macs = 0, 0
        for k in range(2, 6):
            side = -(-img_size // 2 ** k)  # each stride-2 step rounds up
            for m in getattr(self, f'level{k}').modules():
                if not isinstance(m, DlaTree) or m.root is not None:
                    continue  # only trees of more than one level
                leaf = m.tree1
                while leaf.root is None:
                    leaf = leaf.tree1
                if isinstance(leaf.project, nn.Sequential):  # the tree's in- and out-channels differ
                    conv, bn = leaf.project
                    params += conv.weight.numel() + bn.weight.numel() + bn.bias.numel()
                    macs += conv.weight.numel() * side * side
        return params, macs / 1e9

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.base_layer(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq([self.level0, self.level1, self.level2, self.level3, self.level4, self.level5], x)
        x = self.level0(x)
        x = self.level1(x)
        x = self.level2(x)
        x = self.level3(x)
        x = self.level4(x)
        return self.level5(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        window = self.head_window
        if window is not None and not self.global_pool.is_identity():  # global_pool='' keeps the map, as timm's
            # a map smaller than the window (inputs below 193x193) is averaged whole; the original fails there
            x = F.avg_pool2d(x, (min(window, x.shape[-2]), min(window, x.shape[-1])))
        x = self.global_pool(x)
        x = self.head_drop(x)
        if pre_logits:
            return self.flatten(x)
        return self.flatten(self.fc(x))


def _create_dla_elastic(variant: str, pretrained: bool = False, **kwargs) -> ElasticDLA:
    return build_elastic(ElasticDLA, variant, pretrained, feature_cfg=dict(out_indices=(1, 2, 3, 4, 5)), **kwargs)


def _cfg(**kwargs) -> Dict[str, Any]:
    return elastic_cfg(first_conv='base_layer.0', classifier='fc', **kwargs)


_BASELINE_NOTE = (
    'Faithful baseline of the original release; same function as timm\'s {timm} at multiples of 32, '
    'registered for any input size >= 32 (ceil-mode tree pooling), the original fixed-window head '
    '(head_window=7) and grad checkpointing; drops the original\'s unused projections')

default_cfgs = generate_release_cfgs({
    'dla_x60.in1k': _cfg(description='DLA-X60* (paper Table 2). ' + _BASELINE_NOTE.format(timm='dla60x')),
    'dla_x60.coco': _cfg(description='DLA-X60*'),
    'dla_x102.in1k': _cfg(description='DLA-X102 (paper Tables 2, 9). ' + _BASELINE_NOTE.format(timm='dla102x')),
    'dla_x60_elastic.in1k': _cfg(description='DLA-X60+Elastic (= +sElastic, paper Tables 2, 8, 9)'),
    'dla_x60_elastic.coco': _cfg(description='DLA-X60+Elastic'),
    'dla_x102_elastic': _cfg(description='DLA-X102+Elastic (paper Tables 2, 9): Split50, levels [1, 1, 3, 3, 3, 1]'),
    'dla_x102_selastic': _cfg(description='DLA-X102+sElastic (paper Tables 8, 9): DLA-X102 with Elastic bottlenecks'),
})


# The original code's counts include its unused projections (0.30M parameters and 0.08 GMACs for
# DLA-X60, see the module docstring); `timm-elastic models` shows them beside ours.
PAPER_ROWS = {
    'dla_x60': PaperRow('DLA-X60*', 17.6, 3.6, 'paper Table 2'),
    'dla_x102': PaperRow('DLA-X102', 26.8, 6.0, 'paper Table 2'),
    'dla_x60_elastic': PaperRow('DLA-X60+Elastic', 17.65, 3.11),
    'dla_x102_elastic': PaperRow('DLA-X102+Elastic', 24.92, 5.95),
    'dla_x102_selastic': PaperRow('DLA-X102+sElastic', 26.77, 4.97),
}

_DLA_X60 = dict(levels=(1, 1, 1, 2, 3, 1), channels=(16, 32, 128, 256, 512, 1024), cardinality=32, base_width=4)
_DLA_X102 = dict(
    levels=(1, 1, 1, 3, 4, 1), channels=(16, 32, 128, 256, 512, 1024), cardinality=32, base_width=4,
    shortcut_root=True)


@register_model
def dla_x60(pretrained: bool = False, **kwargs) -> ElasticDLA:
    return _create_dla_elastic('dla_x60', pretrained, **{**_DLA_X60, 'elastic': False, **kwargs})


@register_model
def dla_x102(pretrained: bool = False, **kwargs) -> ElasticDLA:
    return _create_dla_elastic('dla_x102', pretrained, **{**_DLA_X102, 'elastic': False, **kwargs})


@register_model
def dla_x60_elastic(pretrained: bool = False, **kwargs) -> ElasticDLA:
    return _create_dla_elastic('dla_x60_elastic', pretrained, **dict(_DLA_X60, **kwargs))


@register_model
def dla_x102_selastic(pretrained: bool = False, **kwargs) -> ElasticDLA:
    return _create_dla_elastic('dla_x102_selastic', pretrained, **dict(_DLA_X102, **kwargs))


@register_model
def dla_x102_elastic(pretrained: bool = False, **kwargs) -> ElasticDLA:
    """Split50: 50 paths of the same width as Split32's, more blocks at the lower levels (Table 9)."""
    model_args = dict(_DLA_X102, levels=(1, 1, 3, 3, 3, 1), cardinality=50)
    return _create_dla_elastic('dla_x102_elastic', pretrained, **dict(model_args, **kwargs))
