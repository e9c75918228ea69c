"""The PASCAL VOC metric (paper Table 5) as the original's `inter_and_union` and `segment.py` compute it: by
hand, against the original's histogram arithmetic re-done here in numpy, and its errors."""
import codecs
import shutil

import numpy as np
import pytest
import torch

from timm_elastic.tasks.segmentation import IGNORE_INDEX, VOC_CLASSES, inter_and_union, iou_metrics


def test_counts_by_hand():
    label = torch.tensor([[0, 0, 1, 1],
                          [0, 2, 2, 255],
                          [255, 2, 1, 0]])
    pred = torch.tensor([[0, 1, 1, 1],
                         [2, 2, 0, 1],
                         [0, 2, 2, 0]])
    inter, union = inter_and_union(pred, label, 3)
    # scored pixels (label != 255): 10. class 0: label at (0,0) (0,1) (1,0) (2,3), pred at (0,0) (1,2) (2,3)
    # (and (2,0), whose label is 255: not scored) -> inter 2 ((0,0), (2,3)), union 4 + 3 - 2 = 5
    # class 1: label (0,2) (0,3) (2,2), pred (0,1) (0,2) (0,3) -> inter 2, union 3 + 3 - 2 = 4
    # class 2: label (1,1) (1,2) (2,1), pred (1,0) (1,1) (2,1) (2,2) -> inter 2, union 3 + 4 - 2 = 5
    assert inter.tolist() == [2, 2, 2] and union.tolist() == [5, 4, 5]
    m = iou_metrics(inter, union, ['a', 'b', 'c'])
    assert m['iou'] == pytest.approx({'a': 40., 'b': 50., 'c': 40.})
    assert m['miou'] == pytest.approx(130. / 3)


def test_a_class_no_image_has_counts_as_zero_in_the_mean():
    inter, union = inter_and_union(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 1]), 3)
    assert union.tolist() == [1, 2, 0]
    assert iou_metrics(inter, union)['miou'] == pytest.approx(200. / 3)  # (100 + 100 + 0) / 3


def _original(pred, mask, n):
    """The original's arithmetic: uint8 maps shifted by one (255 wraps to 0, left out), histograms of n bins
    over [1, n]."""
    pred = np.asarray(pred, dtype=np.uint8) + np.uint8(1)
    mask = np.asarray(mask, dtype=np.uint8) + np.uint8(1)
    pred = pred * (mask > 0)
    inter = pred * (pred == mask)
    a_inter = np.histogram(inter, bins=n, range=(1, n))[0]
    a_pred = np.histogram(pred, bins=n, range=(1, n))[0]
    a_mask = np.histogram(mask, bins=n, range=(1, n))[0]
    return a_inter, a_pred + a_mask - a_inter


def test_equals_the_originals_arithmetic_over_a_dataset():
    g = torch.Generator().manual_seed(0)
    n = len(VOC_CLASSES)
    total = [np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)]
    ours = [torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)]
    for _ in range(5):
        label = torch.randint(0, n - 3, (37, 53), generator=g)  # the last 3 classes in no label
        label[torch.rand(37, 53, generator=g) < 0.1] = IGNORE_INDEX
        pred = torch.where(torch.rand(37, 53, generator=g) < 0.6, label.clamp(max=n - 1),
                           torch.randint(0, n - 1, (37, 53), generator=g))  # class 20 never predicted
        a, b = _original(pred.numpy(), label.numpy(), n)
        total[0] += a
        total[1] += b
        i, u = inter_and_union(pred, label, n)
        ours[0] += i
        ours[1] += u
    assert ours[0].tolist() == total[0].tolist() and ours[1].tolist() == total[1].tolist()
    iou = total[0] / (total[1] + 1e-10)
    m = iou_metrics(*ours, VOC_CLASSES)
    assert m['miou'] == pytest.approx(100 * iou.mean()) and m['iou']['tvmonitor'] == 0.
    assert list(m['iou'].values()) == pytest.approx(list(100 * iou))


