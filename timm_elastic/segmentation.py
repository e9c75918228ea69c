"""Segmentation models on Elastic backbones (paper Sec. 4.3, Table 5), built by name.

`create_model('deeplabv3_<backbone>', num_classes=21)` is DeepLabV3 as the original code builds it on a
ResNeXt (`models/resnext.py` with `seg=True` in allenai/elastic): the backbone is our timm model, unchanged
up to `layer3`, at output stride 16: `layer4` runs at stride 1 with the multi-grid dilations 2, 4 and 8 (rate
2 x (1, 2, 4)) in its three blocks; the head is the original's ASPP: a 1x1 branch, three 3x3 branches of
dilation 6, 12 and 18 and a 1x1 branch on the global average (broadcast back), each with BatchNorm and
ReLU, concatenated (5 x 256), then a 1x1 convolution, BatchNorm, ReLU and the 1x1 classifier with a bias.
The logits are upsampled bilinearly (align_corners=True) from the stride-16 map to the input size: the
output is (N, num_classes, H, W). The head's modules carry the original's names (`aspp.aspp1` ...
`aspp.conv3`), so its weights load as they are. BatchNorm momenta are the original's (0.05 in the backbone,
0.0003 in the head).

Any timm ResNet-family model is a backbone: the Elastic ResNeXts (`resnext50_elastic`,
`resnext101_elastic`, `seresnext50_elastic`, ...), the paper's baselines (`resnext50_32x4d`,
`resnext101_32x4d`) and SE variants; their ImageNet weights initialise it (`pretrained_backbone=True`, any
tag). These models are not in timm's classification registry.

`create_model('dlaup_<backbone>')` is the original's DLASeg (`models/dla_up.py`) on our DLA models
(`dla_x60`, `dla_x60_elastic`, ...): the backbone's six levels, of which levels 1-5 are merged from the
deepest up by iterative deep aggregation (each merge projects a level to the shallower one's channels by a
1x1 convolution, BatchNorm and ReLU where they differ, enlarges it with a depthwise transposed convolution
(bilinear at initialisation), crops it to the shallower map and joins them by a 3x3 convolution, BatchNorm
and ReLU), a 1x1 classifier at stride 2, a depthwise transposed convolution x2 (fixed bilinear weights),
log-softmax, and the original's crop of the last row and column: it returns log-probabilities of
2 ceil(S / 2) - 1 pixels a side, as the original does. No dilation. Module names are the original's
(`base`, `dla_up.ida_<i>.proj_<j>` / `up_<j>` / `node_<j>`, `fc.0`, `up`).
"""
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['ASPP', 'DeepLabV3', 'IDAUp', 'DLAUp', 'DLASeg', 'create_model', 'folder_config', 'MULTI_GRID', 'ASPP_RATES',
           'OUTPUT_STRIDE']

