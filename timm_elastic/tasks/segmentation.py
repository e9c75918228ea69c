"""Semantic segmentation on the PASCAL VOC protocol (paper Sec. 4.3, Table 5): the data and the metric.

`VOCSegmentationData` reads a local VOC folder (`JPEGImages/`, palette PNGs in `SegmentationClass/`, split
lists in `ImageSets/Segmentation/<split>.txt`) through torchvision's `VOCSegmentation`, never downloading.
torchvision takes the standard splits (train, val, trainval) of `ROOT/VOCdevkit/VOC2012`; other lists
(the usual `train_aug.txt` of the SBD-augmented set, whose masks are in `SegmentationClassAug/`) and a
root that is the VOC2012 folder itself or holds it (the original's `data/VOCdevkit`) are read with the same
conventions and torchvision's item reader.
A list line is an image id, or, as in the original's `list/*.txt`, an image path and a mask path relative
to the VOC2012 folder.

The original evaluation (`segment.py` and `inter_and_union` in allenai/elastic's `utils.py`) takes, per
image, the arg-max class of every pixel and counts per class the pixels where prediction and label agree
(the intersection) and the pixels either calls that class (the union), leaving out pixels labelled 255
(VOC's object borders and void). It sums both counts over the whole evaluation set, divides, and reports
per-class IoU and their mean over **all** classes: a class that neither the labels nor the predictions
of any image contain has IoU 0 and still counts in the mean (its union is 0; the original adds 1e-10 to
the denominator). `inter_and_union` and `iou_metrics` compute exactly that; labels other than
0..num_classes-1 and 255 are refused (the original's uint8 arithmetic would silently drop or wrap them).

`Segment` is the task (`--task segment`) that the training loop calls: the models of
`timm_elastic.segmentation`, the built-in data's segmentation mode or a VOC folder, the original's
preprocessing of image / mask pairs (`SegmentationTransform`: flip, log-uniform rescale 0.5-2, padding and a
crop of 513), its loss (`SegmentationLoss`: cross-entropy without the 255 pixels), its recipe as the
defaults of `train --task segment` (`original_recipe`) and these metrics, per object-size combination too.
"""
import argparse
import codecs
import os
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torchvision.datasets import VOCSegmentation
from torchvision.datasets.vision import VisionDataset

from . import Task

__all__ = ['IGNORE_INDEX', 'VOC_CLASSES', 'VOCSegmentationData', 'inter_and_union', 'iou_metrics',
           'SegmentationTransform', 'SegmentationLoss', 'Segment', 'original_recipe', 'deepest_stride']

IGNORE_INDEX = 255  # VOC's label for borders and void: no class, not scored

# the 21 classes of PASCAL VOC in label order (0 is the background)
VOC_CLASSES: Tuple[str, ...] = (
    'background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow',
    'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant', 'sheep', 'sofa', 'train', 'tvmonitor',
)


