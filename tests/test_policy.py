"""The scale policy score (paper Sec. 4.1.1): S = A_high - A_low per Elastic block and image."""
import copy
import math
import os
import re
import sys
from collections import OrderedDict

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn

import timm_elastic
from timm_elastic import ScalePolicy, report, scale_policy
from timm_elastic.policy import class_ranking, embedding_order, improvement_density, policy_embedding, tsne_perplexity
from timm_elastic.data import ScaleShapes
from timm_elastic.layers import Elastic


class OneBlock(nn.Module):
    """One Elastic block of two paths on one channel; each path is a ReLU, a 3x3 convolution that
    only scales its centre pixel (by 2 at high resolution, by 1 at low) and a ReLU (or `act`); with
    `relu=False` only the convolution (a DenseNet-like path that ends with its 3x3 convolution)."""

    def __init__(self, relu: bool = True, act=nn.ReLU):
        super().__init__()

        def make_path(paths, dilation):
            conv = [('conv2', nn.Conv2d(1, 1, 3, padding=1, bias=False))]
            if not relu:
                return nn.Sequential(OrderedDict(conv))
            # a ReLU before the 3x3 convolution too, as a ResNeXt path's act1: not where S is read
            return nn.Sequential(OrderedDict([('act1', nn.ReLU())] + conv + [('act2', act(inplace=True))]))

        self.block = nn.Module()
        self.block.elastic = Elastic(make_path, 2, 1, 1)
        for path, centre in ((self.block.elastic.high, 2.), (self.block.elastic.low, 1.)):
            path.conv2.weight.data.zero_()
            path.conv2.weight.data[0, 0, 1, 1] = centre

    def forward(self, x):
        return self.block.elastic(x)


def _two_images():
    x = torch.empty(2, 1, 4, 4)
    x[0, :, :, :2], x[0, :, :, 2:] = 1., -3.  # left half 1, right half -3
    x[1] = 0.5
    x[1, :, :2, :2] = 4.  # top-left quarter 4
    return x


@pytest.mark.parametrize('relu', [True, False])
def test_score_of_a_hand_built_block(relu):
    # By hand. Image 0: high 2x -> mean(relu) = (8 * 2 + 8 * 0) / 16 = 1; low: the 2x2 average pool
    # gives [[1, -3], [1, -3]] -> mean(relu(1x)) = 2 / 4 = 0.5; S = 0.5.
    # Image 1: high (4 * 8 + 12 * 1) / 16 = 2.75; low [[4, .5], [.5, .5]] -> 5.5 / 4 = 1.375; S = 1.375.
    # Without a ReLU module after the 3x3 convolution the score rectifies its output itself: the same.
    model = OneBlock(relu)
    with ScalePolicy(model) as policy:
        model(_two_images())
    assert policy.names == ['block']
    torch.testing.assert_close(policy.scores, torch.tensor([[0.5], [1.375]]), rtol=0, atol=1e-6)
    assert policy.scores.dtype == torch.float32


def test_score_after_another_activation():
    """A model built with another act_layer (SiLU) is read after its activation, as after the paper's ReLU (it was
    read as ReLU(conv2), skipping the activation, and the BN in a real block). By hand, silu(v) = v / (1 + e^-v),
    the images of test_score_of_a_hand_built_block after the paths' first ReLU (act1) and the 3x3 convolution:
    image 0 high [2] * 8 + [0] * 8, low [1, 0, 1, 0]; image 1 high [8] * 4 + [1] * 12, low [4, .5, .5, .5]."""
    def silu(v):
        return v / (1 + math.exp(-v))

    def mean(values):
        return sum(silu(v) for v in values) / len(values)
    want = [[mean([2.] * 8 + [0.] * 8) - mean([1., 0., 1., 0.])],
            [mean([8.] * 4 + [1.] * 12) - mean([4., .5, .5, .5])]]
    model = OneBlock(act=nn.SiLU)
    with ScalePolicy(model) as policy:
        model(_two_images())
    torch.testing.assert_close(policy.scores, torch.tensor(want), rtol=0, atol=1e-6)


class UsersSwish(nn.Module):
    """An activation of a user's own, neither torch's nor timm's."""

    def __init__(self, inplace: bool = False):
        super().__init__()

    def forward(self, x):
        return x * torch.sigmoid(x)


@pytest.mark.parametrize('act_layer,module', [('silu', 'torch.nn.modules.activation'),
                                              ('gelu', 'timm.layers.activations'),
                                              (UsersSwish, __name__)])
