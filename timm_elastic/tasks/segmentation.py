"""Semantic segmentation on the PASCAL VOC protocol (paper Sec. 4.3, Table 5): the data and the metric.

`VOCSegmentationData` reads a local VOC folder (`JPEGImages/`, palette PNGs in `SegmentationClass/`, split
lists in `ImageSets/Segmentation/<split>.txt`) through torchvision's `VOCSegmentation`, never downloading.
torchvision takes the standard splits (train, val, trainval) of `ROOT/VOCdevkit/VOC2012`; other lists
(the usual `train_aug.txt` of the SBD-augmented set, whose masks are in `SegmentationClassAug/`) and a
root that is the VOC2012 folder itself are read with the same conventions and torchvision's item reader.
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
"""
import os
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torchvision.datasets import VOCSegmentation
from torchvision.datasets.vision import VisionDataset

__all__ = ['IGNORE_INDEX', 'VOC_CLASSES', 'VOCSegmentationData', 'inter_and_union', 'iou_metrics']

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
        root: the VOC2012 folder (holding `JPEGImages/`), or a folder holding `VOCdevkit/VOC2012/`.
        split: the name of a list in `ImageSets/Segmentation/` (`train`, `val`, `trainval`, `train_aug`...).
        transforms: applied to the (image, mask) pair.

    `classes` are `VOC_CLASSES`; `images` / `masks` the files, in the list's order. A missing list or file
    raises FileNotFoundError naming it.
    """

    classes = VOC_CLASSES

    def __init__(self, root: str, split: str = 'train', transforms: Optional[Callable] = None):
        nested = os.path.join(root, 'VOCdevkit', 'VOC2012')
        voc_root = nested if os.path.isdir(nested) else root
        lists = os.path.join(voc_root, 'ImageSets', 'Segmentation')
        list_file = os.path.join(lists, f'{split}.txt')
        if not os.path.isfile(list_file):
            there = sorted(f[:-4] for f in os.listdir(lists) if f.endswith('.txt')) if os.path.isdir(lists) else []
            raise FileNotFoundError(f'no split list {split!r}: {list_file} does not exist'
                                    + (f' (lists there: {", ".join(there)})' if there else ''))
        self.split, self.voc_root = split, voc_root
        if voc_root == nested and split in ('train', 'val', 'trainval'):
            super().__init__(root, year='2012', image_set=split, transforms=transforms)
        else:  # what torchvision's constructor does, for any list and either root
            VisionDataset.__init__(self, root, transforms=transforms)
            self.year, self.image_set = '2012', split
            self.images, self.targets = self._read_list(list_file, voc_root, split)
        missing = [f for f in (*self.images, *self.targets) if not os.path.isfile(f)]
        if missing:
            raise FileNotFoundError(f'{len(missing)} files of split {split!r} are missing, e.g. {missing[0]}')

    @staticmethod
    def _read_list(list_file: str, voc_root: str, split: str) -> Tuple[List[str], List[str]]:
        mask_dir = 'SegmentationClassAug' if split.endswith('_aug') and \
            os.path.isdir(os.path.join(voc_root, 'SegmentationClassAug')) else 'SegmentationClass'
        images, masks = [], []
        with open(list_file) as f:
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