def inter_and_union(pred: torch.Tensor, label: torch.Tensor, num_classes: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-class intersection and union pixel counts of one image (or a batch).

    Args:
        pred: predicted class per pixel, integers in [0, num_classes), any shape.
        label: the true class per pixel, of the same shape: [0, num_classes) or `IGNORE_INDEX`.
        num_classes: the number of classes C.

    Returns:
        (intersection, union), each a (C,) int64 tensor: pixels that both call class c, and pixels that
        either calls class c, over the pixels whose label is not `IGNORE_INDEX`.
    """
    pred, label = torch.as_tensor(pred).long(), torch.as_tensor(label).long()
    if pred.shape != label.shape:
        raise ValueError(f'prediction and label must have the same shape, got {tuple(pred.shape)} and '
                         f'{tuple(label.shape)}')
    bad = label[(label != IGNORE_INDEX) & ((label < 0) | (label >= num_classes))]
    if bad.numel():
        raise ValueError(f'labels must be 0..{num_classes - 1} or {IGNORE_INDEX} (ignored), got '
                         f'{sorted(set(bad.unique().tolist()))[:5]}')
    bad = pred[(pred < 0) | (pred >= num_classes)]
    if bad.numel():
        raise ValueError(f'predictions must be 0..{num_classes - 1}, got {sorted(set(bad.unique().tolist()))[:5]}')
    scored = label != IGNORE_INDEX
    pred, label = pred[scored], label[scored]
    area_pred = torch.bincount(pred, minlength=num_classes)
    area_label = torch.bincount(label, minlength=num_classes)
    inter = torch.bincount(pred[pred == label], minlength=num_classes)
    return inter, area_pred + area_label - inter


def iou_metrics(inter: torch.Tensor, union: torch.Tensor,
                class_names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """mIoU and per-class IoU (percent) from intersection and union counts summed over a whole evaluation
    set, as the original computes them: IoU_c = inter_c / (union_c + 1e-10), the mean over all C classes.

    Returns `{'miou': float, 'iou': {class name (or index): float}}`."""
    inter, union = torch.as_tensor(inter).double(), torch.as_tensor(union).double()
    iou = inter / (union + 1e-10)
    names = list(class_names) if class_names is not None else [str(i) for i in range(len(iou))]
    if len(names) != len(iou):
        raise ValueError(f'{len(names)} class names for {len(iou)} classes')
    return OrderedDict(miou=100. * float(iou.mean()),
                       iou=OrderedDict((n, 100. * float(v)) for n, v in zip(names, iou)))


class VOCSegmentationData(VOCSegmentation):
    """PASCAL VOC segmentation from a local folder: `dataset[i]` is `(image, mask)`, two PIL images (the
    mask's pixels are class indices, 255 ignored), through `transforms(image, mask)` when given.

    Args:
        root: the VOC2012 folder (holding `JPEGImages/`), or a folder holding `VOC2012/` (as the original's
            `data/VOCdevkit`) or `VOCdevkit/VOC2012/` (as torchvision's root).
        split: the name of a list in `ImageSets/Segmentation/` (`train`, `val`, `trainval`, `train_aug`...);
            `validation` (timm's name) is `val` where no `validation.txt` exists.
        transforms: applied to the (image, mask) pair.

    `classes` are `VOC_CLASSES`; `images` / `masks` the files, in the list's order. A missing list or file
    raises FileNotFoundError naming it.
    """

    classes = VOC_CLASSES

    def __init__(self, root: str, split: str = 'train', transforms: Optional[Callable] = None):
        nested = os.path.join(root, 'VOCdevkit', 'VOC2012')
        # ROOT/VOCdevkit/VOC2012 (torchvision's root), ROOT/VOC2012 (the original's root, `data/VOCdevkit`), or
        # the VOC2012 folder itself
        voc_root = next((d for d in (nested, os.path.join(root, 'VOC2012')) if os.path.isdir(d)), root)
        lists = os.path.join(voc_root, 'ImageSets', 'Segmentation')
        if split == 'validation' and not os.path.isfile(os.path.join(lists, 'validation.txt')):
            split = 'val'  # timm's name of the evaluation split (the commands' default), PASCAL VOC's list
        list_file = os.path.join(lists, f'{split}.txt')
        if not os.path.isfile(list_file):
            if os.path.isdir(lists):
                there = sorted(f[:-4] for f in os.listdir(lists) if f.endswith('.txt'))
                where = f' (lists there: {", ".join(there)})' if there else ''
            elif voc_root != root:  # it found VOC2012/ (the original's root keeps its lists in VOC2012/list/)
                where = (f'; {voc_root} has no ImageSets/Segmentation/, where the split lists are read from (the '
                         "original's list/<split>.txt too, moved there)")
            else:
                where = (f'; {root} is not a VOC2012 folder (holding ImageSets/Segmentation/) and holds neither '
                         'VOC2012/ nor VOCdevkit/VOC2012/')
            raise FileNotFoundError(f'no split list {split!r}: {list_file} does not exist{where}')
        self.split, self.voc_root = split, voc_root
        with open(list_file, 'rb') as f:
            raw = f.read()
        # torchvision's reader takes one id per line, no blank line, and no byte-order mark (a list saved by Windows'
        # Notepad: the first image's name began with it, and a file that exists was reported missing)
        plain = not raw.startswith(codecs.BOM_UTF8) and all(
            len(line.split()) == 1 for line in raw.decode('utf-8', errors='replace').splitlines())
        if voc_root == nested and split in ('train', 'val', 'trainval') and plain:
            super().__init__(root, year='2012', image_set=split, transforms=transforms)
        else:  # what torchvision's constructor does, for any list and either root
            VisionDataset.__init__(self, root, transforms=transforms)
            self.year, self.image_set = '2012', split
            self.images, self.targets = self._read_list(list_file, voc_root, split)
        missing = [f for f in (*self.images, *self.targets) if not os.path.isfile(f)]
        if missing:
            raise FileNotFoundError(f'{len(missing)} files of split {split!r} are missing, e.g. {missing[0]}')

    def __getitem__(self, index: int):
        if not isinstance(self.transforms, SegmentationTransform):
            return super().__getitem__(index)
        from PIL import Image
        image, mask = Image.open(self.images[index]).convert('RGB'), Image.open(self.targets[index])
        return self.transforms(image, mask, where=f'mask {self.targets[index]}')

    @staticmethod
    def _read_list(list_file: str, voc_root: str, split: str) -> Tuple[List[str], List[str]]:
        mask_dir = 'SegmentationClassAug' if split.endswith('_aug') and \
            os.path.isdir(os.path.join(voc_root, 'SegmentationClassAug')) else 'SegmentationClass'
        images, masks = [], []
        with open(list_file, encoding='utf-8-sig') as f:
            for line in f:
                parts = line.split()
                if not parts:
                    continue
                if len(parts) == 2:  # the original's list: image and mask paths under the VOC2012 folder
                    images.append(os.path.join(voc_root, parts[0].lstrip('/')))
                    masks.append(os.path.join(voc_root, parts[1].lstrip('/')))
                else:
                    images.append(os.path.join(voc_root, 'JPEGImages', parts[0] + '.jpg'))
                    masks.append(os.path.join(voc_root, mask_dir, parts[0] + '.png'))
        return images, masks


def _check_mask_labels(mask: torch.Tensor, num_classes: int, where: str) -> None:
    bad = mask[(mask != IGNORE_INDEX) & ((mask < 0) | (mask >= num_classes))]
    if bad.numel():
        from ..train import UsageError
        raise UsageError(f'{where} has labels {sorted(set(bad.unique().tolist()))[:5]}; the masks of this data hold '
                         f'0..{num_classes - 1} (one per class) and {IGNORE_INDEX} (ignored)')


def _check_pair(image, mask, where: str) -> None:
    """Refuse a mask that is not one label per pixel of its image (PIL images)."""
    from ..train import UsageError
    if len(mask.getbands()) != 1:
        raise UsageError(f'{where} is a {mask.mode} image; a mask holds one label per pixel: a palette (P, as PASCAL '
                         'VOC\'s) or greyscale (L) PNG')
    if mask.size != image.size:
        raise UsageError(f'{where} is {mask.size[0]}x{mask.size[1]} pixels, its image {image.size[0]}x'
                         f'{image.size[1]}: a mask labels each pixel of its image')


class SegmentationTransform:
    """The original's preprocessing of an (image, mask) pair (`preprocess` in allenai/elastic's `utils.py`),
    with torch's random generator (reseeded by the loop every epoch, in workers too).

    Training: a horizontal flip with probability `hflip`; a random rescale by 2^u, u uniform in
    [log2 scale[0], log2 scale[1]] (0.5 to 2 in the original), the image with Lanczos (PIL's ANTIALIAS) and
    the mask with nearest-neighbour resampling to (round(W s), round(H s)). Always: the image to a tensor
    normalised by `mean` / `std`; then both padded by p = max(0, floor((1 + crop - side) / 2)) pixels on
    each side of each axis (the image with 0, i.e. the mean colour after normalisation; the mask with 255,
    not scored), which makes each side at least `crop`, and cut to crop x crop: at a random position in
    training, at the centre in evaluation (the original draws the position at random there too; a VOC
    image, at most 500 pixels a side, padded for crop 513 leaves it one pixel of choice at most).

    Returns (image (3, crop, crop) float, mask (crop, crop) int64)."""

    def __init__(self, crop: int, mean: Sequence[float], std: Sequence[float], training: bool,
                 scale: Optional[Tuple[float, float]] = (0.5, 2.0), hflip: float = 0.5,
                 num_classes: Optional[int] = None):
        self.crop, self.mean, self.std, self.training = int(crop), tuple(mean), tuple(std), training
        self.scale, self.hflip, self.num_classes = scale, hflip, num_classes

    def __call__(self, image, mask, where: str = 'a mask') -> Tuple[torch.Tensor, torch.Tensor]:
        import math

        import numpy as np
        from PIL import Image
        from torchvision.transforms import functional as TF
        _check_pair(image, mask, where)
        if self.num_classes is not None:  # before the rescale, which may drop a pixel
            _check_mask_labels(torch.from_numpy(np.array(mask, dtype=np.int64)), self.num_classes, where)
        if self.training and self.hflip and float(torch.rand(())) < self.hflip:
            image, mask = image.transpose(Image.FLIP_LEFT_RIGHT), mask.transpose(Image.FLIP_LEFT_RIGHT)
        if self.training and self.scale:
            lo, hi = math.log2(self.scale[0]), math.log2(self.scale[1])
            s = 2. ** (lo + float(torch.rand(())) * (hi - lo))
            w, h = image.size
            size = (int(round(w * s)), int(round(h * s)))
            image, mask = image.resize(size, Image.LANCZOS), mask.resize(size, Image.NEAREST)
        x = TF.normalize(TF.to_tensor(image.convert('RGB')), self.mean, self.std)
        m = torch.from_numpy(np.array(mask, dtype=np.int64))
        h, w = m.shape
        pad_h, pad_w = max(0, (1 + self.crop - h) // 2), max(0, (1 + self.crop - w) // 2)
        x = F.pad(x, (pad_w, pad_w, pad_h, pad_h), value=0.)
        m = F.pad(m, (pad_w, pad_w, pad_h, pad_h), value=IGNORE_INDEX)
        h, w = m.shape
        if self.training:
            i, j = int(torch.randint(h - self.crop + 1, ())), int(torch.randint(w - self.crop + 1, ()))
        else:
            i, j = (h - self.crop) // 2, (w - self.crop) // 2
        return x[:, i:i + self.crop, j:j + self.crop], m[i:i + self.crop, j:j + self.crop]


def _align(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The target of the pixels that `output` scores: all of them, or, for DLASeg's output of
    2 ceil(S / 2) - 1 pixels a side (one less than an even S), its top-left part, as the original's crop
    aligns them."""
    (h, w), (th, tw) = output.shape[-2:], target.shape[-2:]
    if (h, w) == (th, tw):
        return target
    if h > th or w > tw or th - h > 1 or tw - w > 1:
        raise ValueError(f'the model gives {h}x{w} outputs for {th}x{tw} masks')
    return target[..., :h, :w]


class SegmentationLoss(torch.nn.Module):
    """The original's loss: cross-entropy over the pixels whose label is not 255, averaged over them (the
    DLA-up model's log-probabilities give the same value: log-softmax leaves them unchanged). A batch without
    such a pixel gives 0, and no gradient (the original's mean is 0 / 0, NaN, there)."""

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = _align(output, target)
        # the sum over the scored pixels divided by their count: bit for bit the mean of `ignore_index`'s reduction
        # (which divides the same sum by the same count) where there is one, a count of 1 where there is none
        scored = (target != IGNORE_INDEX).sum().clamp(min=1)
        return F.cross_entropy(output, target, ignore_index=IGNORE_INDEX, reduction='sum') / scored


def _check_resize_flags(args: argparse.Namespace) -> None:
    """Refuse --crop-pct / --interpolation, which `data_config` overrides: train and validate both."""
    from ..train import UsageError
    used = [f for f, v in (('--crop-pct', getattr(args, 'crop_pct', None) is not None),
                           ('--interpolation', getattr(args, 'interpolation', None))) if v]
    if used:
        verb = 'does' if len(used) == 1 else 'do'
        raise UsageError(f'{" / ".join(used)} {verb} not apply to --task segment, which resizes no image but by the '
                         'random rescale of training (Lanczos, as the original) and pads and cuts an --img-size crop '
                         '(at the centre in evaluation)')


def _paired(dataset) -> bool:
    return isinstance(dataset, VOCSegmentation) or getattr(dataset, 'segmentation_mode', False)


class Segment(Task):
    """Semantic segmentation (paper Sec. 4.3, `--task segment`): the built-in data's segmentation mode or a
    PASCAL VOC folder, the segmentation models of `timm_elastic.segmentation` (`deeplabv3_<backbone>`,
    `dlaup_<backbone>`), the original's preprocessing (`SegmentationTransform`) and loss
    (`SegmentationLoss`), and mIoU with per-class IoU as the original computes them, per object-size
    combination too on the built-in data (the images of each combination, their counts summed)."""
    name = 'segment'
    eval_metrics = ('miou', 'loss')
    combination_metric = 'miou'
    one_output_per_class_of = 'the masks have'
    #: the factory's model names (`timm_elastic.segmentation.create_model`)
    prefixes = ('deeplabv3_', 'dlaup_', 'local-dir:', 'hf-hub:')

    def builtin_kwargs(self) -> Dict[str, Any]:
        return {'segmentation': True}

    def read_dataset(self, args: argparse.Namespace, split: str, is_training: bool):
        from ..train import UsageError
        self.check_dataset_flag(args, 'voc', "PASCAL VOC's layout")
        try:
            return VOCSegmentationData(args.data_dir, split)
        except FileNotFoundError as e:
            raise UsageError(f'--task segment reads PASCAL VOC folders (JPEGImages/, SegmentationClass/, '
                             f'ImageSets/Segmentation/<split>.txt): {e}') from None

    def check_train_args(self, args: argparse.Namespace) -> None:
        from ..train import UsageError
        used = [f for f, v in (('--mixup', args.mixup), ('--cutmix', args.cutmix), ('--smoothing', args.smoothing),
                               ('--ratio', args.ratio), ('--vflip', args.vflip), ('--color-jitter', args.color_jitter))
                if v]
        if used:
            verb = 'does' if len(used) == 1 else 'do'
            raise UsageError(f'{" / ".join(used)} {verb} not apply to --task segment, which augments as the '
                             'original: a flip (--hflip), a random rescale (--scale, default 0.5 2) and a random crop')
        _check_resize_flags(args)
        if args.drop:
            raise UsageError(f'--drop {args.drop:g} does not apply to --task segment: timm\'s dropout is before a '
                             'classifier head, which deeplabv3_ / dlaup_ models do not run (--drop-path works)')
        if args.batch_size < 2 and _architecture_of(args.model or '').startswith('deeplabv3_'):
            raise UsageError(f'--model {args.model} trains on at least 2 images per process (-b): the BatchNorm after '
                             "its ASPP's image pooling sees one value per channel for a single image (the original's "
                             'too)')
        if args.scale and not 0 < args.scale[0] <= args.scale[1]:
            raise UsageError(f'--scale of --task segment is the range of the random rescale factor, two positive '
                             f'numbers in increasing order (default 0.5 2), got {args.scale[0]:g} {args.scale[1]:g}')

    def train_loss(self, args: argparse.Namespace, mixup: bool) -> torch.nn.Module:
        return SegmentationLoss()

    def known_model(self, name: str) -> bool:
        return name.startswith(self.prefixes)

    def unknown_model(self, name: str) -> str:
        return (f'--task segment trains the segmentation models: deeplabv3_<backbone> (a ResNeXt-family model, e.g. '
                f'deeplabv3_resnext50_elastic, deeplabv3_resnext_tiny_elastic) or dlaup_<backbone> (a DLA model, '
                f'e.g. dlaup_dla_x60_elastic), got --model {name}')

    def partly_pretrained(self, name: str) -> Optional[str]:
        if not name.startswith(('deeplabv3_', 'dlaup_')):
            return None  # a converted release's folder (local-dir:, hf-hub:) holds every weight
        head = 'ASPP head' if name.startswith('deeplabv3_') else 'DLA-up decoder and classifier'
        return (f'--pretrained gives {name} its backbone\'s ImageNet weights only; its {head} would be scored at '
                'random initialisation: evaluate a trained run (--checkpoint), or a converted release '
                '(timm-elastic convert deeplab_<arch>_pascal_v3_original_epoch50.pth --out DIR, then --model '
                'local-dir:DIR --pretrained)')

    def classifier(self, model: str) -> Optional[str]:
        from ..segmentation import DeepLabV3, DLASeg
        return DeepLabV3.classifier if model.startswith('deeplabv3_') else \
            DLASeg.classifier if model.startswith('dlaup_') else None

    def build_model(self, name: str, pretrained: bool = False, num_classes: Optional[int] = None,
                    checkpoint_path: str = '', bn_momentum: Optional[float] = None, **backbone_kwargs):
        """`segmentation.create_model(name)`: `pretrained` gives the backbone its ImageNet weights (a `local-dir:` /
        `hf-hub:` release its own: without `pretrained` its architecture is randomly initialised, as timm's), the
        other timm arguments (`in_chans`, `drop_rate`, the Elastic options...) go to the backbone."""
        from ..segmentation import create_model
        model = create_model(name, num_classes=num_classes, pretrained_backbone=pretrained, folder_weights=pretrained,
                             backbone_kwargs=backbone_kwargs or None, bn_momentum=bn_momentum)
        if checkpoint_path:
            from timm.models import load_checkpoint
            load_checkpoint(model, checkpoint_path)
        return model

    def data_config(self, config: Dict[str, Any], args: argparse.Namespace, model=None) -> Dict[str, Any]:
        """The crop (`--img-size` / `--input-size`; default 513 on `--data-dir`, as the original, and the
        built-in images' side on the built-in data), refused when it leaves the model's deepest features a
        single pixel (at most its stride). --crop-pct and --interpolation are refused: the images are padded and
        cut, never resized but by training's random rescale."""
        from ..train import UsageError
        _check_resize_flags(args)
        if getattr(args, 'input_size', None) is None and getattr(args, 'img_size', None) is None:
            config = dict(config, input_size=(3, 513, 513) if args.data_dir else (3, 64, 64))
        # what SegmentationTransform does: images are padded and cut, never resized but by the random rescale
        config = dict(config, interpolation='lanczos', crop_pct=1.0)
        _, h, w = config['input_size']
        if h != w:
            raise UsageError(f'--task segment crops squares, got --input-size {h} {w}')
        stride = deepest_stride(model) if model is not None else None
        if stride is not None and h <= stride:
            raise UsageError(f'a {h}-pixel crop is too small for --model {args.model}: its deepest features are at '
                             f'stride {stride}, so the crop must be larger than {stride} pixels (e.g. '
                             f'{2 * stride + 1}; the original trains on 513) for them to be more than a single pixel')
        return config

    def loader(self, dataset, batch_size: int, args: argparse.Namespace, data_config: Dict[str, Any], device,
               training: bool):
        from ..train import UsageError
        if not _paired(dataset):
            raise UsageError('--task segment needs images with masks: the built-in data or a PASCAL VOC folder')
        augment = training and not args.no_aug
        dataset.transforms = SegmentationTransform(
            data_config['input_size'][-1], data_config['mean'], data_config['std'], training,
            scale=tuple(getattr(args, 'scale', None) or (0.5, 2.0)) if augment else None,
            hflip=getattr(args, 'hflip', 0.5) if augment else 0., num_classes=len(dataset.classes))
        sampler = None
        if args.distributed:
            if training:
                sampler = torch.utils.data.DistributedSampler(dataset)
            else:
                from timm.data.distributed_sampler import OrderedDistributedSampler
                sampler = OrderedDistributedSampler(dataset)
        elif training:
            sampler = torch.utils.data.RandomSampler(dataset)
        # workers are recreated (and reseeded) every epoch: what makes a resumed run exact
        return torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, num_workers=args.workers, drop_last=training,
            pin_memory=device.type == 'cuda', persistent_workers=False)

    def per_image(self, logits: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        target = _align(logits, target)
        loss = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction='none').flatten(1).sum(1)
        scored = (target != IGNORE_INDEX).flatten(1).sum(1)
        pred = logits.argmax(1)
        counts = [inter_and_union(p, t, logits.shape[1]) for p, t in zip(pred, target)]
        # an image without a scored pixel (all 255) has no loss: `scored` leaves it out of the mean of `metrics`
        return {'loss': (loss / scored.clamp(min=1)).cpu(), 'scored': (scored > 0).cpu(),
                'inter': torch.stack([c[0] for c in counts]).cpu(), 'union': torch.stack([c[1] for c in counts]).cpu()}

    def metrics(self, results: Dict[str, torch.Tensor]) -> Dict[str, Any]:
        inter, union = results['inter'].sum(0), results['union'].sum(0)
        names = self.classes if self.classes is not None and len(self.classes) == len(inter) else None
        # the mean of the images' pixel means, over the images with a scored pixel (NaN where none has one; a
        # diverged model's NaN stays NaN)
        out: Dict[str, Any] = OrderedDict(loss=float(results['loss'][results['scored']].double().mean()))
        out.update(iou_metrics(inter, union, names))
        return out

    def flat(self, metrics: Dict[str, Any]) -> Dict[str, Any]:
        out = OrderedDict()
        for k, v in super().flat(metrics).items():
            if k == 'iou':
                out.update((f'iou_{name}', value) for name, value in v.items())
            else:
                out[k] = v
        return out

    def line(self, metrics: Dict[str, Any]) -> str:
        return f'mIoU {metrics["miou"]:.2f}%, loss {metrics["loss"]:.4f}'

    def combination_line(self, row: Dict[str, Any]) -> str:
        return f'mIoU {row["miou"]:6.2f}%'

    def detail_lines(self, metrics: Dict[str, Any]) -> Sequence[str]:
        return [f'IoU {name:<14} {value:6.2f}%' for name, value in metrics['iou'].items()]


def original_recipe(model: str) -> Dict[str, Any]:
    """The training flags of the original's PASCAL VOC recipe (`segment.py` in allenai/elastic): SGD with
    momentum 0.9 (timm's 'momentum'; its 'sgd' is Nesterov's, which the original does not use), base lr 0.007
    decayed every iteration by the poly rule lr (1 - iter / max_iter)^0.9, weight decay 5e-4 (1e-4 for the DLA
    models), batch 16, 50 epochs (its crop, 513, is `Segment.data_config`'s)."""
    dla = _architecture_of(model).startswith('dlaup_')
    return dict(opt='momentum', lr=0.007, weight_decay=1e-4 if dla else 5e-4, sched='poly',
                decay_rate=0.9, sched_on_updates=True, epochs=50, batch_size=16)


def _architecture_of(model: str) -> str:
    """The name of what `model` builds: for a converted release's folder (`local-dir:PATH`), the architecture its
    config.json names; otherwise the name itself (an `hf-hub:` name is not fetched to set a default)."""
    if model.startswith('local-dir:'):
        from ..segmentation import folder_config
        try:
            return str(folder_config(model.split(':', 1)[1]).get('architecture', model))
        except (OSError, ValueError):  # building the model names what is wrong with the folder
            return model
    return model


def deepest_stride(model) -> Optional[int]:
    """The stride of a segmentation model's deepest features: DeepLabV3's output stride, the last level of
    DLASeg's backbone (None for another model)."""
    from ..segmentation import DeepLabV3, DLASeg
    if isinstance(model, DLASeg):
        return int(model.base.feature_info[-1]['reduction'])
    if isinstance(model, DeepLabV3):
        return int(model.output_stride)
    return None
