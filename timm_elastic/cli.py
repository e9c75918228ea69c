"""The `timm-elastic` command. Argument parsing only; the work is done by the package's modules."""
import argparse
import fnmatch
import json
import os
import sys
from functools import partial
from typing import List, Optional

__all__ = ['main']


def _models(args: argparse.Namespace) -> int:
    import timm
    from .complexity import count_gmacs, count_params
    from .models import PAPER_ROWS, TWINS

    names = [n for n in PAPER_ROWS if fnmatch.fnmatch(n, args.filter)]
    twins = [(e, b) for e, b in TWINS.items() if fnmatch.fnmatch(e, args.filter) or fnmatch.fnmatch(b, args.filter)]
    if not names and not twins:
        print(f'timm-elastic models: no registered model matches {args.filter!r}; '
              f'registered: {", ".join([*PAPER_ROWS, *(n for pair in TWINS.items() for n in pair)])}', file=sys.stderr)
        return 2
    rows = []
    for name in names:
        paper = PAPER_ROWS[name]
        model = timm.create_model(name)
        row = dict(
            model=name, paper_row=paper.row, source=paper.source,
            params_m=count_params(model) / 1e6, paper_params_m=paper.params_m,
            gmacs=count_gmacs(model, (3, args.img_size, args.img_size)), paper_gmacs=paper.gmacs,
        )
        # DLA: the original code counts projections that it runs but never uses (models/dla.py)
        unused = getattr(model, 'unused_original_counts', None)
        params, gmacs = unused(args.img_size) if unused is not None else (0, 0.)
        if params:
            row.update(original_unused_params_m=params / 1e6, original_unused_gmacs=gmacs)
        rows.append(row)
    # the small twins, each at its own input size: the pair's counts in one row
    twin_rows = []
    for elastic, base in twins:
        row = dict(model=elastic, twin=base)
        for name, key in ((elastic, ''), (base, 'twin_')):
            model = timm.create_model(name)
            size = model.pretrained_cfg['input_size']
            row.update({f'{key}params_m': count_params(model) / 1e6, f'{key}gmacs': count_gmacs(model, size)})
        twin_rows.append(dict(row, img_size=size[1]))
    if args.json:  # one list: the paper's models (a paper_row), then the twins (a twin)
        print(json.dumps(rows + twin_rows, indent=2))
        return 0
    if rows:
        _print_paper_rows(rows, args.img_size)
    if twin_rows:
        print('\nSmall twins for training on a CPU (not in the paper): each Elastic model beside its non-Elastic twin, '
              'at its own input size.')
        for r in twin_rows:
            pe, ge, pb, gb = r['params_m'], r['gmacs'], r['twin_params_m'], r['twin_gmacs']
            print(f'{r["model"]:<22} {pe:.3f}M params, {ge * 1e3:.1f} MMACs at {r["img_size"]}x{r["img_size"]}; '
                  f'twin {r["twin"]}: {pb:.3f}M ({_diff(pe, pb).strip()}), {gb * 1e3:.1f} MMACs '
                  f'({_diff(ge, gb).strip()})')
    return 0


def _diff(ours: float, reference: float) -> str:
    return f'{100 * (ours / reference - 1):>+6.2f}%'


def _print_paper_rows(rows, img_size: int) -> None:
    print(f'Models registered in timm by timm-elastic: parameters and GMACs (multiply-adds) at '
          f'{img_size}x{img_size}, beside the paper\'s numbers or (source: original code) the original '
          f'implementation\'s model counted the same way (at 224x224).')
    header = (f'{"model":<22} {"paper row":<22} {"params (M)":>10} {"paper":>7} {"diff":>8} '
              f'{"GMACs":>7} {"paper":>6} {"diff":>8}  source')
    print(header)
    print('-' * len(header))
    for r in rows:
        mark = '*' if 'original_unused_params_m' in r else ' '
        print(f'{r["model"]:<22} {r["paper_row"]:<22} {r["params_m"]:>10.2f} {r["paper_params_m"]:>7.2f} '
              f'{_diff(r["params_m"], r["paper_params_m"])}{mark} {r["gmacs"]:>7.2f} {r["paper_gmacs"]:>6.2f} '
              f'{_diff(r["gmacs"], r["paper_gmacs"])}{mark}  {r["source"]}')
    marked = [r for r in rows if 'original_unused_params_m' in r]
    if marked:
        print('\n* The original DLA code builds, runs and counts projections whose outputs it never uses; ours '
              '(like timm\'s DLA)\n  leave them out. The same rows with them added back:')
        for r in marked:
            params = r['params_m'] + r['original_unused_params_m']
            gmacs = r['gmacs'] + r['original_unused_gmacs']
            print(f'  {r["model"]:<20} +{r["original_unused_params_m"]:.2f}M params = {params:.2f} '
                  f'({_diff(params, r["paper_params_m"]).strip()}), +{r["original_unused_gmacs"]:.2f} GMACs = '
                  f'{gmacs:.2f} ({_diff(gmacs, r["paper_gmacs"]).strip()})')


def _convert(args: argparse.Namespace) -> int:
    import warnings
    from .convert import CheckpointError
    from .hub import export_original

    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # timm's notices about the model being built
            done = export_original(args.checkpoint, args.out, arch=args.arch, force=args.force)
    except (CheckpointError, FileExistsError, FileNotFoundError, ValueError, OSError) as e:
        return _fail('convert', e)
    name = f'{done.model}.{done.tag}' if done.tag else done.model
    print(f'converted original {done.arch} -> {name} ({done.params / 1e6:.2f}M parameters, '
          f'{done.num_classes} classes)')
    print(f'wrote {done.path}: {", ".join(sorted(os.listdir(done.path)))}')
    if done.arch.startswith('seg_'):  # a PASCAL VOC segmentation release: not a timm classifier
        print(f"load it with timm_elastic.segmentation.create_model('local-dir:{done.path}')")
    else:
        print(f"load it with timm.create_model('local-dir:{done.path}', pretrained=True)")
    if done.repo_id:
        print(f'it is the folder of the Hub repository {done.repo_id}: '
              f'hf upload {done.repo_id} {done.path}')
    return 0


