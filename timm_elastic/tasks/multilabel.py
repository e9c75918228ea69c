"""Multi-label classification metrics (paper Sec. 4.2, Tables 3 and 4), as the original code scores them.

The original fine-tuning script (`validate_multi` in allenai/elastic's `multilabel_classify.py`)
calls a label positive when its logit is above 0 (probability > 0.5) and counts, per class c over
the evaluated images, true positives TP_c, false positives FP_c and false negatives FN_c. Then
(in percent):

- per class ("F1-PerClass" in the paper): P_c = TP_c / (TP_c + FP_c), R_c = TP_c / (TP_c + FN_c),
  F1_c = 2 P_c R_c / (P_c + R_c), each set to 0 for a class with TP_c = 0, and each averaged over
  all classes (the average of the per-class F1, not the F1 of the averages): `p_c`, `r_c`, `f1_c`;
- overall ("F1-Overall"): P_O = sum TP / sum (TP + FP), R_O = sum TP / sum (TP + FN), and
  F1_O = 2 P_O R_O / (P_O + R_O): `p_o`, `r_o`, `f1_o`. The original divides by zero (and prints
  nan) when nothing is predicted positive or nothing is positive; here those are 0.

`map` is the mean over classes with at least one positive image of the average precision of the
class's scores (the area under the precision-recall curve taken at every distinct score, as
scikit-learn's `average_precision_score`), which the multi-label literature reports beside F1.

`MultiLabel` is the task (`--task multilabel`) that the training loop calls: the built-in data's
multi-label mode or MS COCO (`tasks.coco`), binary cross-entropy summed over the classes and averaged
over the images for training (the original's `BCEWithLogitsLoss() * 80`: its mean over images and classes
times the 80 classes) and its mean over images and classes for evaluation (the original's `validate_multi`
reports `BCEWithLogitsLoss()` without the factor), these metrics, per object-size combination too.
Table 4's rows report F1-O over the images of each combination: the paper calls the rows "accuracy"
without defining it for multi-label data, and the original's `validate_multi` counts per-size hits
(`tp_size`, `fn_size`, a recall per object size) that it never prints; F1-O is the paper's headline
metric and the F1 of its Fig. 7, and every metric is kept per combination in the results.
"""
import argparse
import os
from collections import OrderedDict
from typing import Any, Dict

import torch
import torch.nn.functional as F

from . import Task

__all__ = ['multilabel_metrics', 'average_precision', 'MultiLabel', 'BCEPerImage']


def _check(logits: torch.Tensor, targets: torch.Tensor) -> None:
    if logits.dim() != 2 or logits.shape != targets.shape:
        raise ValueError(f'logits and targets must both be (N, C), got {tuple(logits.shape)} and '
                         f'{tuple(targets.shape)}')
    if not bool(((targets == 0) | (targets == 1)).all()):
        raise ValueError('targets must be 0 or 1 per image and class')