def test_bad_inputs():
    with pytest.raises(ValueError, match=r'labels must be 0..2 or 255 \(ignored\), got \[3, 7\]'):
        inter_and_union(torch.zeros(2, 2), torch.tensor([[0, 3], [7, 255]]), 3)
    with pytest.raises(ValueError, match=r'predictions must be 0..2, got \[5\]'):
        inter_and_union(torch.tensor([5, 0]), torch.tensor([0, 0]), 3)
    with pytest.raises(ValueError, match='same shape'):
        inter_and_union(torch.zeros(2, 2), torch.zeros(2, 3), 3)
    with pytest.raises(ValueError, match='2 class names for 3 classes'):
        iou_metrics(torch.zeros(3), torch.ones(3), ['a', 'b'])


def _palette_png(path, labels):
    from PIL import Image
    img = Image.fromarray(np.asarray(labels, dtype=np.uint8), mode='P')
    img.putpalette([v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)])
    img.save(path)


def write_voc(voc, ids=('2007_000032', '2007_000039', '2008_000001'), aug=('2011_000002',)):
    """A VOC2012 folder: JPEGs, palette masks (labels 0, 15 or 1, and 255), the standard lists and an SBD-style
    train_aug list whose masks (of every image, as SBD's) are in SegmentationClassAug."""
    from PIL import Image
    for d in ('JPEGImages', 'SegmentationClass', 'SegmentationClassAug', 'ImageSets/Segmentation'):
        (voc / d).mkdir(parents=True, exist_ok=True)
    masks = {}
    for k, name in enumerate((*ids, *aug)):
        Image.new('RGB', (12, 9), (20 * k, 50, 90)).save(voc / 'JPEGImages' / f'{name}.jpg')
        m = np.zeros((9, 12), dtype=np.uint8)
        m[2:6, 3:8] = 15 if k % 2 == 0 else 1
        m[2, 3:8] = 255
        masks[name] = m
        _palette_png(voc / 'SegmentationClassAug' / f'{name}.png', m)
        if name not in aug:
            _palette_png(voc / 'SegmentationClass' / f'{name}.png', m)
    lists = voc / 'ImageSets' / 'Segmentation'
    (lists / 'train.txt').write_text('\n'.join(ids[:2]) + '\n')
    (lists / 'val.txt').write_text(ids[2] + '\n')
    (lists / 'trainval.txt').write_text('\n'.join(ids) + '\n')
    (lists / 'train_aug.txt').write_text('\n'.join((*ids[:2], *aug)) + '\n')
    return masks


def test_voc_reader_layouts_and_lists(tmp_path):
    from timm_elastic.tasks.segmentation import VOCSegmentationData
    voc = tmp_path / 'VOCdevkit' / 'VOC2012'
    masks = write_voc(voc)
    ds = VOCSegmentationData(str(tmp_path), 'train')  # torchvision's own constructor
    assert len(ds) == 2 and ds.images[0].endswith('JPEGImages/2007_000032.jpg')
    image, mask = ds[1]
    assert image.mode == 'RGB' and image.size == (12, 9) and mask.mode == 'P'
    assert np.array_equal(np.asarray(mask), masks['2007_000039'])
    val = VOCSegmentationData(str(voc), 'val')  # the VOC2012 folder itself
    assert np.array_equal(np.asarray(val[0][1]), masks['2008_000001'])
    # 'validation', the commands' default evaluation split (timm's name), is VOC's 'val'
    assert [VOCSegmentationData(r, 'validation').split for r in (str(voc), str(tmp_path))] == ['val', 'val']
    aug = VOCSegmentationData(str(tmp_path), 'train_aug')
    assert len(aug) == 3 and aug.masks[2].endswith('SegmentationClassAug/2011_000002.png')
    assert aug.masks[0].endswith('SegmentationClassAug/2007_000032.png')  # the Aug masks for every id
    assert np.array_equal(np.asarray(aug[2][1]), masks['2011_000002'])
    # the original's list/*.txt lines: an image path and a mask path under the VOC2012 folder
    (voc / 'ImageSets' / 'Segmentation' / 'pairs.txt').write_text(
        '/JPEGImages/2007_000032.jpg /SegmentationClass/2007_000032.png\n')
    pairs = VOCSegmentationData(str(voc), 'pairs')
    assert np.array_equal(np.asarray(pairs[0][1]), masks['2007_000032'])
    # ... and with blank lines, in a standard list under the VOCdevkit root (torchvision's reader takes neither)
    (voc / 'ImageSets' / 'Segmentation' / 'train.txt').write_text(
        '/JPEGImages/2007_000032.jpg /SegmentationClass/2007_000032.png\n\n2007_000039\n\n')
    mixed = VOCSegmentationData(str(tmp_path), 'train')
    assert len(mixed) == 2 and np.array_equal(np.asarray(mixed[1][1]), masks['2007_000039'])
    flipped = VOCSegmentationData(str(voc), 'val', transforms=lambda i, m: (i.transpose(0), m.transpose(0)))
    assert np.array_equal(np.asarray(flipped[0][1]), masks['2008_000001'][:, ::-1])


