"""MS COCO multi-label data read with pycocotools from a tiny COCO-format folder the test writes."""
import json

import pytest
import torch
from PIL import Image

from timm_elastic.tasks.coco import COCO_CLASSES, CocoMultiLabel, object_size

pytest.importorskip('pycocotools', reason="pip install 'timm-elastic[coco]' (the test extra has it)")


def write_coco(root, split='val2014'):
    """Categories listed out of id order (3, 1, 90: the original numbers them as the file lists
    them) and images out of id order; areas around COCO's thresholds (32^2 = 1024, 96^2 = 9216)."""
    (root / 'annotations').mkdir(parents=True)
    (root / split).mkdir()
    images = [dict(id=10, file_name='a.png', width=40, height=30), dict(id=2, file_name='b.png', width=30, height=40),
              dict(id=7, file_name='c.png', width=20, height=20), dict(id=5, file_name='d.png', width=20, height=20)]
    for i, im in enumerate(images):
        Image.new('RGB', (im['width'], im['height']), (40 * i, 100, 200)).save(root / split / im['file_name'])
    anns = [  # (image, category, area, iscrowd)
        (10, 1, 500., 0), (10, 3, 5000., 0), (10, 1, 20000., 1),  # person small + crowd large, car medium
        (2, 90, 9216., 0),  # toothbrush exactly 96^2: large
        (5, 3, 1023., 0), (5, 3, 1024., 0),  # car just small and exactly 32^2: medium
    ]  # image 7 has none
    ann = [dict(id=k + 1, image_id=i, category_id=c, area=a, iscrowd=z, bbox=[0, 0, 1, 1], segmentation=[])
           for k, (i, c, a, z) in enumerate(anns)]
    cats = [dict(id=3, name='car'), dict(id=1, name='person'), dict(id=90, name='toothbrush')]
    (root / 'annotations' / f'instances_{split}.json').write_text(
        json.dumps(dict(images=images, annotations=ann, categories=cats)))


def test_targets_sizes_and_order_follow_the_original(tmp_path):
    write_coco(tmp_path)
    ds = CocoMultiLabel(str(tmp_path), 'val2014')
    assert ds.classes == ['car', 'person', 'toothbrush'] and len(ds) == 4
    assert [ds.filename(i).rsplit('/', 1)[1] for i in range(4)] == ['a.png', 'b.png', 'c.png', 'd.png']
    assert [ds.target(i).tolist() for i in range(4)] == [[1, 1, 0], [0, 0, 1], [0, 0, 0], [1, 0, 0]]
    assert [ds.combination(i) for i in range(4)] == [
        ('large', 'medium', 'small'), ('large',), (), ('medium', 'small')]
    image, target = ds[1]
    assert image.size == (30, 40) and image.mode == 'RGB' and target.dtype == torch.float32


def test_split_names_resolve_to_the_year_present(tmp_path):
    write_coco(tmp_path, 'val2017')
    assert CocoMultiLabel(str(tmp_path), 'validation').split == 'val2017'
    assert CocoMultiLabel(str(tmp_path), 'val').split == 'val2017'
    with pytest.raises(FileNotFoundError, match="split 'train': looked for .*instances_train2014"):
        CocoMultiLabel(str(tmp_path), 'train')


def test_train_and_val_resolve_to_one_year(tmp_path):
    # train2017 holds most of val2014's images: a folder with both years' val files and train2017 only must
    # give train2017 and val2017, not val2014 (the paper's year, taken where nothing pairs)
    write_coco(tmp_path, 'val2014')
    assert CocoMultiLabel(str(tmp_path), 'val').split == 'val2014'
    ann = tmp_path / 'annotations'
    for split in ('val2017', 'train2017'):
        (ann / f'instances_{split}.json').write_text((ann / 'instances_val2014.json').read_text())
    assert CocoMultiLabel(str(tmp_path), 'train').split == 'train2017'
    assert [CocoMultiLabel(str(tmp_path), s).split for s in ('val', 'validation')] == ['val2017', 'val2017']
    assert CocoMultiLabel(str(tmp_path), 'val2014').split == 'val2014'  # a named year stays


def test_object_size_thresholds():
    assert object_size(1023.9) == 'small' and object_size(1024) == 'medium' and object_size(9216) == 'large'
    assert len(COCO_CLASSES) == 80


def test_dataset_with_transforms(tmp_path):
    write_coco(tmp_path)
    ds = CocoMultiLabel(str(tmp_path), 'val2014', transform=lambda im: torch.zeros(3, 8, 8),
                        target_transform=lambda t: t * 2)
    x, t = ds[0]
    assert x.shape == (3, 8, 8) and t.tolist() == [2., 2., 0.]
