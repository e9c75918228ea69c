"""The DLA family: where Elastic goes, its layout, input sizes, the original head, and the
faithful baselines (what every model does is in test_api.py)."""
import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.dla import DLA, DlaBottleneck

from timm_elastic.layers import Elastic
from timm_elastic.models.dla import ElasticDlaBottleneck


def bottlenecks(model):
    """(level, block) for every bottleneck of levels 2-5, in order."""
    return [(k, m) for k in range(2, 6) for m in getattr(model, f'level{k}').modules()
            if isinstance(m, (DlaBottleneck, ElasticDlaBottleneck))]


# a tree of L levels holds 2^L blocks; all but level 5's two and the three stride-2 ones are Elastic
@pytest.mark.parametrize('name,n_blocks,n_elastic', [
    ('dla_x60', 16, 0),
    ('dla_x102', 28, 0),
    ('dla_x60_elastic', 16, 11),
    ('dla_x102_selastic', 28, 23),  # Table 8: DLA-X102's own blocks
    ('dla_x102_elastic', 26, 21),
])
def test_elastic_on_stride_1_blocks_below_the_last_level(name, n_blocks, n_elastic):
    model = timm.create_model(name)
    assert isinstance(model, DLA)
    found = bottlenecks(model)
    assert len(found) == n_blocks
    elastic = 'elastic' in name
    for level, block in found:
        stride = block.stride
        expected = ElasticDlaBottleneck if elastic and stride == 1 and level < 5 else DlaBottleneck
        assert type(block) is expected, (level, block)
    assert sum(isinstance(b, ElasticDlaBottleneck) for _, b in found) == n_elastic


def test_block_layout_maps_the_original_paths():
    """Split32: half the 32 paths (16 groups of 4) in each group; Split50: 25 groups of 4."""
    block = timm.create_model('dla_x60_elastic').level2.tree2
    for group in (block.elastic.high, block.elastic.low):
        assert group.conv1.weight.shape == (64, 128, 1, 1)
        assert group.conv2.weight.shape == (64, 4, 3, 3) and group.conv2.groups == 16
        assert group.conv3.weight.shape == (128, 64, 1, 1)
    assert block.bn3.num_features == 128
    x102 = timm.create_model('dla_x102_elastic')
    group = x102.level4.tree1.tree1.tree2.elastic.low
    assert group.conv1.weight.shape == (400, 512, 1, 1) and group.conv2.groups == 25
    last = x102.level5.tree2
    assert type(last) is DlaBottleneck and last.conv2.weight.shape == (1600, 32, 3, 3) and last.conv2.groups == 50
    assert x102.level2.tree2.tree2.root.shortcut  # residual root (Table 9 / the original's root_residual)


@pytest.mark.parametrize('ratio,low_paths', [(0.25, 13), (0.5, 25), (0.75, 38)])
def test_elastic_ratio_splits_split50(ratio, low_paths):
    # 50 paths of width 8 at level 3: round(50 * ratio) of them at low resolution
    block = timm.create_model('dla_x102_elastic', elastic_ratio=ratio).level3.tree2.tree2.tree1
    assert block.elastic.low.conv1.out_channels == low_paths * 8
    assert block.elastic.high.conv1.out_channels == (50 - low_paths) * 8
    assert block.elastic.low.conv2.groups == low_paths


@pytest.mark.parametrize('ours,theirs', [('dla_x60', 'dla60x'), ('dla_x102', 'dla102x')])
def test_baseline_is_timms_function_at_multiples_of_32(ours, theirs):
    ref = timm.create_model(theirs).eval()
    model = timm.create_model(ours).eval()
    model.load_state_dict(ref.state_dict())  # strict: the same keys and shapes
    for size in (224, 64):
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            torch.testing.assert_close(model(x), ref(x), rtol=0, atol=0)