def test_voc_reader_takes_the_originals_root(tmp_path):
    """The README's --data-dir /data/VOCdevkit is the original's root (VOCSegmentation('data/VOCdevkit') joins
    VOC2012): a folder holding VOC2012/ is read as the VOC2012 folder and a folder holding VOCdevkit/VOC2012/
    are; a folder that is none of the three says which layouts are read."""
    from timm_elastic.tasks.segmentation import VOCSegmentationData
    masks = write_voc(tmp_path / 'VOCdevkit' / 'VOC2012')
    for root in (tmp_path / 'VOCdevkit', tmp_path, tmp_path / 'VOCdevkit' / 'VOC2012'):
        val = VOCSegmentationData(str(root), 'val')
        assert val.voc_root == str(tmp_path / 'VOCdevkit' / 'VOC2012'), root
        assert np.array_equal(np.asarray(val[0][1]), masks['2008_000001'])
    assert len(VOCSegmentationData(str(tmp_path / 'VOCdevkit'), 'train_aug')) == 3
    (tmp_path / 'other').mkdir()
    layouts = (r"no split list 'val': .*other/ImageSets/Segmentation/val.txt does not exist; .*other is not a VOC2012 "
               r"folder \(holding ImageSets/Segmentation/\) and holds neither VOC2012/ nor VOCdevkit/VOC2012/$")
    with pytest.raises(FileNotFoundError, match=layouts):
        VOCSegmentationData(str(tmp_path / 'other'), 'val')
    # the original's own layout, its lists in VOC2012/list/: said as it is (it said VOC2012/ was not there)
    shutil.move(str(tmp_path / 'VOCdevkit' / 'VOC2012' / 'ImageSets'), str(tmp_path / 'VOCdevkit' / 'VOC2012' / 'list'))
    with pytest.raises(FileNotFoundError) as e:
        VOCSegmentationData(str(tmp_path / 'VOCdevkit'), 'val')
    assert str(e.value).endswith(f"; {tmp_path / 'VOCdevkit' / 'VOC2012'} has no ImageSets/Segmentation/, where the "
                                 "split lists are read from (the original's list/<split>.txt too, moved there)")


def test_voc_list_saved_with_a_byte_order_mark(tmp_path):
    """A list saved by Windows' Notepad starts with a UTF-8 byte-order mark: its first image was reported missing
    (the mark, invisible, began its name), by torchvision's reader and ours alike."""
    from timm_elastic.tasks.segmentation import VOCSegmentationData
    voc = tmp_path / 'VOCdevkit' / 'VOC2012'
    masks = write_voc(voc)
    lists = voc / 'ImageSets' / 'Segmentation'
    for name in ('train', 'pairs'):  # torchvision's list (a standard split, one id a line) and the original's
        text = '2007_000032\n2007_000039\n' if name == 'train' else \
            '/JPEGImages/2007_000032.jpg /SegmentationClass/2007_000032.png\n'
        (lists / f'{name}.txt').write_bytes(codecs.BOM_UTF8 + text.encode())
        ds = VOCSegmentationData(str(tmp_path), name)
        assert ds.images[0] == str(voc / 'JPEGImages' / '2007_000032.jpg'), name
        assert np.array_equal(np.asarray(ds[0][1]), masks['2007_000032'])


def test_voc_reader_errors(tmp_path):
    from timm_elastic.tasks.segmentation import VOCSegmentationData
    voc = tmp_path / 'VOC2012'
    write_voc(voc)
    message = r"no split list 'test': .*test.txt does not exist \(lists there: train, train_aug, trainval, val\)"
    with pytest.raises(FileNotFoundError, match=message):
        VOCSegmentationData(str(voc), 'test')
    (voc / 'JPEGImages' / '2008_000001.jpg').unlink()
    with pytest.raises(FileNotFoundError, match=r"1 files of split 'val' are missing, e.g. .*2008_000001.jpg"):
        VOCSegmentationData(str(voc), 'val')


