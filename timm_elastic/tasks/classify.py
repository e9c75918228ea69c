"""Single-label classification (ImageNet, the built-in data, any timm dataset): the default task.

Evaluation keeps each image's loss and whether its class is the top-1 / among the top-5 predictions;
the metrics are their means (percent), per object-size combination too (the paper's Table 4 reports
accuracy per combination)."""
import argparse
from collections import OrderedDict
from typing import Any, Dict

import torch
import torch.nn.functional as F

from . import Task

__all__ = ['Classify']


class Classify(Task):
    name = 'classify'
    eval_metrics = ('top1', 'top5', 'loss')
    combination_metric = 'top1'

    def train_loss(self, args: argparse.Namespace, mixup: bool) -> torch.nn.Module:
        from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
        if mixup:  # Mixup / CutMix make soft targets (with the smoothing in them)
            return SoftTargetCrossEntropy()
        if args.smoothing:
            return LabelSmoothingCrossEntropy(smoothing=args.smoothing)
        return torch.nn.CrossEntropyLoss()

    def per_image(self, logits: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        hits = logits.topk(min(5, logits.shape[1]), dim=1).indices == target[:, None]
        return {'loss': F.cross_entropy(logits, target, reduction='none').cpu(),
                'top1': hits[:, 0].cpu(), 'top5': hits.any(dim=1).cpu()}

    def metrics(self, results: Dict[str, torch.Tensor]) -> Dict[str, Any]:
        return OrderedDict(loss=float(results['loss'].double().mean()),
                           top1=100. * float(results['top1'].double().mean()),
                           top5=100. * float(results['top5'].double().mean()))

    def line(self, metrics: Dict[str, Any]) -> str:
        return f'top-1 {metrics["top1"]:.2f}%, top-5 {metrics["top5"]:.2f}%, loss {metrics["loss"]:.4f}'

    def combination_line(self, row: Dict[str, Any]) -> str:
        return f'top-1 {row["top1"]:6.2f}%'
