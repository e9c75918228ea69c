"""What every registered model does, whatever its family: used as timm users use it, by name
through timm.create_model. One representative per family where a test is costly."""
import copy

import pytest
import timm
import torch

import timm_elastic
from paper import MODELS, ORIGINAL_CODE, PAPER, PAPER_FLOPS_DIFFER, SELASTIC_PARAMS
from timm_elastic.complexity import count_gmacs, count_params
from timm_elastic.layers import RESAMPLE_MODES

ALL = timm_elastic.list_models()
# one Elastic model per family, the cheapest
FAMILY = ['resnext50_selastic', 'dla_x60_elastic', 'densenet201_elastic']
# FAMILY for the costlier tests: DenseNet201's case, by far the slowest of the three, is left out of the fast
# subset (`pytest -m "not slow"`); the full suite runs it
FAMILY_DENSENET_SLOW = [pytest.param(n, marks=pytest.mark.slow) if 'densenet' in n else n for n in FAMILY]
# the deeper, wider and squeeze-excitation variants of a family: tests of every model leave them out of the fast
# subset, where the smaller models of their family run the same code
LARGER = {'resnext50x2_elastic', 'resnext101_elastic', 'seresnext50_elastic', 'dla_x102', 'dla_x102_elastic',
          'dla_x102_selastic'}
ELASTIC = [n for n in ALL if 'elastic' in n]
TWIN_NAMES = {n for pair in timm_elastic.TWINS.items() for n in pair}


def original_counts(model):
    """(parameters, GMACs at 224) as the original code counts them."""
    unused = getattr(model, 'unused_original_counts', lambda: (0, 0.))()
    return count_params(model) + unused[0], count_gmacs(model) + unused[1]


def test_registered():
    assert set(ALL) == MODELS
    assert set(ELASTIC) == set(timm.list_models('*elastic*')) == {n for n in MODELS if 'elastic' in n}
    for name in ALL:
        assert timm.is_model(name)
        assert timm.models.get_pretrained_cfg(name) is not None


@pytest.mark.parametrize('name', sorted(PAPER))
def test_counts_match_the_paper_and_the_original_code(name):
    """Parameters and multiply-adds at 224x224, counted as the original code counts them (DLA: with the
    projections it never uses), against the paper's printed values at its precision (half a unit of the last
    digit) and against the original code's exact counts where it builds the model (tests/paper.py)."""
    model = timm.create_model(name)
    params, gmacs = original_counts(model)
    _, paper_params, paper_gmacs = PAPER[name]
    assert abs(params / 1e6 - paper_params) <= 0.05, params
    if name not in PAPER_FLOPS_DIFFER:
        assert abs(gmacs - paper_gmacs) <= 0.05, gmacs
    if name in ORIGINAL_CODE:
        original_params, original_gmacs = ORIGINAL_CODE[name]
        assert params == original_params
        assert abs(gmacs / original_gmacs - 1) < 1e-4, (gmacs, original_gmacs)
    if name in SELASTIC_PARAMS:
        assert params == SELASTIC_PARAMS[name]


@pytest.mark.parametrize('elastic, twin', list(timm_elastic.TWINS.items()))
def test_small_twins_match_in_parameters_and_multiply_adds(elastic, twin):
    """The main job compares like with like: within 4% in both, at the twins' input size."""
    e, b = timm.create_model(elastic), timm.create_model(twin)
    size = e.pretrained_cfg['input_size']
    assert size == b.pretrained_cfg['input_size'] == (3, 64, 64)
    assert e.num_classes == b.num_classes == len(timm_elastic.data.CLASSES)
    assert abs(count_params(e) / count_params(b) - 1) < 0.04
    assert abs(count_gmacs(e, size) / count_gmacs(b, size) - 1) < 0.04
    assert any('Elastic' in type(m).__name__ for m in e.modules())
    assert not any('Elastic' in type(m).__name__ for m in b.modules())
    # one stem for both, the 3x3 one that reads the small objects' 3-pixel patterns (README, The main job)
    stems = [[tuple(m.weight.shape) for m in x.conv1.modules() if isinstance(m, torch.nn.Conv2d)] for x in (e, b)]
    assert stems[0] == stems[1] == [(16, 3, 3, 3), (16, 16, 3, 3), (32, 16, 3, 3)]
    assert e.pretrained_cfg['first_conv'] == b.pretrained_cfg['first_conv'] == 'conv1.0'


