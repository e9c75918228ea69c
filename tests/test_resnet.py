"""The ResNeXt family: where Elastic goes, its layout, ratios and dilation (what every model does
is in test_api.py)."""
import pytest
import timm
import torch
from timm.models.resnet import Bottleneck, ResNet

from timm_elastic.complexity import count_params
from timm_elastic.models.resnet import ElasticBottleneck


def blocks(model):
    return [b for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for b in stage]


@pytest.mark.parametrize('name,layers,n_elastic', [
    ('resnext50_elastic', (6, 8, 5, 3), 17),  # "the 17 Elastic blocks" of Sec. 4.1.1
    ('resnext101_elastic', (12, 14, 20, 3), 44),
    ('resnext50_selastic', (3, 4, 6, 3), 11),
])
def test_elastic_on_stride_1_blocks_of_stages_1_to_3(name, layers, n_elastic):
    model = timm.create_model(name)
    assert isinstance(model, ResNet)
    assert tuple(len(s) for s in (model.layer1, model.layer2, model.layer3, model.layer4)) == layers
    for s, stage in enumerate((model.layer1, model.layer2, model.layer3, model.layer4)):
        for i, block in enumerate(stage):
            nominal_stride_2 = i == 0 and s > 0
            expected = ElasticBottleneck if s < 3 and not nominal_stride_2 else Bottleneck
            assert type(block) is expected, (s, i)
    assert sum(isinstance(b, ElasticBottleneck) for b in blocks(model)) == n_elastic


def test_block_layout_maps_the_original_paths():
    """Half the 32 paths (16 groups of 4) in each resolution group; conv3 outputs meet in one bn3."""
    block = timm.create_model('resnext50_elastic').layer1[1]
    for group in (block.elastic.high, block.elastic.low):
        assert group.conv1.weight.shape == (64, 256, 1, 1)
        assert group.conv2.weight.shape == (64, 4, 3, 3) and group.conv2.groups == 16
        assert group.conv3.weight.shape == (256, 64, 1, 1)
        assert not hasattr(group, 'bn3')
    assert block.bn3.num_features == 256
    se_block = timm.create_model('seresnext50_elastic').layer1[1]
    assert se_block.se.fc1.weight.shape == (16, 256, 1, 1) and se_block.se.fc1.bias is not None
    x2 = timm.create_model('resnext50x2_elastic').layer1[1]
    assert x2.elastic.high.conv2.groups == 32 and x2.elastic.high.conv2.weight.shape == (128, 4, 3, 3)


@pytest.mark.parametrize('ratio,low_width', [(0.25, 32), (0.5, 64), (0.75, 96)])
def test_elastic_ratio(ratio, low_width):
    """Table 7: the fraction of paths at low resolution; the total width is unchanged."""
    model = timm.create_model('resnext50_selastic', elastic_ratio=ratio, num_classes=5)
    block = model.layer1[1]
    assert block.elastic.low.conv1.out_channels == low_width
    assert block.elastic.high.conv1.out_channels == 128 - low_width
    assert count_params(model) == count_params(timm.create_model('resnext50_selastic', num_classes=5))
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 5)


# the fast subset (-m "not slow") runs one case, the odd size at the largest dilation; the full suite all six
@pytest.mark.parametrize('output_stride', [8, pytest.param(16, marks=pytest.mark.slow),
                                           pytest.param(32, marks=pytest.mark.slow)])
@pytest.mark.parametrize('size', [pytest.param((224, 224), marks=pytest.mark.slow), (225, 193)])
def test_features_only_every_index_and_output_stride(output_stride, size):
    full = timm.create_model('resnext50_elastic', features_only=True, output_stride=output_stride).eval()
    assert full.feature_info.channels() == [64, 256, 512, 1024, 2048]
    reductions = full.feature_info.reduction()
    assert reductions == [2, 4, 8, min(16, output_stride), output_stride]
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        feats = full(x)
    assert len(feats) == 5
    for f, c, r in zip(feats, full.feature_info.channels(), reductions):
        assert f.shape[1] == c
        # conv stem / pooling round up: ceil division at each stride-2 step
        assert f.shape[-2] == -(-size[0] // r) and f.shape[-1] == -(-size[1] // r), (f.shape, r)
    for i in range(5):
        one = timm.create_model('resnext50_elastic', features_only=True, out_indices=(i,),
                                output_stride=output_stride).eval()
        one.load_state_dict(full.state_dict(), strict=False)
        with torch.no_grad():
            torch.testing.assert_close(one(x)[0], feats[i])
    pair = timm.create_model('resnext50_elastic', features_only=True, out_indices=(1, 3), output_stride=output_stride)
    assert pair.feature_info.channels() == [256, 1024]


def test_dilated_model_keeps_the_layout_and_weights():
    plain = timm.create_model('resnext50_elastic')
    for output_stride in (8, 16):
        dilated = timm.create_model('resnext50_elastic', output_stride=output_stride)
        assert [type(b) for b in blocks(dilated)] == [type(b) for b in blocks(plain)]
        dilated.load_state_dict(plain.state_dict())  # strict: identical keys and shapes


def test_drop_path_reaches_elastic_blocks():
    """drop_path_rate reaches the Elastic blocks (all but the first, whose rate is 0), and drops their residual
    branch: at drop probability 1, a training block returns act(shortcut) alone; evaluating, it does not."""
    model = timm.create_model('resnext50_elastic', drop_path_rate=0.2, num_classes=10, zero_init_last=False)
    elastic = [b for b in blocks(model) if isinstance(b, ElasticBottleneck)]
    assert all(b.drop_path is not None for b in elastic[1:])
    block = model.layer1[1]
    assert isinstance(block, ElasticBottleneck) and block.downsample is None
    block.drop_path.drop_prob = 1.
    x = torch.randn(2, 256, 16, 16)
    with torch.no_grad():
        assert torch.equal(block.train()(x), torch.relu(x))
        assert not torch.allclose(block.eval()(x), torch.relu(x))


def test_bad_kwargs_are_said_as_the_dla_and_densenet_say_them():
    with pytest.raises(ValueError, match='^output_stride must be 8, 16 or 32, got 12$'):  # timm's bare assert
        timm.create_model('resnext_tiny_elastic', output_stride=12)
    for name in ('resnext_tiny_elastic', 'dla_x60_elastic', 'densenet201_elastic'):  # a string is shown as one
        with pytest.raises(ValueError, match="^output_stride must be 8, 16 or 32, got '16'$"):
            timm.create_model(name, output_stride='16')
    # the registered twin (timm's Bottleneck raised an unexpected-keyword TypeError from inside timm)
    with pytest.raises(TypeError, match=r'^elastic_ratio, elastic_resample given to resnext_tiny, which has no '
                                        r'Elastic blocks$'):
        timm.create_model('resnext_tiny', elastic_ratio=0.25, elastic_resample='nearest')
    assert timm.create_model('resnext_tiny_elastic', elastic_ratio=0.25, output_stride=16)
