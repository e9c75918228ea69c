"""Object detection: any timm model (the Elastic ones included) as a torchvision detection backbone.

Detection is not among the paper's experiments (ImageNet, COCO multi-label classification, PASCAL VOC
segmentation); this is the usual way to try a classifier on it. `fpn_backbone` joins timm's
`features_only` interface and torchvision's `FeaturePyramidNetwork`, so the result plugs into
`torchvision.models.detection` (FasterRCNN, MaskRCNN, KeypointRCNN, RetinaNet, FCOS), which only ask
a backbone for a forward returning an ordered dict of maps and an `out_channels` attribute.
"""
import difflib
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple, Union

import timm
import torch
from timm.models import is_model, parse_model_name
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool, LastLevelP6P7

__all__ = ['EXTRA_BLOCKS', 'FPNBackbone', 'fpn_backbone']

# extra_blocks name -> (output names it appends, a builder taking out_channels, the default number
# of backbone levels); each extra map halves the last one, so its stride doubles. The detectors'
# default anchor generators expect five maps: 'pool' is the subsampled fifth level of FasterRCNN and
# MaskRCNN (on strides 4-32); 'p6p7' RetinaNet's and FCOS's two 3x3/2 convs (on strides 8-32, as
# torchvision's retinanet_resnet50_fpn takes layers 2-4).
EXTRA_BLOCKS = {
    'pool': (('pool',), lambda channels: LastLevelMaxPool(), 4),
    'p6p7': (('p6', 'p7'), lambda channels: LastLevelP6P7(channels, channels), 3),
}


class FPNBackbone(nn.Module):
    """A timm feature extractor (`body`) followed by a torchvision `FeaturePyramidNetwork` (`fpn`).

    `forward(images)` maps (N, 3, H, W) to an `OrderedDict[str, Tensor]`: one map per feature level,
    named '0', '1', ... from the finest, then the extra levels ('pool', or 'p6' and 'p7'), each
    (N, out_channels, H / s, W / s) with `s = strides[name]` (for H, W divisible by the coarsest
    stride; the detection models pad their batches to a multiple of 32).
    """

    def __init__(self, body: nn.Module, fpn: FeaturePyramidNetwork, out_channels: int, strides: Dict[str, int]):
        super().__init__()
        self.body = body
        self.fpn = fpn
        self.out_channels = out_channels  # what torchvision.models.detection reads off a backbone
        self.strides = strides

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:  # an OrderedDict; Dict for TorchScript
        features = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features)))