@pytest.mark.parametrize('size', [(240, 240), (225, 193), (33, 47)])
def test_any_size_lines_up(size):
    """Shortcut (max pool) and block (stride-2 conv) both round up, so every level is ceil(size / 2^k)."""
    model = timm.create_model('dla_x60_elastic', features_only=True, out_indices=(0, 1, 2, 3, 4, 5)).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, *size))
    for k, f in enumerate(feats):
        assert f.shape[-2:] == (-(-size[0] // 2 ** k), -(-size[1] // 2 ** k))


def test_head_window_reproduces_the_original_fixed_pool():
    model = timm.create_model('dla_x60', num_classes=5).eval()
    original = timm.create_model('dla_x60', num_classes=5, head_window=7).eval()
    original.load_state_dict(model.state_dict())
    with torch.no_grad():
        x = torch.randn(2, 3, 224, 224)
        torch.testing.assert_close(original(x), model(x))  # 7x7 map: the window is the whole map
        x = torch.randn(2, 3, 256, 256)
        feats = original.forward_features(x)
        assert feats.shape[-2:] == (8, 8)
        top_left = original.fc(feats[..., :7, :7].mean((2, 3), keepdim=True)).flatten(1)
        torch.testing.assert_close(original(x), top_left, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(original(x), model(x), atol=1e-4)
        x = torch.randn(1, 3, 448, 448)  # 14x14: four windows averaged = the global average
        torch.testing.assert_close(original(x), model(x), rtol=1e-4, atol=1e-5)
        # below 7x7 (96: 3x3, 161x96: 6x3) the map is one window, the global average (a converted release's
        # config has head_window 7: stress tests at 96 raised torch's "Output size is too small")
        for size in ((96, 96), (161, 96)):
            x = torch.randn(1, 3, *size)
            torch.testing.assert_close(original(x), model(x), rtol=1e-5, atol=1e-5)
        assert original.forward_head(original.forward_features(x), pre_logits=True).shape == (1, 1024)
        # without a global pool the map is returned as it is, as timm's models do (the window pooled it: 1x1 at 256)
        x = torch.randn(1, 3, 256, 256)
        for m in (timm.create_model('dla_x60', num_classes=0, global_pool='', head_window=7).eval(), original):
            m.reset_classifier(0, '')
            torch.testing.assert_close(m(x), m.forward_features(x))
        if hasattr(original, 'prune_intermediate_layers'):  # timm's DLA has it from timm 1.0.31 on
            original.prune_intermediate_layers([3])
            assert original(x).shape == (1, 256, 32, 32)


@pytest.mark.parametrize('kwargs,error,match', [
    (dict(head_window=0), ValueError, 'head_window must be None or a positive int, got 0'),
    (dict(output_stride=4), ValueError, 'output_stride must be 8, 16 or 32, got 4'),
])
def test_bad_model_args(kwargs, error, match):
    with pytest.raises(error, match=match):
        timm.create_model('dla_x60_elastic', **kwargs)


def test_baselines_take_no_elastic_args():
    with pytest.raises(TypeError, match=r'elastic_ratio given to a DLA without Elastic blocks'):
        timm.create_model('dla_x60', elastic_ratio=0.25)


def test_model_kwargs_override_the_architecture_as_timms_do():
    """timm's entry points let a kwarg replace the architecture's value (dict(model_args, **kwargs)): `elastic`
    of the DLA baselines did not (dict() got multiple values for keyword argument 'elastic')."""
    with torch.device('meta'):
        model = timm.create_model('dla_x60', elastic=True)
    assert any(isinstance(m, Elastic) for m in model.modules())


def test_unused_original_projections():
    """The original's unused projections: one per deeper tree whose channels change (models/dla.py)."""
    model = timm.create_model('dla_x60')
    # level3 (256 x 128) and level4, level4.tree1 (512 x 256): conv + BN weight and bias
    params, gmacs = model.unused_original_counts()
    assert params == (128 * 256 + 2 * 256) + 2 * (256 * 512 + 2 * 512)
    assert gmacs == pytest.approx((128 * 256 * 28 ** 2 + 2 * 256 * 512 * 14 ** 2) / 1e9)
    assert model.unused_original_counts(256)[1] == pytest.approx(
        (128 * 256 * 32 ** 2 + 2 * 256 * 512 * 16 ** 2) / 1e9)


@pytest.mark.parametrize('output_stride', [16, 8])
def test_output_stride_dilates_with_the_same_weights(output_stride, intermediates):
    """Dilation instead of stride (the algorithme a trous), the same weights: the plain baseline's features equal
    the stride model's at the positions it computes (every 2nd / 4th), through the 2x2 max pools and the
    strided convolutions now at every position; the Elastic model's up to its first dilated level (an Elastic
    level's low branch pools the full-resolution map there: no longer equal)."""
    x = torch.randn(1, 3, 64, 64)
    for name in ('dla_x60', 'dla_x60_elastic'):
        torch.manual_seed(0)
        ref = timm.create_model(name)
        dilated = timm.create_model(name, output_stride=output_stride)
        dilated.load_state_dict(ref.state_dict())
        want, got = intermediates(ref, x), intermediates(dilated, x)
        assert [i['reduction'] for i in dilated.feature_info] == [1, 2, 4, 8, min(16, output_stride), output_stride]
        assert [64 // f.shape[-1] for f in got] == [i['reduction'] for i in dilated.feature_info]
        first = 6 - {16: 1, 8: 2}[output_stride]  # the first dilated level
        for k, (a, b) in enumerate(zip(want, got)):
            step = b.shape[-1] // a.shape[-1]
            if name == 'dla_x60' or k < first or (k == first and output_stride == 16):
                torch.testing.assert_close(b[..., ::step, ::step], a, rtol=1e-4, atol=1e-4, msg=f'{name} level{k}')
        if name == 'dla_x60_elastic' and output_stride == 8:  # level 4 holds Elastic blocks
            assert (got[4][..., ::2, ::2] - want[4]).abs().max() > 1e-2


def test_output_stride_features_only():
    m = timm.create_model('dla_x60_elastic', features_only=True, output_stride=8, out_indices=(2, 3, 4, 5)).eval()
    with torch.no_grad():
        feats = m(torch.randn(1, 3, 64, 64))
    assert [64 // f.shape[-1] for f in feats] == m.feature_info.reduction() == [4, 8, 8, 8]
