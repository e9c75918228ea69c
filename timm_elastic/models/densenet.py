"""DenseNet with Elastic dense layers (paper Sec. 3.3, Fig. 3 right, Appendix B Table 11).

Built on timm's `DenseNet`. A dense layer's bottleneck (1x1 conv, BN-ReLU, 3x3 conv) is first
rewritten in its equivalent two-branch form (Fig. 3 right: split the bottleneck channels in two
halves and sum the halves' 3x3 outputs), then one branch runs at half resolution. The shared
pre-activation (norm1 + ReLU) stays in front of both. A DenseNet bottleneck has no groups, so its
"paths" here are its bottleneck channels: `elastic_ratio` of them go to low resolution.

Which layers are Elastic (Table 11): every layer of the first three dense blocks (56, 28 and 14 at
224). The last dense block (7x7) is timm's plain `DenseLayer`. This is fixed when the model is built:
the original code decided it from the input size (`size != 7`), so other input sizes silently
changed its network.

`output_stride` 16 or 8 (beyond timm's DenseNet, for DeepLab-style heads such as smp's): the last one or
two transitions pool with stride 1 (their 2x2 average at every position, `layers.atrous`) and the dense
blocks after them dilate their 3x3 convolutions by 2 (then 4), the algorithme a trous. The
weights and the Elastic layout are unchanged; features up to the first dilated block are the stride
model's, and where no Elastic layer follows (the plain last block at 16) the features at every other
position are exactly the stride model's too.

Weight layout: `norm1`, then `elastic.high` / `elastic.low`, each `conv1`, `norm2`, `conv2`: the
original release's `conv*` / `conv*_d` one to one. The original's plain last block has the same two
full-resolution halves; concatenated along the bottleneck channels they are timm's `DenseLayer`.
The baseline DenseNet201* of the paper is timm's own `densenet201` (same layout; the original's
`features.norm_final` is timm's `features.norm5`).
"""
from collections import OrderedDict
from typing import Any, Dict, List, Tuple, Type, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import BatchNormAct2d, get_norm_act_layer
from timm.models import register_model
from timm.models._manipulate import checkpoint
from timm.models.densenet import DenseLayer, DenseNet

from ..complexity import PaperRow
from ..layers import Elastic, check_elastic_args
from ..layers.atrous import PoolEveryPosition, check_output_stride
from ._builder import build_elastic
from ._cfg import elastic_cfg, generate_release_cfgs

__all__ = ['ElasticDenseNet', 'ElasticDenseLayer', 'PAPER_ROWS']


class ElasticDenseLayer(nn.Module):
    """A dense layer whose bottleneck channels are split across two resolutions (Fig. 3 right).

    Same constructor and call as timm's `DenseLayer` (a tensor or a list of tensors to concatenate),
    plus `elastic_ratio`, `elastic_resample` and the 3x3 convolutions' `dilation`. Output: (N,
    growth_rate, H, W).
    """

    def __init__(
            self,
            num_input_features: int,
            growth_rate: int,
            bn_size: int,
            norm_layer: Type[nn.Module] = BatchNormAct2d,
            drop_rate: float = 0.,
            grad_checkpointing: bool = False,
            elastic_ratio: float = 0.5,
            elastic_resample: str = 'bilinear',
            dilation: int = 1,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}

        def make_path(width: int, dilation: int) -> nn.Module:
            return nn.Sequential(OrderedDict([
                ('conv1', nn.Conv2d(num_input_features, width, 1, bias=False, **dd)),
                ('norm2', norm_layer(width, **dd)),
                ('conv2', nn.Conv2d(
                    width, growth_rate, 3, padding=dilation, dilation=dilation, bias=False, **dd)),
            ]))

        self.norm1 = norm_layer(num_input_features, **dd)
        self.elastic = Elastic(
            make_path, bn_size * growth_rate, num_input_features, growth_rate,
            elastic_ratio=elastic_ratio, elastic_resample=elastic_resample, dilation=dilation, **dd)
        self.drop_rate = float(drop_rate)
        self.grad_checkpointing = grad_checkpointing

    def layer_fn(self, xs: List[torch.Tensor]) -> torch.Tensor:
        return self.elastic(self.norm1(torch.cat(xs, 1)))

    @torch.jit.unused
    def call_checkpoint_layer(self, xs: List[torch.Tensor]) -> torch.Tensor:
        # recompute the concatenation and both branches in backward, as timm's memory-efficient
        # DenseNet recomputes its bottleneck
        return checkpoint(lambda *t: self.layer_fn(list(t)), *xs)

    def forward(self, x: Union[torch.Tensor, List[torch.Tensor]]) -> torch.Tensor:
        prev_features = [x] if isinstance(x, torch.Tensor) else x
        if self.grad_checkpointing and not torch.jit.is_scripting() \
                and any(t.requires_grad for t in prev_features):
            new_features = self.call_checkpoint_layer(prev_features)
        else:
            new_features = self.layer_fn(prev_features)
        if self.drop_rate > 0:
            new_features = F.dropout(new_features, p=self.drop_rate, training=self.training)
        return new_features


