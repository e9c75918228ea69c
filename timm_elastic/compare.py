"""The main job (`timm-elastic compare`): an Elastic model against its non-Elastic twin, over several seeds.

The paper's Table 4 in miniature: both models are trained with the same recipe on the built-in
scale-challenging dataset (`timm_elastic.data`) and scored per combination of object sizes. One
training run is one draw: the seed moves a small model's top-1 by points, and so does the machine
(PyTorch's CPU kernels sum in an order that follows the instruction set, oneDNN's convolutions
among them), so a single pair of runs can say either thing. Here every seed trains both models
(the same data; the seed sets initial weights, data order and augmentation), and the table shows
mean and standard deviation over the seeds, with a conclusion that says whether the Elastic
model's mean gain stands above the seed-to-seed noise: whether its 95% confidence interval, paired over
the seeds (Student's t), excludes 0.

Each run is an ordinary `train` run, kept in `<output>/<experiment>/seed<S>/<model>/` (summary.csv,
the best and the last checkpoint), and `compare.json` beside them holds every run's metrics.

With `--task multilabel` (the paper's MS COCO experiment, Sec. 4.2, on the built-in data's multi-label
mode) the table is Table 4 in F1-O (`tasks.multilabel` says why), preceded by Table 3 (F1 per class and
overall, and the precisions, recalls and mAP) and followed by Fig. 7: each seed's last checkpoints are
evaluated at the paper's test sizes scaled to the training size (`stress.scaled_sizes` of
`stress.BUILTIN_SIZES`: 32, 64 and 128 for the built-in 64), and the relative F1 improvement per size is
printed and drawn (`stress.png` beside the runs).
"""
import argparse
import copy
import logging
import math
import os
import time
from collections import OrderedDict
from typing import Any, Dict, List, NamedTuple, Optional, Sequence

from .train import (
    BUILTIN, UsageError, check_output_paths, create_datasets, create_model, new_folder, output_root, task_of, train)

__all__ = ['DEFAULT_SEEDS', 'Spread', 'spread', 'compare', 'twin_of', 'runs_folder', 'format_comparison',
           'stress_relative']

DEFAULT_SEEDS = (0, 1, 2)


class Spread(NamedTuple):
    """Mean and sample standard deviation (n - 1 in the denominator; NaN for a single value)."""
    mean: float
    std: float

    def __format__(self, spec: str) -> str:
        return f'{self.mean:{spec}}' if math.isnan(self.std) else f'{self.mean:{spec}} ± {self.std:.2f}'


def spread(values: Sequence[float]) -> Spread:
    """The mean and sample standard deviation of `values` (at least one)."""
    n = len(values)
    if n == 0:
        raise ValueError('spread needs at least one value')
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    return Spread(mean, std)


