"""`--task segment` through the one training loop (issue 20): the original's preprocessing and loss, train /
validate on a tiny PASCAL VOC folder read through torchvision's reader and on the built-in masks, validate's
mIoU against the model's own outputs scored by the original's arithmetic, exact resume, DDP with two CPU
processes, `compare --task segment`, and one-line errors for bad inputs."""
import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import timm_elastic  # noqa: F401
from timm_elastic.tasks.segmentation import (
    IGNORE_INDEX, SegmentationLoss, SegmentationTransform, inter_and_union, iou_metrics,
)

from test_segmentation import _original, _palette_png, write_voc
from test_train import cli, summary, torchrun, validate_in_two_processes_and_one

QUICK = ['-j', '0', '--no-progress', '--log-interval', '0']
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _pair(w=12, h=9):
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy()
    labels = torch.randint(0, 4, (h, w), generator=g).numpy().astype(np.uint8)
    labels[0, 0] = IGNORE_INDEX
    return Image.fromarray(pixels), Image.fromarray(labels, mode='L'), pixels, labels


def _normalised(pixels):
    return (torch.tensor(pixels).permute(2, 0, 1).float() / 255 - torch.tensor(MEAN)[:, None, None]) \
        / torch.tensor(STD)[:, None, None]


def test_evaluation_pads_as_the_original_and_cuts_the_centre():
    """A 12x9 image for a 13-pixel crop: the original pads floor((1 + 13 - 9) / 2) = 2 rows above and below
    and floor((1 + 13 - 12) / 2) = 1 column left and right (0 in the normalised image, 255 in the mask),
    13x14, and the centre cut keeps rows 0-12 and columns 0-12."""
    image, mask, pixels, labels = _pair()
    x, m = SegmentationTransform(13, MEAN, STD, training=False)(image, mask)
    assert x.shape == (3, 13, 13) and m.shape == (13, 13) and m.dtype == torch.int64
    want_m = torch.full((13, 14), IGNORE_INDEX, dtype=torch.int64)
    want_m[2:11, 1:13] = torch.from_numpy(labels.astype(np.int64))
    want_x = torch.zeros(3, 13, 14)
    want_x[:, 2:11, 1:13] = _normalised(pixels)
    assert torch.equal(m, want_m[:, :13])
    assert torch.allclose(x, want_x[:, :, :13], atol=1e-6)
    # larger than the crop: no padding, the centre window
    x, m = SegmentationTransform(5, MEAN, STD, training=False)(image, mask)
    assert torch.equal(m, torch.from_numpy(labels.astype(np.int64))[2:7, 3:8])


def test_training_flips_rescales_and_cuts_a_window_of_the_padded_pair():
    image, mask, pixels, labels = _pair()
    flip = SegmentationTransform(13, MEAN, STD, training=True, scale=None, hflip=1.0)
    for seed in range(4):
        torch.manual_seed(seed)
        x, m = flip(image, mask)
        padded_m = torch.full((13, 14), IGNORE_INDEX, dtype=torch.int64)
        padded_m[2:11, 1:13] = torch.from_numpy(labels[:, ::-1].astype(np.int64))
        padded_x = torch.zeros(3, 13, 14)
        padded_x[:, 2:11, 1:13] = _normalised(np.ascontiguousarray(pixels[:, ::-1]))
        windows = [j for j in range(2) if torch.equal(m, padded_m[:, j:j + 13])
                   and torch.allclose(x, padded_x[:, :, j:j + 13], atol=1e-6)]
        assert windows, seed
    # the rescale: 2^u with u uniform in [log2 0.5, log2 2]; the mask with nearest-neighbour, so labels stay labels
    scale = SegmentationTransform(40, MEAN, STD, training=True, scale=(0.5, 2.0), hflip=0.)
    sides = set()
    for seed in range(40):
        torch.manual_seed(seed)
        _, m = scale(image, mask)
        kept = m[m != IGNORE_INDEX]
        assert set(kept.unique().tolist()) <= {0, 1, 2, 3}
        rows = int((m != IGNORE_INDEX).any(1).sum())  # the rescaled image's height (40 > 2 x 9: all inside)
        sides.add(rows)
        assert 4 <= rows <= 18  # round(9 x 0.5) .. round(9 x 2)
    assert min(sides) <= 7 and max(sides) >= 14  # both halves of the log range are drawn
    fixed = SegmentationTransform(40, MEAN, STD, training=True, scale=(2.0, 2.0), hflip=0.)
    torch.manual_seed(0)
    _, m = fixed(image, mask)
    inside = m[(m != IGNORE_INDEX).any(1)][:, (m != IGNORE_INDEX).any(0)]
    assert inside.shape == (18, 24)
    big = np.asarray(mask.resize((24, 18), Image.NEAREST)).astype(np.int64)
    big[big == IGNORE_INDEX] = -1  # the ignored corner may sit on the border of the cut
    assert torch.equal(torch.where(inside == IGNORE_INDEX, -1, inside), torch.from_numpy(big))