def _fail(command: str, error: Exception) -> int:
    from ._io import OutputExistsError
    message = str(error.message('--force') if isinstance(error, OutputExistsError) else error)
    if '\nOriginal Traceback' in message:  # raised in a DataLoader worker: its last line is the error
        message = message.rstrip().splitlines()[-1].split(': ', 1)[-1]
    print(f'timm-elastic {command}: error: {message}', file=sys.stderr)
    return 2


def _logging() -> None:
    import logging
    from timm.utils import setup_default_logging
    setup_default_logging()
    # timm's saver logs its whole list of checkpoints after every epoch; the files are in the output folder
    logging.getLogger('timm.utils.checkpoint_saver').setLevel(logging.WARNING)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that gives the flags left unset the defaults of their command and --task (the
    command's `fill_defaults`), so that the parsed arguments are complete wherever they are parsed."""

    def parse_known_args(self, args=None, namespace=None):
        parsed, rest = super().parse_known_args(args, namespace)
        fill = getattr(parsed, 'fill_defaults', None)
        if fill is not None:
            fill(parsed)
        return parsed, rest


def _validate_defaults(args: argparse.Namespace) -> None:
    if args.batch_size is None:  # a 513-pixel crop takes 30 times the memory of a 224-pixel image
        args.batch_size = 16 if args.task == 'segment' else 128


def _train_defaults(args: argparse.Namespace, compare: bool) -> None:
    """The training flags left unset (None) get the defaults of the command and its --task: the small twins'
    recipe on the built-in data, or, for `train --task segment`, the original's PASCAL VOC recipe."""
    values = dict(model='resnext_tiny_elastic', opt='adamw', lr=4e-3 if compare else 2e-3, weight_decay=0.05,
                  sched='cosine', decay_rate=0.1, sched_on_updates=compare, epochs=2 if compare else 4,
                  batch_size=32)
    if args.task == 'segment':
        values['model'] = 'deeplabv3_' + values['model']
        if compare:  # (cli help of --bn-momentum and --train-num-samples says why)
            values.update(bn_momentum=0.1, train_num_samples=None if args.data_dir else 2000)
        else:
            from .tasks.segmentation import original_recipe
            values.update(original_recipe(args.model or values['model']))
    for name, value in values.items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def _train(args: argparse.Namespace) -> int:
    from .train import UsageError, train
    _logging()
    try:
        train(args)
    except UsageError as e:
        return _fail('train', e)
    return 0


def _validate(args: argparse.Namespace) -> int:
    from ._io import write_json
    from .train import UsageError, validate
    try:
        metrics = validate(args)
    except UsageError as e:
        return _fail('validate', e)
    if getattr(args, 'rank', 0) != 0:  # the other processes of a torchrun
        return 0
    _print_eval(metrics)
    if args.results_file:
        write_json(args.results_file, metrics)
    return 0


def _compare(args: argparse.Namespace) -> int:
    from ._io import write_json
    from .compare import compare, format_comparison, runs_folder
    from .train import UsageError
    _logging()
    try:
        results = compare(args)
    except UsageError as e:
        return _fail('compare', e)
    twin, elastic = results
    folder = runs_folder(results)
    if folder:  # the first process of a torchrun
        print()
        print(format_comparison(results, twin, elastic, args.task))
        if all('stress' in r for r in results[twin] + results[elastic]):
            from .compare import stress_relative
            from .report.plots import plot_stress
            try:
                plot = plot_stress(stress_relative(results, twin, elastic), os.path.join(folder, 'stress.png'),
                                   f'{elastic} over {twin}\nrelative improvement per test size (paper Fig. 7)')
                print(f'The stress test as a bar chart (Fig. 7): {plot}')
            except ImportError as e:  # the analysis extra is optional: the table above has the numbers
                print(f'No bar chart of the stress test (stress.png): {e}')
        stats = [os.stat(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files]
        size = sum({(st.st_dev, st.st_ino): st.st_size for st in stats}.values())  # model_best is a hard link
        print(f"Every run's checkpoints and summary.csv: {folder}/seed<N>/<model>/; the metrics: "
              f'{folder}/compare.json ({size / 1e6:.0f} MB in all)')
        if args.results_file:
            write_json(args.results_file, results)
    return 0


def _policy(args: argparse.Namespace) -> int:
    from .report.demo import run
    from .train import UsageError
    try:
        done = run(args)
    except (UsageError, ImportError) as e:
        return _fail('policy', e)
    print(f'{done["model"]}: top-1 {done["top1"]:.2f}% on {done["images"]} images at {done["size"][0]}x'
          f'{done["size"][1]}, scale policy over '
          f'{done["blocks"]} Elastic blocks' + (f'; {done["baseline"]}: top-1 {done["baseline_top1"]:.2f}%'
                                                if done['baseline'] else ''))
    print(f'wrote {done["folder"]}: {", ".join(done["files"])}')
    if done['no_ranking']:
        print(f'no class ranking (class_ranking.png): {done["no_ranking"]}')
    if done['no_embedding']:
        print(f'no t-SNE plots (embedding_*.png, strip.png, improvement.png): {done["no_embedding"]}')
    if done['perplexity'] is not None:
        print(f't-SNE perplexity {done["perplexity"]:.4g}, (N - 1) / 3 for the {done["images"]} images: '
              f'--perplexity {args.perplexity:g} needs more than {3 * args.perplexity:g}')
    print(f'open {os.path.join(done["folder"], "policy.html")} in a browser')
    return 0


def _stress(args: argparse.Namespace) -> int:
    from .stress import format_stress, run
    from .train import UsageError
    try:
        done = run(args)
    except (UsageError, ImportError) as e:
        return _fail('stress', e)
    if getattr(args, 'rank', 0) != 0:
        return 0
    from .tasks import get_task
    task = get_task(done['task'])
    for role, per_size in done['metrics'].items():
        for size, m in per_size.items():
            print(f'{done[role]} at {size}x{size}: {task.line(m)} ({m["count"]} images)')
    if 'relative' in done:
        print()
        print(f'{args.model} relative to {args.baseline} per test size (paper Fig. 7):')
        print(format_stress({m: {s: [v] for s, v in r.items()} for m, r in done['relative'].items()}))
    for f in done['files']:
        print(f'wrote {f}')
    return 0


def _print_eval(m: dict) -> None:
    from .tasks import get_task
    task = get_task(m['task'])
    print(f'{m["model"]}: {task.line(m)} ({m["count"]} images at {m["img_size"]}x{m["img_size"]})')
    for line in task.detail_lines(m):
        print(f'  {line}')
    for name, row in m.get('per_combination', {}).items():
        print(f'  objects {name:<22} {task.combination_line(row)}  ({row["count"]} images)')


def _data(args: argparse.Namespace) -> int:
    from .data import write_image_folder
    try:
        path = write_image_folder(
            args.out, num_samples={'train': args.train_num_samples, 'validation': args.val_num_samples},
            img_size=args.img_size, seed=args.data_seed, force=args.force)
    except (FileExistsError, ValueError, OSError, MemoryError) as e:  # MemoryError: a huge --img-size
        return _fail('data', e)
    print(f'wrote {path}: train/ and validation/ image folders (one folder per class) and objects.csv '
          f'(the object sizes of every image); timm reads it with --data-dir {path}')
    return 0


def _run(args: argparse.Namespace) -> int:
    import runpy
    import zipfile
    import timm_elastic  # noqa: F401  (registers the models, whatever TIMM_ELASTIC_AUTOLOAD says)
    if args.target is None:
        return _fail('run', ValueError('name the script to run (or, with -m, the module): timm-elastic run SCRIPT '
                                       '[ARGS ...]'))
    if args.module:
        import importlib.util
        if not getattr(sys.flags, 'safe_path', False):  # python -m finds modules in the working folder (not with -P)
            sys.path.insert(0, os.getcwd())
        try:
            found = importlib.util.find_spec(args.target) is not None
        except ImportError:  # a parent package that is not there
            found = False
        if not found:
            return _fail('run', ModuleNotFoundError(f'no module named {args.target!r}'))
        sys.argv = [args.target, *args.args]
        runpy.run_module(args.target, run_name='__main__', alter_sys=True)
        return 0
    if not os.path.exists(args.target):
        return _fail('run', FileNotFoundError(f'script {args.target!r} does not exist'))
    path = os.path.abspath(args.target)  # the script's __file__, absolute as python gives it
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, '__main__.py')):
        return _fail('run', FileNotFoundError(f'folder {args.target!r} has no __main__.py to run'))
    sys.argv = [args.target, *args.args]
    if os.path.isfile(path) and not zipfile.is_zipfile(path):  # a folder or a zip archive: runpy puts it on sys.path
        sys.path.insert(0, os.path.dirname(path))
    runpy.run_path(path, run_name='__main__')
    return 0


