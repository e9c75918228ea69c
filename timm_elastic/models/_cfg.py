"""The pretrained cfg that every family's models share (timm's `default_cfgs` entries)."""
from typing import Any, Dict

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

__all__ = ['elastic_cfg']


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