def average_precision(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Average precision of one class: scores (N,), positive (N,) bools with at least one True.

    AP = sum over distinct score thresholds t (highest first) of (R_t - R_prev) * P_t, where P_t and
    R_t are the precision and recall of calling every image with a score >= t positive. A NaN score
    counts as the lowest.
    """
    # NaN (a diverged model) ranks below every score, as it is a negative label at the F1 threshold: else
    # each NaN would be a threshold of its own and the images' order would rank them
    scores = scores.double().nan_to_num(nan=-float('inf'))
    order = torch.argsort(scores, descending=True, stable=True)
    s, pos = scores[order], positive[order].double()
    tp, fp = pos.cumsum(0), (1 - pos).cumsum(0)
    # the last index of each run of equal scores: one threshold per distinct score
    last = torch.ones_like(s, dtype=torch.bool)
    last[:-1] = s[1:] != s[:-1]
    tp, fp = tp[last], fp[last]
    precision, recall = tp / (tp + fp), tp / tp[-1]
    steps = torch.diff(recall, prepend=recall.new_zeros(1))
    return float((steps * precision).sum())


def multilabel_metrics(logits: torch.Tensor, targets: torch.Tensor) -> Dict[str, float]:
    """The paper's multi-label metrics over a whole evaluation set, in percent.

    Args:
        logits: (N, C) raw outputs (a label is predicted when its logit > 0).
        targets: (N, C) 0 / 1 ground truth.

    Returns:
        `p_c, r_c, f1_c` (per-class precision, recall and F1, averaged over the C classes),
        `p_o, r_o, f1_o` (overall, over all N x C labels) and `map` (mean average precision over
        the classes with a positive image; 0 if there is none).
    """
    logits, targets = torch.as_tensor(logits), torch.as_tensor(targets)
    _check(logits, targets)
    pred = logits > 0
    truth = targets.bool()
    tp = (pred & truth).sum(0).double()
    fp = (pred & ~truth).sum(0).double()
    fn = (~pred & truth).sum(0).double()
    has_tp = tp > 0
    p_c = torch.where(has_tp, tp / (tp + fp).clamp(min=1), torch.zeros_like(tp))
    r_c = torch.where(has_tp, tp / (tp + fn).clamp(min=1), torch.zeros_like(tp))
    f1_c = torch.where(has_tp, 2 * p_c * r_c / (p_c + r_c).clamp(min=1e-300), torch.zeros_like(tp))

    def ratio(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(a / b) if b > 0 else 0.

    p_o, r_o = ratio(tp.sum(), (tp + fp).sum()), ratio(tp.sum(), (tp + fn).sum())
    f1_o = 2 * p_o * r_o / (p_o + r_o) if p_o + r_o > 0 else 0.
    aps = [average_precision(logits[:, c], truth[:, c]) for c in range(logits.shape[1]) if truth[:, c].any()]
    return {
        'p_c': 100. * float(p_c.mean()), 'r_c': 100. * float(r_c.mean()), 'f1_c': 100. * float(f1_c.mean()),
        'p_o': 100. * p_o, 'r_o': 100. * r_o, 'f1_o': 100. * f1_o,
        'map': 100. * sum(aps) / len(aps) if aps else 0.,
    }


class BCEPerImage(torch.nn.Module):
    """Binary cross-entropy with logits, summed over the classes and averaged over the images."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), reduction='none').sum(1).mean()


class MultiLabel(Task):
    """Multi-label classification (paper Sec. 4.2): one 0/1 target per class and image."""
    name = 'multilabel'
    eval_metrics = ('map', 'f1_o', 'f1_c', 'loss')
    combination_metric = 'f1_o'
    one_output_per_class_of = 'the multi-label data has'

    def builtin_kwargs(self) -> Dict[str, Any]:
        return {'multilabel': True}

    def read_dataset(self, args: argparse.Namespace, split: str, is_training: bool):
        from ..train import UsageError
        from .coco import CocoMultiLabel
        self.check_dataset_flag(args, 'coco', "MS COCO's layout")
        try:
            dataset = CocoMultiLabel(args.data_dir, split)
        except ImportError as e:
            raise UsageError(str(e)) from None
        except FileNotFoundError as e:
            raise UsageError(f'--task multilabel reads MS COCO annotations: {e} (a folder of images with one '
                             'subfolder per class is single-label data: --task classify)') from None
        except (ValueError, KeyError, TypeError) as e:
            raise UsageError(f'cannot read the COCO annotations of split {split!r} in {args.data_dir!r}: '
                             f'{type(e).__name__}: {e}') from None
        missing = [f for f in map(dataset.filename, range(len(dataset))) if not os.path.isfile(f)]
        if missing:
            raise UsageError(f'{len(missing)} of the {len(dataset)} images of split {dataset.split!r} are missing, '
                             f'e.g. {missing[0]}')
        if len(dataset) and not dataset.coco.anns:  # every metric would be 0 (nothing positive), not a score
            raise UsageError(f'split {dataset.split!r} in {args.data_dir!r} has {len(dataset)} images but no '
                             'annotations (a test split\'s image_info file?): there is nothing to '
                             f'{"train on" if is_training else "score"}; use a split with instance annotations')
        return dataset

    def check_splits(self, train, val, args: argparse.Namespace) -> None:
        from ..train import UsageError
        # COCO 2017 re-split 2014's images: train2017 is train2014 and val2014 less val2017's 5000
        if (getattr(train, 'split', None), getattr(val, 'split', None)) == ('train2017', 'val2014'):
            raise UsageError(
                f'--data-dir {args.data_dir!r}: the training split is train2017 and the evaluation split val2014 '
                f'(from --train-split {args.train_split!r} and --val-split {args.val_split!r}), but train2017 holds '
                'most of val2014\'s images, so the scores would be of training images; pair the years: train2014 '
                'with val2014 (the paper\'s) or train2017 with val2017')

    def check_train_args(self, args: argparse.Namespace) -> None:
        from ..train import UsageError
        used = [f for f, v in (('--mixup', args.mixup), ('--cutmix', args.cutmix), ('--smoothing', args.smoothing))
                if v]
        if used:
            verb = 'makes' if len(used) == 1 else 'make'
            raise UsageError(f'{" / ".join(used)} {verb} single-label soft targets; --task multilabel trains on its '
                             '0/1 targets (leave them at 0)')

    def train_loss(self, args: argparse.Namespace, mixup: bool) -> torch.nn.Module:
        return BCEPerImage()

    def data_config(self, config: Dict[str, Any], args: argparse.Namespace, model=None) -> Dict[str, Any]:
        if getattr(args, 'crop_pct', None) is None:  # the original evaluates the whole image, resized square
            config = dict(config, crop_pct=1.0, crop_mode='squash')
        return config

    def per_image(self, logits: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        target = target.to(logits.dtype)
        # the evaluation's loss as the original's validate_multi reports it: BCEWithLogitsLoss(), the mean over images
        # and classes (its training loss is 80 times that, `BCEPerImage`)
        loss = F.binary_cross_entropy_with_logits(logits, target, reduction='none').mean(1)
        return {'loss': loss.cpu(), 'logits': logits.cpu(), 'target': target.bool().cpu()}

    def metrics(self, results: Dict[str, torch.Tensor]) -> Dict[str, Any]:
        out: Dict[str, Any] = OrderedDict(loss=float(results['loss'].double().mean()))
        out.update(multilabel_metrics(results['logits'], results['target']))
        return out

    def line(self, metrics: Dict[str, Any]) -> str:
        return (f'F1-C {metrics["f1_c"]:.2f}%, F1-O {metrics["f1_o"]:.2f}%, mAP {metrics["map"]:.2f}%, '
                f'loss {metrics["loss"]:.4f}')

    def combination_line(self, row: Dict[str, Any]) -> str:
        return f'F1-O {row["f1_o"]:6.2f}%'