def test_a_registered_model_with_another_activation_is_read_after_it(act_layer, module):
    """resnext_tiny_elastic built with act_layer 'silu' (torch's nn.SiLU), 'gelu' (timm's GELU) or a user's own
    class (read as ReLU(conv2) before, skipping its BN and activation): S is read at the paths' act2, that
    activation (hooks of the test's own on act2 give the same means)."""
    model = timm.create_model('resnext_tiny_elastic', act_layer=act_layer).eval()
    seen = {}

    def recorder(side):
        def hook(m, args, out):
            seen[side] = out.mean((1, 2, 3))
        return hook
    block = model.layer1[0].elastic
    assert type(block.high.act2).__module__ == module
    hooks = [getattr(block, side).act2.register_forward_hook(recorder(side)) for side in ('high', 'low')]
    with ScalePolicy(model) as policy, torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    for h in hooks:
        h.remove()
    assert policy.names[0] == 'layer1.0'
    torch.testing.assert_close(policy.scores[:, 0], seen['high'] - seen['low'])


def test_a_users_activation_is_found_behind_a_drop_block():
    """timm's DropBlock2d (drop_block_rate, in layer3) lies between bn2 and act2: passed over as the BN is, S is
    read at the user's activation there too."""
    model = timm.create_model('resnext_tiny_elastic', act_layer=UsersSwish, drop_block_rate=0.2).eval()
    block = model.layer3[1].elastic
    assert type(block.high.drop_block).__name__ == 'DropBlock2d'
    seen = {}
    hooks = [getattr(block, side).act2.register_forward_hook(
        lambda m, args, out, side=side: seen.__setitem__(side, out.mean((1, 2, 3)))) for side in ('high', 'low')]
    with ScalePolicy(model) as policy, torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    for h in hooks:
        h.remove()
    torch.testing.assert_close(policy.scores[:, policy.names.index('layer3.1')], seen['high'] - seen['low'])


def test_recorder_accumulates_batches_and_resets():
    model = OneBlock()
    x = _two_images()
    with ScalePolicy(model) as policy:
        model(x[:1])
        model(x[1:])
        torch.testing.assert_close(policy.scores, torch.tensor([[0.5], [1.375]]), rtol=0, atol=1e-6)
        policy.reset()
        model(x[1:])
    torch.testing.assert_close(policy.scores, torch.tensor([[1.375]]), rtol=0, atol=1e-6)
    model(x)  # outside the block: not recorded
    assert policy.scores.shape == (1, 1)
    assert ScalePolicy(model).scores.shape == (0, 1)


# The paper's 17 blocks of ResNeXt50+Elastic ([6, 8, 5, 3], every stride-1 block of stages 1-3);
# the same rule on sElastic's [3, 4, 6, 3]; DLA-X60's levels 2-4 hold 2, 4 and 8 blocks, the first of
# each at stride 2: 1 + 3 + 7; DenseNet201+Elastic's first three dense blocks (10, 20, 40 layers, Table 11).
def _stages(*blocks):
    # stage 1 from block 0, stages 2 and 3 from block 1 (block 0 has stride 2)
    return [f'layer{s}.{i}' for s, n in enumerate(blocks, 1) for i in range(0 if s == 1 else 1, n)]


RESNEXT50, SELASTIC = _stages(6, 8, 5), _stages(3, 4, 6)


@pytest.mark.parametrize('name, expected', [
    ('resnext50_elastic', RESNEXT50),
    ('seresnext50_elastic', RESNEXT50),
    ('resnext50_selastic', SELASTIC),
    ('dla_x60_elastic', 11),
    ('densenet201_elastic', [f'features.denseblock{b}.denselayer{i}' for b, n in ((1, 10), (2, 20), (3, 40))
                             for i in range(1, n + 1)]),
])
def test_blocks_and_names_per_family(name, expected):
    model = timm.create_model(name).eval()
    policy = ScalePolicy(model)
    if isinstance(expected, int):
        assert len(policy.names) == expected
        assert all(model.get_submodule(n) for n in policy.names)
    else:
        assert policy.names == expected
    scores = scale_policy(model, torch.randn(2, 3, 64, 64))
    assert scores.shape == (2, len(policy.names)) and torch.isfinite(scores).all()