def _floats(n: int, name: str):
    return dict(type=float, nargs=n, metavar=name)


def _add_data_args(p: argparse.ArgumentParser, training: bool, builtin_only: bool = False) -> None:
    """`builtin_only`: a command on the built-in data alone (compare): --data-dir and the flags of a dataset read
    from it are parsed (to be refused with a reason) but not offered in its help."""
    g = p.add_argument_group('data (the built-in scale-challenging dataset)' if builtin_only else
                             'data (without --data-dir: the built-in scale-challenging dataset)')

    def offered(text: str) -> str:
        return argparse.SUPPRESS if builtin_only else text
    g.add_argument('--data-dir', metavar='DIR', default=None,
                   help=offered("dataset root, read by timm's create_dataset (e.g. an image folder with train/ and "
                                "validation/ subfolders); default: the built-in dataset, generated in memory"))
    g.add_argument('--dataset', metavar='NAME', default='',
                   help=offered("timm dataset type for --data-dir ('' for an image folder, 'torch/cifar10', "
                                "'hfds/...'); 'scaleshapes' (the built-in one) is the default without --data-dir"))
    g.add_argument('--dataset-download', action='store_true',
                   help=offered('download a torch/ or tfds/ dataset into --data-dir if it is not there (timm\'s '
                                'flag)'))
    if training:
        g.add_argument('--train-split', metavar='NAME', default='train', help='training split (default: train)')
        g.add_argument('--val-split', metavar='NAME', default='validation',
                       help='validation split (default: validation)')
        g.add_argument('--train-num-samples', type=int, metavar='N', default=None,
                       help='images in the built-in training split, or of an iterable timm dataset (tfds/, wds/, '
                            'hfids/); other --data-dir data is read whole (default: its default size, 6000; compare '
                            '--task segment: 2000, so that its six runs take under 5 minutes on 2 CPU cores)')
    else:
        g.add_argument('--split', dest='val_split', metavar='NAME', default='validation',
                       help='split to evaluate (default: validation)')
    g.add_argument('--val-num-samples', type=int, metavar='N', default=None,
                   help='images in the built-in validation split, or of an iterable timm dataset (default: its '
                        'default size)')
    g.add_argument('--data-seed', type=int, metavar='N', default=0,
                   help='seed that generates the built-in dataset (default: 0)')


def _add_task_arg(p: argparse.ArgumentParser, segment: bool = True, builtin_only: bool = False) -> None:
    """`builtin_only`: a command on the built-in data alone (compare), whose help names no --data-dir layout."""
    from .tasks import TASKS
    coco = (", or MS COCO's layout in --data-dir (annotations/instances_<split>.json, <split>/ images; splits train "
            '/ val or train2014 / val2014 ...)') if not builtin_only else ''
    voc = (', or a VOC folder in --data-dir (JPEGImages/, SegmentationClass/, ImageSets/Segmentation/<split>.txt; '
           'splits train_aug / val ...)') if not builtin_only else ''
    p.add_argument('--task', choices=TASKS if segment else tuple(t for t in TASKS if t != 'segment'),
                   default='classify',
                   help='classify: one class per image (default); multilabel: a 0/1 target per class, binary '
                        "cross-entropy, F1 per class and overall and mAP (the paper's MS COCO experiment, Sec. 4.2): "
                        f"the built-in data's multi-label mode{coco}"
                        + ("; segment: a class per pixel, mIoU (the paper's PASCAL VOC experiment, Sec. 4.3) with "
                           "the models deeplabv3_<backbone> / dlaup_<backbone>: the built-in data's masks" + voc
                           if segment else ''))


