"""The scale stress test (paper Sec. 4.2, Fig. 7): trained models evaluated at test sizes they were not
trained at, and the Elastic model's relative improvement over its baseline per size.

The paper trains DLA-X60 (+Elastic) on MS COCO at 224x224 and tests at 96, 224, 448 and 896 pixels,
"changing the last average pooling layer accordingly": timm's models pool globally, so they take any
size as they are. Each size is evaluated as `validate` evaluates (the task's metrics and per-combination
rows), the whole image resized to the square size (the original's `Resize((S, S))`).
"""
import argparse
import copy
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = ['PAPER_SIZES', 'PAPER_TRAIN_SIZE', 'BUILTIN_SIZES', 'scaled_sizes', 'check_sizes', 'stress_test',
           'relative_improvement', 'relative_per_size', 'stress_metrics', 'format_stress', 'run']

PAPER_SIZES = (96, 224, 448, 896)
PAPER_TRAIN_SIZE = 224
# compare's default on the built-in data: the paper's sizes but 896. Its 4x (256 for the 64-pixel images)
# costs 16 evaluations' time (150 of the 386 s of `compare --task multilabel` on 2 cores) and enlarges
# images that have no more detail to give: the tiny models read nothing there (F1-O 1-12%).
BUILTIN_SIZES = PAPER_SIZES[:3]
MIN_SIZE = 32  # the models' total stride: below it the last feature map is empty


def scaled_sizes(train_size: int, sizes: Sequence[int] = PAPER_SIZES) -> List[int]:
    """The paper's test sizes in proportion to a model trained at `train_size` instead of 224 (at least
    32 pixels): 96, 224, 448, 896 -> 32, 64, 128, 256 for the built-in data's 64."""
    out = []
    for s in sizes:
        size = max(MIN_SIZE, round(s * train_size / PAPER_TRAIN_SIZE))
        if size not in out:
            out.append(size)
    return out


def check_sizes(flag: str, sizes: Sequence[int]) -> None:
    """Refuse test sizes below MIN_SIZE or given twice (the second would replace the first's results)."""
    from .train import UsageError
    bad = [s for s in sizes if s < MIN_SIZE]
    if bad:
        raise UsageError(f'{flag} must be at least {MIN_SIZE} pixels, got {" ".join(map(str, bad))}')
    repeated = sorted({s for s in sizes if list(sizes).count(s) > 1})
    if repeated:
        raise UsageError(f'{flag} repeats {" ".join(map(str, repeated))}; each size is evaluated once')


def stress_test(model, dataset, args: argparse.Namespace, device, sizes: Sequence[int], amp_autocast=None,
                combinations=None) -> Dict[int, Dict[str, Any]]:
    """{size: the task's metrics of `model` on `dataset` at size x size} (`args.task`, `args.batch_size`,
    `args.channels_last` as `validate`; with DDP every process evaluates its shard)."""
    from contextlib import nullcontext

    from .train import _eval_loader, evaluate, resolve_config
    out: Dict[int, Dict[str, Any]] = OrderedDict()
    for size in sizes:
        sized = copy.copy(args)
        sized.img_size, sized.input_size = size, None
        # the whole image at every size, whatever the task's or the model's evaluation crop
        config = dict(resolve_config(sized, model), crop_pct=1.0, crop_mode='squash')
        loader = _eval_loader(dataset, args.batch_size, sized, config, device)
        out[size] = evaluate(model, loader, sized, device, amp_autocast or nullcontext, combinations,
                             phase=f'{size}x{size}')
    return out


def relative_improvement(base: float, elastic: float) -> Optional[float]:
    """The Elastic model's improvement relative to the baseline's value, in percent (Fig. 7's bars); None
    where the baseline's value is 0 (nothing to be relative to)."""
    return 100. * (elastic - base) / base if base else None


