"""The ResNeXt family, used as timm users use it: by name through timm.create_model."""
import copy

import pytest
import timm
import torch
import torch.nn as nn
from timm.models.resnet import Bottleneck, ResNet

import timm_elastic
from timm_elastic.complexity import count_gmacs, count_params
from timm_elastic.layers import RESAMPLE_MODES
from timm_elastic.models.resnet import ElasticBottleneck

MODELS = ['resnext50_elastic', 'resnext101_elastic', 'seresnext50_elastic', 'resnext50x2_elastic',
          'resnext50_selastic']

# parameter counts of the original implementation (its key manifests), for the layouts it released
ORIGINAL_PARAMS = {
    'resnext50_elastic': 25_246_504,
    'resnext101_elastic': 44_265_256,
    'seresnext50_elastic': 27_803_976,
    'resnext50_selastic': 25_028_904,  # = ResNeXt50's: sElastic keeps every parameter (Appendix A)
}


def blocks(model):
    return [b for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for b in stage]


def test_registered():
    assert set(MODELS) <= set(timm.list_models('*elastic*'))
    assert set(MODELS) == set(timm_elastic.PAPER_ROWS)
    for name in MODELS:
        assert timm.is_model(name)
        assert timm.models.get_pretrained_cfg(name) is not None


@pytest.mark.parametrize('name', MODELS)
def test_counts_match_paper(name):
    model = timm.create_model(name)
    row = timm_elastic.PAPER_ROWS[name]
    params, gmacs = count_params(model), count_gmacs(model)
    assert abs(params / 1e6 / row.params_m - 1) < 0.005, (params, row)
    assert abs(gmacs / row.gmacs - 1) < 0.005, (gmacs, row)
    if name in ORIGINAL_PARAMS:
        assert params == ORIGINAL_PARAMS[name]


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


@pytest.mark.parametrize('name', MODELS)
@pytest.mark.parametrize('size', [(225, 193), (64, 64), (32, 32)])
def test_odd_and_small_inputs(name, size):
    model = timm.create_model(name, num_classes=7)
    x = torch.randn(2, 3, *size)
    for train in (True, False):
        model.train(train)
        with torch.no_grad():
            out = model(x)
        assert out.shape == (2, 7) and torch.isfinite(out).all()


def test_odd_size_matches_padded_even_layout():
    # the pooled path of an odd map sees its bottom/right row replicated: a 2x2 window over the
    # last odd row must equal a window over that row doubled
    model = timm.create_model('resnext50_selastic').eval()
    block = model.layer3[1]
    x = torch.randn(1, 1024, 7, 7)
    with torch.no_grad():
        low = block.elastic.down(x)
    torch.testing.assert_close(low[..., -1, -1], x[..., -1, -1])
    torch.testing.assert_close(low[..., 0, -1], x[..., :2, -1].mean(-1))


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


def test_more_low_resolution_paths_cost_fewer_macs():
    gmacs = [count_gmacs(timm.create_model('resnext50_selastic', elastic_ratio=r)) for r in (0.25, 0.5, 0.75)]
    assert gmacs[0] > gmacs[1] > gmacs[2]


@pytest.mark.parametrize('mode', list(RESAMPLE_MODES))
def test_resample_modes_build_run_and_train(mode):
    model = timm.create_model('resnext50_selastic', elastic_resample=mode, num_classes=3).train()
    out = model(torch.randn(2, 3, 65, 63))
    assert out.shape == (2, 3)
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


@pytest.mark.parametrize('kwargs,match', [
    (dict(elastic_ratio=1.5), r'elastic_ratio must be a number in \(0, 1\), got 1.5'),
    (dict(elastic_ratio=0), r'elastic_ratio must be a number in \(0, 1\), got 0'),
    (dict(elastic_ratio='half'), r"elastic_ratio must be a number in \(0, 1\), got 'half'"),
    (dict(elastic_ratio=0.01), r'elastic_ratio=0.01 splits a block of 32 paths'),
    (dict(elastic_resample='bicubic'), r"elastic_resample must be one of 'bilinear', .*got 'bicubic'"),
])
def test_invalid_elastic_kwargs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        timm.create_model('resnext50_elastic', **kwargs)


def test_unknown_kwarg_is_a_type_error():
    with pytest.raises(TypeError):
        timm.create_model('resnext50_elastic', elastic_ratios=0.5)


@pytest.mark.parametrize('output_stride', [8, 16, 32])
@pytest.mark.parametrize('size', [(224, 224), (225, 193)])
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