def _add_model_args(p: argparse.ArgumentParser, default_model: Optional[str], segment: bool = True) -> None:
    g = p.add_argument_group('model')
    g.add_argument('--model', metavar='NAME', default=None,
                   help='any timm model name, e.g. resnext50_elastic (timm-elastic models lists ours); '
                        + ('--task segment: deeplabv3_<backbone> or dlaup_<backbone>; ' if segment else '')
                        + 'default: '
                        + (f'{default_model} (--task segment: deeplabv3_{default_model})' if default_model
                           else 'the model that --checkpoint records'))
    g.add_argument('--pretrained', action='store_true', help="start from the model's pretrained weights")
    g.add_argument('--num-classes', type=int, metavar='N', default=None,
                   help='classifier size (default: the number of classes of the data)')
    g.add_argument('--in-chans', type=int, metavar='N', default=None, help='input channels (default: 3)')
    g.add_argument('--img-size', type=int, metavar='N', default=None,
                   help="input image size (default: the model's, 64 for the small twins, 224 for the paper's)")
    g.add_argument('--input-size', type=int, nargs=3, metavar=('C', 'H', 'W'), default=None,
                   help='input size as C H W (overrides --img-size)')
    g.add_argument('--crop-pct', type=float, metavar='F', default=None, help='evaluation center-crop fraction')
    g.add_argument('--mean', **_floats('+', 'M'), default=None, help='normalisation mean per channel')
    g.add_argument('--std', **_floats('+', 'S'), default=None, help='normalisation std per channel')
    g.add_argument('--interpolation', metavar='NAME', default='', help='resize interpolation (default: the model\'s)')
    g.add_argument('--elastic-ratio', type=float, metavar='F', default=None,
                   help='Elastic models: fraction of paths at low resolution (paper Table 7; default 0.5)')
    g.add_argument('--elastic-resample', metavar='MODE', default=None,
                   help='Elastic models: down/up-sampling of Table 6: bilinear (default), nearest, filter, '
                        'dilated, dilated_avg')


def _add_eval_model_args(p: argparse.ArgumentParser, segment: bool = True) -> None:
    """A trained model to evaluate (validate, policy): the data, the model and its weights."""
    _add_data_args(p, training=False)
    _add_model_args(p, None, segment)
    p.add_argument('--checkpoint', metavar='PATH', default='',
                   help='weights to evaluate: a training checkpoint (of timm-elastic train or timm\'s train.py); '
                        'it records its --model. Without it, --pretrained is required')
    p.add_argument('--use-ema', action='store_true', help="evaluate the checkpoint's EMA weights")


def _add_run_args(p: argparse.ArgumentParser, batch_size: Optional[int], compare: bool = False,
                  default_help: str = '') -> None:
    g = p.add_argument_group('device and precision')
    g.add_argument('-b', '--batch-size', type=int, metavar='N', default=batch_size,
                   help=f'batch size per process (default: {default_help or batch_size})')
    g.add_argument('-j', '--workers', type=int, metavar='N', default=0,
                   help='data loading processes per training process (default: 0: the built-in data is then '
                        'rendered once and kept in memory; use 4 or more for image folders)')
    g.add_argument('--device', metavar='DEV', default=None, help='cpu or cuda (default: cuda when available)')
    g.add_argument('--amp', action='store_true', help='mixed precision (autocast)')
    g.add_argument('--amp-dtype', choices=('float16', 'bfloat16'), default=None,
                   help='autocast type (default: float16 on CUDA, with a loss scaler; bfloat16 on the CPU)')
    # compare: the twins train ~1.3x faster in channels_last on the CPU (oneDNN)
    g.add_argument('--channels-last', action=argparse.BooleanOptionalAction, default=compare,
                   help=f'channels_last memory layout (default: {"on" if compare else "off"})')
    g.add_argument('--no-progress', dest='progress', action='store_false', help='no progress bars')


