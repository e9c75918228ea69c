"""The original ELASTIC implementation, for checking conversion: stand-in checkpoints in its layout
and its forward pass, written as plain functions over its state dicts.

Stand-ins. The authors' checkpoints cannot be downloaded in the test environment, so conversion is
checked with weights anyone can regenerate: every tensor is drawn from a generator seeded with the
CRC32 of its key (`stand_in_state`), with the BatchNorm running statistics that were calibrated on the
original implementation (`data/original/<arch>.bn.safetensors`). `data/original/expected/<arch>.json`
holds the logits the original implementation gives for three of them.

Forward. `original_forward` follows the original code (allenai/elastic, `models/`) operation by
operation and reads every weight by its original name. It shares no code with timm_elastic, so a
conversion that matches it is right by construction; it is itself checked against the published
logits (one Elastic ResNeXt, one plain DLA, one plain DenseNet; the remaining operations are the
same functions). Which blocks are Elastic is the original's own rule: stride 1 and not the last
stage (ResNeXt, DLA `planes < 1024`); DenseNet: every layer whose dense block input is not 7x7.
"""
import json
import os
import zlib
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'original')


# ------------------------------------------------------------------------------------ stand-ins

def _tensor(key: str, shape: Sequence[int]) -> torch.Tensor:
    g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    shape = tuple(shape)
    if key.endswith('num_batches_tracked'):
        return torch.tensor(0, dtype=torch.long)
    if key.endswith('running_mean'):
        return 0.1 * torch.randn(shape, generator=g)
    if key.endswith('running_var'):
        return 1.0 + torch.rand(shape, generator=g)
    if len(shape) == 1 and key.endswith('weight'):
        return 1.0 + 0.1 * torch.randn(shape, generator=g)
    if key.endswith('bias'):
        return 0.1 * torch.randn(shape, generator=g)
    fan_in = 1
    for s in shape[1:]:
        fan_in *= s
    return torch.randn(shape, generator=g) * fan_in ** -0.5


def manifest(arch: str) -> dict:
    with open(os.path.join(DATA, arch + '.json')) as f:
        return json.load(f)