ASPP_RATES: Tuple[int, int, int] = (6, 12, 18)
OUTPUT_STRIDE = 16  # DeepLabV3's, as the original trains and evaluates it
MULTI_GRID: Tuple[int, int, int] = (1, 2, 4)
_BACKBONE_BN_MOMENTUM, _HEAD_BN_MOMENTUM = 0.05, 0.0003


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling with the image-pool branch, then the classifier (DeepLabV3).

    (N, in_chs, h, w) -> (N, num_classes, h, w)."""

    def __init__(self, in_chs: int, num_classes: int, rates: Tuple[int, int, int] = ASPP_RATES, width: int = 256):
        super().__init__()
        self.aspp1 = nn.Conv2d(in_chs, width, 1, bias=False)
        self.aspp2, self.aspp3, self.aspp4 = (
            nn.Conv2d(in_chs, width, 3, padding=r, dilation=r, bias=False) for r in rates)
        self.aspp5 = nn.Conv2d(in_chs, width, 1, bias=False)
        for i in range(1, 6):
            setattr(self, f'aspp{i}_bn', nn.BatchNorm2d(width, momentum=_HEAD_BN_MOMENTUM))
        self.conv2 = nn.Conv2d(5 * width, width, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width, momentum=_HEAD_BN_MOMENTUM)
        self.conv3 = nn.Conv2d(width, num_classes, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.relu(getattr(self, f'aspp{i}_bn')(getattr(self, f'aspp{i}')(x))) for i in range(1, 5)]
        pooled = self.relu(self.aspp5_bn(self.aspp5(x.mean((2, 3), keepdim=True))))
        # a 1x1 map upsampled bilinearly is the same value everywhere
        branches.append(pooled.expand(-1, -1, *x.shape[-2:]))
        return self.conv3(self.relu(self.bn2(self.conv2(torch.cat(branches, 1)))))


class DeepLabV3(nn.Module):
    """A timm ResNet-family backbone at output stride 16 with multi-grid dilations in `layer4`, and `ASPP`.

    Input (N, 3, H, W); output logits (N, num_classes, H, W)."""
    output_description = 'logits (N, classes, H, W) at the input size'
    output_stride = OUTPUT_STRIDE  # of the features the ASPP reads (the backbone is built for it)
    classifier = 'aspp.conv3'  # the 1x1 convolution whose outputs are the classes

    def __init__(self, backbone: nn.Module, num_classes: int = 21):
        super().__init__()
        from timm.models.resnet import ResNet
        if not isinstance(backbone, ResNet):
            raise ValueError(f'DeepLabV3 takes a timm ResNet-family backbone (ResNeXt, SE-ResNeXt, their Elastic '
                             f'models), got {type(backbone).__name__}')
        for i, block in enumerate(backbone.layer4):  # rate 2 x multi-grid, the original's layer4
            d = 2 * MULTI_GRID[i % len(MULTI_GRID)]  # (a layer4 of other than 3 blocks repeats the grid)
            block.conv2.dilation, block.conv2.padding = (d, d), (d, d)
        for m in backbone.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = _BACKBONE_BN_MOMENTUM
        self.backbone = backbone
        self.aspp = ASPP(backbone.num_features, num_classes)
        self.num_classes = num_classes
        self.name = f'deeplabv3_{backbone.pretrained_cfg["architecture"]}'

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.aspp(self.backbone.forward_features(x))
        return F.interpolate(logits, size=x.shape[-2:], mode='bilinear', align_corners=True)


def _bilinear_(up: nn.ConvTranspose2d) -> nn.ConvTranspose2d:
    """Set a depthwise transposed convolution's kernels to bilinear interpolation (the original's
    `fill_up_weights`)."""
    k = up.weight.shape[-1]
    f = math.ceil(k / 2)
    c = (2 * f - 1 - f % 2) / (2. * f)
    ramp = 1 - torch.abs(torch.arange(k, dtype=torch.float64) / f - c)
    with torch.no_grad():
        up.weight.copy_((ramp[:, None] * ramp[None, :]).to(up.weight.dtype).expand_as(up.weight))
    return up


def _depthwise_up(channels: int, factor: int) -> nn.ConvTranspose2d:
    return _bilinear_(nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, padding=factor // 2,
                                         groups=channels, bias=False))


def _init_convs_(module: nn.Module) -> None:
    """The original decoder's initialisation of its convolutions (not the transposed ones, kept bilinear):
    normal with std sqrt(2 / (k x k x out channels)); BatchNorm keeps PyTorch's weight 1, bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0., math.sqrt(2. / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))


def _conv_bn_relu(in_chs: int, out_chs: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_chs, out_chs, kernel, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(out_chs), nn.ReLU(inplace=True))