def _add_train_args(p: argparse.ArgumentParser, compare: bool = False) -> None:
    # compare: what its user reads is the table: fewer files kept, no per-batch log lines; and it trains
    # 2 models x 3 seeds, so fewer epochs each (the built-in classes are learnt within 2) at a higher lr
    # (4e-3 took the twins 4-5 points further than 2e-3 in those 2 epochs), decayed every update so that each
    # run ends at the bottom of its schedule
    hist, log_interval, epochs, lr = (1, 0, 2, 4e-3) if compare else (3, 50, 4, 2e-3)
    # the defaults of the flags that default to None here are filled in by _train_defaults
    seg = '' if compare else "; --task segment: the original's, "
    _add_task_arg(p, builtin_only=compare)
    _add_data_args(p, training=True, builtin_only=compare)
    _add_model_args(p, 'resnext_tiny_elastic')
    g = p.add_argument_group('checkpoints and output')
    # compare parses them to refuse them with the reason (each model of the pair starts from scratch), unoffered
    g.add_argument('--initial-checkpoint', metavar='PATH', default='',
                   help=argparse.SUPPRESS if compare else
                   'start from these weights (a timm or timm-elastic checkpoint)')
    g.add_argument('--resume', metavar='PATH', default='',
                   help=argparse.SUPPRESS if compare else
                   'continue a run from its checkpoint (e.g. OUTPUT/EXPERIMENT/last.pth.tar): weights, optimizer, EMA '
                   'and epoch; with the same flags the losses are those of an uninterrupted run')
    g.add_argument('--output', metavar='DIR', default='', help='output root (default: ./output/train)')
    g.add_argument('--experiment', metavar='NAME', default='',
                   help=('folder of the runs under --output (default: compare-DATE-TIME); seed<N>/<model>/ in it for '
                         'each run, and compare.json' if compare else
                         'run folder under --output (default: that of --resume\'s checkpoint when it lies in --output, '
                         'else date-time-model-size); checkpoints and summary.csv'))
    g.add_argument('--checkpoint-hist', type=int, metavar='N', default=hist,
                   help=f'best checkpoints kept besides last.pth.tar (default: {hist})')
    g.add_argument('--eval-metric', default=None, choices=('top1', 'top5', 'map', 'f1_o', 'f1_c', 'miou', 'loss'),
                   help='metric that ranks checkpoints (default: top1; --task multilabel: map; --task segment: miou; '
                        "top1 and top5 are classify's, map, f1_o and f1_c multilabel's, miou segment's)")
    g.add_argument('--log-interval', type=int, metavar='N', default=log_interval,
                   help=f'log every N batches (default: {log_interval}; 0: never)')
    if compare:
        from .compare import DEFAULT_SEEDS
        seeds = ' '.join(map(str, DEFAULT_SEEDS))
        g.add_argument('--seeds', type=int, nargs='+', metavar='N', default=list(DEFAULT_SEEDS),
                       help='train both models once per seed (initial weights, data order, augmentation; the data '
                            f'stays the same) and report mean and spread (default: {seeds})')
    else:
        g.add_argument('--seed', type=int, metavar='N', default=42, help='random seed (default: 42)')
    g = p.add_argument_group('optimizer and schedule (timm create_optimizer_v2 / create_scheduler_v2)')
    g.add_argument('--opt', metavar='NAME', default=None,
                   help=f"optimizer (default: adamw{seg and seg + 'momentum'}; the paper's ImageNet recipe: --opt "
                        "momentum --lr 0.1 --weight-decay 1e-4; timm's sgd is SGD with Nesterov momentum)")
    g.add_argument('--lr', type=float, metavar='LR', default=None,
                   help=f'learning rate (default: {lr:g}{seg and seg + "0.007"})')
    g.add_argument('--momentum', type=float, metavar='M', default=0.9, help='SGD momentum (default: 0.9)')
    g.add_argument('--weight-decay', type=float, metavar='WD', default=None,
                   help=f'weight decay (default: 0.05{seg and seg + "5e-4, 1e-4 for dlaup_ models"})')
    g.add_argument('--clip-grad', type=float, metavar='NORM', default=None, help='clip the gradient norm')
    g.add_argument('--sched', metavar='NAME', default=None,
                   help="lr schedule: cosine (default), step, multistep (the paper's: --decay-milestones 31 61 91), "
                        f"poly (--decay-rate is its power), plateau, none...{seg and seg + 'poly, power 0.9, per update'}")
    g.add_argument('--epochs', type=int, metavar='N', default=None,
                   help=f'epochs (default: {epochs}{seg and seg + "50"}; one takes 15-30 s for a small twin on the '
                        'built-in data on 2 CPU cores)')
    g.add_argument('--decay-epochs', type=float, metavar='N', default=30, help='step schedule period (default: 30)')
    g.add_argument('--decay-milestones', type=int, nargs='+', metavar='E', default=[31, 61, 91],
                   help='multistep schedule: timm lowers the lr from epoch E - 1, counted from 0 (default: 31 61 91, '
                        'the paper\'s: the original lowers it from epochs 30, 60, 90)')
    g.add_argument('--decay-rate', type=float, metavar='R', default=None,
                   help=f'lr decay factor, the power of --sched poly (default: 0.1{seg and seg + "0.9"})')
    g.add_argument('--warmup-epochs', type=int, metavar='N', default=0, help='linear warm-up epochs (default: 0)')
    g.add_argument('--warmup-lr', type=float, metavar='LR', default=1e-5, help='warm-up start lr (default: 1e-5)')
    g.add_argument('--min-lr', type=float, metavar='LR', default=0., help='lowest lr of the schedule (default: 0)')
    per_update = 'on: in 2 epochs a per-epoch cosine never gets below half the lr' if compare else 'off, as timm'
    g.add_argument('--sched-on-updates', action=argparse.BooleanOptionalAction, default=None,
                   help=f'step the schedule every update, not every epoch (default: {per_update}{seg and seg + "on"})')
    g = p.add_argument_group('augmentation and regularisation (timm create_loader, Mixup)')
    g.add_argument('--no-aug', action='store_true', help='no training augmentation')
    g.add_argument('--scale', **_floats(2, 'S'), default=None,
                   help="random-resized-crop area range (default: timm's 0.08 1.0; 1 1 on the built-in data and on its "
                        "image folder from timm-elastic data, where a crop would move objects between the size "
                        "buckets); --task segment: the range of the random "
                        "rescale factor (default: the original's 0.5 2)")
    g.add_argument('--ratio', **_floats(2, 'R'), default=None,
                   help="random-resized-crop aspect range (default: timm's 3/4 4/3; 1 1 on the built-in data and its "
                        "image folder)")
    g.add_argument('--hflip', type=float, metavar='P', default=0.5, help='horizontal flip probability (default: 0.5)')
    g.add_argument('--vflip', type=float, metavar='P', default=0., help='vertical flip probability (default: 0)')
    g.add_argument('--color-jitter', type=float, metavar='F', default=0.,
                   help='colour jitter (default: 0; the paper uses no colour augmentation)')
    g.add_argument('--mixup', type=float, metavar='A', default=0., help='mixup alpha (default: 0, off)')
    g.add_argument('--cutmix', type=float, metavar='A', default=0., help='cutmix alpha (default: 0, off)')
    g.add_argument('--smoothing', type=float, metavar='F', default=0., help='label smoothing (default: 0)')
    g.add_argument('--drop', type=float, metavar='P', default=0., help='dropout before the classifier')
    g.add_argument('--drop-path', type=float, metavar='P', default=None, help='stochastic depth rate')
    g.add_argument('--bn-momentum', type=float, metavar='M', default=None,
                   help="--task segment: the momentum of every BatchNorm's running statistics (default: the "
                        "original's, 0.05 in DeepLabV3's backbone and 0.0003 in its head, made for 33,000 iterations"
                        + ('; compare: 0.1, for its runs of a few hundred iterations, where 0.0003 leaves the '
                           "statistics that evaluation uses near their initial values)" if compare else ')'))
    g.add_argument('--model-ema', action='store_true', help='keep an exponential moving average of the weights')
    g.add_argument('--model-ema-decay', type=float, metavar='D', default=0.998, help='EMA decay (default: 0.998)')
    _add_run_args(p, batch_size=None, compare=compare, default_help=f'32{seg and seg + "16"}')
    g.add_argument('-vb', '--validation-batch-size', type=int, metavar='N', default=None,
                   help='evaluation batch size (default: --batch-size)')
    g.add_argument('--torchcompile', nargs='?', const='inductor', default=None, metavar='BACKEND',
                   help='torch.compile the model (backend default: inductor)')
    g = p.add_argument_group('distributed (run under torchrun --nproc-per-node N)')
    g.add_argument('--sync-bn', action='store_true', help='synchronised BatchNorm across processes')
    g.add_argument('--dist-bn', default='reduce', choices=('reduce', 'broadcast', ''),
                   help='BatchNorm statistics across processes after each epoch (default: reduce)')
    g.add_argument('--dist-backend', metavar='NAME', default=None,
                   help='torch.distributed backend (default: nccl on CUDA, gloo on the CPU)')


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog='timm-elastic',
        description='ELASTIC (Wang et al., CVPR 2019) models for timm. Every model is also available '
                    'through timm.create_model(NAME) once timm_elastic is imported.')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    sub.required = True

    p = sub.add_parser(
        'models', help='list the registered models (Elastic and faithful baselines) with their parameters and GMACs',
        description='Build every model this package registers in timm (the Elastic models and the faithful '
                    'baselines) and print its parameter count and multiply-adds beside the numbers of the '
                    'paper / original code.')
    p.add_argument('--filter', default='*', metavar='PATTERN',
                   help="only models whose name matches this wildcard pattern, e.g. 'resnext*' (default: all)")
    p.add_argument('--img-size', type=int, default=224, metavar='N',
                   help='square input size for counting multiply-adds (default: 224, as in the paper)')
    p.add_argument('--json', action='store_true', help='print the rows as JSON instead of a table')
    p.set_defaults(func=_models)

    p = sub.add_parser(
        'convert', help="convert an original ELASTIC checkpoint into a timm model folder for the Hugging Face Hub",
        description="Convert a checkpoint released with the original ELASTIC code (allenai/elastic: "
                    "<arch>.pth.tar for ImageNet, coco_<arch>.pth.tar for MS COCO) into the timm model that "
                    "computes the same outputs, and write the folder of its Hub repository: config.json (timm's "
                    "format), model.safetensors and a README.md model card. The checkpoint is read with "
                    "torch.load(weights_only=True) and never modified.",
        epilog="example: timm-elastic convert dla60x_elastic.pth.tar --out dla_x60_elastic.in1k")
    p.add_argument('checkpoint', metavar='CKPT', help='the original checkpoint file (.pth.tar)')
    p.add_argument('--arch', metavar='A', default=None,
                   help='original architecture name, e.g. dla60x_elastic (default: inferred from the keys)')
    p.add_argument('--out', metavar='DIR', required=True, help='the folder to write (must not exist, see --force)')
    p.add_argument('--force', action='store_true', help='replace DIR if it already exists')
    p.set_defaults(func=_convert)

    p = sub.add_parser(
        'compare', help='the main job: train a small Elastic model and its non-Elastic twin on the built-in data, '
                        'and print accuracy per object-size combination (paper Table 4)',
        description="Train a small Elastic model and its non-Elastic twin (the same parameters and multiply-adds "
                    "within a few percent; timm-elastic models lists the pairs) with the same recipe on the built-in "
                    "scale-challenging dataset, once per seed (--seeds), then print top-1 for each combination of "
                    "small, medium and large objects side by side, as the paper's Table 4 does: mean and standard "
                    "deviation over the seeds, a reading of the table, and whether the Elastic model's gain "
                    "stands above the seed-to-seed noise (its 95% confidence interval, paired over the seeds, "
                    "excludes 0). Every run's checkpoints are kept for later analyses. "
                    "With the defaults (3 seeds, 2 epochs each) it takes about 3 minutes on 2 CPU cores. Every "
                    "train flag applies to both models.",
        epilog='example: timm-elastic compare --seeds 0 1 2 3 4 --epochs 6 --output runs/compare')
    _add_train_args(p, compare=True)
    p.add_argument('--stress-sizes', type=int, nargs='*', metavar='N', default=None,
                   help="--task multilabel: test sizes of the stress test (Fig. 7; default: the paper's 96 224 448 "
                        'scaled to the training size, at least 32: 32 64 128 for the built-in data; its 896, 256 '
                        'here, takes 16 evaluations\' time); with no value, no stress test')
    p.set_defaults(func=_compare, fill_defaults=partial(_train_defaults, compare=True))
    p.add_argument('--results-file', metavar='PATH', default='', help='also write both models\' results as JSON')

    p = sub.add_parser(
        'train', help="train a model with timm's components (timm train.py's flag names)",
        description="Train any timm model, the Elastic ones included, with timm's library components and the flag "
                    "names of timm's train.py. Without --data-dir it trains on the built-in scale-challenging "
                    "dataset and reports top-1 per object-size combination. Each epoch appends a row to "
                    "OUTPUT/EXPERIMENT/summary.csv and writes last.pth.tar atomically; --resume continues exactly. "
                    "Multi-process: torchrun --nproc-per-node N $(which timm-elastic) train ...",
        epilog='example: timm-elastic train --model resnext_tiny_elastic --epochs 6 --output runs --experiment tiny')
    _add_train_args(p)
    p.set_defaults(func=_train, fill_defaults=partial(_train_defaults, compare=False))

    p = sub.add_parser(
        'validate', help='evaluate a model: top-1 and top-5 (F1 and mAP, mIoU), per object-size combination too',
        description="Evaluate a model on a dataset split with timm's loaders: loss, top-1 and top-5, and, on the "
                    "built-in dataset (or an image folder written by timm-elastic data), top-1 per combination of "
                    "object sizes; --task multilabel: F1 per class and overall and mAP (per combination on MS COCO "
                    "and the built-in data too); --task segment: mIoU.",
        epilog='examples: timm-elastic validate --checkpoint runs/tiny/model_best.pth.tar; '
               'timm-elastic validate --model resnext50_elastic --pretrained --data-dir /data/imagenet --split val')
    _add_task_arg(p)
    _add_eval_model_args(p)
    p.add_argument('--results-file', metavar='PATH', default='',
                   help='also write the results as JSON (every metric, per object-size combination too)')
    _add_run_args(p, batch_size=None, default_help='128; --task segment: 16')
    p.set_defaults(func=_validate, fill_defaults=_validate_defaults)

    p = sub.add_parser(
        'policy', help="the scale policy demo: an Elastic model's per-image scale policy as an HTML page and plots",
        description="Score an Elastic model's scale policy (paper Sec. 4.1.1: S = A_high - A_low per Elastic block, "
                    "the mean activation after the ReLU that follows the 3x3 convolution at high minus low "
                    "resolution) on every image of a dataset split, and write OUT/policy.html, one self-contained "
                    "page (no network: images inline) with each image's class, prediction and policy strip, sorting "
                    "by class or by S at any block, a class filter and per-image details with both models' top-5 "
                    "(Appendix C); the plots of Figs. 5 and 6 as PNGs; and policy.json. Default data: the built-in "
                    "dataset's validation split; any image folder works (--data-dir).",
        epilog='example, after timm-elastic compare: timm-elastic policy --checkpoint '
               'output/train/compare-DATE/seed0/resnext_tiny_elastic/model_best.pth.tar --baseline resnext_tiny '
               '--baseline-checkpoint output/train/compare-DATE/seed0/resnext_tiny/model_best.pth.tar --out policy')
    _add_eval_model_args(p, segment=False)  # the page is of classifiers
    p.add_argument('--baseline', metavar='NAME', default=None,
                   help='a baseline model to compare predictions with (e.g. resnext_tiny, resnext50_32x4d)')
    p.add_argument('--baseline-checkpoint', metavar='PATH', default='', help=_BASELINE_CHECKPOINT_HELP)
    p.add_argument('--out', metavar='DIR', required=True,
                   help='folder for policy.html, the PNGs and policy.json (created; see --force)')
    p.add_argument('--force', action='store_true', help='replace DIR if it holds files')
    p.add_argument('--thumb-size', type=int, metavar='N', default=96,
                   help='longer side of the thumbnails in the page, in pixels (default: 96)')
    p.add_argument('--perplexity', type=float, metavar='F', default=30., help='t-SNE perplexity (default: 30)')
    p.add_argument('--seed', type=int, metavar='N', default=0, help='t-SNE seed (default: 0)')
    _add_run_args(p, batch_size=128)
    p.set_defaults(func=_policy)

    p = sub.add_parser(
        'stress', help='the scale stress test (paper Fig. 7): evaluate trained models at several test sizes',
        description="Evaluate a trained model (and a baseline) at test sizes it was not trained at, the whole "
                    "image resized to each square size (timm's models pool globally, so any size works), and print "
                    "the task's metrics per size and the relative improvement of --model over --baseline: F1-O and "
                    "F1-C for --task multilabel (the paper's Fig. 7: DLA-X60 on MS COCO, trained at 224, tested at "
                    "96, 224, 448 and 896), top-1 otherwise; --plot writes Fig. 7's bar chart.",
        epilog='example: timm-elastic stress --task multilabel --data-dir /data/coco --split val2014 --model '
               'dla_x60_elastic --checkpoint e.pth.tar --baseline dla_x60 --baseline-checkpoint b.pth.tar '
               '--plot fig7.png')
    _add_task_arg(p, segment=False)
    _add_eval_model_args(p, segment=False)
    p.add_argument('--baseline', metavar='NAME', default=None,
                   help='the baseline model to compare with (e.g. dla_x60); without it, --model alone is evaluated')
    p.add_argument('--baseline-checkpoint', metavar='PATH', default='', help=_BASELINE_CHECKPOINT_HELP)
    p.add_argument('--sizes', type=int, nargs='+', metavar='N', default=None,
                   help="square test sizes in pixels (default: the paper's 96 224 448 896 in proportion to the "
                        "model's input size: those for 224, 32 64 128 256 for the built-in data's 64)")
    p.add_argument('--plot', metavar='FILE', default='',
                   help='write the relative improvements as a bar chart, in the format of its extension (.png, .svg, '
                        '.pdf, ...; PNG without one)')
    p.add_argument('--results-file', metavar='PATH', default='',
                   help='also write every metric per model and size as JSON')
    _add_run_args(p, batch_size=128)
    p.set_defaults(func=_stress)

    p = sub.add_parser(
        'data', help='write the built-in scale-challenging dataset as an image folder for timm\'s scripts',
        description='Write the built-in dataset (deterministic, generated) as DIR/train/<class>/*.png and '
                    'DIR/validation/<class>/*.png, with DIR/objects.csv recording the object sizes of every image. '
                    "timm's train.py / validate.py read it with --data-dir DIR.")
    p.add_argument('--out', metavar='DIR', required=True, help='the folder to write (must not exist, see --force)')
    p.add_argument('--train-num-samples', type=int, metavar='N', default=None, help='training images (default: 6000)')
    p.add_argument('--val-num-samples', type=int, metavar='N', default=None,
                   help='validation images (default: 1400)')
    p.add_argument('--img-size', type=int, metavar='N', default=64, help='image size (default: 64)')
    p.add_argument('--data-seed', type=int, metavar='N', default=0, help='generator seed (default: 0)')
    p.add_argument('--force', action='store_true', help='replace DIR if it exists')
    p.set_defaults(func=_data)

    p = sub.add_parser(
        'run', help='run a Python script (e.g. timm\'s train.py) with the Elastic models registered',
        description="Run SCRIPT as `python SCRIPT ARGS...` would, after registering the Elastic models in timm. "
                    "Installing timm-elastic already registers them in any process that imports timm (unless "
                    "TIMM_ELASTIC_AUTOLOAD=0); this is the explicit way.",
        epilog='example: timm-elastic run train.py --model resnext50_elastic --data-dir /data/imagenet')
    p.add_argument('-m', dest='module', action='store_true', help='SCRIPT is a module name, as python -m')
    # optional to argparse, so that a missing SCRIPT is named alone (it listed ARGS as required too); _run asks for it
    p.add_argument('target', metavar='SCRIPT', nargs='?',
                   help='the script (a folder or zip archive with a __main__.py too; with -m, a module) to run')
    p.add_argument('args', nargs=argparse.REMAINDER, metavar='ARGS', help='its arguments')
    p.set_defaults(func=_run)
    return parser


