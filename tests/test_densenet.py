"""The DenseNet family: where Elastic goes and its layout (what every model does is in test_api.py)."""
import pytest
import timm
import torch
from timm.models.densenet import DenseLayer, DenseNet

from timm_elastic.complexity import count_params
from timm_elastic.models.densenet import ElasticDenseLayer


def layers(model, block):
    return list(getattr(model.features, f'denseblock{block}').values())


def test_elastic_in_the_first_three_dense_blocks():
    """Table 11: dense blocks of 10, 20, 40 Elastic layers (56, 28, 14 at 224) and 30 plain (7x7)."""
    model = timm.create_model('densenet201_elastic')
    assert isinstance(model, DenseNet)
    for block, (n, kind) in enumerate([(10, ElasticDenseLayer), (20, ElasticDenseLayer),
                                       (40, ElasticDenseLayer), (30, DenseLayer)], 1):
        found = layers(model, block)
        assert len(found) == n and all(type(m) is kind for m in found), block


def test_layer_layout_maps_the_original_halves():
    """Shared norm1, then two halves of the 128-wide bottleneck: conv1, norm2, conv2 each."""
    model = timm.create_model('densenet201_elastic')
    layer = layers(model, 1)[0]
    assert layer.norm1.num_features == 64
    for half in (layer.elastic.high, layer.elastic.low):
        assert half.conv1.weight.shape == (64, 64, 1, 1)
        assert half.norm2.num_features == 64
        assert half.conv2.weight.shape == (32, 64, 3, 3)
    assert layers(model, 3)[39].norm1.num_features == 1664
    plain = layers(model, 4)[0]
    assert plain.conv1.weight.shape == (128, 848, 1, 1) and plain.conv2.weight.shape == (32, 128, 3, 3)
    assert model.features.norm5.num_features == 1808 and model.classifier.in_features == 1808


def test_elastic_is_fixed_by_the_architecture_not_the_input():
    # the original made the last block Elastic whenever its input was not 7x7 (e.g. at 256x256)
    model = timm.create_model('densenet201_elastic').eval()
    seen = {}

    def record(name):
        def hook(module, args, output):
            seen[name] = output.shape
        return hook

    hooks = [m.register_forward_hook(record(name))
             for name, m in model.named_modules() if isinstance(m, (DenseLayer, ElasticDenseLayer))]
    with torch.no_grad():
        model(torch.randn(1, 3, 256, 256))
    for h in hooks:
        h.remove()
    assert seen['features.denseblock4.denselayer1'][-2:] == (8, 8)
    assert type(model.features.denseblock4.denselayer1) is DenseLayer


@pytest.mark.parametrize('ratio,low_width', [(0.25, 32), (0.5, 64), (0.75, 96)])
def test_elastic_ratio_splits_the_bottleneck_channels(ratio, low_width):
    layer = layers(timm.create_model('densenet201_elastic', elastic_ratio=ratio), 2)[3]
    assert layer.elastic.low.conv1.out_channels == low_width
    assert layer.elastic.high.conv1.out_channels == 128 - low_width


def test_baseline_is_timms_densenet201():
    """DenseNet201* of the paper has timm's densenet201 layout (the original's norm_final is norm5)."""
    assert count_params(timm.create_model('densenet201')) == 20_013_928  # the original's manifest


def test_elastic_blocks_needs_one_flag_per_block():
    with pytest.raises(ValueError, match=r'elastic_blocks needs one flag per dense block \(4\), got \(True, False\)'):
        timm.create_model('densenet201_elastic', elastic_blocks=(True, False))


def saved_per_layer(model, x):
    """Tensors that autograd saves for backward during each dense layer's forward (Elastic or not), not
    counting the layer's inputs (earlier layers' features, alive anyway): what the layer adds to memory."""
    current, inputs, counts = [None], {}, {}

    def pack(t):
        if current[0] is not None and t.untyped_storage().data_ptr() not in inputs[current[0]]:
            counts[current[0]] += 1
        return t

    def enter(name, features):
        features = features[0] if isinstance(features[0], (list, tuple)) else features
        current[0], counts[name] = name, 0
        inputs[name] = {f.untyped_storage().data_ptr() for f in features}
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (DenseLayer, ElasticDenseLayer))]
    hooks = [h for n, m in layers for h in (
        m.register_forward_pre_hook(lambda m, i, n=n: enter(n, i)),
        m.register_forward_hook(lambda m, i, o: current.__setitem__(0, None)))]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    for h in hooks:
        h.remove()
    return counts