def test_the_loss_is_the_originals_cross_entropy_and_dla_outputs_are_aligned():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 8, 8, generator=g)
    target = torch.randint(0, 5, (2, 8, 8), generator=g)
    target[:, :2] = IGNORE_INDEX
    want = torch.nn.CrossEntropyLoss(ignore_index=255)(logits, target)
    assert float(SegmentationLoss()(logits, target)) == pytest.approx(float(want), rel=1e-6)
    # DLASeg: 2 ceil(S / 2) - 1 = 7 pixels for S = 8: the masks' top-left 7x7
    log_probs = F.log_softmax(logits[:, :, :7, :7], dim=1)
    want = F.nll_loss(log_probs, target[:, :7, :7], ignore_index=255)
    assert float(SegmentationLoss()(log_probs, target)) == pytest.approx(float(want), rel=1e-6)
    with pytest.raises(ValueError, match='the model gives 5x5 outputs for 8x8 masks'):
        SegmentationLoss()(logits[:, :, :5, :5], target)


def test_a_batch_without_scored_pixels_has_zero_loss_and_others_the_originals():
    """A batch whose pixels are all 255 contributes 0 (not the mean's 0 / 0 = NaN, which made the epoch's train
    loss NaN) and no gradient; any other batch's loss and gradients are the original's
    CrossEntropyLoss(ignore_index=255), bit for bit."""
    from timm_elastic.tasks import get_task
    loss_fn = get_task('segment').train_loss(None, mixup=False)  # what the loop trains with
    g = torch.Generator().manual_seed(0)
    for shape in ((2, 5, 8, 8), (3, 21, 13, 9)):
        logits = torch.randn(*shape, generator=g, requires_grad=True)
        target = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g)
        target[torch.rand(target.shape, generator=g) < 0.3] = IGNORE_INDEX
        target[0] = IGNORE_INDEX  # an image without a scored pixel in a batch that has some
        want = torch.nn.CrossEntropyLoss(ignore_index=255)(logits, target)
        want_grad, = torch.autograd.grad(want, logits)
        got = loss_fn(logits, target)
        got_grad, = torch.autograd.grad(got, logits)
        assert torch.equal(got, want) and torch.equal(got_grad, want_grad)
    logits = torch.randn(2, 5, 8, 8, generator=g, requires_grad=True)
    none = torch.full((2, 8, 8), IGNORE_INDEX)
    assert torch.isnan(F.cross_entropy(logits, none, ignore_index=255))  # the mean's 0 / 0
    got = loss_fn(logits, none)
    got.backward()
    assert got.item() == 0. and torch.equal(logits.grad, torch.zeros_like(logits))


def test_eval_loss_leaves_out_images_without_scored_pixels():
    """The evaluation loss is the mean over images of each image's pixel mean, over the images that have a
    scored pixel: an all-255 image has no loss (it counted as 0 and halved the mean); NaN where no image has
    one. mIoU is the same either way."""
    from timm_elastic.tasks import get_task
    task = get_task('segment')
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 4, 9, 9, generator=g)
    target = torch.randint(0, 4, (3, 9, 9), generator=g)
    target[0, :3] = IGNORE_INDEX
    target[1] = IGNORE_INDEX
    own = [float(F.cross_entropy(logits[i:i + 1], target[i:i + 1], ignore_index=255)) for i in (0, 2)]
    got = task.summarize(task.per_image(logits, target), None)
    assert got['loss'] == pytest.approx(sum(own) / 2, rel=1e-6) and got['count'] == 3
    scored = task.summarize(task.per_image(logits[[0, 2]], target[[0, 2]]), None)
    assert got['miou'] == scored['miou'] and got['loss'] == pytest.approx(scored['loss'], rel=1e-12)
    # per combination too: a combination of unscored images only has a NaN loss, and its mIoU
    got = task.summarize(task.per_image(logits, target), [('small',), ('large',), ('small',)])
    assert got['per_combination']['small']['loss'] == pytest.approx(sum(own) / 2, rel=1e-6)
    assert np.isnan(got['per_combination']['large']['loss'])
    nothing = task.summarize(task.per_image(logits[1:2], target[1:2]), None)
    assert np.isnan(nothing['loss']) and nothing['miou'] == 0.
    # a NaN of the model's (a diverged one, here on one image) is not left out: the loss says NaN
    diverged = logits.clone()
    diverged[2] = float('nan')
    assert np.isnan(task.summarize(task.per_image(diverged, target), None)['loss'])