@pytest.mark.parametrize('name', [pytest.param(n, marks=pytest.mark.slow) if n in LARGER else n for n in ALL])
@pytest.mark.parametrize('size', [(225, 193), (240, 240), (32, 32)])
def test_odd_and_small_inputs(name, size):
    model = timm.create_model(name, num_classes=7)
    x = torch.randn(2, 3, *size)
    for train in (True, False):
        model.train(train)
        with torch.no_grad():
            out = model(x)
        assert out.shape == (2, 7) and torch.isfinite(out).all()


@pytest.mark.parametrize('name', FAMILY)
def test_more_low_resolution_paths_cost_fewer_macs_same_params(name):
    models = [timm.create_model(name, elastic_ratio=r) for r in (0.25, 0.5, 0.75)]
    gmacs = [count_gmacs(m) for m in models]
    assert gmacs[0] > gmacs[1] > gmacs[2]
    assert len({count_params(m) for m in models}) == 1


@pytest.mark.parametrize('name', FAMILY_DENSENET_SLOW)
@pytest.mark.parametrize('mode', list(RESAMPLE_MODES))
def test_resample_modes_build_run_and_train(name, mode):
    model = timm.create_model(name, elastic_resample=mode, num_classes=3).train()
    out = model(torch.randn(2, 3, 65, 63))
    assert out.shape == (2, 3)
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


@pytest.mark.parametrize('name', FAMILY)
@pytest.mark.parametrize('kwargs,match', [
    (dict(elastic_ratio=1.5), r'elastic_ratio must be a number in \(0, 1\), got 1.5'),
    (dict(elastic_ratio=0), r'elastic_ratio must be a number in \(0, 1\), got 0'),
    (dict(elastic_ratio='half'), r"elastic_ratio must be a number in \(0, 1\), got 'half'"),
    (dict(elastic_ratio=0.001), r'elastic_ratio=0.001 splits a block of \d+ paths'),
    (dict(elastic_resample='bicubic'), r"elastic_resample must be one of 'bilinear', .*got 'bicubic'"),
])
def test_invalid_elastic_kwargs(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        timm.create_model(name, **kwargs)


@pytest.mark.parametrize('name', FAMILY)
def test_unknown_kwarg_is_a_type_error(name):
    with pytest.raises(TypeError):
        timm.create_model(name, elastic_ratios=0.5)


@pytest.mark.parametrize('name', FAMILY_DENSENET_SLOW)
@pytest.mark.parametrize('size', [(224, 224), (225, 193)])
def test_features_only_every_index(name, size):
    n = len(timm.create_model(name).feature_info)
    full = timm.create_model(name, features_only=True, out_indices=tuple(range(n))).eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        feats = full(x)
    assert len(feats) == n
    for f, c, r in zip(feats, full.feature_info.channels(), full.feature_info.reduction()):
        assert f.shape[1] == c
        assert abs(f.shape[-2] - size[0] / r) < 1 and abs(f.shape[-1] - size[1] / r) < 1, (f.shape, r)
    for i in range(n):
        one = timm.create_model(name, features_only=True, out_indices=(i,)).eval()
        one.load_state_dict(full.state_dict(), strict=False)
        with torch.no_grad():
            torch.testing.assert_close(one(x)[0], feats[i])
    default = timm.create_model(name, features_only=True)
    assert len(default.feature_info) >= 4


@pytest.mark.parametrize('name', FAMILY)
def test_train_and_eval_modes(name):
    model = timm.create_model(name, drop_rate=0.3, num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        a, b = model(x), model(x)
    torch.testing.assert_close(a, b)
    model.train()
    bn = next(m for n, m in model.named_modules() if '.elastic.low.' in n and isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    with torch.no_grad():
        c, d = model(x), model(x)
    assert not torch.allclose(bn.running_mean, before)  # the low-resolution paths' BN learns statistics
    assert not torch.allclose(c, d)  # dropout is active in training only


@pytest.mark.parametrize('name', FAMILY)
def test_head_and_features_api(name, intermediates):
    model = timm.create_model(name, num_classes=11).eval()
    width = model.num_features
    x = torch.randn(2, 3, 96, 96)
    levels = intermediates(model, x)  # skips where timm gives the model no forward_intermediates
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape[:2] == (2, width)
        assert model.forward_head(feats, pre_logits=True).shape == (2, width)
        logits = model.forward_head(feats)
        torch.testing.assert_close(logits, model(x))
        final, inter = model.forward_intermediates(x)
        torch.testing.assert_close(final, feats)
        assert [t.shape[1] for t in inter] == [f['num_chs'] for f in model.feature_info]
        only = model.forward_intermediates(x, indices=[2], intermediates_only=True)
        torch.testing.assert_close(only[0], inter[2])
        assert len(levels) == len(inter)
        for a, b in zip(levels, inter):
            torch.testing.assert_close(a, b)
    assert model.num_classes == 11
    model.reset_classifier(4)
    assert model(x).shape == (2, 4)
    model.reset_classifier(0)
    assert model(x).shape == (2, width)
    groups = timm.models.group_parameters(model, model.group_matcher())
    assert sum(len(g) for g in groups.values()) == len(list(model.parameters()))


def saved_tensors(model, x) -> int:
    """How many tensors autograd saves for backward in a forward pass of `model`."""
    count = 0

    def pack(t):
        nonlocal count
        count += 1
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return count


@pytest.mark.parametrize('name', FAMILY_DENSENET_SLOW)
def test_grad_checkpointing_same_result(name):
    """Checkpointed, a model saves fewer tensors for backward (it recomputes them) and gives the same
    outputs and gradients."""
    model = timm.create_model(name, num_classes=3).train()
    ref = copy.deepcopy(model)
    model.set_grad_checkpointing(True)
    x = torch.randn(2, 3, 64, 64)
    assert saved_tensors(model, x) < saved_tensors(ref, x)
    a, b = model(x), ref(x)
    torch.testing.assert_close(a, b)
    a.sum().backward()
    b.sum().backward()
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=n)


@pytest.mark.parametrize('name', FAMILY)
@pytest.mark.parametrize('in_chans', [1, 4])
def test_in_chans(name, in_chans):
    model = timm.create_model(name, in_chans=in_chans, num_classes=2).eval()
    first_conv = model.get_submodule(model.pretrained_cfg['first_conv'])
    assert first_conv.in_channels == in_chans
    assert model(torch.randn(1, in_chans, 64, 64)).shape == (1, 2)


@pytest.mark.parametrize('name', ['seresnext50_elastic', 'dla_x60_elastic'])
def test_torchscript(name):
    # timm's suite leaves DenseNet out of TorchScript (its layers take a list or a tensor)
    model = timm.create_model(name, num_classes=5).eval()
    scripted = torch.jit.script(model)
    x = torch.randn(1, 3, 67, 61)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))


