"""The detection backbone helper (timm_elastic/tasks/detection.py), used as a detection user would:
a timm model name in, a torchvision FasterRCNN training on it."""
import pytest
import timm
import torch
from torchvision.models.detection import FasterRCNN

from timm_elastic.tasks.detection import fpn_backbone


@pytest.mark.parametrize('name,size,kwargs,expected', [
    # (input side, extra_blocks) -> each output's side, hand-computed: side / stride, strides 4..32
    # from the default out_indices=4 (the last four feature levels), then 64 for 'pool'
    ('resnext_tiny_elastic', 128, {}, {'0': 32, '1': 16, '2': 8, '3': 4, 'pool': 2}),
    # a stock timm model (a small one of the DLA trunk that dla_x60_elastic builds on): DLA's feature
    # levels start at stride 1, so index-based defaults such as (1, 2, 3, 4) would give strides 2..16;
    # the last four levels give the same 4..32 pyramid
    ('dla46_c', 64, {}, {'0': 16, '1': 8, '2': 4, '3': 2, 'pool': 1}),
    # RetinaNet's p6/p7 on levels picked by index (strides 8, 16, 32), an odd input side:
    # 100 -> stem 50 -> 25 -> 13 -> 7 -> 4 (each stride-2 stage rounds up), p6 2, p7 1
    ('resnext_tiny_elastic', 100, dict(out_indices=(2, 3, 4), extra_blocks='p6p7'),
     {'0': 13, '1': 7, '2': 4, 'p6': 2, 'p7': 1}),
    ('resnext_tiny_elastic', 128, dict(extra_blocks=None), {'0': 32, '1': 16, '2': 8, '3': 4}),
    # p6p7's default: the last three levels (strides 8, 16, 32), then 64 and 128, as torchvision's RetinaNet
    ('resnext_tiny_elastic', 128, dict(extra_blocks='p6p7'), {'0': 16, '1': 8, '2': 4, 'p6': 2, 'p7': 1}),
])
def test_levels_have_out_channels_at_expected_strides(name, size, kwargs, expected):
    backbone = fpn_backbone(name, out_channels=24, **kwargs).eval()
    assert backbone.out_channels == 24
    with torch.no_grad():
        out = backbone(torch.randn(2, 3, size, size))
    assert list(out) == list(expected)
    assert {k: tuple(v.shape) for k, v in out.items()} == {k: (2, 24, s, s) for k, s in expected.items()}
    # each map's side is the input side over its stride, rounded up
    assert {k: -(-size // s) for k, s in backbone.strides.items()} == expected


def test_faster_rcnn_trains_the_elastic_branches_and_detects():
    # timm zero-initialises each residual block's last BN (zero_init_last), which would starve a fresh
    # model's branches of gradient on the first step; pretrained weights have no such zeros
    backbone = fpn_backbone('resnext_tiny_elastic', out_channels=64, zero_init_last=False)
    # small RPN/RoI samples keep the step fast; the default anchors expect the 5 maps ('0'-'3', 'pool')
    model = FasterRCNN(backbone, num_classes=3, min_size=128, max_size=128,
                       rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100,
                       rpn_batch_size_per_image=64, box_batch_size_per_image=64)
    images = [torch.rand(3, 128, 128), torch.rand(3, 128, 128)]
    targets = [dict(boxes=torch.tensor([[10., 10., 60., 70.], [50., 40., 120., 100.]]), labels=torch.tensor([1, 2])),
               dict(boxes=torch.tensor([[0., 20., 64., 90.]]), labels=torch.tensor([2]))]
    elastic = {n: p for n, p in backbone.body.named_parameters() if '.elastic.' in n}
    assert any('.elastic.low.' in n for n in elastic)  # the low-resolution paths are among them
    before = {n: p.detach().clone() for n, p in elastic.items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    model.train()
    losses = model(images, targets)
    assert set(losses) == {'loss_classifier', 'loss_box_reg', 'loss_objectness', 'loss_rpn_box_reg'}
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    no_grad = [n for n, p in elastic.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad
    opt.step()
    # every Elastic parameter took its step; compared with the update itself, as an update below float32's
    # resolution (a gradient of 4e-6 on a BN weight of 1.0 at lr 0.01) leaves a value unchanged
    assert all(torch.equal(p, before[n].add(p.grad, alpha=-0.01)) for n, p in elastic.items())
    assert sum(not torch.equal(p, before[n]) for n, p in elastic.items()) > len(elastic) * 0.9

    model.eval()
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 2
    for d in detections:
        assert set(d) == {'boxes', 'labels', 'scores'}
        assert d['boxes'].shape[1:] == (4,) and len(d['labels']) == len(d['scores']) == len(d['boxes'])


@pytest.mark.parametrize('detector', ['RetinaNet', 'FCOS'])
def test_retinanet_and_fcos_train_on_the_p6p7_default(detector):
    # their default anchor generators have five sizes, one per map: 'p6p7' has to give five maps
    import torchvision.models.detection as detection
    backbone = fpn_backbone('resnext_tiny_elastic', out_channels=32, extra_blocks='p6p7')
    # 256 px: p7 (stride 128) is 2x2, as FCOS's GroupNorm needs more than one value per group
    model = getattr(detection, detector)(backbone, num_classes=3, min_size=256, max_size=256).train()
    targets = [dict(boxes=torch.tensor([[10., 10., 60., 70.]]), labels=torch.tensor([1]))]
    losses = model([torch.rand(3, 256, 256)], targets)
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    model.eval()
    with torch.no_grad():
        assert set(model([torch.rand(3, 256, 256)])[0]) == {'boxes', 'labels', 'scores'}


@pytest.mark.parametrize('args,kwargs,error,words', [
    (('resnext_tiny_elastik',), {}, ValueError, ["unknown model 'resnext_tiny_elastik'", 'resnext_tiny_elastic']),
    ((torch.nn.Conv2d(3, 8, 3),), {}, TypeError, ['model_name must be a timm model name', 'Conv2d']),
    (('resnext_tiny_elastic',), dict(out_indices=(1, 2, 9)), ValueError,
     ['out_indices (1, 2, 9) is outside', 'has 5 levels', '4: stride 32, 512 channels']),
    (('resnext_tiny_elastic',), dict(out_indices=(3, 2)), ValueError, ['strides [16, 8]', 'strictly increasing']),
    (('resnext_tiny_elastic',), dict(out_indices=0), ValueError, ['out_indices', 'at least 1, got 0']),
    (('resnext_tiny_elastic',), dict(out_indices='last'), ValueError, ["got 'last'"]),
    (('resnext_tiny_elastic',), dict(out_channels=0), ValueError, ['out_channels must be a positive int, got 0']),
    (('resnext_tiny_elastic',), dict(out_channels=25.6), ValueError, ['out_channels must be a positive int']),
    (('resnext_tiny_elastic',), dict(extra_blocks='max'), ValueError, ["['p6p7', 'pool'] or None, got 'max'"]),
    (('resnext_tiny_elastic',), dict(features_only=False), ValueError, ["sets ['features_only']"]),
    # (its forward fed the dict's keys to the FPN: a TypeError from conv2d at the first image)
    (('resnext_tiny_elastic',), dict(feature_cls='dict'), ValueError, ["feature_cls='dict' gives a dict",
                                                                       "'hook', 'fx' or 'getter'"]),
])
def test_bad_arguments_raise_errors_naming_them(args, kwargs, error, words):
    with pytest.raises(error) as info:
        fpn_backbone(*args, **kwargs)
    for w in words:
        assert w in str(info.value)


def test_create_kwargs_reach_timm():
    """Keyword arguments other than the helper's own build the model, as in timm.create_model."""
    def shapes(m):
        return [tuple(p.shape) for p in m.parameters()]

    backbone = fpn_backbone('resnext_tiny_elastic', elastic_ratio=0.25)
    reference = timm.create_model('resnext_tiny_elastic', elastic_ratio=0.25, features_only=True, out_indices=4)
    assert shapes(backbone.body) == shapes(reference)
    assert shapes(backbone.body) != shapes(fpn_backbone('resnext_tiny_elastic').body)


def test_a_detector_on_it_is_scriptable_as_on_torchvisions_backbones():
    """torchvision's detectors script with its own FPN backbones; with ours TorchScript refused the return
    annotation ('Unknown type name OrderedDict[str, torch.Tensor]')."""
    import warnings
    torch.manual_seed(0)
    detector = FasterRCNN(fpn_backbone('resnext_tiny_elastic', out_channels=32), num_classes=3, min_size=64,
                          max_size=64).eval()
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 48)]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)  # torch.jit.script is deprecated from torch 2.14
        scripted = torch.jit.script(detector)
    with torch.no_grad():
        want = detector(images)
        _, got = scripted(images)  # a scripted detector returns (losses, detections)
    for w, g in zip(want, got):
        assert w.keys() == g.keys()
        for k in w:
            torch.testing.assert_close(g[k], w[k])