def test_validate_refuses_a_registry_model_whose_head_pretrained_leaves_random(tmp_path):
    """validate --model deeplabv3_<backbone> --pretrained gave the backbone its ImageNet weights and scored the
    randomly initialised ASPP head (a different mIoU each run); the same model with a --checkpoint is evaluated."""
    from timm_elastic.cli import build_parser
    from timm_elastic.train import UsageError, validate
    parse = build_parser().parse_args
    for model, head in (('deeplabv3_resnext_tiny', 'ASPP head'), ('dlaup_dla_x60', 'DLA-up decoder and classifier')):
        with pytest.raises(UsageError, match=re.escape(
                f"--pretrained gives {model} its backbone's ImageNet weights only; its {head} would be scored at "
                'random initialisation: evaluate a trained run (--checkpoint), or a converted release')):
            validate(parse(['validate', '--task', 'segment', '--model', model, '--pretrained', '--val-num-samples',
                            '4', '-j', '0', '--no-progress']))
    import timm_elastic.segmentation as seg
    path = str(tmp_path / 'm.pth.tar')
    torch.save({'state_dict': seg.create_model('deeplabv3_resnext_tiny', num_classes=9).state_dict(),
                'arch': 'deeplabv3_resnext_tiny'}, path)
    got = validate(parse(['validate', '--task', 'segment', '--checkpoint', path, '--pretrained', '--val-num-samples',
                          '4', '-j', '0', '--no-progress']))
    assert got['count'] == 4


def test_drop_is_refused():
    """--drop was accepted and did nothing: timm's dropout is in the classifier head, which the segmentation
    models do not run (their outputs in training are the same, bit for bit, with drop_rate 0.9 and 0)."""
    import timm_elastic.segmentation as seg
    from timm_elastic.cli import build_parser
    from timm_elastic.tasks import get_task
    from timm_elastic.train import UsageError
    x = torch.randn(2, 3, 40, 40)
    outputs = []
    for rate in (0., 0.9):
        torch.manual_seed(0)
        model = seg.create_model('deeplabv3_resnext_tiny', backbone_kwargs=dict(drop_rate=rate)).train()
        torch.manual_seed(1)
        outputs.append(model(x))
    assert torch.equal(*outputs)
    args = build_parser().parse_args(['train', '--task', 'segment', '--drop', '0.2'])
    with pytest.raises(UsageError, match=re.escape("--drop 0.2 does not apply to --task segment: timm's dropout is "
                                                   'before a classifier head')):
        get_task('segment').check_train_args(args)
    get_task('segment').check_train_args(build_parser().parse_args(['train', '--task', 'segment']))


def test_crop_pct_and_interpolation_are_refused():
    """--crop-pct / --interpolation were accepted and ignored by --task segment (train and validate; the train
    banner printed crop_pct 1.0, lanczos against them): refused as the augmentation flags are, when given."""
    from timm_elastic.cli import build_parser
    from timm_elastic.tasks import get_task
    from timm_elastic.train import UsageError
    task = get_task('segment')
    config = dict(input_size=(3, 33, 33), mean=MEAN, std=STD, interpolation='bilinear', crop_pct=0.875)
    for command in ('train', 'validate'):
        for flags, named in ((['--crop-pct', '0.9'], '--crop-pct does'),
                             (['--interpolation', 'bicubic'], '--interpolation does'),
                             (['--crop-pct', '1.0', '--interpolation', 'lanczos'], '--crop-pct / --interpolation do')):
            args = build_parser().parse_args([command, '--task', 'segment', *flags])
            checks = [lambda: task.data_config(config, args)]  # what validate and train call
            if command == 'train':
                checks.append(lambda: task.check_train_args(args))  # before the data and the model are read
            for check in checks:
                with pytest.raises(UsageError, match=f'^{named} not apply to --task segment, which resizes no '
                                                     'image but by the random rescale of training'):
                    check()
        args = build_parser().parse_args([command, '--task', 'segment'])  # the defaults are not refused
        if command == 'train':
            task.check_train_args(args)
        assert task.data_config(config, args)['crop_pct'] == 1.0


def test_per_image_counts_sum_to_the_originals_miou():
    from timm_elastic.tasks import get_task
    task = get_task('segment')
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 4, 9, 9, generator=g)
    target = torch.randint(0, 4, (6, 9, 9), generator=g)
    target[:, 0] = IGNORE_INDEX
    target[3] = 1
    results = task.per_image(logits, target)
    assert results['inter'].shape == (6, 4)
    pred = logits.argmax(1)
    inter = sum(_original(pred[i].numpy(), target[i].numpy(), 4)[0] for i in range(6))
    union = sum(_original(pred[i].numpy(), target[i].numpy(), 4)[1] for i in range(6))
    want = iou_metrics(torch.from_numpy(inter), torch.from_numpy(union))
    combos = [('small',), ('large',)] * 3
    got = task.summarize(results, combos)
    assert got['miou'] == pytest.approx(want['miou'])
    small = [0, 2, 4]
    i_s = sum(inter_and_union(pred[i], target[i], 4)[0] for i in small)
    u_s = sum(inter_and_union(pred[i], target[i], 4)[1] for i in small)
    assert got['per_combination']['small']['miou'] == pytest.approx(iou_metrics(i_s, u_s)['miou'])
    assert got['per_combination']['small']['count'] == 3
    flat = task.flat(got)
    assert flat['miou_small'] == got['per_combination']['small']['miou'] and flat['iou_0'] == got['iou']['0']