class IDAUp(nn.Module):
    """One iterative deep aggregation: maps of `channels` at `up_factors` x the first one's stride, each brought
    to `out_chs` and the first one's stride, joined left to right. Returns (the last join, every join)."""

    def __init__(self, out_chs: int, channels: Sequence[int], up_factors: Sequence[int], node_kernel: int = 3):
        super().__init__()
        for i, (c, f) in enumerate(zip(channels, up_factors)):
            setattr(self, f'proj_{i}', nn.Identity() if c == out_chs else _conv_bn_relu(c, out_chs, 1))
            setattr(self, f'up_{i}', nn.Identity() if f == 1 else _depthwise_up(out_chs, int(f)))
        for i in range(1, len(channels)):
            setattr(self, f'node_{i}', _conv_bn_relu(2 * out_chs, out_chs, node_kernel))
        self.num_inputs = len(channels)
        _init_convs_(self)

    def forward(self, maps: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        maps = [getattr(self, f'up_{i}')(getattr(self, f'proj_{i}')(m)) for i, m in enumerate(maps)]
        x, joins = maps[0], []
        for i in range(1, self.num_inputs):
            x = getattr(self, f'node_{i}')(torch.cat([x, maps[i][:, :, :x.shape[2], :x.shape[3]]], 1))
            joins.append(x)
        return x, joins


class DLAUp(nn.Module):
    """The DLA-up decoder: levels of `channels` at strides `scales`, merged from the deepest up; returns the
    shallowest level's map, `channels[0]` wide."""

    def __init__(self, channels: Sequence[int], scales: Sequence[int]):
        super().__init__()
        channels, scales, ins = list(channels), list(scales), list(channels)
        for i in range(len(channels) - 1):
            j = len(channels) - 2 - i  # the shallower of the deepest two still apart
            setattr(self, f'ida_{i}', IDAUp(channels[j], ins[j:], [s // scales[j] for s in scales[j:]]))
            scales[j + 1:] = [scales[j]] * (len(scales) - j - 1)  # everything deeper is now at level j
            ins[j + 1:] = [channels[j]] * (len(ins) - j - 1)
        self.num_levels = len(channels)

    def forward(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        levels = list(levels)
        for i in range(self.num_levels - 1):
            x, joins = getattr(self, f'ida_{i}')(levels[-i - 2:])
            levels[-i - 1:] = joins
        return x


class DLASeg(nn.Module):
    """The original's DLA segmentation model on one of our DLA models (`base`): see the module docstring.

    Input (N, 3, H, W); output log-probabilities (N, num_classes, 2 ceil(H / 2) - 1, 2 ceil(W / 2) - 1)."""
    output_description = 'log-probabilities (N, classes, 2 ceil(H / 2) - 1, 2 ceil(W / 2) - 1)'
    classifier = 'fc.0'  # the 1x1 convolution whose outputs are the classes

    def __init__(self, base: nn.Module, num_classes: int = 21, first_level: int = 1):
        super().__init__()
        from .models.dla import ElasticDLA
        if not isinstance(base, ElasticDLA):
            raise ValueError(f'DLASeg takes one of the DLA models (dla_x60, dla_x60_elastic, ...), got '
                             f'{type(base).__name__}')
        channels = [info['num_chs'] for info in base.feature_info][first_level:]
        self.base = base
        self.first_level = first_level
        self.dla_up = DLAUp(channels, [2 ** i for i in range(len(channels))])
        self.fc = nn.Sequential(nn.Conv2d(channels[0], num_classes, 1))
        _init_convs_(self.fc)  # its bias keeps PyTorch's initialisation, as the original's
        self.up = _depthwise_up(num_classes, 2 ** first_level)
        self.up.weight.requires_grad_(False)  # the original keeps the last upsampling bilinear
        self.num_classes = num_classes
        self.name = f'dlaup_{base.pretrained_cfg["architecture"]}'

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the outputs of the modules that `feature_info` names (DLA's level0-5, strides 1-32), what timm's
        # `forward_intermediates` returns; DLA has that from timm 1.0.31 on
        x = self.base.base_layer(x)
        levels = []
        for info in self.base.feature_info:
            x = self.base.get_submodule(info['module'])(x)
            levels.append(x)
        y = self.up(self.fc(self.dla_up(levels[self.first_level:])))
        return F.log_softmax(y, dim=1)[:, :, :-1, :-1]


def create_model(name: str, num_classes: Optional[int] = None, pretrained_backbone: bool = False,
                 backbone_kwargs: Optional[Dict[str, Any]] = None, bn_momentum: Optional[float] = None,
                 folder_weights: bool = True) -> nn.Module:
    """A segmentation model by name: `deeplabv3_<backbone>` (any timm ResNet-family model name, tag allowed,
    e.g. `deeplabv3_resnext50_elastic`, `deeplabv3_resnext101_32x4d.a1h_in1k`) or `dlaup_<backbone>` (one of the
    DLA models, e.g. `dlaup_dla_x60_elastic`).

    Args:
        name: the model's name.
        num_classes: output classes (default 21, PASCAL VOC's; a converted release's own: another number is refused,
            as its classifier holds that many).
        pretrained_backbone: initialise the backbone with its ImageNet weights (timm's `pretrained=True`).
        backbone_kwargs: more keyword arguments for `timm.create_model` of the backbone (`drop_path_rate`,
            `in_chans`, the Elastic options...); those the model sets itself (`pretrained`, `num_classes`,
            `output_stride`: DeepLabV3's 16, DLA-up's 32; DeepLabV3's `global_pool`) are refused with a
            ValueError.
        bn_momentum: the momentum of every BatchNorm's running statistics; None keeps the original's (DeepLabV3:
            0.05 in the backbone, 0.0003 in the head, made for its 33,000 iterations on PASCAL VOC; DLA-up:
            PyTorch's 0.1). In a run of a few hundred iterations 0.0003 leaves the head's statistics near their
            initial values, and evaluation (which uses them) far below what the weights can do.
        folder_weights: for a `local-dir:` / `hf-hub:` name (a converted release), load its weights; False builds
            its architecture randomly initialised (as `timm.create_model` does such a name without `pretrained`).
    """
    model = _create(name, num_classes, pretrained_backbone, backbone_kwargs, folder_weights)
    if bn_momentum is not None:
        if not 0 < bn_momentum <= 1:
            raise ValueError(f'bn_momentum must be in (0, 1], got {bn_momentum}')
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = bn_momentum
    return model


def _create(name: str, num_classes: Optional[int], pretrained_backbone: bool,
            backbone_kwargs: Optional[Dict[str, Any]], folder_weights: bool = True) -> nn.Module:
    import timm

    import timm_elastic  # noqa: F401  (registers the Elastic backbones)
    if name.startswith(('local-dir:', 'hf-hub:')):
        model = _from_folder(name, backbone_kwargs, folder_weights)
        if num_classes is not None and num_classes != model.num_classes:
            raise ValueError(f'{name!r} has {model.num_classes} classes (its config.json), not {num_classes}: a '
                             'converted release keeps its classifier; for other classes train deeplabv3_<backbone> '
                             'or dlaup_<backbone>, with pretrained_backbone')
        return model
    num_classes = 21 if num_classes is None else num_classes
    prefix = next((p for p in ('deeplabv3_', 'dlaup_') if name.startswith(p)), None)
    if prefix is None:
        raise ValueError(f'unknown segmentation model {name!r}: the names are deeplabv3_<backbone> (a ResNeXt-family '
                         'timm model, e.g. deeplabv3_resnext50_elastic) and dlaup_<backbone> (a DLA model, e.g. '
                         'dlaup_dla_x60_elastic)')
    backbone_name = name[len(prefix):]
    if not timm.is_model(backbone_name):
        raise ValueError(f'{name!r}: {backbone_name!r} is not a timm model')
    # the backbone's arguments that the segmentation model sets itself
    own = dict(pretrained=(pretrained_backbone, "create_model's pretrained_backbone"),
               num_classes=(0, "the backbone has no classifier, the model's classes are create_model's num_classes"))
    if prefix == 'deeplabv3_':
        own.update(global_pool=('', 'the ASPP reads the unpooled features'),
                   output_stride=(OUTPUT_STRIDE, "DeepLabV3's, as the original trains and evaluates it"))
    else:
        own.update(output_stride=(32, "DLA-up's, whose decoder merges the levels at strides 2 to 32, as the "
                                      "original's"))
    fixed = [k for k in own if k in (backbone_kwargs or {})]
    if fixed:
        raise ValueError(f'{name!r} sets its backbone\'s {" / ".join(fixed)} itself (' + '; '.join(
            f'{k}={own[k][0]!r}: {own[k][1]}' for k in fixed) + '); backbone_kwargs takes the other arguments of '
            f'timm.create_model({backbone_name!r})')
    backbone = timm.create_model(backbone_name, **{k: v for k, (v, _) in own.items()}, **(backbone_kwargs or {}))
    return DLASeg(backbone, num_classes) if prefix == 'dlaup_' else DeepLabV3(backbone, num_classes)


def folder_config(path: str) -> Dict[str, Any]:
    """The config.json of a folder `timm-elastic convert` wrote for a segmentation release (its `architecture`,
    `num_classes`, ...). Raises OSError / ValueError where it cannot be read."""
    import json
    import os
    with open(os.path.join(path, 'config.json')) as f:
        return json.load(f)


def _from_folder(name: str, backbone_kwargs: Optional[Dict[str, Any]] = None, weights: bool = True) -> nn.Module:
    """A model from the folder `timm-elastic convert` writes for a segmentation release (`local-dir:PATH`), or
    from its Hub repository (`hf-hub:ORG/NAME`): config.json names the architecture, model.safetensors holds
    the weights (loaded strictly; with `weights` False neither read nor needed)."""
    import os

    from safetensors.torch import load_file
    kind, where = name.split(':', 1)
    needed = ('config.json', 'model.safetensors') if weights else ('config.json',)
    if kind == 'local-dir':
        files = {f: os.path.join(where, f) for f in needed}
        missing = [p for p in files.values() if not os.path.isfile(p)]
        if missing:
            raise ValueError(f'{name!r}: {missing[0]} does not exist (a folder written by timm-elastic convert holds '
                             'config.json and model.safetensors)')
    else:
        from huggingface_hub import hf_hub_download
        try:
            files = {f: hf_hub_download(where, f) for f in needed}
        except Exception as e:  # huggingface_hub's own: not found, offline and not cached, network ...
            raise ValueError(f'{name!r}: cannot fetch config.json and model.safetensors from the Hugging Face Hub: '
                             f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}') from e
    config = folder_config(os.path.dirname(files['config.json']))
    if not str(config.get('architecture', '')).startswith(('deeplabv3_', 'dlaup_')) and 'pretrained_cfg' in config:
        raise ValueError(f"{name!r} holds a timm classifier ({config.get('architecture')}, its config.json), not a "
                         f"segmentation model: load it with timm.create_model({name!r}, pretrained=True)")
    model = create_model(config['architecture'], num_classes=config['num_classes'], backbone_kwargs=backbone_kwargs)
    if weights:
        model.load_state_dict(load_file(files['model.safetensors']), strict=True)
    return model