def relative_per_size(pairs: Sequence[Tuple[Dict[int, Dict[str, Any]], Dict[int, Dict[str, Any]]]],
                      metrics: Sequence[str]) -> Dict[str, Dict[int, List[Optional[float]]]]:
    """{metric: {size: [relative improvement (%) per pair]}} of (baseline, Elastic) stress tests, each
    {size: metrics} as `stress_test` returns them (one pair per seed)."""
    out: Dict[str, Dict[int, List[Optional[float]]]] = OrderedDict()
    for m in metrics:
        out[m] = OrderedDict()
        for base, elastic in pairs:
            for size in base:
                out[m].setdefault(size, []).append(relative_improvement(base[size][m], elastic[size][m]))
    return out


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """`timm-elastic stress`: evaluate `args.model` (and `args.baseline`) at `args.sizes` (None: the paper's
    sizes in proportion to the model's input size, `scaled_sizes`); returns
    {'task', 'sizes', 'model', 'baseline', 'metrics': {'baseline' / 'model': {size: metrics}}, 'relative':
    {metric: {size: percent}} (with a baseline), 'files'}."""
    from ._io import write_json
    from .train import UsageError, _init_device, _is_primary, amp_context, baseline_args, combinations_of, \
        create_datasets, load_for_eval, resolve_config, task_of
    task = task_of(args)
    if args.baseline_checkpoint and not args.baseline:
        raise UsageError('--baseline-checkpoint needs --baseline NAME (the model it holds)')
    check_sizes('--sizes', args.sizes or ())
    unused = [flag for flag, value in (('--img-size', args.img_size), ('--input-size', args.input_size),
                                       ('--crop-pct', args.crop_pct)) if value is not None]
    if unused:  # they would be ignored
        raise UsageError(f'{"/".join(unused)}: stress evaluates the whole image resized to each of --sizes; '
                         'leave them out')
    if args.plot and not args.baseline:
        raise UsageError('--plot draws the improvement over a baseline: pass --baseline NAME too')
    if args.plot:  # known before the evaluations, not after them
        from .policy import require
        require('matplotlib', '--plot')
        from .report.plots import plot_format
        try:
            plot_format(args.plot)
        except ValueError as e:
            raise UsageError(f'--plot {e}') from None
    device = _init_device(args)
    amp_autocast, _ = amp_context(args, device)
    _, dataset, data_classes = create_datasets(args, training=False)
    combos = combinations_of(dataset, args.data_dir, args.val_split)
    runs = [('model', args, ('--model', '--checkpoint'))]
    if args.baseline:
        runs.insert(0, ('baseline', baseline_args(args), ('--baseline', '--baseline-checkpoint')))
    models = [(role, run_args, load_for_eval(run_args, data_classes, device, flags=flags))
              for role, run_args, flags in runs]
    # by default the paper's sizes in proportion to --model's own input size (as validate resolves it): 96 ... 896
    # for a model of 224 pixels, 32 ... 256 for the built-in data's 64 (the paper's pixels would be 1.5-14x there)
    sizes = args.sizes or scaled_sizes(resolve_config(args, models[-1][2])['input_size'][-1])
    per_model = OrderedDict()
    names = {}
    for role, run_args, model in models:
        names[role] = run_args.model
        per_model[role] = stress_test(model, dataset, run_args, device, sizes, amp_autocast, combos)
    result: Dict[str, Any] = OrderedDict(task=task.name, sizes=list(sizes), model=names['model'],
                                         baseline=names.get('baseline'), metrics=per_model)
    files = []
    if args.baseline:
        relative = relative_per_size([(per_model['baseline'], per_model['model'])], stress_metrics(task))
        result['relative'] = OrderedDict(
            (m, OrderedDict((s, v[0]) for s, v in r.items())) for m, r in relative.items())
    primary = _is_primary(args)  # under torchrun, one process writes (each has every image's metrics)
    if args.results_file and primary:
        write_json(args.results_file, result)
        files.append(args.results_file)
    if args.baseline and args.plot and primary:
        from .report.plots import plot_stress
        title = f'{names["model"]} over {names["baseline"]}\nrelative improvement per test size (paper Fig. 7)'
        files.append(plot_stress(relative, args.plot, title))
    result['files'] = files
    return result


def stress_metrics(task) -> List[str]:
    """The metrics whose relative improvement is reported: the paper's F1s for multi-label, top-1 otherwise."""
    return ['f1_o', 'f1_c'] if task.name == 'multilabel' else ['top1']


def format_stress(relative: Dict[str, Dict[int, List[Optional[float]]]]) -> str:
    """Fig. 7 as a table: per test size, the relative improvement of each metric (mean ± standard
    deviation over the seeds where there are several; n/a where every baseline value was 0, and the count
    of seeds where only some were)."""
    from .compare import LABELS, _columns, spread
    metrics = list(relative)
    sizes = list(next(iter(relative.values())))
    rows = []
    for s in sizes:
        cells = []
        for m in metrics:
            values = [v for v in relative[m][s] if v is not None]
            cell = format(spread(values), '+.2f') + '%' if values else 'n/a'
            if values and len(values) < len(relative[m][s]):  # the others' baseline was 0: nothing to be relative to
                cell += f' ({len(values)} of {len(relative[m][s])} seeds)'
            cells.append(cell)
        rows.append([f'{s}x{s}', *cells])
    head = ['test size', *(f'relative {LABELS.get(m, m)}' for m in metrics)]
    return '\n'.join(_columns(head, rows, [10] + [18] * len(metrics)))