def test_train_and_eval_modes():
    model = timm.create_model('resnext50_elastic', drop_path_rate=0.2, drop_rate=0.3, num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        a, b = model(x), model(x)
    torch.testing.assert_close(a, b)
    model.train()
    bn = model.layer1[1].elastic.low.bn1
    before = bn.running_mean.clone()
    with torch.no_grad():
        c, d = model(x), model(x)
    assert not torch.allclose(bn.running_mean, before)  # the low-resolution path's BN learns statistics
    assert not torch.allclose(c, d)  # drop path / dropout are active in training only
    assert model.drop_rate == 0.3
    assert any(b.drop_path is not None for b in blocks(model) if isinstance(b, ElasticBottleneck))


def test_head_and_features_api():
    model = timm.create_model('resnext50_elastic', num_classes=11).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 2048, 3, 3)
        assert model.forward_head(feats, pre_logits=True).shape == (2, 2048)
        logits = model.forward_head(feats)
        torch.testing.assert_close(logits, model(x))
        final, inter = model.forward_intermediates(x)
        torch.testing.assert_close(final, feats)
        assert [t.shape[1] for t in inter] == [64, 256, 512, 1024, 2048]
        only = model.forward_intermediates(x, indices=[2], intermediates_only=True)
        torch.testing.assert_close(only[0], inter[2])
    assert model.num_classes == 11 and model.get_classifier().out_features == 11
    model.reset_classifier(4)
    assert model(x).shape == (2, 4)
    model.reset_classifier(0)
    assert model(x).shape == (2, 2048)
    assert model.group_matcher() == {'stem': r'^conv1|bn1|maxpool', 'blocks': r'^layer(\d+)\.(\d+)'}


def test_grad_checkpointing_same_result():
    model = timm.create_model('resnext50_selastic', num_classes=3).train()
    ref = copy.deepcopy(model)
    model.set_grad_checkpointing(True)
    x = torch.randn(2, 3, 64, 64)
    a, b = model(x), ref(x)
    torch.testing.assert_close(a, b)
    a.sum().backward()
    b.sum().backward()
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=n)


@pytest.mark.parametrize('in_chans', [1, 4])
def test_in_chans(in_chans):
    model = timm.create_model('resnext50_elastic', in_chans=in_chans, num_classes=2).eval()
    assert model.conv1.in_channels == in_chans
    assert model(torch.randn(1, in_chans, 64, 64)).shape == (1, 2)


def test_torchscript():
    model = timm.create_model('seresnext50_elastic', num_classes=5).eval()
    scripted = torch.jit.script(model)
    x = torch.randn(1, 3, 67, 61)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))


def test_fx_feature_extraction():
    torch.manual_seed(1)
    model = timm.create_model('resnext50_elastic', features_only=True, feature_cls='fx').eval()
    torch.manual_seed(1)
    ref = timm.create_model('resnext50_elastic', features_only=True).eval()
    x = torch.randn(1, 3, 65, 80)
    with torch.no_grad():
        for a, b in zip(model(x), ref(x)):
            torch.testing.assert_close(a, b)


def test_torch_compile_full_graph():
    model = timm.create_model('resnext50_selastic', num_classes=4).eval()
    x = torch.randn(2, 3, 64, 64)
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)


def test_channels_last():
    model = timm.create_model('resnext50_elastic', num_classes=4).eval()
    x = torch.randn(2, 3, 65, 64)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        feats = model.forward_features(x.to(memory_format=torch.channels_last))
        out = model.forward_head(feats)
    assert feats.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_bf16_autocast_cpu():
    model = timm.create_model('resnext50_elastic', num_classes=4).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = model(x)
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out.float()).all()
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max() + 0.1
    # training step under autocast
    model.train()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        loss = model(x).float().logsumexp(-1).mean()
    loss.backward()
    assert model.layer1[0].elastic.low.conv1.weight.grad is not None


@pytest.mark.parametrize('name', MODELS)
def test_pretrained_cfg(name):
    cfg = timm.create_model(name).pretrained_cfg
    assert cfg['mean'] == timm.data.IMAGENET_DEFAULT_MEAN and cfg['std'] == timm.data.IMAGENET_DEFAULT_STD
    assert cfg['input_size'] == (3, 224, 224) and cfg['crop_pct'] == 0.875
    assert cfg['interpolation'] == 'bilinear'
    assert cfg['first_conv'] == 'conv1' and cfg['classifier'] == 'fc'
    assert cfg['paper_ids'] == 'arXiv:1812.05262'
    assert cfg['license']
    assert cfg['architecture'] == name
    data_cfg = timm.data.resolve_data_config(model=timm.create_model(name))
    assert data_cfg['input_size'] == (3, 224, 224)