SEG = {'resnext50_elastic': 'deeplabv3_resnext50_elastic', 'resnext50': 'deeplabv3_resnext50_32x4d',
       'resnext101_elastic': 'deeplabv3_resnext101_elastic', 'resnext101': 'deeplabv3_resnext101_32x4d'}


def _manifest(arch):  # the original seg model's key manifest (tests/data/original/seg_<arch>.json)
    import json
    import os
    path = os.path.join(os.path.dirname(__file__), 'data', 'original', f'seg_{arch}.json')
    with open(path) as f:
        return json.load(f)


@pytest.mark.slow
@pytest.mark.parametrize('arch', SEG)
def test_deeplabv3_matches_the_originals_layout(arch):
    """DeepLabV3 on our backbones has the original seg model's parameter count (its key manifest, of the
    released architectures) and its head's keys and shapes exactly (`aspp.*`: loadable as they are)."""
    from timm_elastic.segmentation import create_model
    model = create_model(SEG[arch])
    assert [b.conv2.dilation for b in model.backbone.layer4] == [(2, 2), (4, 4), (8, 8)]
    manifest = _manifest(arch)
    assert sum(p.numel() for p in model.parameters()) == manifest['num_params']
    ours = {k: list(v.shape) for k, v in model.state_dict().items() if k.startswith('aspp.')}
    assert ours == {k: shape for k, shape in manifest['keys'] if k.startswith('aspp.')}


def test_deeplabv3_structure_and_output():
    """Output stride 16, layer4 at stride 1 (the tiny twin's one block at dilation 2: the multi-grid's first),
    ASPP rates 6, 12, 18, logits at the input size for odd sizes too, align_corners bilinear from the
    stride-16 map; it trains."""
    import torch.nn.functional as F
    from timm_elastic.segmentation import create_model
    torch.manual_seed(0)
    model = create_model('deeplabv3_resnext_tiny_elastic', num_classes=5).eval()
    assert [b.conv2.dilation for b in model.backbone.layer4] == [(2, 2)]
    assert model.backbone.layer4[0].downsample[0].stride == (1, 1)  # the original's 1x1 stride-1 downsample
    assert [getattr(model.aspp, f'aspp{i}').dilation for i in (2, 3, 4)] == [(6, 6), (12, 12), (18, 18)]
    x = torch.randn(2, 3, 65, 35)
    with torch.no_grad():
        feats = model.backbone.forward_features(x)
        y = model(x)
    assert feats.shape[-2:] == (5, 3)  # ceil(65 / 16), ceil(35 / 16)
    assert y.shape == (2, 5, 65, 35)
    with torch.no_grad():
        want = F.interpolate(model.aspp(feats), size=(65, 35), mode='bilinear', align_corners=True)
    torch.testing.assert_close(y, want)
    # the image-pool branch: its value is the same at every position
    with torch.no_grad():
        pooled = model.aspp.relu(model.aspp.aspp5_bn(model.aspp.aspp5(feats.mean((2, 3), keepdim=True))))
    assert pooled.shape[-2:] == (1, 1)
    model.train()
    model(torch.randn(2, 3, 64, 64)).mean().backward()


def test_deeplabv3_bad_names():
    from timm_elastic.segmentation import create_model
    with pytest.raises(ValueError, match='the names are deeplabv3_<backbone>'):
        create_model('pspnet_resnext50_elastic')
    with pytest.raises(ValueError, match="'resnext77' is not a timm model"):
        create_model('deeplabv3_resnext77')
    with pytest.raises(ValueError, match='DeepLabV3 takes a timm ResNet-family backbone'):
        create_model('deeplabv3_dla_x60_elastic')


