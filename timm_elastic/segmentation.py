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
"""
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['ASPP', 'DeepLabV3', 'create_model', 'MULTI_GRID', 'ASPP_RATES']

ASPP_RATES: Tuple[int, int, int] = (6, 12, 18)
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.aspp(self.backbone.forward_features(x))
        return F.interpolate(logits, size=x.shape[-2:], mode='bilinear', align_corners=True)


def create_model(name: str, num_classes: int = 21, pretrained_backbone: bool = False,
                 backbone_kwargs: Optional[Dict[str, Any]] = None) -> nn.Module:
    """A segmentation model by name: `deeplabv3_<backbone>` (any timm ResNet-family model name, tag allowed,
    e.g. `deeplabv3_resnext50_elastic`, `deeplabv3_resnext101_32x4d.a1h_in1k`).

    Args:
        name: the model's name.
        num_classes: output classes (21 for PASCAL VOC).
        pretrained_backbone: initialise the backbone with its ImageNet weights (timm's `pretrained=True`).
        backbone_kwargs: more keyword arguments for `timm.create_model` of the backbone.
    """
    import timm

    import timm_elastic  # noqa: F401  (registers the Elastic backbones)
    prefix = 'deeplabv3_'
    if not name.startswith(prefix):
        raise ValueError(f'unknown segmentation model {name!r}: the names are deeplabv3_<backbone> (a ResNeXt-family '
                         'timm model, e.g. deeplabv3_resnext50_elastic)')
    backbone_name = name[len(prefix):]
    if not timm.is_model(backbone_name):
        raise ValueError(f'{name!r}: {backbone_name!r} is not a timm model')
    backbone = timm.create_model(backbone_name, pretrained=pretrained_backbone, num_classes=0, global_pool='',
                                 output_stride=16, **(backbone_kwargs or {}))
    return DeepLabV3(backbone, num_classes)