def _voc(root, n_train=6, n_val=3, size=(40, 30)):
    """A VOC2012 folder (write_voc's layout) of textured `size` images, each with a block of class 15 or 1 (its
    top row 255) in a mask, `n_train` / `n_val` of them in train.txt / val.txt."""
    ids = tuple(f'2007_{i:06d}' for i in range(n_train + n_val))
    voc = root / 'VOCdevkit' / 'VOC2012'
    write_voc(voc, ids=ids, aug=())
    g = torch.Generator().manual_seed(0)
    w, h = size
    for k, name in enumerate(ids):
        noise = torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy()
        labels = np.zeros((h, w), dtype=np.uint8)
        x, y = 3 + 2 * k, 2 + k
        labels[y:y + 12, x:x + 16] = 15 if k % 2 == 0 else 1
        noise[labels > 0] //= 3  # darker where the object is: something to learn
        labels[y, x:x + 16] = IGNORE_INDEX
        Image.fromarray(noise).save(voc / 'JPEGImages' / f'{name}.jpg')
        _palette_png(voc / 'SegmentationClass' / f'{name}.png', labels)
    lists = voc / 'ImageSets' / 'Segmentation'
    (lists / 'train.txt').write_text('\n'.join(ids[:n_train]) + '\n')
    (lists / 'val.txt').write_text('\n'.join(ids[n_train:]) + '\n')
    return voc, ids


def _from_checkpoint(checkpoint):
    from timm_elastic.segmentation import create_model
    ckpt = torch.load(checkpoint, map_location='cpu', weights_only=False)
    model = create_model(ckpt['arch'], num_classes=21)
    model.load_state_dict(ckpt['state_dict'])
    return model


def _scored_by_hand(model, voc, ids, crop):
    """The original's evaluation of each image, re-done here: pad by floor((1 + crop - side) / 2) on both
    sides (0 after normalisation, 255 in the mask), the centre crop x crop window, arg-max, and the
    original's uint8 histogram counts summed over the images."""
    model.eval()
    inter = union = 0
    for name in ids:
        pixels = np.asarray(Image.open(voc / 'JPEGImages' / f'{name}.jpg').convert('RGB'))
        labels = np.asarray(Image.open(voc / 'SegmentationClass' / f'{name}.png'))
        h, w = labels.shape
        ph, pw = max(0, int((1 + crop - h) / 2)), max(0, int((1 + crop - w) / 2))
        x = np.zeros((3, h + 2 * ph, w + 2 * pw), dtype=np.float32)
        x[:, ph:ph + h, pw:pw + w] = _normalised(pixels).numpy()
        m = np.full((h + 2 * ph, w + 2 * pw), 255, dtype=np.uint8)
        m[ph:ph + h, pw:pw + w] = labels
        i, j = (x.shape[1] - crop) // 2, (x.shape[2] - crop) // 2
        x, m = x[:, i:i + crop, j:j + crop], m[i:i + crop, j:j + crop]
        with torch.no_grad():
            pred = model(torch.from_numpy(x)[None]).argmax(1)[0].numpy()
        a, b = _original(pred, m, 21)
        inter, union = inter + a, union + b
    return inter, union