def test_backbone_kwargs_the_model_sets_are_refused():
    """output_stride (DeepLabV3's 16, DLA-up's 32), pretrained, num_classes and DeepLabV3's global_pool are set by
    the segmentation model: one-line ValueErrors that say so (they were timm's "got multiple values for keyword
    argument"); the backbone's other arguments pass."""
    from timm_elastic.segmentation import create_model
    for name, kwargs, message in (
            ('deeplabv3_resnext_tiny', dict(output_stride=8), r"output_stride itself \(output_stride=16: DeepLabV3's"),
            ('dlaup_dla_x60', dict(output_stride=16), r"output_stride itself \(output_stride=32: DLA-up's"),
            ('deeplabv3_resnext_tiny', dict(num_classes=3, global_pool='avg'),
             r"num_classes / global_pool itself \(num_classes=0: the backbone has no classifier"),
            ('dlaup_dla_x60', dict(pretrained=True), r"pretrained itself \(pretrained=False: create_model's "
                                                     'pretrained_backbone')):
        with pytest.raises(ValueError, match=f"^'{name}' sets its backbone's {message}.*the other arguments of "
                                             'timm.create_model'):
            create_model(name, backbone_kwargs=kwargs)
    model = create_model('deeplabv3_resnext_tiny', num_classes=3, backbone_kwargs=dict(drop_path_rate=0.1))
    assert model.output_stride == 16 and model.backbone.layer4[0].drop_path.drop_prob == pytest.approx(0.1)


def test_a_release_converts_for_other_classes_and_backbone_options():
    """from_original(segmentation release, num_classes=N) keeps every weight but the final classifier convolution
    (DeepLabV3's aspp.conv3, DLA-up's fc.0 and its fixed bilinear up of one kernel per class), newly initialised,
    with a warning, as the classification path does; other keyword arguments go to the backbone. They were
    "got multiple values for keyword argument 'num_classes'" and "unexpected keyword argument 'drop_rate'"."""
    from original import as_release, stand_in_state
    from timm_elastic.convert import from_original
    from timm_elastic.segmentation import _depthwise_up
    for arch, fresh, kwargs in (('seg_resnext50_elastic', ['aspp.conv3.weight', 'aspp.conv3.bias'],
                                 dict(arch='seg_resnext50_elastic', drop_path_rate=0.1)),
                                ('seg_dla60x', ['fc.0.weight', 'fc.0.bias', 'up.weight'], dict(drop_rate=0.1))):
        state = stand_in_state(arch)
        release = from_original(state, arch=arch).state_dict()
        with pytest.warns(UserWarning, match=f'the checkpoint has 21 classes and the model 5: {fresh[0]}, {fresh[1]} '
                                             'are left newly initialised, for fine-tuning'):
            model = from_original(as_release(state), num_classes=5, **kwargs)  # DLA's architecture inferred
        assert model.num_classes == 5 and not model.training
        ours = model.state_dict()
        assert ours.keys() == release.keys()
        assert [k for k in ours if not torch.equal(ours[k], release[k])] == [k for k in fresh if k in ours]
        assert all(ours[k].shape[0] == 5 for k in fresh)
        with torch.no_grad():
            assert model(torch.randn(1, 3, 33, 33)).shape[1] == 5
        if 'dla' in arch:  # the fixed upsampling: bilinear (the stand-in's is random, a release's bilinear)
            assert torch.equal(ours['up.weight'], _depthwise_up(5, 2).weight.detach())
    state = stand_in_state('seg_dla60x')
    with pytest.raises(TypeError, match=r"takes num_classes, bn_momentum, backbone_kwargs and the keyword arguments of "
                                        r"its backbone's timm.create_model\('dla_x60'\): .*unexpected keyword argument "
                                        "'no_such_option'"):
        from_original(state, arch='seg_dla60x', no_such_option=1)
    with pytest.raises(ValueError, match=r"'dlaup_dla_x60' sets its backbone's output_stride itself"):
        from_original(state, arch='seg_dla60x', output_stride=8)
    with pytest.raises(TypeError, match='loads the checkpoint itself; do not pass pretrained_backbone'):
        from_original(state, arch='seg_dla60x', pretrained_backbone=True)
    assert from_original(state, arch='seg_dla60x', num_classes=21, bn_momentum=0.2).fc[0].weight.shape[0] == 21