# the integer flags' least values (32 pixels: the models' total stride), checked for every command that has them
# before any work; None is a flag left to its default
_AT_LEAST = (('img_size', '--img-size', 32), ('epochs', '--epochs', 1), ('batch_size', '-b/--batch-size', 1),
             ('validation_batch_size', '-vb/--validation-batch-size', 1), ('workers', '-j/--workers', 0),
             ('train_num_samples', '--train-num-samples', 1), ('val_num_samples', '--val-num-samples', 1),
             ('checkpoint_hist', '--checkpoint-hist', 1), ('log_interval', '--log-interval', 0),
             ('seed', '--seed', 0), ('data_seed', '--data-seed', 0))


def _check_integers(args: argparse.Namespace) -> None:
    for name, flag, least in _AT_LEAST:
        value = getattr(args, name, None)
        if value is not None and value < least:
            raise ValueError(f'{flag} must be at least {least}, got {value}')
    input_size = getattr(args, 'input_size', None)
    if input_size is not None and min(input_size[1:]) < 32:
        raise ValueError(f'--input-size H and W must be at least 32, got {input_size[1]} {input_size[2]}')


# policy's and stress's --baseline-checkpoint
_BASELINE_CHECKPOINT_HELP = ("the baseline's weights (without it: its pretrained weights, with --pretrained); with "
                             '--use-ema its EMA weights too (both models are scored alike, so it must hold them)')