def test_names_and_scores_of_a_wrapped_model_are_the_models():
    """Wrapped for data parallelism or by torch.compile, the model's blocks keep their names (no `module.` /
    `_orig_mod.` prefix) and, run through the wrapper, give the model's own scores."""
    torch.manual_seed(0)
    model = timm.create_model('resnext_tiny_elastic').eval()
    x = torch.randn(2, 3, 64, 64)
    plain = ScalePolicy(model)
    with plain:
        model(x)
    parallel = nn.DataParallel(model)  # without GPUs it runs the model itself
    for wrapped in (parallel, torch.compile(model)):
        assert ScalePolicy(wrapped).names == plain.names, type(wrapped).__name__
    with ScalePolicy(parallel) as through:
        parallel(x)
    assert torch.equal(through.scores, plain.scores)


# one model of each family, narrowed where it is large (the same blocks, fewer channels or layers)
SMALL = {'resnext_tiny_elastic': {}, 'dla_x60_elastic': dict(channels=(16, 32, 32, 64, 128, 256)),
         'densenet201_elastic': dict(block_config=(2, 2, 2, 2), growth_rate=8)}


@pytest.mark.parametrize('name', list(SMALL))
@pytest.mark.parametrize('setting', ['train', 'eval', 'channels_last-bf16'])
def test_hooks_leave_outputs_and_gradients_bit_identical(name, setting):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=5, **SMALL[name]).train(setting != 'eval')
    x = torch.randn(2, 3, 64, 64)
    if setting == 'channels_last-bf16':
        model, x = model.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    plain, recorded = model, copy.deepcopy(model)

    def run(m):
        with torch.autocast('cpu', torch.bfloat16, enabled=setting == 'channels_last-bf16'):
            out = m(x)
        out.float().square().sum().backward()
        return out

    expected = run(plain)
    with ScalePolicy(recorded) as policy:
        got = run(recorded)
    assert torch.equal(got, expected)
    for (n, a), b in zip(plain.state_dict().items(), recorded.state_dict().values()):
        assert torch.equal(a, b), n  # BN statistics in training mode
    for (n, a), b in zip(plain.named_parameters(), recorded.parameters()):
        assert torch.equal(a.grad, b.grad), n
    assert policy.scores.shape == (2, len(policy.names)) and torch.isfinite(policy.scores).all()


@pytest.mark.parametrize('name', list(SMALL))
def test_gradient_checkpointing_records_each_image_once(name):
    # timm's set_grad_checkpointing runs the blocks' forward again in the backward pass: not new images
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=5, **SMALL[name]).train()
    x = torch.randn(2, 3, 64, 64)
    scores = []
    for checkpointing in (False, True):
        model.set_grad_checkpointing(checkpointing)
        m = copy.deepcopy(model)  # the same BatchNorm statistics for both
        with ScalePolicy(m) as policy:
            m(x).square().sum().backward()
        scores.append(policy.scores)
    assert scores[1].shape == (2, len(policy.names))
    torch.testing.assert_close(scores[1], scores[0], rtol=0, atol=0)
    plain = copy.deepcopy(model)  # checkpointed, without the recorder: the same gradients
    plain(x).square().sum().backward()
    for (n, a), b in zip(plain.named_parameters(), m.parameters()):
        assert torch.equal(a.grad, b.grad), n
    if name == 'densenet201_elastic':  # its memory-efficient layers checkpoint each bottleneck
        torch.manual_seed(0)
        m = timm.create_model(name, num_classes=5, memory_efficient=True, **SMALL[name]).train()
        with ScalePolicy(m) as policy:
            m(x).square().sum().backward()
        torch.testing.assert_close(policy.scores, scores[0], rtol=0, atol=0)