@pytest.mark.slow
@pytest.mark.parametrize('arch', ['seg_resnext50_elastic', 'seg_dla60x'])
def test_released_segmentation_models_convert_exactly(arch):
    """The stand-ins of the released `deeplab_<arch>_pascal_v3_original_epoch50.pth` (the original's keys and
    calibrated BatchNorm statistics, as released: `module.` keys, wrapped) become models whose outputs are the
    original implementation's published ones at 128x128 and 65x35 (DeepLab: logits at the input size; DLA-up:
    log-probabilities cropped to 2 ceil(S / 2) - 1); the architecture is inferred from the keys."""
    import json
    import os

    from safetensors.torch import load_file

    from original import as_release, make_input, stand_in_state, tolerance
    from timm_elastic.convert import from_original
    from timm_elastic.segmentation import DeepLabV3, DLASeg
    here = os.path.join(os.path.dirname(__file__), 'data', 'original', 'expected')
    with open(os.path.join(here, f'{arch}.json')) as f:
        outputs = json.load(f)['outputs']
    tensors = load_file(os.path.join(here, f'{arch}.expected.safetensors'))
    model = from_original(as_release(stand_in_state(arch)))
    assert isinstance(model, DLASeg if 'dla' in arch else DeepLabV3) and not model.training
    for out in outputs:
        with torch.no_grad():
            got = model(make_input(out['shape'], out['seed']))
        want = tensors[out['key']]
        assert got.shape == want.shape == tuple(out['output_shape'])
        torch.testing.assert_close(got, want, rtol=0, atol=tolerance(want))


@pytest.mark.slow
def test_segmentation_architectures_are_inferred_and_named():
    from original import as_release, stand_in_state
    from timm_elastic.convert import CheckpointError, from_original
    seg101 = as_release(stand_in_state('seg_resnext101'))
    assert from_original(seg101).backbone.pretrained_cfg['architecture'] == 'resnext101_32x4d'
    assert from_original(as_release(stand_in_state('seg_dla60x_elastic'))).base.pretrained_cfg['architecture'] \
        == 'dla_x60_elastic'
    with pytest.raises(CheckpointError, match='not a checkpoint of seg_resnext50_elastic'):
        from_original(seg101, arch='seg_resnext50_elastic')


def test_a_segmentation_model_in_our_layout_is_not_converted():
    """A DLASeg's own state dict (the original's layout but for the keys the original has and never uses) is no
    release of the authors': converting it would label it theirs."""
    from original import as_release, stand_in_state
    from timm_elastic.convert import CheckpointError, from_original
    ours = from_original(as_release(stand_in_state('seg_dla60x'))).state_dict()
    with pytest.raises(CheckpointError, match=r"the checkpoint is in timm's layout already \(every key is one of "
                                              r"dlaup_dla_x60's\).*timm_elastic.segmentation.create_model"):
        from_original(ours)


@pytest.mark.parametrize('arch', ['dla60x', 'dla60x_elastic'])
def test_dlaup_matches_the_originals_layout(arch):
    """DLA-up on our DLA models: the decoder's and classifier's keys and shapes are the original's; the
    parameters are the original's but its backbone's unused ImageNet classifier and DLA projections."""
    import math

    from timm_elastic.segmentation import create_model
    model = create_model(f'dlaup_{ORIGINAL_DLA[arch]}')
    manifest = _manifest(arch)
    ours = {k: list(v.shape) for k, v in model.state_dict().items() if not k.startswith('base.')}
    assert ours == {k: shape for k, shape in manifest['keys'] if not k.startswith('base.')}
    unused_fc = sum(math.prod(shape) for k, shape in manifest['keys'] if k.startswith('base.fc.'))
    assert sum(p.numel() for p in model.parameters()) + unused_fc + model.base.unused_original_counts()[0] \
        == manifest['num_params']
    model.eval()
    with torch.no_grad():
        for h, w in ((64, 64), (65, 35)):
            y = model(torch.randn(1, 3, h, w))
            assert y.shape == (1, 21, 2 * math.ceil(h / 2) - 1, 2 * math.ceil(w / 2) - 1)
            torch.testing.assert_close(y.exp().sum(1), torch.ones(1, *y.shape[2:]))  # log-probabilities


ORIGINAL_DLA = {'dla60x': 'dla_x60', 'dla60x_elastic': 'dla_x60_elastic'}