def t_quantile(p: float, df: int) -> float:
    """Student's t critical value: the t with P(|T| <= t) = `p` for `df` (a positive integer) degrees of freedom,
    e.g. 4.303 for p = 0.95 and 2 degrees of freedom. P(|T| <= t) in its closed forms for integer df (Abramowitz
    and Stegun 26.7.3 and 26.7.4, in theta = atan(t / sqrt(df))), inverted by bisection: exact to float rounding,
    without SciPy."""
    if not 0 < p < 1 or int(df) != df or df < 1:
        raise ValueError(f't_quantile needs 0 < p < 1 and a positive integer df, got p={p!r}, df={df!r}')

    def within(theta: float) -> float:
        s, c = math.sin(theta), math.cos(theta)
        if df % 2:  # (2 / pi) (theta + s (c + 2/3 c^3 + 2*4/(3*5) c^5 + ... + c^(df - 2)))
            total = term = c if df > 1 else 0.
            for k in range(1, (df - 1) // 2):
                term *= c * c * (2 * k) / (2 * k + 1)
                total += term
            return 2 / math.pi * (theta + s * total)
        total = term = 1.  # s (1 + 1/2 c^2 + 1*3/(2*4) c^4 + ... + c^(df - 2))
        for k in range(1, df // 2):
            term *= c * c * (2 * k - 1) / (2 * k)
            total += term
        return s * total

    low, high = 0., math.pi / 2
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if within(mid) < p else (low, mid)
    return math.sqrt(df) * math.tan((low + high) / 2)


def _check_seeds(seeds: Sequence[int]) -> List[int]:
    seeds = list(seeds)
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise UsageError(f'--seeds must be distinct integers of 0 or more, got {" ".join(map(str, seeds)) or "none"}')
    return seeds


def compare(args: argparse.Namespace) -> Dict[str, List[Dict[str, Any]]]:
    """Train the Elastic model `args.model` and its non-Elastic twin once per seed of `args.seeds`,
    with the same flags; for each seed the twin first. Returns {twin: [metrics per seed], elastic:
    [...]}: each the last epoch's evaluation (top-1 per object-size combination included) with its
    `seed`, training time in `seconds` and `output_dir`. The metrics are also written to
    `compare.json` in the folder that holds the runs (the first process of a torchrun writes)."""
    from ._io import write_json
    twin = twin_of(args.model, args.task)
    given = [flag for flag, value in (('--data-dir', args.data_dir), ('--dataset', args.dataset))
             if value and not (flag == '--dataset' and value == BUILTIN)]  # (a folder may be named scaleshapes)
    if given:
        raise UsageError(f'compare trains on the built-in dataset; leave out {" and ".join(given)} (timm-elastic '
                         f'train takes {"them" if len(given) > 1 else "it"})')
    seeds = _check_seeds(args.seeds)
    given = [flag for flag, value in (('--resume', args.resume), ('--initial-checkpoint', args.initial_checkpoint))
             if value]
    if given:  # one checkpoint holds one model: it fits the twin or the Elastic model, never both
        raise UsageError(f'{" / ".join(given)}: compare trains each model of the pair from scratch, once per seed; '
                         f'timm-elastic train {given[0]} starts or continues one run')
    task = task_of(args)
    stress = task.name == 'multilabel' and getattr(args, 'stress_sizes', None) != []
    if task.name != 'multilabel' and getattr(args, 'stress_sizes', None):  # it would be ignored
        raise UsageError(f"--stress-sizes: compare's stress test is --task multilabel's (the paper's Fig. 7); for "
                         f'--task {task.name}, timm-elastic stress evaluates the runs\' checkpoints at other sizes')
    if stress:
        from .stress import check_sizes
        check_sizes('--stress-sizes', args.stress_sizes or ())
    experiment = args.experiment or 'compare-' + time.strftime('%Y%m%d-%H%M%S')  # made unique below
    check_output_paths(args, experiment)
    folder = os.path.join(output_root(args), experiment)
    if args.experiment and os.path.isdir(folder) and os.listdir(folder):  # (each run's would be refused, with
        # train's advice; a default name is made unique below)
        held = 'a comparison already (compare.json)' if os.path.exists(os.path.join(folder, 'compare.json')) else \
            f'the runs of a comparison that did not finish ({", ".join(sorted(os.listdir(folder))[:3])}); compare ' \
            'does not continue one'
        raise UsageError(f'--experiment {experiment!r}: {folder} holds {held}; another --experiment (or --output) '
                         'starts a new one')
    primary = os.environ.get('RANK', '0') == '0'  # torchrun's first process
    datasets = create_datasets(args)  # one dataset for every run: the seed varies training, not the data
    # the Elastic model built once before any training: what only the model checks (an --elastic-resample, an
    # --elastic-ratio that leaves a block's group empty) stopped compare after the twin had trained
    create_model(args, args.num_classes or datasets[2])
    for ds in datasets[:2]:  # rendered now, not inside the first run's time
        if hasattr(ds, 'fill_cache'):
            ds.fill_cache()
    if not args.experiment and primary:  # a new folder of this process's own, even beside a compare started in
        experiment = os.path.basename(new_folder(output_root(args), experiment))  # the same second
    results: Dict[str, List[Dict[str, Any]]] = OrderedDict((name, []) for name in (twin, args.model))
    for seed in seeds:
        for name in results:
            run = copy.copy(args)
            run.model, run.seed = name, seed
            run.experiment = f'{experiment}/seed{seed}/{name}'
            if name == twin:  # it has no Elastic blocks to configure
                run.elastic_ratio = run.elastic_resample = None
            if primary:
                print(f'== seed {seed}: training {name} ({run.epochs} epoch{"s" if run.epochs != 1 else ""})',
                      flush=True)
            start = time.perf_counter()
            metrics = train(run, datasets)
            results[name].append(dict(metrics, seed=seed, seconds=time.perf_counter() - start,
                                      split=args.val_split))
            if stress:
                from .stress import BUILTIN_SIZES, scaled_sizes
                sizes = getattr(args, 'stress_sizes', None) or scaled_sizes(metrics['img_size'], BUILTIN_SIZES)
                results[name][-1]['stress'] = _stress(run, datasets[1], sizes)
    folder = runs_folder(results)
    if primary and folder:
        write_json(os.path.join(folder, 'compare.json'), results)
    return results


def twin_of(model: str, task: str = 'classify') -> str:
    """The non-Elastic twin of the Elastic `model` (`models.TWINS`); for --task segment, of its backbone, in the
    same segmentation architecture (`deeplabv3_resnext_tiny_elastic` -> `deeplabv3_resnext_tiny`)."""
    from .models import TWINS
    prefix = next((p for p in ('deeplabv3_', 'dlaup_') if model.startswith(p)), '') if task == 'segment' else ''
    backbone = model[len(prefix):]
    if backbone not in TWINS:
        pairs = ', '.join(f'{prefix}{e} (twin {prefix}{b})' for e, b in TWINS.items())
        raise UsageError(f'--model {model!r} has no registered non-Elastic twin; compare'
                         f'{" --task segment" if task == "segment" else ""} takes one of: {pairs}')
    return prefix + TWINS[backbone]


def _stress(run: argparse.Namespace, dataset, sizes: Sequence[int]) -> Dict[int, Dict[str, Any]]:
    """The stress test (Fig. 7) of one run: its last checkpoint (as its table row) at every size."""
    import torch

    from .stress import stress_test
    from .train import amp_context, combinations_of, load_for_eval
    ev = copy.copy(run)
    ev.checkpoint = os.path.join(output_root(run), run.experiment, 'last.pth.tar')
    ev.pretrained, ev.use_ema, ev.num_classes = False, bool(run.model_ema), None
    ev.batch_size = run.validation_batch_size or run.batch_size
    device = torch.device(run.device)
    helpers = logging.getLogger('timm.models._helpers')  # its 'Loaded state_dict' line, between the runs' lines
    level = helpers.level
    helpers.setLevel(logging.WARNING)
    try:
        model = load_for_eval(ev, len(dataset.classes), device)
    finally:
        helpers.setLevel(level)
    amp_autocast, _ = amp_context(run, device)
    return stress_test(model, dataset, ev, device, sizes, amp_autocast, combinations_of(dataset, None, run.val_split))


def runs_folder(results: Dict[str, List[Dict[str, Any]]]) -> str:
    """The folder that holds the runs of `compare`'s results (`<output>/<experiment>`, the parent of
    `seed<S>/<model>/`), or '' in the processes of a torchrun that write nothing."""
    first = next(iter(results.values()))[0]['output_dir']
    return os.path.dirname(os.path.dirname(first)) if first else ''


_WORDS = {'small': 'small objects only', 'medium': 'medium objects only', 'large': 'large objects only'}


def _in_words(key: str) -> str:
    sizes = key.split('+')
    return _WORDS[key] if len(sizes) == 1 else ' and '.join((', '.join(sizes[:-1]), sizes[-1])) + ' objects'


# how the tables name each metric
LABELS = {'top1': 'top-1', 'top5': 'top-5', 'f1_o': 'F1-O', 'f1_c': 'F1-C', 'p_c': 'P-C', 'r_c': 'R-C',
          'p_o': 'P-O', 'r_o': 'R-O', 'map': 'mAP', 'miou': 'mIoU', 'loss': 'loss'}


def _stats(runs_of_b, runs_of_e, get):
    tb, te = [get(r) for r in runs_of_b], [get(r) for r in runs_of_e]
    return spread(tb), spread(te), spread([e - b for b, e in zip(tb, te)])


def format_comparison(results: Dict[str, List[Dict[str, Any]]], base: str, elastic: str,
                      task: str = 'classify') -> str:
    """The Table 4 layout: a row per object-size combination (Large / Medium / Small present or not)
    with the image count, each model's top-1 (F1-O for `task` 'multilabel') and the Elastic model's gain
    in points (per seed, Elastic minus twin) and relative to the twin: mean ± standard deviation over the
    seeds. Then a line that reads the table in words, and the conclusion: the overall gain against the
    spread. Multi-label: Table 3 (every metric) first, and the stress test (Fig. 7) after, where the runs
    have one."""
    from .data import COMBINATIONS, combination_name
    from .tasks import get_task
    metric = get_task(task).combination_metric
    label = LABELS[metric]
    runs_b, runs_e = results[base], results[elastic]
    seeds = [r['seed'] for r in runs_b]
    n = len(seeds)
    stats = _stats

    over = f'mean ± standard deviation over {n} seeds ({", ".join(map(str, seeds))})' if n > 1 else f'seed {seeds[0]}'
    lines = []
    if task == 'multilabel':
        lines += _table3(runs_b, runs_e, base, elastic, over) + ['']
    title = label[0].upper() + label[1:] if label.islower() else label  # top-1 -> Top-1; F1-O, mIoU as they are
    lines += [f'{title} (%) on the built-in {_split_words(runs_b[0])} ({runs_b[0]["count"]} images), by '
              f'the sizes of the objects in the image (paper Table 4); {over}:', '']
    rows, gains = [], OrderedDict()
    for combo in COMBINATIONS:
        key = combination_name(combo)
        if key not in runs_b[0].get('per_combination', {}):
            continue
        marks = ' '.join(f'{("x" if s in combo else "-"):>{w}}' for s, w in (('large', 5), ('medium', 6), ('small', 5)))
        sb, se, sg = stats(runs_b, runs_e, lambda r: r['per_combination'][key][metric])
        gains[key] = sg.mean
        rows.append((marks, runs_b[0]['per_combination'][key]['count'], sb, se, sg))
    sb, se, sg = stats(runs_b, runs_e, lambda r: r[metric])
    table = _columns([f'{"Large":>5} {"Medium":>6} {"Small":>5}', 'images', base, elastic, 'gain', 'relative'],
                     [[label, str(count), *_cells(sb_, se_, sg_)] for label, count, sb_, se_, sg_ in rows]
                     + [None, [f'{"all":>18}', str(runs_b[0]['count']), *_cells(sb, se, sg)]], [0, 0, *_floors(n)])
    lines += table + ['']
    if gains:
        lines.append(_reading(gains, base, elastic, n))
    lines.append(_conclusion(sb, se, sg, [e[metric] - b[metric] for b, e in zip(runs_b, runs_e)], base, elastic,
                             label))
    if all('stress' in r for r in runs_b + runs_e):
        from .stress import format_stress
        per_seed = ', each seed\'s 100 (Elastic - twin) / twin' if n > 1 else ''
        lines += ['', f'Scale stress test (paper Fig. 7): the last checkpoints at other test sizes, {elastic}\'s '
                  f'improvement relative to {base}{per_seed}; {over}:', '',
                  format_stress(stress_relative(results, base, elastic))]
    lines.append(f'Training took {sum(r["seconds"] for r in runs_b):.0f} s ({base}) and '
                 f'{sum(r["seconds"] for r in runs_e):.0f} s ({elastic}) in all.')
    return '\n'.join(lines)


def _table3(runs_b, runs_e, base: str, elastic: str, over: str) -> List[str]:
    """Table 3's layout, one row per metric: each model's value and the gain (points) and relative gain."""
    lines = [f'Multi-label metrics (%) on the built-in {_split_words(runs_b[0])} ({runs_b[0]["count"]} images; paper '
             'Table 3: '
             f'F1-C is its F1-PerClass, F1-O its F1-Overall); {over}:', '']
    rows = [[LABELS[m], *_cells(*_stats(runs_b, runs_e, lambda r: r[m]))]
            for m in ('f1_c', 'f1_o', 'p_c', 'r_c', 'p_o', 'r_o', 'map')]
    return lines + _columns(['metric', base, elastic, 'gain', 'relative'], rows, [0, *_floors(len(runs_b))])


def _split_words(run: Dict[str, Any]) -> str:
    """The split a run was scored on, in words ('validation set'; 'training set' for --val-split train)."""
    split = run.get('split', 'validation')  # results of versions that did not record it: the default split
    return {'validation': 'validation set', 'train': 'training set'}.get(split, f'{split!r} split')


def _cells(sb: Spread, se: Spread, sg: Spread) -> List[str]:
    """A table row's values: each model's, the gain in points and relative to the twin's mean (mean gain / mean)."""
    relative = f'{100 * sg.mean / sb.mean:+.1f}%' if sb.mean else 'n/a'  # nothing to be relative to
    return [format(sb, '.2f'), format(se, '.2f'), format(sg, '+.2f'), relative]


def _floors(n: int) -> List[int]:
    """The least widths of the twin, Elastic, gain and relative columns: those of 'mean ± std' values for `n` > 1
    seeds, so that tables of one run line up with each other."""
    return [14 if n > 1 else 6] * 2 + [13 if n > 1 else 6] + [8]


def _columns(head: List[str], rows: List[Optional[List[str]]], floors: List[int]) -> List[str]:
    """Right-aligned columns, each as wide as its widest cell and at least its floor; None is a rule."""
    widths = [max(f, len(h), *(len(r[i]) for r in rows if r)) for i, (h, f) in enumerate(zip(head, floors))]

    def line(cells):
        return ' | '.join(f'{c:>{w}}' for c, w in zip(cells, widths))
    top = line(head)
    return [top, '-' * len(top)] + [line(r) if r else '-' * len(top) for r in rows]


def stress_relative(results: Dict[str, List[Dict[str, Any]]], base: str,
                    elastic: str) -> Dict[str, Dict[int, List[float]]]:
    """{metric: {size: [relative improvement (%) per seed]}} of the runs' stress tests (F1-O and F1-C)."""
    from .stress import relative_per_size, stress_metrics
    from .tasks import get_task
    return relative_per_size([(b['stress'], e['stress']) for b, e in zip(results[base], results[elastic])],
                             stress_metrics(get_task('multilabel')))


def _reading(gains: Dict[str, float], base: str, elastic: str, n: int) -> str:
    """The table in one sentence: on how many size combinations the Elastic model is ahead, and the
    combinations of its largest and smallest gain (every one that shares it, as printed)."""
    shown = {k: round(g, 2) for k, g in gains.items()}  # gains that print alike are alike here
    ahead = sum(g > 0 for g in shown.values())  # a gain printed +0.00 is no lead
    top, bottom = max(shown.values()), min(shown.values())
    averaged = f'Averaged over the {n} seeds, ' if n > 1 else 'In this run, '
    if top == bottom:  # no best nor worst
        return (f'{averaged}{elastic} is ahead of {base} on {ahead} of the {len(gains)} size combinations, by the same '
                f'{top:+.2f} points on each.')

    def named(value: float) -> str:
        ties = [k for k in gains if shown[k] == value]
        if len(ties) > 3:  # a list would be the table again
            return f'the other {len(ties)} combinations alike' if len(ties) == len(gains) - 1 else \
                f'{len(ties)} combinations alike'
        return ' and '.join(f'images with {_in_words(k)}' for k in ties) + (' alike' if len(ties) > 1 else '')
    return (f'{averaged}{elastic} is ahead of {base} on {ahead} of the {len(gains)} size combinations; its best is '
            f'{named(top)} ({top:+.2f} points), its worst {named(bottom)} ({bottom:+.2f}).')


def _conclusion(sb: Spread, se: Spread, sg: Spread, per_seed: List[float], base: str, elastic: str,
                label: str = 'top-1') -> str:
    """Whether the overall gain stands above the seed-to-seed noise: whether its 95% confidence interval, paired
    over the seeds (each seed trains both models on the same data: the per-seed gains are the sample; Student's
    t with n - 1 degrees of freedom), excludes 0. The models' own spreads do not enter: what moves both alike
    (a seed's draw) cancels in the gain."""
    head = f'Overall, {elastic} {sb.mean + sg.mean:.2f}% vs {base} {sb.mean:.2f}% {label}'
    if len(per_seed) == 1:
        return (f'{head} ({per_seed[0]:+.2f} points). One seed measures no spread, and the seed alone moves a '
                f'small model by points: run several (--seeds 0 1 2) before reading a winner into it.')
    n = len(per_seed)
    if len({round(g, 2) for g in per_seed}) == 1:  # the interval would have no width: nothing measured its noise
        return (f'{head}: a gain of {per_seed[0]:+.2f} points in each of the {n} seeds. Seeds that agree to the '
                'printed digit measure no spread (on a small evaluation set the scores move in coarse steps), so '
                'no interval can be drawn: run more seeds or more evaluation images before reading a winner into '
                'it.')
    half = t_quantile(0.95, n - 1) * sg.std / math.sqrt(n)
    low, high = sg.mean - half, sg.mean + half
    interval = (f"its 95% confidence interval (paired over the seeds; Student's t, {n - 1} degree"
                f'{"s" if n > 2 else ""} of freedom) is {low:+.2f} to {high:+.2f} points')
    verdict = (f'{interval}, which excludes 0: the difference stands above the noise of these runs'
               if low > 0 or high < 0 else
               f'{interval}, which holds 0: these runs do not tell the two models apart')
    return (f'{head}: a gain of {sg:+.2f} points over {n} seeds (per seed '
            f'{", ".join(f"{g:+.2f}" for g in per_seed)}); {verdict}.')