# the inputs a written file must not replace: files of these flags, and anything in these folders
_INPUT_FILES = (('checkpoint', '--checkpoint'), ('baseline_checkpoint', '--baseline-checkpoint'),
                ('initial_checkpoint', '--initial-checkpoint'), ('resume', '--resume'))
_INPUT_FOLDERS = (('data_dir', '--data-dir'), ('model', '--model'), ('baseline', '--baseline'))


def _local_dir(name: Optional[str]) -> str:
    """The folder that a `local-dir:` model name names ('' for any other name, or None)."""
    return name[len('local-dir:'):] if name and name.startswith('local-dir:') else ''


def _check_not_an_input(flag: str, path: str, args: argparse.Namespace) -> None:
    """ValueError if the file `flag` writes at `path` is one that the command reads: a checkpoint flag's file, a
    file in --data-dir (an annotation file, an image) or in a `local-dir:` model folder of --model / --baseline."""
    if not os.path.isfile(path):
        return
    real = os.path.realpath(path)
    for name, source in _INPUT_FILES:
        given = getattr(args, name, '') or ''
        if given and os.path.isfile(given) and os.path.samefile(given, real):
            raise ValueError(f'{flag} {path!r} is the {source} file that this command reads; name another file')
    for name, source in _INPUT_FOLDERS:
        given = getattr(args, name, None) or ''
        folder = given if source == '--data-dir' else _local_dir(given)
        if folder and os.path.isdir(folder):
            root = os.path.realpath(folder)
            if os.path.commonpath([root, real]) == root:
                raise ValueError(f'{flag} {path!r} is a file in {source} {given!r}, which this command reads; name a '
                                 'file outside it')


