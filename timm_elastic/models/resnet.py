"""ResNeXt and SE-ResNeXt with Elastic bottlenecks (paper Sec. 3.3, Fig. 3 left, Appendix A-B).

Built on timm's `ResNet` and its `Bottleneck` conventions. Which blocks are Elastic (Sec. 4,
"Implementation details"): every stride-1 block of stages 1-3. Stride-2 blocks and stage 4 (7x7 at
224, "high level blocks operating at resolution 7") stay plain timm `Bottleneck`s.

Weight layout. An Elastic bottleneck holds the ResNeXt paths in two groups, `elastic.high` and
`elastic.low` (conv1, bn1, conv2, bn2, conv3 each), whose conv3 outputs are summed before one
shared bn3: exactly the original release's `conv*` / `conv*_d` paths, so its weights map one to
one. The original's plain blocks also have two full-resolution paths; concatenated along their
channels they are a single grouped timm `Bottleneck`, so those blocks are timm's own.

The file is named `resnet` like timm's, where ResNeXt lives; timm's model test suite selects
its feature-extraction tests by that module name.
"""
import math
from typing import Any, Dict, Optional, Type

import torch
import torch.nn as nn
from timm.layers import create_attn
from timm.models import register_model
from timm.models.resnet import Bottleneck, ResNet

from ..complexity import PaperRow
from ..data.scales import CLASSES
from ..layers import Elastic, pop_elastic_args
from ..layers.atrous import check_output_stride
from ._builder import build_elastic
from ._cfg import elastic_cfg, generate_release_cfgs

__all__ = ['BottleneckPath', 'ElasticBottleneck', 'StageBlocks', 'PAPER_ROWS', 'TWINS']


class BottleneckPath(nn.Sequential):
    """A group of ResNeXt paths without the final norm: 1x1 conv, BN, act, grouped 3x3 conv, BN,
    act, 1x1 conv. One T_i of Eq. 3; `groups` is the number of paths, each `group_width` wide."""

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            groups: int,
            group_width: int,
            dilation: int = 1,
            reduce_first: int = 1,
            act_layer: Type[nn.Module] = nn.ReLU,
            norm_layer: Type[nn.Module] = nn.BatchNorm2d,
            drop_block: Optional[Type[nn.Module]] = None,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        width = groups * group_width
        first_width = width // reduce_first
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, first_width, 1, bias=False, **dd)
        self.bn1 = norm_layer(first_width, **dd)
        self.act1 = act_layer(inplace=True)
        self.conv2 = nn.Conv2d(
            first_width, width, 3, padding=dilation, dilation=dilation, groups=groups, bias=False, **dd)
        self.bn2 = norm_layer(width, **dd)
        self.drop_block = drop_block() if drop_block is not None else nn.Identity()
        self.act2 = act_layer(inplace=True)
        self.conv3 = nn.Conv2d(width, out_chs, 1, bias=False, **dd)


