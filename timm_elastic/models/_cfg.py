"""The pretrained cfgs that every family's models share (timm's `default_cfgs` entries), and the
Hugging Face Hub repositories that the authors' converted weights are published to.

A pretrained tag names the dataset of the authors' released weights:
- `in1k`: ImageNet-1k (paper Table 2), `<arch>.pth.tar` of the release;
- `coco`: the 80-class MS COCO multi-label fine-tune (paper Table 3), `coco_<arch>.pth.tar`. The
  original tests it on images resized to 224x224 without a crop (`crop_mode='squash'`).
Every tagged weight lives in its own Hub repository, `timm-elastic/<model>.<tag>`, as timm's own do
(`timm/<model>.<tag>`); `timm-elastic convert` writes the folder for it.
"""
from typing import Any, Dict

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs

from ..tasks.coco import COCO_CLASSES

__all__ = ['HUB_ORG', 'TAGS', 'hub_id', 'elastic_cfg', 'release_cfg', 'generate_release_cfgs']

HUB_ORG = 'timm-elastic'

# tag -> what it changes in the pretrained cfg
TAGS: Dict[str, Dict[str, Any]] = {
    'in1k': {},
    'coco': dict(num_classes=80, label_names=COCO_CLASSES, crop_pct=1.0, crop_mode='squash'),
}


def hub_id(model_tag: str) -> str:
    """The Hub repository of one `model.tag` (e.g. 'timm-elastic/resnext50_elastic.in1k')."""
    return f'{HUB_ORG}/{model_tag}'


def elastic_cfg(first_conv: str, classifier: str, **kwargs) -> Dict[str, Any]:
    """A timm pretrained cfg for an ELASTIC model: the original's ImageNet preprocessing (the PyTorch
    ImageNet example: bilinear resize, 224 crop of 256, ImageNet mean / std) and provenance."""
    return {
        'url': '',
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bilinear',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': first_conv, 'classifier': classifier,
        'license': 'apache-2.0',
        'paper_ids': 'arXiv:1812.05262',
        'paper_name': 'ELASTIC: Improving CNNs with Dynamic Scaling Policies',
        'origin_url': 'https://github.com/allenai/elastic',
        **kwargs,
    }


def release_cfg(model_tag: str, cfg: Dict[str, Any]) -> Dict[str, Any]:
    """`cfg` (an `elastic_cfg`) for the authors' weights of `model.tag`: the tag's dataset and
    preprocessing, and the Hub repository the converted weights are published to."""
    _, tag = model_tag.split('.', 1)
    if tag not in TAGS:
        raise ValueError(f'unknown pretrained tag {tag!r} in {model_tag!r}; tags: {", ".join(TAGS)}')
    out = {**cfg, **TAGS[tag], 'hf_hub_id': hub_id(model_tag)}
    if tag == 'coco' and out.get('description'):
        out['description'] += ', fine-tuned on MS COCO multi-label (paper Table 3)'
    return out


def generate_release_cfgs(cfgs: Dict[str, Dict[str, Any]]):
    """timm's `generate_default_cfgs`, with every tagged entry (`model.tag`) made a release cfg.
    Untagged entries are architectures without released weights."""
    return generate_default_cfgs({k: release_cfg(k, v) if '.' in k else v for k, v in cfgs.items()})