def test_images_tensors_datasets_and_loaders_give_the_same_scores():
    model = timm.create_model('resnext_tiny_elastic').eval()
    data = ScaleShapes(split='validation', num_samples=5)
    cfg = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**cfg)
    tensors = [transform(data[i][0]) for i in range(len(data))]
    expected = scale_policy(model, torch.stack(tensors))
    assert expected.shape == (5, 5)
    loader = torch.utils.data.DataLoader(ScaleShapes(split='validation', num_samples=5, transform=transform),
                                         batch_size=2)

    class Stream(torch.utils.data.IterableDataset):  # has a __getitem__ that raises, and no len()
        def __iter__(self):
            return (data[i] for i in range(5))
    # the RGB images as RGBA: timm's transforms need RGB, as its datasets convert every image to it
    rgba = [data[i][0].convert('RGBA') for i in range(5)]
    for images in (data, [data[i][0] for i in range(5)], tensors, loader, iter(tensors), Stream(), rgba):
        torch.testing.assert_close(scale_policy(model, images, batch_size=3), expected, rtol=1e-4, atol=1e-5)
    grey = [data[i][0].convert('L') for i in range(5)]
    torch.testing.assert_close(scale_policy(model, grey), scale_policy(model, [g.convert('RGB') for g in grey]))
    # a different image gives a different policy
    assert not torch.allclose(expected[0], expected[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_cuda_scores_match_the_cpu_under_autocast():
    model = timm.create_model('resnext_tiny_elastic').eval()
    x = torch.randn(4, 3, 64, 64)
    expected = scale_policy(model, x)
    with torch.autocast('cuda', torch.bfloat16):
        got = scale_policy(model.cuda().to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last))
    assert got.device.type == 'cpu' and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0.05, atol=0.02)


@pytest.mark.parametrize('call, message', [
    (lambda: scale_policy(timm.create_model('resnext_tiny'), torch.randn(1, 3, 64, 64)),
     'resnext_tiny has no Elastic blocks, so it has no scale policy'),
    (lambda: scale_policy(timm.create_model('resnext_tiny_elastic'), []), 'no images to score: the data is empty'),
    (lambda: scale_policy(timm.create_model('resnext_tiny_elastic'), torch.zeros(0, 3, 64, 64)), 'no images to score'),
    (lambda: scale_policy(timm.create_model('resnext_tiny_elastic'), torch.zeros(3, 64, 64)),
     'must be (N, C, H, W), got shape (3, 64, 64)'),
    (lambda: scale_policy(timm.create_model('resnext_tiny_elastic'), ['a.png']),
     'images must be PIL images or (C, H, W) tensors, got an item of type str'),
    (lambda: scale_policy(timm.create_model('resnext_tiny_elastic'), torch.zeros(1, 3, 64, 64), batch_size=0),
     'batch_size must be a positive int, got 0'),
])
def test_bad_inputs_give_one_line_errors(call, message):
    with pytest.raises(ValueError) as info:
        call()
    assert message in str(info.value) and '\n' not in str(info.value)


def test_public_api():
    assert timm_elastic.scale_policy is scale_policy and timm_elastic.ScalePolicy is ScalePolicy


def test_class_ranking_by_hand():
    # per-image means 2, 0, -2, 2: class 0 at 2 (1 image), 1 at -1 (2), 2 at 2 (1); a tie keeps class order
    scores = torch.tensor([[1., 3.], [0., 0.], [-2., -2.], [4., 0.]])
    assert class_ranking(scores, [0, 1, 1, 2], ['z', 'b', 'a']) == [('z', 2., 1), ('a', 2., 1), ('b', -1., 2)]
    assert class_ranking(scores, [2, 2, 0, 2]) == [('2', 4 / 3, 3), ('0', -2., 1)]
    with pytest.raises(ValueError, match='4 score rows but 3 targets'):
        class_ranking(scores, [0, 1, 1])
    with pytest.raises(ValueError, match='target 2 has no name: class_names has 2'):
        class_ranking(scores, [0, 1, 1, 2], ['a', 'b'])


def test_embedding_order_follows_the_principal_axis():
    line = np.array([[3., 0.1], [1., -0.1], [2., 0.], [0., 0.05], [5., 0.]])
    assert embedding_order(line).tolist() == [3, 1, 2, 0, 4]
    assert embedding_order(line[:, ::-1] * [1., -1.]).tolist() == [4, 0, 2, 1, 3]  # along -y: reversed


def test_improvement_density_by_hand():
    corners = np.array([[0., 0.], [0., 1.], [1., 0.], [1., 1.]])
    d = improvement_density(corners, [True, True, False, True], [False, True, False, False], bins=2)
    np.testing.assert_array_equal(d['all'], np.full((2, 2), 0.25))
    np.testing.assert_array_equal(d['improved'], [[0.5, 0.], [0., 0.5]])  # (0, 0) and (1, 1)
    assert (d['images'], d['improved_images']) == (4, 2)
    np.testing.assert_array_equal(d['x_edges'], [0., 0.5, 1.])
    none = improvement_density(corners, [False] * 4, [False] * 4, bins=3)
    assert none['improved'].sum() == 0 and none['all'].sum() == pytest.approx(1.)
    with pytest.raises(ValueError, match='4 embedded images but 3 Elastic and 4 baseline results'):
        improvement_density(corners, [True] * 3, [True] * 4)