class ElasticBottleneck(nn.Module):
    """A stride-1 ResNeXt bottleneck whose paths are split across two resolutions (Fig. 3 left).

    Same constructor as timm's `Bottleneck`, plus `elastic_ratio` (fraction of paths at low
    resolution) and `elastic_resample` (Table 6 mode). Paths sum, then bn3, SE, residual, act.
    """
    expansion = 4

    def __init__(
            self,
            inplanes: int,
            planes: int,
            stride: int = 1,
            downsample: Optional[nn.Module] = None,
            cardinality: int = 1,
            base_width: int = 64,
            reduce_first: int = 1,
            dilation: int = 1,
            first_dilation: Optional[int] = None,
            act_layer: Type[nn.Module] = nn.ReLU,
            norm_layer: Type[nn.Module] = nn.BatchNorm2d,
            attn_layer: Optional[Type[nn.Module]] = None,
            aa_layer: Optional[Type[nn.Module]] = None,
            drop_block: Optional[Type[nn.Module]] = None,
            drop_path: Optional[nn.Module] = None,
            elastic_ratio: float = 0.5,
            elastic_resample: str = 'bilinear',
            device=None,
            dtype=None,
    ):
        super().__init__()
        if stride != 1:
            raise ValueError(f'ElasticBottleneck is for stride-1 blocks (paper Sec. 4), got stride={stride}')
        dd = {'device': device, 'dtype': dtype}
        group_width = int(math.floor(planes * (base_width / 64)))
        outplanes = planes * self.expansion

        def make_path(groups: int, path_dilation: int) -> nn.Module:
            return BottleneckPath(
                inplanes, outplanes, groups, group_width, dilation=path_dilation, reduce_first=reduce_first,
                act_layer=act_layer, norm_layer=norm_layer, drop_block=drop_block, **dd)

        self.elastic = Elastic(
            make_path, cardinality, inplanes, outplanes, elastic_ratio=elastic_ratio,
            elastic_resample=elastic_resample, dilation=first_dilation or dilation, **dd)
        self.bn3 = norm_layer(outplanes, **dd)
        self.se = create_attn(attn_layer, outplanes, **dd)
        self.act3 = act_layer(inplace=True)
        self.downsample = downsample
        self.stride = stride
        self.dilation = dilation
        self.drop_path = drop_path

    def zero_init_last(self) -> None:
        if getattr(self.bn3, 'weight', None) is not None:
            nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.elastic(x)
        x = self.bn3(x)
        if self.se is not None:
            x = self.se(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        x += shortcut
        x = self.act3(x)
        return x


class StageBlocks:
    """The block factory of one ResNet stage: `ElasticBottleneck` where the paper puts Elastic,
    timm's `Bottleneck` elsewhere. timm's `make_blocks` calls it like a block class.

    Elastic-ness is fixed by the block's place in the network: the stage (`elastic`) and its
    *nominal* stride. With `output_stride` 8 / 16 timm turns a stage's stride 2 into dilation; that
    first block (dilation != first_dilation) stays plain, so a dilated model keeps its layout and
    weights.
    """
    expansion = Bottleneck.expansion

    def __init__(self, elastic: bool):
        self.elastic = elastic

    def __call__(
            self,
            inplanes: int,
            planes: int,
            stride: int = 1,
            downsample: Optional[nn.Module] = None,
            elastic_ratio: float = 0.5,
            elastic_resample: str = 'bilinear',
            **kwargs,
    ) -> nn.Module:
        dilation = kwargs.get('dilation', 1)
        first_dilation = kwargs.get('first_dilation') or dilation
        nominal_stride = stride * dilation // first_dilation
        if self.elastic and nominal_stride == 1:
            return ElasticBottleneck(
                inplanes, planes, stride, downsample,
                elastic_ratio=elastic_ratio, elastic_resample=elastic_resample, **kwargs)
        return Bottleneck(inplanes, planes, stride, downsample, **kwargs)

    def __repr__(self) -> str:
        return f'{type(self).__name__}(elastic={self.elastic})'


# Stages 1-3 Elastic, stage 4 plain (Sec. 4).
ELASTIC_STAGES = (StageBlocks(True), StageBlocks(True), StageBlocks(True), StageBlocks(False))


def _create_resnet_elastic(variant: str, pretrained: bool = False, **kwargs) -> ResNet:
    # Elastic options arrive as model kwargs (timm.create_model(name, elastic_ratio=...)); the
    # blocks take them, so they travel in block_args
    output_stride = kwargs.get('output_stride', 32)
    check_output_stride(output_stride)
    elastic_args = pop_elastic_args(kwargs)
    block = kwargs.get('block')
    if elastic_args and not any(isinstance(b, StageBlocks) and b.elastic for b in
                                (block if isinstance(block, (tuple, list)) else (block,))):
        raise TypeError(f'{", ".join(elastic_args)} given to {variant}, which has no Elastic blocks')
    block_args = dict(kwargs.pop('block_args', None) or {}, **elastic_args)
    return build_elastic(ResNet, variant, pretrained, block_args=block_args, **kwargs)


def _cfg(**kwargs) -> Dict[str, Any]:
    return elastic_cfg(first_conv='conv1', classifier='fc', **kwargs)


def _tiny_cfg(**kwargs) -> Dict[str, Any]:
    # the built-in dataset's images and classes (timm_elastic.data)
    return elastic_cfg(first_conv='conv1.0', classifier='fc', input_size=(3, 64, 64), pool_size=(2, 2), crop_pct=1.0,
                       num_classes=len(CLASSES), label_names=CLASSES, **kwargs)


default_cfgs = generate_release_cfgs({
    'resnext50_elastic.in1k': _cfg(description='ResNeXt50+Elastic (paper Table 2), blocks [6, 8, 5, 3]'),
    'resnext50_elastic.coco': _cfg(description='ResNeXt50+Elastic'),
    'resnext101_elastic.in1k': _cfg(description='ResNeXt101+Elastic (paper Table 2), blocks [12, 14, 20, 3]'),
    'resnext101_elastic.coco': _cfg(description='ResNeXt101+Elastic'),
    'seresnext50_elastic.in1k': _cfg(description='SE-ResNeXt50+Elastic (paper Table 2), blocks [6, 8, 5, 3]'),
    'resnext50x2_elastic': _cfg(description='ResNeXt50x2+Elastic (paper Table 2), 64 paths x 4'),
    'resnext50_selastic': _cfg(description='ResNeXt50+sElastic (paper Table 8), blocks [3, 4, 6, 3]'),
    'resnext_tiny_elastic': _tiny_cfg(description='small ResNeXt+Elastic for CPU training, blocks [2, 3, 2, 1]'),
    'resnext_tiny': _tiny_cfg(description='small ResNeXt, the non-Elastic twin of resnext_tiny_elastic, '
                                          'blocks [1, 2, 2, 1]'),
})


PAPER_ROWS = {
    'resnext50_elastic': PaperRow('ResNeXt50+Elastic', 25.25, 4.18),
    'resnext101_elastic': PaperRow('ResNeXt101+Elastic', 44.27, 7.89),
    'seresnext50_elastic': PaperRow('SE-ResNeXt50+Elastic', 27.80, 4.18),
    'resnext50x2_elastic': PaperRow('ResNeXt50x2+Elastic', 45.6, 7.9, 'paper Table 2'),
    'resnext50_selastic': PaperRow('ResNeXt50+sElastic', 25.03, 3.35),
}

# Small twins, not in the paper, for training on a CPU (`timm-elastic compare`, the built-in
# dataset at 64x64): Elastic model -> its non-Elastic twin. The Elastic one moves blocks toward
# high resolution as Table 2 does for ResNeXt50 -> ResNeXt50+Elastic ([3, 4, 6, 3] -> [6, 8, 5, 3]),
# so that the two have the same parameters and multiply-adds within a few percent (+2.1%, +0.5%).
# Their widths (stages of 64-512 channels, 8 paths of 1-8 channels) let the main job's 3 seeds x 2 models
# fit 5 minutes on 2 CPU cores; at twice these widths it took over 6 minutes (README, The main job).
# Their stem is timm's 'deep' one (three 3x3 convolutions of 16, 16 and 32 channels, as in ResNet-C/D,
# then the max-pool): with timm's 7x7 64-channel stem both twins read the small objects' 3-pixel
# patterns at 28-29% top-1 after 2 epochs (mean of 3 seeds), with this one at 42-49%, and at 12% fewer
# multiply-adds (the 7x7 stem alone was 9.6 of 13.3 MMACs).
TWINS = {'resnext_tiny_elastic': 'resnext_tiny'}
_TINY_ARGS = dict(cardinality=8, base_width=4, channels=(16, 32, 64, 128), stem_type='deep', stem_width=16)


@register_model
def resnext50_elastic(pretrained: bool = False, **kwargs) -> ResNet:
    model_args = dict(block=ELASTIC_STAGES, layers=(6, 8, 5, 3), cardinality=32, base_width=4)
    return _create_resnet_elastic('resnext50_elastic', pretrained, **dict(model_args, **kwargs))


@register_model
def resnext101_elastic(pretrained: bool = False, **kwargs) -> ResNet:
    model_args = dict(block=ELASTIC_STAGES, layers=(12, 14, 20, 3), cardinality=32, base_width=4)
    return _create_resnet_elastic('resnext101_elastic', pretrained, **dict(model_args, **kwargs))


@register_model
def seresnext50_elastic(pretrained: bool = False, **kwargs) -> ResNet:
    model_args = dict(
        block=ELASTIC_STAGES, layers=(6, 8, 5, 3), cardinality=32, base_width=4,
        block_args=dict(attn_layer='se'))
    return _create_resnet_elastic('seresnext50_elastic', pretrained, **dict(model_args, **kwargs))


@register_model
def resnext50x2_elastic(pretrained: bool = False, **kwargs) -> ResNet:
    model_args = dict(block=ELASTIC_STAGES, layers=(6, 8, 5, 3), cardinality=64, base_width=4)
    return _create_resnet_elastic('resnext50x2_elastic', pretrained, **dict(model_args, **kwargs))


@register_model
def resnext50_selastic(pretrained: bool = False, **kwargs) -> ResNet:
    """sElastic (Appendix A): ResNeXt50's own blocks [3, 4, 6, 3], each stride-1 one made Elastic."""
    model_args = dict(block=ELASTIC_STAGES, layers=(3, 4, 6, 3), cardinality=32, base_width=4)
    return _create_resnet_elastic('resnext50_selastic', pretrained, **dict(model_args, **kwargs))


@register_model
def resnext_tiny_elastic(pretrained: bool = False, **kwargs) -> ResNet:
    """A small ResNeXt+Elastic (8 paths, channels 16-128): blocks [2, 3, 2, 1]."""
    model_args = dict(block=ELASTIC_STAGES, layers=(2, 3, 2, 1), **_TINY_ARGS)
    return _create_resnet_elastic('resnext_tiny_elastic', pretrained, **dict(model_args, **kwargs))


@register_model
def resnext_tiny(pretrained: bool = False, **kwargs) -> ResNet:
    """The non-Elastic twin of `resnext_tiny_elastic`: timm Bottlenecks, blocks [1, 2, 2, 1]."""
    model_args = dict(block=Bottleneck, layers=(1, 2, 2, 1), **_TINY_ARGS)
    return _create_resnet_elastic('resnext_tiny', pretrained, **dict(model_args, **kwargs))