def test_memory_efficient_kwarg_checkpoints_elastic_layers():
    """memory_efficient=True checkpoints every dense layer, Elastic ones included: each keeps fewer new
    tensors for backward (what it computes is recomputed there), with the same outputs."""
    torch.manual_seed(0)
    plain = timm.create_model('densenet201_elastic', num_classes=3).train()
    torch.manual_seed(0)
    efficient = timm.create_model('densenet201_elastic', num_classes=3, memory_efficient=True).train()
    x = torch.randn(2, 3, 64, 64)
    before, after = saved_per_layer(plain, x), saved_per_layer(efficient, x)
    assert len(before) == 10 + 20 + 40 + 30  # the dense blocks of DenseNet201+Elastic (Table 11)
    assert any(isinstance(efficient.get_submodule(n), ElasticDenseLayer) for n in after)
    assert all(after[n] < before[n] for n in before), [n for n in before if after[n] >= before[n]]
    torch.testing.assert_close(efficient(x), plain(x))


@pytest.fixture(scope='module')
def densenet_and_dilated():
    torch.manual_seed(0)
    ref = timm.create_model('densenet201_elastic').eval()
    dilated = {}
    for os_ in (16, 8):
        dilated[os_] = timm.create_model('densenet201_elastic', output_stride=os_).eval()
        dilated[os_].load_state_dict(ref.state_dict())  # the same weights: nothing added or removed
    return ref, dilated


def test_output_stride_dilates_with_the_same_weights(densenet_and_dilated, intermediates):
    """Before the first dilated block the features are the stride model's; at 16 the dilated block is the plain
    last one, so at every other position its features are the stride model's too (a trous); at 8 the dilated
    block 3 is Elastic, whose low branch pools the full-resolution map: no longer equal there."""
    ref, dilated = densenet_and_dilated
    x = torch.randn(1, 3, 64, 64)
    want, at16, at8 = intermediates(ref, x), intermediates(dilated[16], x), intermediates(dilated[8], x)
    assert [tuple(f.shape[-2:]) for f in at16] == [(32, 32), (16, 16), (8, 8), (4, 4), (4, 4)]
    assert [tuple(f.shape[-2:]) for f in at8] == [(32, 32), (16, 16), (8, 8), (8, 8), (8, 8)]
    for a, b in zip(want[:4], at16[:4]):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    torch.testing.assert_close(at16[4][..., ::2, ::2], want[4], rtol=1e-4, atol=1e-4)
    for a, b in zip(want[:3], at8[:3]):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    assert (at8[3][..., ::2, ::2] - want[3]).abs().max() > 1e-2
    assert [i['reduction'] for i in dilated[16].feature_info] == [2, 4, 8, 16, 16]
    assert [i['reduction'] for i in dilated[8].feature_info] == [2, 4, 8, 8, 8]
    with pytest.raises(ValueError, match='output_stride must be 8, 16 or 32, got 4'):
        timm.create_model('densenet201_elastic', output_stride=4)


@pytest.mark.parametrize('output_stride', [16, 8])
def test_output_stride_is_exact_without_elastic_layers(output_stride, intermediates):
    """With no Elastic layer (elastic_blocks all False) every feature of the dilated model equals the stride
    model's at the positions it computes: the transitions' 2x2 averages over taps 1 and then 2 apart."""
    from timm_elastic.models.densenet import ElasticDenseNet
    kw = dict(growth_rate=8, block_config=(2, 2, 2, 2), elastic_blocks=(False,) * 4)
    torch.manual_seed(0)
    ref = ElasticDenseNet(**kw).eval()
    dilated = ElasticDenseNet(output_stride=output_stride, **kw).eval()
    dilated.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, 64, 64)
    want, got = intermediates(ref, x), intermediates(dilated, x)
    assert [64 // f.shape[-1] for f in got] == [2, 4, 8, min(16, output_stride), output_stride]
    for a, b in zip(want, got):
        step = b.shape[-1] // a.shape[-1]
        torch.testing.assert_close(b[..., ::step, ::step], a, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('output_stride', [8, 16])
def test_output_stride_features_only(output_stride):
    """timm's feature extraction at each output stride: one map per feature_info entry, of its reduction."""
    m = timm.create_model('densenet201_elastic', features_only=True, output_stride=output_stride).eval()
    with torch.no_grad():
        feats = m(torch.randn(1, 3, 64, 64))
    assert [64 // f.shape[-1] for f in feats] == m.feature_info.reduction()
    assert [f.shape[1] for f in feats] == m.feature_info.channels()
    assert m.feature_info.reduction()[-1] == output_stride
