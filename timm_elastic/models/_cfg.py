"""The pretrained cfgs that every family's models share (timm's `default_cfgs` entries): where the
authors' released weights are, and the Hugging Face Hub repository a converted copy is meant for.

A pretrained tag names the dataset of the authors' released weights:
- `in1k`: ImageNet-1k (paper Table 2), `imagenet_models/<arch>.pth.tar` of the release;
- `coco`: the 80-class MS COCO multi-label fine-tune (paper Table 3), `coco_models/coco_<arch>.pth.tar`.
  The original tests it on images resized to 224x224 without a crop (`crop_mode='squash'`).

Where `pretrained=True` reads a tag's weights from is timm's own order over its cfg
(timm.models.load_pretrained): a `file` (`pretrained_cfg_overlay=dict(file=PATH)`, an original
checkpoint or a converted one), then an `hf_hub_id` (none is registered: set one with
`pretrained_cfg_overlay` for a copy published from `timm-elastic convert`, or create `hf-hub:ORG/NAME`),
then the cfg's `url`: the authors' file at their release URL, downloaded once into torch.hub's cache
(`$TORCH_HOME/hub/checkpoints`) and read with `weights_only=True`. Every source is converted on load
by `convert.checkpoint_filter_fn`; a converted folder loads offline as `local-dir:DIR`.
"""
from typing import Any, Dict

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs

from ..tasks.coco import COCO_CLASSES

__all__ = ['HUB_ORG', 'RELEASE_ROOT', 'TAGS', 'hub_id', 'release_url', 'elastic_cfg', 'release_cfg',
           'generate_release_cfgs']

HUB_ORG = 'timm-elastic'
# the authors' release (allenai/elastic README)
RELEASE_ROOT = 'http://ai2-vision.s3.amazonaws.com/elastic'

# tag -> what it changes in the pretrained cfg
TAGS: Dict[str, Dict[str, Any]] = {
    'in1k': {},
    'coco': dict(num_classes=80, label_names=COCO_CLASSES, crop_pct=1.0, crop_mode='squash'),
}


# tag -> the released file of an original architecture, under RELEASE_ROOT
_RELEASE_FILES = {
    'in1k': 'imagenet_models/{arch}.pth.tar',
    'coco': 'coco_models/coco_{arch}.pth.tar',
}


def hub_id(model_tag: str) -> str:
    """The Hub repository a converted copy of `model.tag` is meant for (e.g.
    'timm-elastic/resnext50_elastic.in1k'): the name `timm-elastic convert` suggests for publishing it."""
    return f'{HUB_ORG}/{model_tag}'


def release_url(arch: str, tag: str) -> str:
    """The URL of the authors' checkpoint of the original architecture `arch` (e.g. 'dla60x_elastic')
    for `tag` ('in1k', 'coco')."""
    if tag not in _RELEASE_FILES:
        raise ValueError(f'unknown pretrained tag {tag!r}; tags: {", ".join(_RELEASE_FILES)}')
    return f'{RELEASE_ROOT}/{_RELEASE_FILES[tag].format(arch=arch)}'


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
    preprocessing, and the URL of the released checkpoint (none for an architecture the authors did not
    release with this tag, e.g. a checkpoint of the original code trained by someone else)."""
    from ..convert import ORIGINALS, original_of
    model, tag = model_tag.split('.', 1)
    if tag not in TAGS:
        raise ValueError(f'unknown pretrained tag {tag!r} in {model_tag!r}; tags: {", ".join(TAGS)}')
    arch = original_of(model)
    out = {**cfg, **TAGS[tag]}
    if arch is not None and tag in ORIGINALS[arch].released:
        out['url'] = release_url(arch, tag)
    if tag == 'coco' and out.get('description'):
        out['description'] += ', fine-tuned on MS COCO multi-label (paper Table 3)'
    return out


def generate_release_cfgs(cfgs: Dict[str, Dict[str, Any]]):
    """timm's `generate_default_cfgs`, with every tagged entry (`model.tag`) made a release cfg.
    Untagged entries are architectures without released weights."""
    return generate_default_cfgs({k: release_cfg(k, v) if '.' in k else v for k, v in cfgs.items()})
