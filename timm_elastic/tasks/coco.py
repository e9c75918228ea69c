"""MS COCO multi-label classification (paper Sec. 4.2, Tables 3 and 4): the data.

The original fine-tuning code numbers the 80 categories in the order of the annotation file's
category ids (its `cat2cat`), so classifier output i is `COCO_CLASSES[i]`.

`CocoMultiLabel` reads the layout the original reads, with pycocotools: `ROOT/annotations/
instances_<split>.json` and the images in `ROOT/<split>/` (`train2014`, `val2014`, or the 2017
names). As in the original (`CocoDetection` in allenai/elastic's `multilabel_classify.py`), every
annotation of an image counts, `iscrowd` ones included, and an image without annotations stays in
the set with no positive label. An object's size is its annotation's `area` (the segmentation's,
as COCO's own evaluation uses it) against COCO's thresholds: small below 32 x 32, medium below
96 x 96, large otherwise; an image's size combination (Table 4) is the set of sizes of its objects.
"""
import contextlib
import io
import os
from typing import Callable, Dict, List, Optional, Tuple

import torch
from PIL import Image

__all__ = ['COCO_CLASSES', 'CocoMultiLabel', 'SMALL_AREA', 'MEDIUM_AREA', 'object_size']

# COCO's object size thresholds (areas in pixels of the original image)
SMALL_AREA, MEDIUM_AREA = 32 * 32, 96 * 96
_YEARS = ('2014', '2017')  # the paper's data first

COCO_CLASSES: Tuple[str, ...] = (
    'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat',
    'traffic light', 'fire hydrant', 'stop sign', 'parking meter', 'bench', 'bird', 'cat', 'dog',
    'horse', 'sheep', 'cow', 'elephant', 'bear', 'zebra', 'giraffe', 'backpack', 'umbrella',
    'handbag', 'tie', 'suitcase', 'frisbee', 'skis', 'snowboard', 'sports ball', 'kite',
    'baseball bat', 'baseball glove', 'skateboard', 'surfboard', 'tennis racket', 'bottle',
    'wine glass', 'cup', 'fork', 'knife', 'spoon', 'bowl', 'banana', 'apple', 'sandwich', 'orange',
    'broccoli', 'carrot', 'hot dog', 'pizza', 'donut', 'cake', 'chair', 'couch', 'potted plant',
    'bed', 'dining table', 'toilet', 'tv', 'laptop', 'mouse', 'remote', 'keyboard', 'cell phone',
    'microwave', 'oven', 'toaster', 'sink', 'refrigerator', 'book', 'clock', 'vase', 'scissors',
    'teddy bear', 'hair drier', 'toothbrush',
)


def object_size(area: float) -> str:
    """COCO's size bucket of an annotation `area`: 'small' (< 32^2), 'medium' (< 96^2) or 'large'."""
    return 'small' if area < SMALL_AREA else 'medium' if area < MEDIUM_AREA else 'large'


class CocoMultiLabel(torch.utils.data.Dataset):
    """MS COCO as a multi-label classification dataset.

    Args:
        root: the COCO folder (holding `annotations/` and the image folders).
        split: `train2014`, `val2014`, `train2017`, `val2017`; or `train`, `val` / `validation`
            for whichever year is present (2014 first, the paper's; a year with both splits before
            one with only this one, so that `train` and `val` name the same year).
        transform: applied to the RGB PIL image (timm's loaders set it).
        target_transform: applied to the target.

    `dataset[i]` is `(image, target)`, target a float tensor of `len(classes)` zeros and ones.
    `classes` are the category names in the annotation file's order (COCO's files list them by id:
    the 80 `COCO_CLASSES`), `combination(i)` the sizes of image i's objects from large to small (a row of Table 4;
    `()` for an image without objects), `filename(i)` its file.
    """

    def __init__(self, root: str, split: str = 'val2014', transform: Optional[Callable] = None,
                 target_transform: Optional[Callable] = None):
        try:
            from pycocotools.coco import COCO
        except ImportError:
            raise ImportError("reading COCO annotations needs pycocotools: pip install 'timm-elastic[coco]'") from None
        self.root, self.split = root, self._resolve(root, split)
        self.transform, self.target_transform = transform, target_transform
        annotations = os.path.join(root, 'annotations', f'instances_{self.split}.json')
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            self.coco = COCO(annotations)
        # categories and images in the annotation file's order, as the original's cat2cat and ids
        cat_ids = list(self.coco.cats)
        self.cat2label: Dict[int, int] = {c: i for i, c in enumerate(cat_ids)}
        self.classes: List[str] = [self.coco.cats[c]['name'] for c in cat_ids]
        self.ids: List[int] = list(self.coco.imgs)
        no_file = [i for i in self.ids if 'file_name' not in self.coco.imgs[i]]
        if no_file:
            raise ValueError(f'{len(no_file)} images of {annotations} have no file_name, e.g. image id {no_file[0]}')
        self._labels: List[Dict[int, set]] = []
        for img_id in self.ids:
            sizes: Dict[int, set] = {}
            for ann in self.coco.imgToAnns.get(img_id, []):
                if ann['category_id'] not in self.cat2label:
                    raise ValueError(f'annotation {ann.get("id")} of image {img_id} in {annotations} has category_id '
                                     f'{ann["category_id"]}, which its categories do not list')
                sizes.setdefault(self.cat2label[ann['category_id']], set()).add(object_size(ann['area']))
            self._labels.append(sizes)

    @staticmethod
    def _resolve(root: str, split: str) -> str:
        def present(name: str) -> bool:
            return os.path.isfile(os.path.join(root, 'annotations', f'instances_{name}.json'))

        kind = 'val' if split == 'validation' else split
        if kind not in ('train', 'val'):
            names = [split]
        else:
            # a year whose train and val files are both there first: train2017 holds most of val2014's images,
            # so a folder with train2017, val2017 and val2014 must not pair train2017 with val2014
            names = [f'{kind}{y}' for y in _YEARS if present(f'train{y}') and present(f'val{y}')]
            names += [f'{kind}{y}' for y in _YEARS if f'{kind}{y}' not in names]
        for name in names:
            if present(name):
                return name
        looked = ', '.join(os.path.join(root, 'annotations', f'instances_{n}.json') for n in names)
        raise FileNotFoundError(f'no COCO annotations for split {split!r}: looked for {looked}')

    def __len__(self) -> int:
        return len(self.ids)

    def target(self, index: int) -> torch.Tensor:
        """Image `index`'s labels: (len(classes),) float, 1 for each category it shows."""
        target = torch.zeros(len(self.classes))
        target[list(self._labels[index])] = 1.
        return target

    def combination(self, index: int) -> Tuple[str, ...]:
        present = set().union(*self._labels[index].values()) if self._labels[index] else set()
        return tuple(s for s in ('large', 'medium', 'small') if s in present)

    def filename(self, index: int) -> str:
        return os.path.join(self.root, self.split, self.coco.imgs[self.ids[index]]['file_name'])

    def __getitem__(self, index: int):
        with Image.open(self.filename(index)) as f:
            image = f.convert('RGB')
        target = self.target(index)
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target
