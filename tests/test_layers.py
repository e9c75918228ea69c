"""The Elastic mechanism on its own: resampling, odd sizes, path splits, options, errors."""
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from timm_elastic.layers import RESAMPLE_MODES, Elastic, check_elastic_args, pop_elastic_args, split_paths
from timm_elastic.layers.resample import FilterDown, FilterUp


class Path(nn.Sequential):
    """A tiny T_i: 1x1 conv to `paths` channels, 3x3 conv (with the given dilation) to out_chs."""

    def __init__(self, in_chs, out_chs, paths, dilation):
        super().__init__(
            nn.Conv2d(in_chs, paths, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(paths, out_chs, 3, padding=dilation, dilation=dilation, bias=False),
        )
        self.dilation = dilation


def make_elastic(in_chs=6, out_chs=5, paths=8, **kwargs):
    return Elastic(lambda n, d: Path(in_chs, out_chs, n, d), paths, in_chs, out_chs, **kwargs)


def original_recipe(m: Elastic, x, mode='bilinear'):
    """The original implementation, written out: replicate-pad odd sizes, 2x2 average pool,
    low paths, 2x upsampling (bilinear with align_corners=False, or nearest), crop, add the high paths."""
    h, w = x.shape[-2:]
    low = F.avg_pool2d(F.pad(x, (0, w % 2, 0, h % 2), mode='replicate'), 2, stride=2)
    kwargs = dict(align_corners=False) if mode == 'bilinear' else {}
    low = F.interpolate(m.low(low), scale_factor=2, mode=mode, **kwargs)
    return m.high(x) + low[:, :, :h, :w]


@pytest.mark.parametrize('mode', ['bilinear', 'nearest'])  # Table 6: 'Bilinear w/ AP' (the default), 'Nearest w/ AP'
@pytest.mark.parametrize('size', [(8, 8), (7, 7), (15, 14), (9, 16), (1, 1), (3, 2)])
def test_matches_original_recipe(size, mode):
    m = make_elastic(elastic_resample=mode).eval()
    x = torch.randn(2, 6, *size)
    with torch.no_grad():
        torch.testing.assert_close(m(x), original_recipe(m, x, mode), rtol=0, atol=1e-6)


@pytest.mark.parametrize('size', [(7, 7), (15, 14), (1, 1), (5, 2)])
def test_ceil_mode_pooling_is_replicate_padding(size):
    x = torch.randn(1, 3, *size)
    h, w = size
    expected = F.avg_pool2d(F.pad(x, (0, w % 2, 0, h % 2), mode='replicate'), 2, stride=2)
    torch.testing.assert_close(make_elastic(in_chs=3).down(x), expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize('mode', list(RESAMPLE_MODES))
@pytest.mark.parametrize('size', [(8, 8), (7, 9)])
def test_every_resample_mode_keeps_size_and_trains(mode, size):
    m = make_elastic(elastic_resample=mode).train()
    x = torch.randn(2, 6, *size, requires_grad=True)
    y = m(x)
    assert y.shape == (2, 5, *size)
    y.square().mean().backward()
    assert all(p.grad is not None for p in m.parameters())
    assert x.grad is not None


def test_resample_modes_differ_as_table_6_says():
    x = torch.randn(1, 6, 8, 8)
    low_input = {mode: make_elastic(elastic_resample=mode).down(x).shape[-1] for mode in RESAMPLE_MODES}
    assert low_input == {'bilinear': 4, 'nearest': 4, 'filter': 4, 'dilated': 8, 'dilated_avg': 8}
    assert isinstance(make_elastic(elastic_resample='filter').down, FilterDown)
    assert isinstance(make_elastic(elastic_resample='filter').up, FilterUp)
    # only the trained filters add parameters
    base = sum(p.numel() for p in make_elastic().parameters())
    for mode in RESAMPLE_MODES:
        extra = sum(p.numel() for p in make_elastic(elastic_resample=mode).parameters()) - base
        assert extra == (6 * 4 + 5 * 16 if mode == 'filter' else 0), mode


def test_low_path_dilation():
    # a block dilated by d stands in for one at a d times coarser stride: its low group's taps, one pooled pixel
    # apart there, are d pooled pixels apart here (test_dilated_blocks_keep_the_input_span_of_the_stride_model)
    assert make_elastic().low.dilation == 1
    assert make_elastic(dilation=2).low.dilation == 2
    assert make_elastic(dilation=4).low.dilation == 4
    assert make_elastic(dilation=2).high.dilation == 2
    # the dilated rows of Table 6 stay at full resolution and dilate instead
    assert make_elastic(elastic_resample='dilated').low.dilation == 2
    assert make_elastic(elastic_resample='dilated_avg', dilation=2).low.dilation == 4


def test_trained_filters_start_as_the_fixed_ones():
    x = torch.randn(1, 4, 10, 12)
    torch.testing.assert_close(FilterDown(4)(x), F.avg_pool2d(x, 2))
    # odd sizes are replicate-padded like the default
    xo = torch.randn(1, 4, 7, 9)
    torch.testing.assert_close(FilterDown(4)(xo), F.avg_pool2d(xo, 2, ceil_mode=True))
    y = torch.randn(1, 4, 6, 6)
    up = FilterUp(4)(y, torch.zeros(1, 4, 12, 12))
    bilinear = F.interpolate(y, scale_factor=2, mode='bilinear', align_corners=False)
    assert up.shape == bilinear.shape
    # identical away from the border, where bilinear clamps and the transposed filter zero-pads
    torch.testing.assert_close(up[..., 1:-1, 1:-1], bilinear[..., 1:-1, 1:-1])


def test_dilated_avg_smooths_at_full_resolution():
    m = make_elastic(elastic_resample='dilated_avg')
    x = torch.arange(9.).view(1, 1, 3, 3).expand(1, 6, 3, 3)
    expected = F.avg_pool2d(F.pad(x, (0, 1, 0, 1), mode='replicate'), 2, stride=1)
    torch.testing.assert_close(m.down(x), expected)


@pytest.mark.parametrize('paths,ratio,expected', [
    (32, 0.5, (16, 16)), (32, 0.25, (24, 8)), (32, 0.75, (8, 24)), (64, 0.5, (32, 32)),
    (50, 0.5, (25, 25)), (128, 0.5, (64, 64)), (2, 0.5, (1, 1)),
])
def test_split_paths(paths, ratio, expected):
    assert split_paths(paths, ratio) == expected


@pytest.mark.parametrize('ratio', [1.5, 0, 1, 1.0, -0.5, True, '0.5', None, float('nan')])
def test_bad_ratio(ratio):
    with pytest.raises(ValueError, match=r'elastic_ratio must be a number in \(0, 1\), got'):
        check_elastic_args(ratio)
    with pytest.raises(ValueError, match='elastic_ratio'):
        make_elastic(elastic_ratio=ratio)


def test_ratio_that_leaves_a_group_empty():
    with pytest.raises(ValueError, match=r'elastic_ratio=0.01 splits a block of 32 paths into 32 high- and 0 low'):
        split_paths(32, 0.01)
    with pytest.raises(ValueError, match='both need at least one'):
        make_elastic(paths=2, elastic_ratio=0.9)
    # the range named is the one accepted, its bounds unrounded (0.9375 was refused as 8 paths' "[0.0625, 0.938)")
    with pytest.raises(ValueError, match=re.escape('use a ratio in [0.0625, 0.9375)')):
        split_paths(8, 0.9375)
    assert split_paths(8, 0.0625) == (7, 1) and split_paths(8, 0.93749) == (1, 7)


@pytest.mark.parametrize('mode', ['cubic', 'Bilinear', '', None])
def test_bad_resample(mode):
    with pytest.raises(ValueError, match=r"elastic_resample must be one of 'bilinear', 'nearest', 'filter', "
                                         r"'dilated', 'dilated_avg', got"):
        make_elastic(elastic_resample=mode)


def test_pop_elastic_args():
    kwargs = dict(elastic_ratio=0.25, elastic_resample='nearest', num_classes=3)
    assert pop_elastic_args(kwargs) == dict(elastic_ratio=0.25, elastic_resample='nearest')
    assert kwargs == dict(num_classes=3)
    assert pop_elastic_args(kwargs) == {}
    with pytest.raises(ValueError, match='elastic_resample must be one of'):
        pop_elastic_args(dict(elastic_resample='area'))


@pytest.mark.parametrize('mode', ['bilinear', 'dilated'])
def test_dilate_in_place_equals_building_with_the_dilation(mode):
    """`Elastic.dilate(d)` (a family's output_stride, after construction) gives the paths the dilations a block
    built with `dilation=d` has (the low group's by the same rule: d at half resolution, 2d when dilated),
    so the same weights compute the same outputs."""
    from timm_elastic.models.resnet import BottleneckPath

    def make_path(groups, dilation):
        return BottleneckPath(8, 8, groups, 2, dilation=dilation)
    torch.manual_seed(0)
    built = Elastic(make_path, 4, 8, 8, elastic_resample=mode, dilation=4).eval()
    dilated = Elastic(make_path, 4, 8, 8, elastic_resample=mode).eval()
    dilated.load_state_dict(built.state_dict())
    dilated.dilate(4)
    assert dilated.high.conv2.dilation == (4, 4) and dilated.low.conv2.dilation == ((8, 8) if mode == 'dilated'
                                                                                    else (4, 4))
    x = torch.randn(2, 8, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(dilated(x), built(x), rtol=0, atol=0)


@pytest.mark.parametrize('name', ['resnext_tiny_elastic', 'dla_x60_elastic', 'densenet201_elastic'])
@pytest.mark.parametrize('mode', ['bilinear', 'dilated'])
def test_dilated_blocks_keep_the_input_span_of_the_stride_model(name, mode):
    """At output_stride 8 and 16 (the algorithme a trous) every Elastic block's 3x3 taps lie as many input pixels
    apart as in the stride model, in both groups: the span of a tap step is the convolution's dilation times the
    stride (input pixels per pixel) of the map it runs on, the block's input for the full-resolution group and
    for the dilated rows' low group, the 2x pooled map (twice that stride) for the others. A low group at half
    the full-resolution dilation saw half the span it was trained with (layer3 of ResNeXt at output stride 8)."""
    import timm
    import timm_elastic  # noqa: F401  (registers the models)

    def spans(output_stride):
        model = timm.create_model(name, output_stride=output_stride, elastic_resample=mode).eval()
        found, hooks = {}, []

        def tap_step(group):
            conv = next(m for m in group.modules() if isinstance(m, nn.Conv2d) and m.kernel_size[0] > 1)
            return conv.dilation[0]
        for block_name, block in model.named_modules():
            if isinstance(block, Elastic):
                def record(module, inputs, output, block_name=block_name):
                    stride = 64 // inputs[0].shape[-1]  # input pixels per pixel of the block's map
                    low_stride = stride if module.resample_mode.startswith('dilated') else 2 * stride
                    found[block_name] = (tap_step(module.high) * stride, tap_step(module.low) * low_stride)
                hooks.append(block.register_forward_hook(record))
        with torch.no_grad():
            model(torch.randn(1, 3, 64, 64))
        return found
    reference = spans(32)
    assert reference and all(low == 2 * high for high, low in reference.values())  # the paper's two resolutions
    for output_stride in (16, 8):
        assert spans(output_stride) == reference, output_stride