def test_embedding_separates_distinct_policies_and_is_repeatable():
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.normal(1., 0.05, (12, 5)), rng.normal(-1., 0.05, (12, 5))])
    e = policy_embedding(scores, seed=3)
    assert e.shape == (24, 2)
    np.testing.assert_array_equal(e, policy_embedding(scores, seed=3))
    d = np.linalg.norm(e[:, None] - e[None], axis=-1)
    assert d[:12, 12:].min() > max(d[:12, :12].max(), d[12:, 12:].max())
    with pytest.raises(ValueError, match='at least 2 different policies, got 1 images with 1'):
        policy_embedding(scores[:1])


def test_embedding_of_degenerate_scores():
    # identical rows: scikit-learn's t-SNE divided by their zero spread and crashed the process; NaN: it refuses
    with pytest.raises(ValueError, match='at least 2 different policies, got 5 images with 1'):
        policy_embedding(np.tile(np.arange(4.), (5, 1)))
    nan = np.ones((5, 3))
    nan[2, 1] = np.nan
    with pytest.raises(ValueError, match='needs finite scores'):
        policy_embedding(nan)
    # one block (one column): PCA to 2 dimensions cannot start it; a random start does
    one = np.array([[0.], [0.1], [1.], [1.1]])
    e = policy_embedding(one, seed=0)
    assert e.shape == (4, 2) and np.isfinite(e).all()


def test_the_embedding_takes_the_perplexity_given_up_to_a_third_of_the_images():
    """scikit-learn's t-SNE at the perplexity given, where 3 x perplexity neighbours exist: (N - 1) / 3 above
    that (the policy command says so)."""
    from sklearn.manifold import TSNE
    rng = np.random.default_rng(0)
    for n, asked, used in ((64, 15., 15.), (64, 30., 21.), (8, 30., 7. / 3.), (2, 30., 1.)):
        assert tsne_perplexity(asked, n) == used
        scores = rng.normal(size=(n, 4))
        want = TSNE(2, perplexity=used, init='pca', learning_rate='auto', random_state=0).fit_transform(scores)
        np.testing.assert_array_equal(policy_embedding(scores, perplexity=asked), want.astype(np.float64))


def test_missing_analysis_extra_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, 'sklearn.manifold', None)  # as if scikit-learn were not installed
    with pytest.raises(ImportError) as info:
        policy_embedding(np.zeros((4, 2)))
    assert str(info.value) == ("t-SNE of the scale policy needs scikit-learn, which is not installed: "
                               "pip install 'timm-elastic[analysis]'")


def test_plots_are_written_as_png(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(30, 4))
    labels = np.arange(30) % 3
    e = policy_embedding(scores)
    paths = [
        report.plot_class_ranking(class_ranking(scores, labels, ['x', 'y', 'z']), str(tmp_path / 'rank.png')),
        report.plot_embedding(e, str(tmp_path / 'by_class.png'), labels=labels, class_names=['x', 'y', 'z']),
        report.plot_embedding(e, str(tmp_path / 'by_s.png'), values=scores.mean(1)),
        report.plot_strip(scores, embedding_order(e), ['b1', 'b2', 'b3', 'b4'], str(tmp_path / 'strip.png')),
        report.plot_improvement_density(improvement_density(e, labels > 0, labels > 1), str(tmp_path / 'd.png')),
    ]
    for path in paths:
        with Image.open(path) as im:
            assert im.format == 'PNG' and im.width > 200 and im.height > 100
    assert sorted(os.listdir(tmp_path)) == ['by_class.png', 'by_s.png', 'd.png', 'rank.png', 'strip.png']
    with pytest.raises(ValueError, match='exactly one of values='):
        report.plot_embedding(e, str(tmp_path / 'x.png'))