def _check_replaceable(flag: str, path: str) -> None:
    """ValueError if --results-file names an existing file that is not JSON: it replaces a results file of an
    earlier run, as timm's validate.py does, but not a checkpoint, a summary.csv or an image of one."""
    if flag != '--results-file' or not os.path.isfile(path):
        return
    with open(path, 'rb') as f:
        head = f.read(64).lstrip()
    if os.path.getsize(path) and not head.startswith((b'{', b'[')):
        raise ValueError(f'{flag} {path!r} exists and is not a JSON results file; it would be replaced: name a new '
                         'file (or a results file of an earlier run)')


def _terminated(signum, frame):
    raise SystemExit(128 + signum)


# commands that work in one process: under torchrun every process would do the whole work (policy: each scored a
# share of the images, and all wrote the one --out)
_ONE_PROCESS = ('models', 'convert', 'policy', 'data')


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    world = os.environ.get('WORLD_SIZE', '1')
    if args.command in _ONE_PROCESS and world != '1':
        return _fail(args.command, ValueError(
            f'{args.command} runs in one process, not under torchrun (WORLD_SIZE {world}); the commands that use '
            'several are train, validate, compare and stress'))
    try:
        _check_integers(args)
    except ValueError as e:
        return _fail(args.command, e)
    for name in ('model', 'baseline'):  # recorded in checkpoints: a relative folder would not be found elsewhere
        folder = _local_dir(getattr(args, name, None))
        if folder:
            setattr(args, name, 'local-dir:' + os.path.abspath(folder))
    for flag, path in (('--results-file', getattr(args, 'results_file', '')), ('--plot', getattr(args, 'plot', ''))):
        # files written at the end: known before hours of work
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            return _fail(args.command, ValueError(f'{flag} {path!r}: its folder does not exist'))
        if path and os.path.isdir(path):
            return _fail(args.command, ValueError(f'{flag} {path!r} is a folder; name a file in it'))
        try:
            _check_not_an_input(flag, path, args)
            _check_replaceable(flag, path)
        except ValueError as e:
            return _fail(args.command, e)
    import signal

    import torch.distributed as dist
    had_group = dist.is_available() and dist.is_initialized()
    # a SIGTERM (kill, timeout, a scheduler's stop) unwinds as Ctrl-C does, so that what is half written (a staged
    # folder, a temporary file) is removed on the way out; Python's default ends the process where it stands.
    # `run` leaves signals to the script it runs; under torchrun, whose SIGTERM stops the other processes when one
    # fails, a process waiting in a collective would only see it when the wait returns
    alone = world == '1'
    previous = signal.signal(signal.SIGTERM, _terminated) if args.command != 'run' and alone else None
    try:
        code = args.func(args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    # a process group left to the interpreter's exit can abort the process (gloo: "terminate called without an
    # active exception", pytorch/pytorch#190489): end the one this command started, once it has succeeded (after
    # an error on one rank, ending it could wait on the others)
    if code == 0 and not had_group and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    return code


if __name__ == '__main__':
    sys.exit(main())