class ElasticDenseNet(DenseNet):
    """timm's `DenseNet` whose dense layers are Elastic in the blocks marked by `elastic_blocks`.

    Args (beyond timm's `DenseNet`):
        elastic_blocks: one flag per dense block (default: every block but the last, Table 11).
        elastic_ratio, elastic_resample: see `timm_elastic.layers.Elastic`.
        output_stride: 32 (default), 16 or 8: the last one or two transitions keep the resolution and the
            blocks after them dilate (see the module docstring).

    Input: (N, in_chans, H, W) with H, W >= 32; output (N, num_classes).
    """

    def __init__(
            self,
            growth_rate: int = 32,
            block_config: Tuple[int, ...] = (10, 20, 40, 30),
            elastic_blocks: Tuple[bool, ...] = (True, True, True, False),
            elastic_ratio: float = 0.5,
            elastic_resample: str = 'bilinear',
            bn_size: int = 4,
            act_layer: str = 'relu',
            norm_layer: str = 'batchnorm2d',
            proj_drop_rate: float = 0.,
            memory_efficient: bool = False,
            output_stride: int = 32,
            device=None,
            dtype=None,
            **kwargs,
    ):
        check_elastic_args(elastic_ratio, elastic_resample)
        check_output_stride(output_stride)
        if len(elastic_blocks) != len(block_config):
            raise ValueError(f'elastic_blocks needs one flag per dense block ({len(block_config)}), '
                             f'got {tuple(elastic_blocks)}')
        super().__init__(
            growth_rate=growth_rate, block_config=block_config, bn_size=bn_size, act_layer=act_layer,
            norm_layer=norm_layer, proj_drop_rate=proj_drop_rate, memory_efficient=memory_efficient,
            device=device, dtype=dtype, **kwargs)
        # dense block i (0-based) dilates by dilations[i]: the blocks after the last `dilated` transitions
        num_blocks = len(block_config)
        dilated = {32: 0, 16: 1, 8: 2}[output_stride]
        dilations = [2 ** max(0, i - (num_blocks - 1 - dilated)) for i in range(num_blocks)]
        for i in range(num_blocks - dilated, num_blocks):
            self._dilate(i, dilations[i])
        # timm's DenseNet builds its blocks from plain layers; the Elastic ones replace them in place
        norm_act = get_norm_act_layer(norm_layer, act_layer=act_layer)
        for i, elastic in enumerate(elastic_blocks):
            if not elastic:
                continue
            block = getattr(self.features, f'denseblock{i + 1}')
            for name, layer in list(block.items()):
                block[name] = new = ElasticDenseLayer(
                    layer.norm1.num_features, growth_rate, bn_size, norm_layer=norm_act,
                    drop_rate=proj_drop_rate, grad_checkpointing=memory_efficient,
                    elastic_ratio=elastic_ratio, elastic_resample=elastic_resample, dilation=dilations[i],
                    device=device, dtype=dtype)
                for m in new.modules():  # timm's DenseNet init
                    if isinstance(m, nn.Conv2d):
                        nn.init.kaiming_normal_(m.weight)
                    elif isinstance(m, nn.BatchNorm2d):
                        nn.init.constant_(m.weight, 1)
                        nn.init.constant_(m.bias, 0)

    def _dilate(self, i: int, dilation: int) -> None:
        """Dense block i (0-based) at the resolution of the one before: the transition in front of it pools
        at every position, its 3x3 convolutions dilate; the feature reductions from it on stop growing."""
        transition = getattr(self.features, f'transition{i}')
        transition.pool = PoolEveryPosition('avg', dilation // 2)
        for layer in getattr(self.features, f'denseblock{i + 1}').values():
            if isinstance(layer, DenseLayer):  # the Elastic layers are built with their dilation
                layer.conv2.dilation, layer.conv2.padding = (dilation, dilation), (dilation, dilation)
        limit = self.feature_info[i]['reduction']  # the block before the transition
        for info in self.feature_info[i + 1:]:
            info['reduction'] = limit

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for m in self.features.modules():
            if isinstance(m, (DenseLayer, ElasticDenseLayer)):
                m.grad_checkpointing = enable


def _create_densenet_elastic(variant: str, pretrained: bool = False, **kwargs) -> ElasticDenseNet:
    return build_elastic(ElasticDenseNet, variant, pretrained, feature_cfg=dict(flatten_sequential=True), **kwargs)


def _cfg(**kwargs) -> Dict[str, Any]:
    return elastic_cfg(first_conv='features.conv0', classifier='classifier', **kwargs)


default_cfgs = generate_release_cfgs({
    'densenet201_elastic.in1k': _cfg(
        description='DenseNet201+Elastic (paper Tables 2, 11): dense blocks [10, 20, 40, 30], first three Elastic'),
    'densenet201_elastic.coco': _cfg(description='DenseNet201+Elastic'),
})

PAPER_ROWS = {
    'densenet201_elastic': PaperRow('DenseNet201+Elastic', 19.48, 4.27),
}


@register_model
def densenet201_elastic(pretrained: bool = False, **kwargs) -> ElasticDenseNet:
    model_args = dict(growth_rate=32, block_config=(10, 20, 40, 30), elastic_blocks=(True, True, True, False))
    return _create_densenet_elastic('densenet201_elastic', pretrained, **dict(model_args, **kwargs))
