"""Tasks beyond ImageNet classification that the paper evaluates (Sec. 4.2-4.3), and the task objects
that the one training / evaluation loop (`timm_elastic.train`) calls.

A task says what differs between tasks and nothing else: how its data is read, its training loss, what
is recorded per image during evaluation and how those records become metrics, how a result is printed
and which metric ranks checkpoints. The loop (seeding, AMP, DDP, checkpoints, exact resume, progress,
summary.csv) is the same for every task. `--task` names one of `TASKS`.
"""
import argparse
from collections import OrderedDict
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

__all__ = ['TASKS', 'Task', 'get_task']


class Task:
    """The interface the loop calls; `tasks.classify.Classify`, `tasks.multilabel.MultiLabel` and
    `tasks.segmentation.Segment` are the implementations."""
    name = ''
    #: the metrics `--eval-metric` may rank checkpoints by, the default first; 'loss' ranks lowest first
    eval_metrics: Tuple[str, ...] = ()
    #: the metric the per-combination rows report (Table 4)
    combination_metric = ''
    #: the data's class names, once the loop has read the data (None before, or where it has none)
    classes: Optional[Sequence[str]] = None
    #: the data in words with its verb, where a model needs exactly one output per class of it (a 0/1 target or
    #: a score map per class); '' where more outputs than classes still score it (an arg-max over classes)
    one_output_per_class_of = ''

    def builtin_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments of the built-in dataset (`ScaleShapes`) for this task."""
        return {}

    def read_dataset(self, args: argparse.Namespace, split: str, is_training: bool):
        """The `--data-dir` dataset of `split`, or None to let timm's `create_dataset` read it."""
        return None

    def check_dataset_flag(self, args: argparse.Namespace, own: str, layout: str) -> None:
        """Refuse a `--dataset` other than `own`, the one layout (`layout`, in words) the task's reader takes."""
        from ..train import UsageError
        if (args.dataset or '') not in ('', own):
            raise UsageError(f'--task {self.name} reads {layout} from --data-dir (--dataset {own}, or leave it '
                             f'out), got --dataset {args.dataset!r}')

    def check_splits(self, train, val, args: argparse.Namespace) -> None:
        """Refuse a training and an evaluation dataset (what `read_dataset` returned) that must not be paired (a
        `UsageError` saying why)."""

    def known_model(self, name: str) -> bool:
        """Whether `--model NAME` names a model that `build_model` builds: a name in timm's registry, or a Hub /
        local folder one (whose config names the architecture)."""
        import timm
        return name.startswith(('hf-hub:', 'local-dir:')) or timm.is_model(name)

    def unknown_model(self, name: str) -> str:
        """The error for a `--model NAME` that `known_model` refuses: what the names are."""
        from ..models import list_models
        return (f'unknown model {name!r}; timm-elastic registers {", ".join(list_models())} (the Elastic models '
                'and the baselines timm lacks), and any timm model works')

    def partly_pretrained(self, name: str) -> Optional[str]:
        """Why `--pretrained` leaves part of model `name` at random initialisation (an error for evaluating it
        without a checkpoint), or None where it gives it every weight or none (timm's error then)."""
        return None

    def classifier(self, model: str) -> Optional[str]:
        """The module of `--model NAME` whose output rows are the classes (what a checkpoint's class count is
        read from), or None where it is not known."""
        from timm.models import get_pretrained_cfg
        cfg = get_pretrained_cfg(model)
        return cfg.classifier if cfg is not None and cfg.classifier else None

    def build_model(self, name: str, **kwargs) -> torch.nn.Module:
        """The model `name` with `timm.create_model`'s keyword arguments (`pretrained`, `num_classes`,
        `checkpoint_path`, `in_chans`, `drop_rate`, the Elastic options...): timm's factory, or the task's own."""
        import timm
        return timm.create_model(name, **kwargs)

    def loader(self, dataset, batch_size: int, args: argparse.Namespace, data_config: Dict[str, Any], device,
               training: bool):
        """The task's own DataLoader over `dataset`, or None for timm's `create_loader`."""
        return None

    def check_train_args(self, args: argparse.Namespace) -> None:
        """Refuse training flags that do not apply to the task (a `UsageError` naming the flag)."""

    def train_loss(self, args: argparse.Namespace, mixup: bool) -> torch.nn.Module:
        raise NotImplementedError

    def check_classes(self, model_classes: int, data_classes: Optional[int], flag: str, model: str,
                      checkpoint: str = '') -> None:
        """Refuse a model whose outputs cannot score the data: fewer classes than it has, or another number
        where it needs one output per class (`one_output_per_class_of`). `checkpoint` (its flag and path, in
        words) where the class count is a checkpoint's: another --num-classes would not fit it."""
        from ..train import UsageError
        if data_classes is None:
            return
        fix = (f'{checkpoint} was trained with {model_classes}: evaluate it on data of those classes' if checkpoint
               else None)
        if self.one_output_per_class_of and model_classes != data_classes:
            raise UsageError(f'{flag} {model} has {model_classes} classes, but {self.one_output_per_class_of} '
                             f'{data_classes}: one output per class is needed ('
                             + (fix or f'--num-classes {data_classes}, or weights trained on this data') + ')')
        if model_classes < data_classes:
            raise UsageError(f'{flag} {model} has {model_classes} classes, fewer than the {data_classes} of the data '
                             f'({fix or f"set --num-classes {data_classes}"})')

    def data_config(self, config: Dict[str, Any], args: argparse.Namespace, model=None) -> Dict[str, Any]:
        """timm's resolved data config, with the task's own evaluation defaults where the user set none."""
        return config

    def per_image(self, logits: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        """What evaluation keeps of a batch: tensors with the batch's images along the first axis, on the
        CPU (gathered over processes and put in dataset order before `metrics`)."""
        raise NotImplementedError

    def metrics(self, results: Dict[str, torch.Tensor]) -> Dict[str, Any]:
        """The metrics over the images of `results` (all of them, or one size combination's)."""
        raise NotImplementedError

    def summarize(self, results: Dict[str, torch.Tensor],
                  combinations: Optional[Sequence[Tuple[str, ...]]]) -> Dict[str, Any]:
        """`metrics` over every image, and per object-size combination (Table 4's rows, in its order) when
        `combinations` (one per image) is given: `per_combination[name]` holds every metric and `count`."""
        from ..data import COMBINATIONS, combination_name
        out: Dict[str, Any] = OrderedDict(self.metrics(results))
        n = len(next(iter(results.values())))
        if combinations is not None and len(combinations) == n:
            table = OrderedDict()
            for combo in COMBINATIONS:
                mask = torch.tensor([tuple(sorted(c)) == tuple(sorted(combo)) for c in combinations])
                if mask.any():
                    subset = {k: v[mask] for k, v in results.items()}
                    table[combination_name(combo)] = dict(self.metrics(subset), count=int(mask.sum()))
            out['per_combination'] = table
        out['count'] = n
        return out

    def flat(self, metrics: Dict[str, Any]) -> Dict[str, Any]:
        """Metrics for summary.csv: the scalars, and the combination metric per combination as
        `<metric>_<combination>`."""
        out = OrderedDict((k, v) for k, v in metrics.items() if k not in ('per_combination', 'count'))
        for name, row in metrics.get('per_combination', {}).items():
            out[f'{self.combination_metric}_{name}'] = row[self.combination_metric]
        return out

    def line(self, metrics: Dict[str, Any]) -> str:
        """The evaluation in a few words, for the epoch line and `validate`."""
        raise NotImplementedError

    def combination_line(self, row: Dict[str, Any]) -> str:
        """One per-combination row in a few words."""
        m = self.combination_metric
        return f'{m} {row[m]:6.2f}%'

    def detail_lines(self, metrics: Dict[str, Any]) -> Sequence[str]:
        """More of an evaluation for `validate` to print below its line (e.g. per-class scores)."""
        return ()


TASKS = ('classify', 'multilabel', 'segment')


def get_task(name: Optional[str]) -> Task:
    """The task object for `--task NAME` ('classify' when None)."""
    name = name or 'classify'
    if name == 'classify':
        from .classify import Classify
        return Classify()
    if name == 'multilabel':
        from .multilabel import MultiLabel
        return MultiLabel()
    if name == 'segment':
        from .segmentation import Segment
        return Segment()
    raise ValueError(f'unknown task {name!r}; the tasks are {", ".join(TASKS)}')