@pytest.mark.slow
def test_train_and_validate_on_voc_match_the_models_outputs(tmp_path):
    """Training on a VOC folder lowers the loss; validate's mIoU and per-class IoU are the original's over
    the model's outputs computed here; summary.csv and the results file have every class's IoU."""
    voc, ids = _voc(tmp_path)
    out = tmp_path / 'runs'
    proc = cli('train', '--task', 'segment', '--data-dir', str(tmp_path), '--val-split', 'val', '--model',
               'deeplabv3_resnext_tiny_elastic', '--img-size', '33', '--epochs', '3', '-b', '3', '--lr', '0.05',
               # statistics that follow 6 updates: outputs that differ from pixel to pixel, so that a wrong crop shows
               '--bn-momentum', '0.5', '--output', str(out), '--experiment', 'a', *QUICK)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = summary(out / 'a' / 'summary.csv')
    assert rows[0][:4] == ['epoch', 'train_loss', 'eval_loss', 'eval_miou']
    assert 'eval_iou_person' in rows[0] and 'eval_iou_tvmonitor' in rows[0]
    losses = [float(r[1]) for r in rows[1:]]
    assert losses[-1] < losses[0], losses
    assert 'eval mIoU' in proc.stdout

    ckpt = out / 'a' / 'last.pth.tar'
    proc = cli('validate', '--task', 'segment', '--data-dir', str(tmp_path), '--split', 'val', '--checkpoint',
               str(ckpt), '--img-size', '33', '--results-file', str(tmp_path / 'r.json'), *QUICK[:3])
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads((tmp_path / 'r.json').read_text())
    inter, union = _scored_by_hand(_from_checkpoint(ckpt), voc, ids[6:], 33)
    iou = inter / (union + 1e-10)
    assert got['miou'] == pytest.approx(100 * iou.mean(), abs=1e-6)
    assert list(got['iou']) == ['background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat',
                                'chair', 'cow', 'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant',
                                'sheep', 'sofa', 'train', 'tvmonitor']
    assert [got['iou'][c] for c in ('background', 'aeroplane', 'person')] == pytest.approx(
        [100 * iou[0], 100 * iou[1], 100 * iou[15]], abs=1e-6)
    assert got['count'] == 3 and got['task'] == 'segment' and got['num_classes'] == 21 and got['img_size'] == 33
    assert f'mIoU {got["miou"]:.2f}%' in proc.stdout and 'IoU person' in proc.stdout


@pytest.mark.slow
def test_a_converted_release_validates_as_the_original_scores_it(tmp_path):
    """A released PASCAL model (the seg_dla60x stand-in) converted by `timm-elastic convert` and validated by
    name (`local-dir:`): mIoU and per-class IoU are the original's evaluation of its outputs."""
    from original import as_release, stand_in_state
    from test_hub import convert
    from timm_elastic.segmentation import create_model
    release = tmp_path / 'deeplab_dla60x_pascal_v3_original_epoch50.pth'
    torch.save(as_release(stand_in_state('seg_dla60x')), release)
    proc = convert(str(release), '--out', str(tmp_path / 'hub'))
    assert proc.returncode == 0, proc.stderr[-2000:]
    voc, ids = _voc(tmp_path / 'voc', 1, 3)
    proc = cli('validate', '--task', 'segment', '--model', f'local-dir:{tmp_path / "hub"}', '--pretrained',
               '--data-dir', str(tmp_path / 'voc'), '--split', 'val', '--img-size', '33', '--results-file',
               str(tmp_path / 'r.json'), *QUICK[:3])
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads((tmp_path / 'r.json').read_text())
    inter, union = _scored_by_hand(create_model(f'local-dir:{tmp_path / "hub"}'), voc, ids[1:], 33)
    iou = 100 * inter / (union + 1e-10)
    assert got['count'] == 3 and got['miou'] == pytest.approx(iou.mean(), abs=1e-6)
    assert list(got['iou'].values()) == pytest.approx(list(iou), abs=1e-6)


@pytest.mark.slow
def test_dla_up_trains_and_validates_at_an_even_crop(tmp_path):
    """dlaup_ models return the original's log-probabilities of 2 ceil(S / 2) - 1 pixels a side: at an even crop
    (64: 63x63 outputs) the loop scores them against the masks' top-left 63x63, in training and evaluation."""
    _voc(tmp_path, 4, 2)
    out = tmp_path / 'runs'
    proc = cli('train', '--task', 'segment', '--data-dir', str(tmp_path), '--val-split', 'val', '--model',
               'dlaup_dla_x60_elastic', '--img-size', '64', '--epochs', '1', '-b', '2', '--output', str(out),
               '--experiment', 'dla', *QUICK)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = summary(out / 'dla' / 'summary.csv')
    assert len(rows) == 2 and float(rows[1][1]) > 0
    ckpt = torch.load(out / 'dla' / 'last.pth.tar', map_location='cpu', weights_only=False)
    assert ckpt['arch'] == 'dlaup_dla_x60_elastic' and ckpt['args'].weight_decay == 1e-4  # the original's for DLA
    proc = cli('validate', '--task', 'segment', '--data-dir', str(tmp_path), '--split', 'val', '--checkpoint',
               str(out / 'dla' / 'last.pth.tar'), '--img-size', '64', '--results-file', str(tmp_path / 'r.json'),
               *QUICK[:3])
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads((tmp_path / 'r.json').read_text())
    assert got['count'] == 2 and got['miou'] == pytest.approx(float(rows[1][3]), abs=1e-9)