def fpn_backbone(
        model_name: str,
        out_channels: int = 256,
        out_indices: Optional[Union[int, Sequence[int]]] = None,
        pretrained: bool = False,
        extra_blocks: Optional[str] = 'pool',
        **create_kwargs,
) -> FPNBackbone:
    """A torchvision detection backbone: timm model `model_name` (features only) plus an FPN.

    Args:
        model_name: any name `timm.create_model` accepts whose model supports `features_only`
            (`timm.list_models('*elastic*')`, stock timm CNNs, 'hf-hub:...', 'local-dir:...').
            A name rather than a built model, as timm's own `features_only` works: the extractor is
            decided when the model is built. For your own weights pass them through timm, e.g.
            `pretrained=True, pretrained_cfg_overlay=dict(file='model.pth')`.
        out_channels: channels of every output map (torchvision's detectors use 256).
        out_indices: the feature levels fed to the FPN, as timm's `out_indices`: an int n takes the
            last n levels of the model's `feature_info` (4 gives strides 4, 8, 16, 32 for every
            Elastic model and most timm CNNs), a sequence picks levels by index. The levels must be
            of increasing stride. None (default): 4 levels, or 3 with `extra_blocks='p6p7'`, so the
            default anchors of the detectors named there find their five maps.
        pretrained: load the model's pretrained weights (timm's `pretrained`).
        extra_blocks: coarser levels appended after the last one: 'pool' (default; a stride-2
            subsampling, named 'pool', the fifth level FasterRCNN/MaskRCNN's default anchors
            expect), 'p6p7' (two stride-2 convs named 'p6', 'p7', as RetinaNet/FCOS use) or None.
        **create_kwargs: passed to `timm.create_model` (e.g. `elastic_ratio`, `drop_path_rate`).

    Returns:
        An `FPNBackbone`: (N, 3, H, W) images -> `OrderedDict` of (N, out_channels, H/s, W/s) maps;
        with the defaults the keys are '0', '1', '2', '3', 'pool' at strides s = 4, 8, 16, 32, 64
        (`backbone.strides`), with `extra_blocks='p6p7'` '0', '1', '2', 'p6', 'p7' at 8 ... 128.
        It has the `out_channels` attribute the detectors require.

    Raises:
        ValueError: an unknown model name, `out_indices` outside the model's feature levels or not
            of increasing stride, `out_channels` not a positive int, an unknown `extra_blocks`,
            `feature_cls='dict'`.

    Example:
        >>> import torch, timm_elastic
        >>> from torchvision.models.detection import FasterRCNN
        >>> from timm_elastic.tasks.detection import fpn_backbone
        >>> detector = FasterRCNN(fpn_backbone('resnext50_elastic'), num_classes=91)
        >>> images = [torch.rand(3, 480, 640)]
        >>> targets = [dict(boxes=torch.tensor([[10., 20., 200., 300.]]), labels=torch.tensor([1]))]
        >>> losses = detector(images, targets)  # train mode: dict of 4 losses
        >>> sum(losses.values()).backward()
    """
    _check_model_name(model_name)
    if not isinstance(out_channels, int) or isinstance(out_channels, bool) or out_channels <= 0:
        raise ValueError(f'out_channels must be a positive int, got {out_channels!r}')
    if extra_blocks is not None and extra_blocks not in EXTRA_BLOCKS:
        raise ValueError(f"extra_blocks must be one of {sorted(EXTRA_BLOCKS)} or None, got {extra_blocks!r}")
    if out_indices is None:
        out_indices = EXTRA_BLOCKS[extra_blocks][2] if extra_blocks is not None else 4
    out_indices = _check_out_indices(out_indices)
    taken = sorted({'features_only', 'out_indices'} & set(create_kwargs))
    if taken:
        raise ValueError(f'fpn_backbone sets {taken} itself; pass the levels as its out_indices argument')
    if create_kwargs.get('feature_cls') == 'dict':  # the FPN takes the maps as timm's default list gives them
        raise ValueError("fpn_backbone takes the feature maps as a list; feature_cls='dict' gives a dict: leave "
                         "feature_cls out or pass 'hook', 'fx' or 'getter'")

    try:
        body = timm.create_model(
            model_name, pretrained=pretrained, features_only=True, out_indices=out_indices, **create_kwargs)
    except IndexError as e:  # timm's answer to an index past the model's feature levels
        raise ValueError(f'out_indices {out_indices!r} is outside the feature levels of {model_name}: '
                         f'{_describe_levels(model_name, create_kwargs)}') from e
    channels: List[int] = body.feature_info.channels()
    reductions: List[int] = body.feature_info.reduction()
    if any(a >= b for a, b in zip(reductions, reductions[1:])):
        # a pyramid: FPN's top-down path upsamples each level onto the next finer one
        raise ValueError(f'out_indices {out_indices!r} picks levels of strides {reductions} from {model_name}; '
                         f'an FPN needs strictly increasing strides: {_describe_levels(model_name, create_kwargs)}')

    strides = {str(i): r for i, r in enumerate(reductions)}
    extra: Optional[ExtraFPNBlock] = None
    if extra_blocks is not None:
        names, build, _ = EXTRA_BLOCKS[extra_blocks]
        extra = build(out_channels)
        for k, name in enumerate(names, 1):
            strides[name] = reductions[-1] * 2 ** k
    fpn = FeaturePyramidNetwork(channels, out_channels, extra_blocks=extra)
    return FPNBackbone(body, fpn, out_channels, strides)


def _check_model_name(model_name: str) -> None:
    if not isinstance(model_name, str):
        raise TypeError(f'model_name must be a timm model name (str), got {type(model_name).__name__}; '
                        'fpn_backbone builds the model itself with features_only=True, so pass its name '
                        'and create_model keyword arguments instead of a built model')
    source, name = parse_model_name(model_name)  # raises its own clear error for 'owner/repo' names
    if source is None and not is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f'; did you mean {", ".join(close)}?' if close else ''
        raise ValueError(f"unknown model {model_name!r}: not in timm's registry (timm.list_models('*elastic*') "
                         f'lists the Elastic ones){hint}')


def _check_out_indices(out_indices: Union[int, Sequence[int]]) -> Union[int, Tuple[int, ...]]:
    def is_int(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if is_int(out_indices):
        if out_indices < 1:
            raise ValueError(f'out_indices as an int is how many of the last feature levels to use, '
                             f'at least 1, got {out_indices}')
        return out_indices
    if isinstance(out_indices, (list, tuple)) and out_indices and all(is_int(i) for i in out_indices):
        return tuple(out_indices)
    raise ValueError(f'out_indices must be an int (use the last n feature levels) or a non-empty sequence of '
                     f'feature level indices, got {out_indices!r}')


def _describe_levels(model_name: str, create_kwargs: dict) -> str:
    try:
        info = timm.create_model(model_name, features_only=True, **create_kwargs).feature_info
    except Exception:  # only enriches the error being raised, whose cause stays chained
        return 'its feature levels could not be listed'
    levels = ', '.join(f"{i}: stride {d['reduction']}, {d['num_chs']} channels" for i, d in enumerate(info.info))
    return f'the model has {len(info.info)} levels ({levels})'