def stand_in_state(arch: str, num_classes: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """The stand-in state dict of the original `arch`, in its key order. `num_classes` other than
    the manifest's gives the same network with another classifier (a COCO fine-tune has 80)."""
    from safetensors.torch import load_file
    keys = manifest(arch)['keys']
    if num_classes is not None:
        classifier = keys[-1][0].rsplit('.', 1)[0]  # the last key is the classifier's bias
        keys = [[k, [num_classes, *s[1:]] if k.startswith(classifier + '.') else s] for k, s in keys]
    state = OrderedDict((k, _tensor(k, s)) for k, s in keys)
    for k, v in load_file(os.path.join(DATA, arch + '.bn.safetensors')).items():
        state[k] = v.clone()
    return state


def as_release(state: Dict[str, torch.Tensor]) -> dict:
    """What a released `<arch>.pth.tar` holds: DataParallel's `module.` prefix, wrapped."""
    return {'epoch': 120, 'arch': 'unknown', 'state_dict': OrderedDict(('module.' + k, v) for k, v in state.items())}


def make_input(shape: Sequence[int], seed: int = 0) -> torch.Tensor:
    """Smooth random images: 1/16-size noise bilinearly enlarged, plus a little fine noise."""
    n, c, h, w = shape
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, c, max(1, h // 16), max(1, w // 16), generator=g)
    smooth = F.interpolate(coarse, size=(h, w), mode='bilinear', align_corners=False)
    return 2.0 * smooth + 0.1 * torch.randn(n, c, h, w, generator=g)


def expected(arch: str) -> List[dict]:
    """The published logits of the original implementation, if any: [{shape, seed, logits}]."""
    path = os.path.join(DATA, 'expected', arch + '.json')
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f)['outputs']


# -------------------------------------------------------------------------------------- forward

def _bn(sd, p, x):
    return F.batch_norm(x, sd[p + '.running_mean'], sd[p + '.running_var'], sd[p + '.weight'], sd[p + '.bias'],
                        False, 0., 1e-5)


def _conv(sd, p, x, stride=1, padding=0):
    w = sd[p + '.weight']
    groups = x.shape[1] // w.shape[1]
    return F.conv2d(x, w, sd.get(p + '.bias'), stride, padding, 1, groups)


def _down(x):
    # odd sizes: replicate-pad bottom / right to even, then 2x2 average
    return F.avg_pool2d(F.pad(x, (0, x.shape[3] % 2, 0, x.shape[2] % 2), mode='replicate'), 2, 2)


def _up(x, like):
    return F.interpolate(x, scale_factor=2, mode='bilinear', align_corners=False)[:, :, :like.shape[2], :like.shape[3]]


def _bottleneck_paths(sd, p, x, stride, elastic):
    """Sum of the ResNeXt / DLA-X paths of one block (before bn3)."""
    def path(suffix, inp):
        h = F.relu(_bn(sd, f'{p}.bn1{suffix}', _conv(sd, f'{p}.conv1{suffix}', inp)))
        h = F.relu(_bn(sd, f'{p}.bn2{suffix}', _conv(sd, f'{p}.conv2{suffix}', h, stride, 1)))
        return _conv(sd, f'{p}.conv3{suffix}', h)

    out = path('', x)
    if p + '.conv1_d.weight' in sd:
        out = out + (_up(path('_d', _down(x)), out) if elastic else path('_d', x))
    return out


def _resnext(sd, x, elastic):
    x = F.relu(_bn(sd, 'bn1', _conv(sd, 'conv1', x, 2, 3)))
    x = F.max_pool2d(x, 3, 2, 1)
    for stage in range(1, 5):
        i = 0
        while f'layer{stage}.{i}.conv1.weight' in sd:
            p = f'layer{stage}.{i}'
            stride = 2 if stage > 1 and i == 0 else 1
            out = _bn(sd, p + '.bn3', _bottleneck_paths(sd, p, x, stride, elastic and stride == 1 and stage < 4))
            if p + '.selayer.conv1.weight' in sd:
                s = F.relu(_conv(sd, p + '.selayer.conv1', F.adaptive_avg_pool2d(out, 1)))
                out = out * torch.sigmoid(_conv(sd, p + '.selayer.conv2', s))
            shortcut = _bn(sd, p + '.downsample.1', _conv(sd, p + '.downsample.0', x, stride)) \
                if p + '.downsample.0.weight' in sd else x
            x = F.relu(out + shortcut)
            i += 1
    x = F.adaptive_avg_pool2d(x, 1).flatten(1)
    return F.linear(x, sd['fc.weight'], sd['fc.bias'])


def _dla_tree(sd, p, x, levels, stride, level_root, root_residual, planes, children=None):
    children = [] if children is None else children
    bottom = F.max_pool2d(x, stride, stride) if stride > 1 else x
    # the original builds `project` in every tree whose channels change, but a deeper tree discards it
    residual = _bn(sd, p + '.project.1', _conv(sd, p + '.project.0', bottom)) \
        if p + '.project.0.weight' in sd else bottom
    if level_root:
        children.append(bottom)
    if levels == 1:
        x1 = _dla_block(sd, p + '.tree1', x, residual, stride, planes)
        x2 = _dla_block(sd, p + '.tree2', x1, x1, 1, planes)
        inputs = [x2, x1] + children
        out = _bn(sd, p + '.root.bn', _conv(sd, p + '.root.conv', torch.cat(inputs, 1)))
        return F.relu(out + inputs[0] if root_residual else out)
    x1 = _dla_tree(sd, p + '.tree1', x, levels - 1, stride, False, root_residual, planes)
    children.append(x1)
    return _dla_tree(sd, p + '.tree2', x1, levels - 1, 1, False, root_residual, planes, children)


def _dla_block(sd, p, x, residual, stride, planes):
    out = _bn(sd, p + '.bn3', _bottleneck_paths(sd, p, x, stride, stride == 1 and planes < 1024))
    return F.relu(out + residual)


def _dla(sd, x, levels, root_residual):
    channels = [16, 32, 128, 256, 512, 1024]
    x = F.relu(_bn(sd, 'base_layer.1', _conv(sd, 'base_layer.0', x, 1, 3)))
    x = F.relu(_bn(sd, 'level0.1', _conv(sd, 'level0.0', x, 1, 1)))
    x = F.relu(_bn(sd, 'level1.1', _conv(sd, 'level1.0', x, 2, 1)))
    for i in range(2, 6):
        x = _dla_tree(sd, f'level{i}', x, levels[i], 2, i > 2, root_residual, channels[i])
    x = F.avg_pool2d(x, 7)  # the original head: a fixed 7x7 window
    return _conv(sd, 'fc', x).flatten(1)


def _densenet(sd, x):
    x = F.relu(_bn(sd, 'features.norm0', _conv(sd, 'features.conv0', x, 2, 3)))
    x = F.max_pool2d(x, 3, 2, 1)
    block = 1
    while f'features.denseblock{block}.denselayer1.norm1.weight' in sd:
        features = [x]
        layer = 1
        while f'features.denseblock{block}.denselayer{layer}.norm1.weight' in sd:
            p = f'features.denseblock{block}.denselayer{layer}'
            h = F.relu(_bn(sd, p + '.norm1', torch.cat(features, 1)))

            def path(suffix, inp):
                return _conv(sd, f'{p}.conv2{suffix}',
                             F.relu(_bn(sd, f'{p}.norm2{suffix}', _conv(sd, f'{p}.conv1{suffix}', inp))), 1, 1)

            new = path('', h)
            if p + '.conv1_d.weight' in sd:
                elastic = features[0].shape[2] != 7  # the original decides by the input size
                new = new + (_up(path('_d', _down(h)), new) if elastic else path('_d', h))
            features.append(new)
            layer += 1
        x = torch.cat(features, 1)
        p = f'features.transition{block}'
        if p + '.conv.weight' in sd:
            x = F.avg_pool2d(_conv(sd, p + '.conv', F.relu(_bn(sd, p + '.norm', x))), 2, 2)
        block += 1
    x = F.relu(_bn(sd, 'features.norm_final', x))
    x = F.avg_pool2d(x, 7).flatten(1)
    return F.linear(x, sd['classifier.weight'], sd['classifier.bias'])


_FORWARD = {
    'resnext50': lambda sd, x: _resnext(sd, x, elastic=False),
    'resnext101': lambda sd, x: _resnext(sd, x, elastic=False),
    'resnext50_elastic': lambda sd, x: _resnext(sd, x, elastic=True),
    'resnext101_elastic': lambda sd, x: _resnext(sd, x, elastic=True),
    'se_resnext50_elastic': lambda sd, x: _resnext(sd, x, elastic=True),
    'dla60x': lambda sd, x: _dla(sd, x, (1, 1, 1, 2, 3, 1), root_residual=False),
    'dla60x_elastic': lambda sd, x: _dla(sd, x, (1, 1, 1, 2, 3, 1), root_residual=False),
    'dla102x': lambda sd, x: _dla(sd, x, (1, 1, 1, 3, 4, 1), root_residual=True),
    'dla102x_elastic': lambda sd, x: _dla(sd, x, (1, 1, 3, 3, 3, 1), root_residual=True),
    'densenet201': _densenet,
    'densenet201_elastic': _densenet,
}
ARCHS = tuple(_FORWARD)


def tolerance(reference: torch.Tensor) -> float:
    """The bound a converted model's logits must meet: fp32 rounding, relative to the logits' scale."""
    return 1e-4 * max(1.0, reference.abs().max().item())


@torch.no_grad()
def original_forward(arch: str, state: Dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Logits (eval mode) of the original implementation of `arch` with `state` (original keys)."""
    return _FORWARD[arch](state, x)


if __name__ == '__main__':
    # max|logit difference| of the converted models against this forward, for the closing notes:
    #   python tests/original.py
    import timm_elastic
    print(f'{"original":<22} {"timm model":<22} {"input":<18} {"max|dlogit|":>11} {"max|logit|":>10}')
    for arch in ARCHS:
        state = stand_in_state(arch)
        model = timm_elastic.from_original(as_release(state))
        for spec in manifest(arch)['inputs']:
            x = make_input(spec['shape'], spec['seed'])
            with torch.no_grad():
                reference = original_forward(arch, state, x)
                diff = (model(x) - reference).abs().max().item()
            print(f'{arch:<22} {model.pretrained_cfg["architecture"]:<22} {str(spec["shape"]):<18} '
                  f'{diff:>11.2e} {reference.abs().max().item():>10.2f}')