@pytest.mark.slow
def test_resume_is_exact_with_a_data_worker(tmp_path):
    """A run resumed from its epoch-1 checkpoint computes epoch 2 as the uninterrupted run did (the losses,
    mIoU and lr of summary.csv, every digit, and the final weights), on the built-in masks with the
    augmentation drawn in a worker process."""
    common = ['train', '--task', 'segment', '--train-num-samples', '24', '--val-num-samples', '8', '-b', '8',
              '--epochs', '2', '-j', '1', '--no-progress', '--log-interval', '0', '--output', str(tmp_path)]
    proc = cli(*common, '--experiment', 'straight')
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = tmp_path / 'straight' / 'checkpoint-0.pth.tar'
    assert torch.load(first, map_location='cpu', weights_only=False)['epoch'] == 0
    proc = cli(*common, '--experiment', 'resumed', '--resume', str(first))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'epoch 1/2:' not in proc.stdout and 'epoch 2/2:' in proc.stdout
    straight, resumed = summary(tmp_path / 'straight' / 'summary.csv'), summary(tmp_path / 'resumed' / 'summary.csv')
    assert straight[0] == resumed[0] and len(straight) == 3 and resumed[1:] == straight[2:]
    a = torch.load(tmp_path / 'straight' / 'last.pth.tar', map_location='cpu', weights_only=False)['state_dict']
    b = torch.load(tmp_path / 'resumed' / 'last.pth.tar', map_location='cpu', weights_only=False)['state_dict']
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_ddp_two_cpu_processes_count_each_image_once(tmp_path):
    """torchrun with two gloo processes validates 13 built-in images (one rank gets a padding duplicate): the
    metrics of a single process, count 13."""
    from timm_elastic.segmentation import create_model
    torch.manual_seed(0)
    model = create_model('deeplabv3_resnext_tiny_elastic', num_classes=9)
    ckpt = tmp_path / 'm.pth.tar'
    torch.save({'state_dict': model.state_dict(), 'arch': 'deeplabv3_resnext_tiny_elastic'}, ckpt)
    common = ['validate', '--task', 'segment', '--checkpoint', str(ckpt), '--val-num-samples', '13', '-b', '4',
              *QUICK[:3]]
    ddp, one = validate_in_two_processes_and_one(common, tmp_path)
    assert ddp['count'] == one['count'] == 13
    assert ddp['miou'] == pytest.approx(one['miou'], abs=1e-6) and ddp['loss'] == pytest.approx(one['loss'], rel=1e-5)
    assert ddp['iou'] == pytest.approx(one['iou'], abs=1e-6)
    assert ddp['per_combination'].keys() == one['per_combination'].keys()


@pytest.mark.slow
def test_ddp_two_cpu_processes_train(tmp_path):
    """torchrun trains --task segment with two gloo processes (each its half of the images, its own
    augmentation); the epoch's mIoU in summary.csv is what a single-process validate of the checkpoint gives
    on the same 13 images."""
    proc = torchrun('train', '--task', 'segment', '--train-num-samples', '16', '--val-num-samples', '13', '-b', '4',
                    '--epochs', '1', '--output', str(tmp_path), '--experiment', 'ddp', *QUICK, '--log-interval', '1')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'epoch 1/1 [2/2]' in proc.stdout + proc.stderr  # 8 images a process: 2 batches of 4
    rows = summary(tmp_path / 'ddp' / 'summary.csv')
    assert len(rows) == 2
    ckpt = torch.load(tmp_path / 'ddp' / 'last.pth.tar', map_location='cpu', weights_only=False)
    assert ckpt['args'].world_size == 2 and ckpt['arch'] == 'deeplabv3_resnext_tiny_elastic'
    proc = cli('validate', '--task', 'segment', '--checkpoint', str(tmp_path / 'ddp' / 'last.pth.tar'),
               '--val-num-samples', '13', '--results-file', str(tmp_path / 'one.json'), *QUICK[:3])
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = json.loads((tmp_path / 'one.json').read_text())
    assert one['count'] == 13 and one['miou'] == pytest.approx(float(rows[1][3]), abs=1e-9)


@pytest.mark.slow
def test_compare_segment_prints_miou_by_object_size(tmp_path):
    proc = cli('compare', '--task', 'segment', '--seeds', '0', '--epochs', '1', '--train-num-samples', '32',
               '--val-num-samples', '14', '--output', str(tmp_path), '--experiment', 'c', *QUICK)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert 'mIoU (%) on the built-in validation set (14 images)' in out
    res = json.loads((tmp_path / 'c' / 'compare.json').read_text())
    assert list(res) == ['deeplabv3_resnext_tiny', 'deeplabv3_resnext_tiny_elastic']
    twin, elastic = res['deeplabv3_resnext_tiny'][0], res['deeplabv3_resnext_tiny_elastic'][0]
    all_row = next(ln for ln in out.splitlines() if ln.strip().startswith('all |'))
    assert all_row.split('|')[2].strip() == f'{twin["miou"]:.2f}'
    assert all_row.split('|')[3].strip() == f'{elastic["miou"]:.2f}'
    small = next(ln for ln in out.splitlines() if ln.startswith('    -      -     x |'))
    assert small.split('|')[2].strip() == f'{twin["per_combination"]["small"]["miou"]:.2f}'