def test_transposed_upsampling_starts_bilinear():
    """The DLA-up upsamplers start as bilinear interpolation (the original's fill_up_weights): away from the
    border, x2 is exactly F.interpolate's bilinear (align_corners=False); the final one stays fixed."""
    import torch.nn.functional as F
    from timm_elastic.segmentation import _depthwise_up, create_model
    up = _depthwise_up(3, 2)
    x = torch.randn(1, 3, 6, 7)
    with torch.no_grad():
        got, want = up(x), F.interpolate(x, scale_factor=2., mode='bilinear', align_corners=False)
    assert got.shape == want.shape
    torch.testing.assert_close(got[..., 1:-1, 1:-1], want[..., 1:-1, 1:-1])
    assert not create_model('dlaup_dla_x60', num_classes=3).up.weight.requires_grad


def test_a_hub_model_that_cannot_be_fetched_is_one_line(tmp_path):
    # offline with an empty cache: huggingface_hub's error, named, in one line (it was a traceback)
    import os
    import subprocess
    import sys
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_HOME=str(tmp_path / 'hf'))
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), 'timm-elastic'), 'validate', '--task',
                           'segment', '--model', 'hf-hub:nobody/no-such-model', '--pretrained', '--val-num-samples',
                           '2', '-j', '0', '--no-progress'], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr, proc.stderr[-2000:]
    line, = proc.stderr.strip().splitlines()
    assert line.startswith("timm-elastic validate: error: 'hf-hub:nobody/no-such-model': cannot fetch config.json "
                           'and model.safetensors from the Hugging Face Hub: '), line


def test_dlaup_decoder_starts_as_the_originals():
    """models/dla_up.py draws every convolution of its decoder (IDA projections and nodes, the classifier) from a
    normal of std sqrt(2 / (k x k x out channels)); the transposed ones start bilinear (above)."""
    import math

    from timm_elastic.segmentation import create_model
    torch.manual_seed(0)
    model = create_model('dlaup_dla_x60', num_classes=21)
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)
             and (n.startswith('dla_up.') or n.startswith('fc.'))]
    assert len(convs) > 10 and any(n.startswith('fc.') for n, _ in convs)
    for name, m in convs:
        w = m.weight.detach().double()
        want = math.sqrt(2. / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels))
        # PyTorch's default (uniform, std 1 / sqrt(3 fan_in)) is 3 to 8 times smaller here
        assert abs(float(w.std()) / want - 1) < 0.1 and abs(float(w.mean())) < 0.1 * want, name


@pytest.mark.slow
def test_convert_writes_a_folder_that_rebuilds_the_model(tmp_path):
    """`timm-elastic convert` on a segmentation release (the seg_dla60x stand-in, as a file): config.json,
    model.safetensors and a card with Table 5's row marked as the paper's; create_model('local-dir:...')
    rebuilds a model with the same outputs as from_original's."""
    import json

    from original import as_release, make_input, stand_in_state
    from test_hub import convert
    from timm_elastic.convert import from_original
    from timm_elastic.segmentation import create_model
    release = tmp_path / 'deeplab_dla60x_pascal_v3_original_epoch50.pth'
    state = stand_in_state('seg_dla60x')
    torch.save(as_release(state), release)
    proc = convert(str(release), '--out', str(tmp_path / 'out'))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'seg_dla60x -> dlaup_dla_x60' in proc.stdout
    assert "timm_elastic.segmentation.create_model('local-dir:" in proc.stdout
    config = json.loads((tmp_path / 'out' / 'config.json').read_text())
    assert config['architecture'] == 'dlaup_dla_x60' and config['num_classes'] == 21
    assert config['label_names'][0] == 'background' and config['original_arch'] == 'seg_dla60x'
    card = (tmp_path / 'out' / 'README.md').read_text()
    assert '| DLA-X60* | 69.96 | 73.59 |' in card and "These weights are the original column's" in card
    assert 'not measured on the converted model' in card
    rebuilt = create_model(f'local-dir:{tmp_path / "out"}').eval()
    x = make_input([1, 3, 64, 48], 3)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), from_original(as_release(state))(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match='config.json does not exist'):
        create_model(f'local-dir:{tmp_path}')
    # its classifier has 21 outputs: another number is refused (it was ignored: 21 outputs scored on 9 classes)
    assert create_model(f'local-dir:{tmp_path / "out"}', num_classes=21).num_classes == 21
    with pytest.raises(ValueError, match=r'has 21 classes \(its config.json\), not 9: a converted release keeps'):
        create_model(f'local-dir:{tmp_path / "out"}', num_classes=9)