def test_the_embedding_by_score_is_red_above_0_and_blue_below(tmp_path, monkeypatch):
    """Its colour scale ran from the lowest mean S to the highest: with S from -0.02 to 0.10, images of S = 0.03
    were drawn blue, the colour of S < 0 on the strip, the page and in the README."""
    from timm_elastic.report import plots
    drawn = []
    save = plots._save
    monkeypatch.setattr(plots, '_save', lambda fig, path: (drawn.append(fig), save(fig, path))[1])
    values = np.array([-0.02, -0.005, 0.005, 0.03, 0.06, 0.1])
    e = np.stack([np.arange(6.), np.zeros(6)], 1)
    report.plot_embedding(e, str(tmp_path / 'by_s.png'), values=values)
    colours = drawn[0].axes[0].collections[0].to_rgba(values)
    for v, (r, _, b, _) in zip(values, colours):
        assert (r > b) == (v > 0), (v, r, b)


def test_titles_fit_their_figures(tmp_path, monkeypatch):
    """Fig. 5's title was cut at both sides ('...high resolution (S > 0) to lo') in the 8-class figure of the
    built-in data: every title lies inside its figure, for few classes and many. Fig. 7 without a bar says why."""
    from timm_elastic.report import plots
    drawn = []
    save = plots._save
    monkeypatch.setattr(plots, '_save', lambda fig, path: (drawn.append(fig), save(fig, path))[1])
    for n in (2, 8, 40):
        ranking = [(f'class{i}', 0.5 - i / n, 3) for i in range(n)]
        plots.plot_class_ranking(ranking, str(tmp_path / f'rank{n}.png'))
    plots.plot_stress({'top1': {64: [1.5]}}, str(tmp_path / 'fig7.png'), 'resnext_tiny_elastic relative to '
                      'resnext_tiny per test size (1 seed)')
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    # a chart without a bar (every value n/a: a baseline at 0) says why instead of showing empty axes
    plots.plot_stress({'f1_o': {32: [None, None]}, 'f1_c': {32: [None, None]}}, str(tmp_path / 'na.png'), 'n/a')
    assert [t.get_text() for t in drawn[-1].axes[0].texts] == [
        'n/a at every size: the baseline scored 0,\nso no relative improvement exists']
    assert not drawn[-2].axes[0].texts  # (a chart with bars has no such note)
    for fig in drawn:
        canvas = FigureCanvasAgg(fig)  # the renderer savefig used for PNG
        canvas.draw()
        renderer = canvas.get_renderer()
        for ax in fig.axes:
            for text in (ax.title, *ax.texts):
                box = text.get_window_extent(renderer)
                assert box.x0 >= 0 and box.x1 <= fig.bbox.x1, (text.get_text(), box, fig.bbox)


def test_plots_take_the_format_of_their_extension(tmp_path):
    """stress --plot fig.svg wrote PNG bytes under the .svg name: the extension picks the format (matplotlib's
    savefig rule), PNG without one; one that matplotlib does not write is refused."""
    from timm_elastic.report.plots import plot_stress
    relative = {'top1': {64: [1.5, 2.5], 128: [-1.0, None]}}
    heads = {'fig.svg': b'<?xml', 'fig.pdf': b'%PDF', 'fig.PNG': b'\x89PNG', 'fig': b'\x89PNG', 'fig.jpg': b'\xff\xd8'}
    for name, head in heads.items():
        path = plot_stress(relative, str(tmp_path / name), 'Fig. 7')
        with open(path, 'rb') as f:
            assert f.read().startswith(head), name
    with pytest.raises(ValueError, match=re.escape("fig.txt': matplotlib does not write .txt files; name the file "
                                                   ".png, .svg, .pdf or another of ")):
        plot_stress(relative, str(tmp_path / 'fig.txt'), 'Fig. 7')
    assert sorted(os.listdir(tmp_path)) == sorted(heads)


def test_embedding_of_many_classes_has_a_colour_bar(tmp_path):
    # 100 classes: tab20's colours repeat and a legend of 100 names does not fit (matplotlib warned that its
    # layout failed); the class index on a colour bar instead
    import warnings

    from matplotlib.figure import Figure
    rng = np.random.default_rng(0)
    e = rng.normal(size=(300, 2))
    made = []
    original = Figure.colorbar

    def colorbar(self, *args, **kwargs):
        made.append(kwargs.get('label'))
        return original(self, *args, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(Figure, 'colorbar', colorbar)
            report.plot_embedding(e, str(tmp_path / 'many.png'), labels=np.arange(300) % 100,
                                  class_names=[f'class{i}' for i in range(100)])
            report.plot_embedding(e, str(tmp_path / 'few.png'), labels=np.arange(300) % 20,
                                  class_names=[f'class{i}' for i in range(20)])
    assert made == ['class index']  # 20 classes: a legend with their names