def test_the_original_recipe_is_the_default_of_train_task_segment(tmp_path):
    from timm_elastic.cli import build_parser  # its parse fills in the defaults of the command and --task
    args = build_parser().parse_args(['train', '--task', 'segment'])
    assert (args.model, args.opt, args.lr, args.momentum, args.weight_decay, args.sched, args.decay_rate,
            args.sched_on_updates, args.epochs, args.batch_size) == \
        ('deeplabv3_resnext_tiny_elastic', 'momentum', 0.007, 0.9, 5e-4, 'poly', 0.9, True, 50, 16)
    args = build_parser().parse_args(['train', '--task', 'segment', '--model', 'dlaup_dla_x60', '--lr', '0.01'])
    assert (args.weight_decay, args.lr) == (1e-4, 0.01)
    # a converted release of the DLA models too: its config.json names the architecture
    release = tmp_path / 'seg_dla60x'
    release.mkdir()
    (release / 'config.json').write_text(json.dumps({'architecture': 'dlaup_dla_x60', 'num_classes': 21}))
    assert build_parser().parse_args(['train', '--task', 'segment', '--model', f'local-dir:{release}']
                                     ).weight_decay == 1e-4
    assert args.bn_momentum is None  # the model's own: the original's
    args = build_parser().parse_args(['train'])
    assert (args.model, args.opt, args.lr, args.sched, args.epochs, args.batch_size) == \
        ('resnext_tiny_elastic', 'adamw', 2e-3, 'cosine', 4, 32)
    # compare --task segment: the twins' recipe, 2000 images and BatchNorm statistics that follow a short run
    args = build_parser().parse_args(['compare', '--task', 'segment'])
    assert (args.model, args.opt, args.lr, args.epochs, args.bn_momentum, args.train_num_samples) == \
        ('deeplabv3_resnext_tiny_elastic', 'adamw', 4e-3, 2, 0.1, 2000)


def test_a_model_folder_brings_its_weights_with_pretrained_only(tmp_path):
    """train --task segment --model local-dir:DIR took DIR's weights without --pretrained (validate, as timm, calls
    that model randomly initialised): its architecture only, unless --pretrained."""
    from safetensors.torch import save_file

    from timm_elastic.cli import build_parser
    from timm_elastic.segmentation import create_model as create_segmentation
    from timm_elastic.train import create_model
    folder = tmp_path / 'release'
    folder.mkdir()
    (folder / 'config.json').write_text(json.dumps({'architecture': 'deeplabv3_resnext_tiny_elastic',
                                                    'num_classes': 21}))
    saved = create_segmentation('deeplabv3_resnext_tiny_elastic').state_dict()
    save_file(saved, folder / 'model.safetensors')
    for flags, equal in (([], False), (['--pretrained'], True)):
        args = build_parser().parse_args(['train', '--task', 'segment', '--model', f'local-dir:{folder}', *flags])
        state = create_model(args, 21).state_dict()
        assert state.keys() == saved.keys()
        same = [torch.equal(state[k], saved[k]) for k in saved if saved[k].dim() == 4]  # the convolutions
        assert same and all(same) if equal else not any(same), flags


def test_bn_momentum_is_the_originals_unless_set():
    from timm_elastic.segmentation import create_model
    for name, original in (('deeplabv3_resnext_tiny', {0.05, 0.0003}), ('dlaup_dla_x60', {0.1})):
        for momentum, want in ((None, original), (0.1, {0.1})):
            model = create_model(name, num_classes=3, bn_momentum=momentum)
            assert {m.momentum for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)} == want, name
    with pytest.raises(ValueError, match=r'bn_momentum must be in \(0, 1\], got 1.5'):
        create_model('deeplabv3_resnext_tiny', bn_momentum=1.5)


def test_the_poly_schedule_is_the_originals():
    """timm's poly schedule stepped per update, as train --task segment sets it, gives the original's
    lr = 0.007 (1 - iter / max_iter)^0.9 at every iteration."""
    from timm.scheduler import create_scheduler_v2
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.007)
    sched, _ = create_scheduler_v2(opt, sched='poly', num_epochs=3, decay_rate=0.9, min_lr=0., warmup_epochs=0,
                                   step_on_epochs=False, updates_per_epoch=5)
    for it in range(15):
        sched.step_update(it)
        assert opt.param_groups[0]['lr'] == pytest.approx(0.007 * (1 - it / 15) ** 0.9, abs=1e-12), it