@pytest.mark.parametrize('name', FAMILY_DENSENET_SLOW)
def test_fx_feature_extraction(name):
    torch.manual_seed(1)
    model = timm.create_model(name, features_only=True, feature_cls='fx').eval()
    torch.manual_seed(1)
    ref = timm.create_model(name, features_only=True).eval()
    x = torch.randn(1, 3, 65, 80)
    with torch.no_grad():
        for a, b in zip(model(x), ref(x)):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize('name', FAMILY_DENSENET_SLOW)
def test_channels_last(name):
    model = timm.create_model(name, num_classes=4).eval()
    x = torch.randn(2, 3, 65, 64)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        feats = model.forward_features(x.to(memory_format=torch.channels_last))
        out = model.forward_head(feats)
    assert feats.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('name', FAMILY_DENSENET_SLOW)
def test_bf16_autocast_cpu(name):
    model = timm.create_model(name, num_classes=4).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = model(x)
    assert out.dtype == torch.bfloat16
    # bf16 keeps 8 bits of mantissa: the logits within a few percent of fp32's, relative to their own size
    # (the randomly initialised logits can be tiny: an absolute bound would pass all-zero logits)
    assert ((out.float() - ref).norm() / ref.norm()).item() < 0.05
    model.train()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        loss = model(x).float().logsumexp(-1).mean()
    loss.backward()
    low = [p for n, p in model.named_parameters() if '.elastic.low.' in n]
    assert low and all(p.grad is not None for p in low)


@pytest.mark.parametrize('name', ALL)
def test_pretrained_cfg(name):
    model = timm.create_model(name)
    cfg = model.pretrained_cfg
    assert cfg['mean'] == timm.data.IMAGENET_DEFAULT_MEAN and cfg['std'] == timm.data.IMAGENET_DEFAULT_STD
    # the paper's ImageNet models: 224 crops of 256; the small twins: the built-in 64x64 images, uncropped
    size, crop = ((3, 64, 64), 1.0) if name in TWIN_NAMES else ((3, 224, 224), 0.875)
    assert cfg['input_size'] == size and cfg['crop_pct'] == crop
    assert cfg['interpolation'] == 'bilinear'  # the original's training pipeline (PyTorch ImageNet example)
    model.get_submodule(cfg['first_conv'])
    assert model.get_submodule(cfg['classifier']) is model.get_classifier()
    assert cfg['paper_ids'] == 'arXiv:1812.05262'
    assert cfg['license']
    assert cfg['architecture'] == name
    data_cfg = timm.data.resolve_data_config(model=model)
    assert data_cfg['input_size'] == size