@pytest.mark.parametrize('case,message', [
    ('missing_list', 'reads PASCAL VOC folders (JPEGImages/, SegmentationClass/, ImageSets/Segmentation/<split>.txt): '
                     "no split list 'test': "),
    ('bad_mask', 'has labels [30]; the masks of this data hold 0..20 (one per class) and 255 (ignored)'),
    ('bad_mask_worker', 'has labels [30]; the masks of this data hold 0..20 (one per class) and 255 (ignored)'),
    ('small_crop', 'a 32-pixel crop is too small for --model dlaup_dla_x60_elastic: its deepest features are at '
                   'stride 32, so the crop must be larger than 32 pixels'),
    ('classifier', '--task segment trains the segmentation models: deeplabv3_<backbone>'),
    ('mixup', '--mixup does not apply to --task segment'),
    ('crop_pct', '--crop-pct / --interpolation do not apply to --task segment, which resizes no image'),
    ('batch_of_one', '--model deeplabv3_resnext_tiny_elastic trains on at least 2 images per process (-b)'),
    ('classify_checkpoint', 'was trained with --task classify; use it with --task classify'),
    # an RGB mask with grey labels (0..20 pass the label check) and a mask of another size than its image
    ('rgb_mask', "is a RGB image; a mask holds one label per pixel: a palette (P, as PASCAL VOC's) or greyscale"),
    ('mask_size', 'is 30x40 pixels, its image 40x30: a mask labels each pixel of its image'),
    ('wrong_classes', 'has 9 classes, but the masks have 21: one output per class is needed'),
])
def test_bad_inputs_are_one_line_errors(tmp_path, case, message):
    voc, ids = _voc(tmp_path, 2, 1)
    data = ['--data-dir', str(tmp_path), '--val-split', 'val', '--img-size', '33', '--epochs', '1', '-b', '2']
    if case in ('bad_mask', 'bad_mask_worker'):
        labels = np.zeros((30, 40), dtype=np.uint8)
        labels[3, 3] = 30
        _palette_png(voc / 'SegmentationClass' / f'{ids[1]}.png', labels)
    elif case in ('rgb_mask', 'mask_size'):
        labels = np.zeros((30, 40) if case == 'rgb_mask' else (40, 30), dtype=np.uint8)
        labels[3:9, 3:9] = 15
        mask = Image.fromarray(labels).convert('RGB') if case == 'rgb_mask' else Image.fromarray(labels, mode='L')
        mask.save(voc / 'SegmentationClass' / f'{ids[1]}.png')
    if case == 'missing_list':
        proc = cli('train', '--task', 'segment', *data, '--train-split', 'test', '--output', str(tmp_path),
                   *QUICK)
    elif case.startswith('bad_mask') or case in ('rgb_mask', 'mask_size'):
        workers = ['-j', '1'] if case == 'bad_mask_worker' else ['-j', '0']
        proc = cli('train', '--task', 'segment', *data, '--output', str(tmp_path), *workers, *QUICK[2:])
    elif case == 'small_crop':
        proc = cli('train', '--task', 'segment', '--model', 'dlaup_dla_x60_elastic', '--img-size', '32',
                   '--output', str(tmp_path), *QUICK)
    elif case in ('classifier', 'mixup', 'crop_pct', 'batch_of_one'):
        flag = {'classifier': ['--model', 'resnext_tiny_elastic'], 'mixup': ['--mixup', '0.2'],
                'crop_pct': ['--crop-pct', '0.9', '--interpolation', 'bicubic'], 'batch_of_one': ['-b', '1']}[case]
        proc = cli('train', '--task', 'segment', *flag, '--output', str(tmp_path), *QUICK)
    else:
        import argparse
        from timm_elastic.segmentation import create_model
        saved = {'state_dict': create_model('deeplabv3_resnext_tiny_elastic', num_classes=9).state_dict(),
                 'arch': 'deeplabv3_resnext_tiny_elastic'}
        if case == 'classify_checkpoint':
            saved['args'] = argparse.Namespace(task='classify')
        torch.save(saved, tmp_path / 'm.pth.tar')
        where = ['--data-dir', str(tmp_path), '--split', 'val'] if case == 'wrong_classes' else \
            ['--val-num-samples', '4']
        proc = cli('validate', '--task', 'segment', '--checkpoint', str(tmp_path / 'm.pth.tar'), *where, *QUICK[:3])
    assert proc.returncode == 2, (proc.stdout, proc.stderr[-2000:])
    # one error line, the last (a bad mask is found once training has started and logged its first line)
    lines = proc.stderr.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith('timm-elastic ')]
    assert errors == lines[-1:] and 'Traceback' not in proc.stderr, proc.stderr[-2000:]
    in_training = case.startswith('bad_mask') or case in ('rgb_mask', 'mask_size')
    assert len(lines) == (2 if in_training else 1), proc.stderr[-2000:]
    assert message in errors[0], errors[0]
    if in_training:
        assert f'SegmentationClass/{ids[1]}.png' in errors[0]
