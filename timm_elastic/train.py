"""Training and evaluation built from timm's library components (`timm-elastic train` / `validate`).

The loop is timm's `train.py` in small: `create_dataset` / `create_loader` / `resolve_data_config`,
Mixup / CutMix, `create_optimizer_v2`, `create_scheduler_v2`, autocast with `NativeScaler` (float16
on CUDA), `ModelEmaV3`, `CheckpointSaver`, `distribute_bn`, and `update_summary` for the per-epoch
`summary.csv`; the flags have the names of timm's `train.py`. The paper's ImageNet recipe (Sec. 4,
"Implementation details") is SGD, lr 0.1 divided by 10 at epochs 30, 60, 90 (the original code's epochs,
counted from 0; timm's multistep milestone m lowers it from epoch m - 1), random crops and no colour
augmentation: `--opt momentum --lr 0.1 --sched multistep --decay-milestones 31 61 91 --epochs 120
--color-jitter 0` (timm's `sgd` is SGD with Nesterov momentum, `momentum` without).

What it adds to timm's script:
- without `--data-dir` it trains on the built-in scale-challenging dataset (`timm_elastic.data`),
  and evaluation reports accuracy per combination of object sizes (the paper's Table 4);
- `--task` picks what is learnt and scored (`timm_elastic.tasks`): `classify` (single-label, the
  default), `multilabel` (the paper's MS COCO experiment: binary cross-entropy, F1 and mAP) or `segment`
  (its PASCAL VOC experiment: mIoU); the task object supplies the data reader, the loss, the per-image
  records and metrics, and the printed line (and may supply its own models and loaders: segment's take
  image / mask pairs), and everything else here is shared;
- exact resume: every epoch reseeds every random generator from (`--seed`, epoch, rank), the optimiser's
  own too (AdaHessian's), and data workers are recreated each epoch, so a run killed at any point and
  resumed from its last checkpoint computes the same losses as one that never stopped; checkpoints are
  replaced atomically (`AtomicCheckpointSaver`);
- bad arguments raise `UsageError`, which the command prints as one line.
Multi-process training runs under `torchrun` (DDP; gloo on CPU, NCCL on CUDA).
"""
import argparse
import copy
import csv
import io
import logging
import os
import sys
import time
from collections import OrderedDict
from contextlib import nullcontext
from functools import partial
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from ._io import first_names, fsync_dir, write_text
from .convert import error_line

__all__ = ['UsageError', 'AtomicCheckpointSaver', 'Progress', 'train', 'validate', 'evaluate', 'task_of']

_logger = logging.getLogger('timm_elastic.train')

BUILTIN = 'scaleshapes'  # --dataset name of the built-in data (the default without --data-dir)


class UsageError(ValueError):
    """A command-line argument that cannot work, named with what is accepted."""


def _timm_saver():
    from timm.utils import CheckpointSaver
    return CheckpointSaver


class AtomicCheckpointSaver(_timm_saver()):
    """timm's `CheckpointSaver` whose `last.pth.tar` is always a complete checkpoint.

    timm writes `tmp.pth.tar`, deletes `last.pth.tar`, then renames: a kill between the last two
    steps leaves no `last.pth.tar`, and an unflushed file may be empty after a crash. Here the new
    file is flushed to disk and renamed over the old one in one step (POSIX `rename` is atomic)."""

    def _replace(self, src, dst):
        with open(src, 'rb') as f:
            os.fsync(f.fileno())
        os.replace(src, dst)
        fsync_dir(os.path.dirname(os.path.abspath(dst)))


# ---------------------------------------------------------------------------------------------
# data

def task_of(args: argparse.Namespace):
    """The task object of `args.task` (`timm_elastic.tasks`; 'classify' where the command has no --task),
    made once per `args` (it keeps what it learns of the data, e.g. the class names, in `classes`)."""
    from .tasks import get_task
    name = getattr(args, 'task', None) or 'classify'
    task = getattr(args, '_task_object', None)
    if task is None or task.name != name:
        try:
            task = get_task(name)
        except ValueError as e:
            raise UsageError(str(e)) from None
        args._task_object = task
    return task


def _builtin_dataset(split: str, num_samples: Optional[int], seed: int, cache: bool, **kwargs):
    from .data import ScaleShapes
    try:
        return ScaleShapes(split=split, num_samples=num_samples, seed=seed, cache=cache, **kwargs)
    except ValueError as e:  # a split it does not have, says which it has
        raise UsageError(f'the built-in data: {e}') from None


# the folder names timm's create_dataset looks for a split under (its synonyms of train and of validation)
_SPLIT_SYNONYMS = (('train', 'training'), ('val', 'valid', 'validation', 'eval', 'evaluation'))
_SPLIT_FOLDERS = (*(name for group in _SPLIT_SYNONYMS for name in group), 'test')  # test's too


def _check_split_folder(data_dir: str, split: str) -> None:
    """timm's create_dataset reads the whole --data-dir as the split when it finds no folder for the split's name
    (or a synonym): meant for a folder of class folders, but a mistyped split of a folder with split folders
    then read every split as one (a validation that scored the training images too). Refused in that case."""
    name = split.split('[')[0]
    synonyms = [name]
    for group in _SPLIT_SYNONYMS:
        if name in group:
            synonyms += group
    if any(os.path.exists(os.path.join(data_dir, s)) for s in synonyms):
        return
    held = sorted(f for f in os.listdir(data_dir) if f in _SPLIT_FOLDERS and os.path.isdir(os.path.join(data_dir, f)))
    if held:
        raise UsageError(f'--data-dir {data_dir!r} has no folder for split {split!r}; its split folders are '
                         f'{", ".join(held)} (timm would read the whole folder, every split, as {split!r})')


# the readers of timm's create_dataset that take num_samples (its iterable datasets); every other reads a split whole
_SIZED_READERS = ('tfds/', 'wds/', 'hfids/')


def _check_num_samples(args: argparse.Namespace, name: str, training: bool) -> None:
    """--train-num-samples / --val-num-samples size the built-in data; of a --data-dir, timm's create_dataset uses
    them only for its iterable readers and drops them for every other (an image folder, torch/, hfds/, COCO, VOC):
    refused there rather than read the whole split while the user asked for N images. --data-seed, which only
    generates the built-in data, is refused with any --data-dir."""
    if getattr(args, 'data_seed', 0):
        raise UsageError(f'--data-seed {args.data_seed}: --data-dir {args.data_dir!r} is read as it is; the seed '
                         'generates the built-in data (no --data-dir; timm-elastic data --data-seed writes a folder '
                         'of it)')
    if name.startswith(_SIZED_READERS):
        return
    flags = (('--train-num-samples', getattr(args, 'train_num_samples', None) if training else None),
             ('--val-num-samples', args.val_num_samples))
    given = [f'{flag} {value}' for flag, value in flags if value is not None]
    if given:
        what = f'--dataset {name}' if name else f'--data-dir {args.data_dir!r}'
        raise UsageError(f'{" and ".join(given)}: {what} is read whole; the image counts size the built-in data '
                         f'(no --data-dir) and timm\'s iterable datasets ({", ".join(_SIZED_READERS)}) only')


def create_datasets(args: argparse.Namespace, training: bool = True):
    """(train dataset or None, eval dataset, number of classes) for `args`."""
    from timm.data import create_dataset

    task = task_of(args)
    name = args.dataset or ''
    in_chans = getattr(args, 'in_chans', None) or 3
    if in_chans not in (1, 3):
        raise UsageError(f'--in-chans {in_chans}: the loaders read images as RGB (3 channels) or, with --in-chans 1, '
                         'as greyscale')
    grey_needs_folder = ('--in-chans 1 reads the images as greyscale through timm\'s create_dataset (an image '
                         'folder, torch/..., hfds/...); {} images are RGB')
    if not args.data_dir:
        if name not in ('', BUILTIN):
            raise UsageError(f'--dataset {name!r} needs --data-dir (without it the built-in {BUILTIN!r} '
                             f'dataset is used)')
        if in_chans == 1:
            raise UsageError(grey_needs_folder.format("the built-in data's"))
        # rendered once and kept when the loader runs in this process (-j 0)
        cache = args.workers == 0
        kwargs = task.builtin_kwargs()
        train_ds = _builtin_dataset(args.train_split, getattr(args, 'train_num_samples', None), args.data_seed,
                                    cache, **kwargs) if training else None
        eval_ds = _builtin_dataset(args.val_split, args.val_num_samples, args.data_seed, cache, **kwargs)
        task.classes = list(eval_ds.classes)
        return train_ds, eval_ds, len(eval_ds.classes)
    if name == BUILTIN:
        raise UsageError(f'--dataset {BUILTIN} is generated, not read: leave out --data-dir, or write it out with '
                         f'timm-elastic data --out DIR and pass --data-dir DIR without --dataset')
    if not os.path.isdir(args.data_dir) and '/' not in name:
        raise UsageError(f'--data-dir {args.data_dir!r} does not exist or is not a folder')
    _check_num_samples(args, name, training)

    def make(split: str, is_training: bool):
        own = task.read_dataset(args, split, is_training)
        if own is not None:
            if in_chans == 1:
                raise UsageError(grey_needs_folder.format(f'--task {task.name} reads its own data, whose'))
            return own
        download = getattr(args, 'dataset_download', False)
        if not name and os.path.isdir(args.data_dir):  # an image folder (timm's default reader)
            _check_split_folder(args.data_dir, split)
        try:  # the image mode as timm's train.py picks it
            return create_dataset(name, root=args.data_dir, split=split, is_training=is_training,
                                  num_samples=args.train_num_samples if is_training else args.val_num_samples,
                                  input_img_mode='L' if in_chans == 1 else 'RGB', download=download)
        except ImportError as e:  # hfds/, tfds/, wds/: a reader whose package is not installed
            raise UsageError(f'--dataset {name}: {e}; install the package that timm reads it with') from None
        except (AssertionError, OSError, RuntimeError, ValueError) as e:
            fetch = ' (--dataset-download fetches it)' if name.startswith(('torch/', 'tfds/')) and not download \
                else ''
            raise UsageError(f'cannot read split {split!r} of --data-dir {args.data_dir!r}: {e}{fetch}') from None

    train_ds = make(args.train_split, True) if training else None
    eval_ds = make(args.val_split, False)
    for split, dataset in ((getattr(args, 'train_split', None), train_ds), (args.val_split, eval_ds)):
        if dataset is not None and len(dataset) == 0:
            raise UsageError(f'split {split!r} of --data-dir {args.data_dir!r} has no images')
    classes = _class_names(eval_ds)
    if train_ds is not None:
        _check_same_classes(_class_names(train_ds), classes, args)
        task.check_splits(train_ds, eval_ds, args)
    task.classes = classes
    return train_ds, eval_ds, len(classes) if classes else None


def _check_same_classes(train: Optional[List[str]], val: Optional[List[str]], args: argparse.Namespace) -> None:
    """Refuse splits that number their classes differently: each split's reader numbers the classes it
    finds (an image folder's subfolders sorted, a COCO file's categories in its order), and output i would
    be trained as one class and scored as another."""
    if train is None or val is None or train == val:
        return
    where = f'the splits {args.train_split!r} and {args.val_split!r} of --data-dir {args.data_dir!r}'
    raise UsageError(_class_difference(where, train, val, repr(args.train_split), repr(args.val_split)))


def _class_difference(where: str, a: List[str], b: List[str], name_a: str, name_b: str) -> str:
    """The error for two lists of class names that differ (`where`: the two sources, `name_a` / `name_b` each)."""
    only = [c for c in a if c not in b], [c for c in b if c not in a]
    if any(only) or len(a) != len(b):
        said = [f'{len(o)} only in {s} (e.g. {o[0]!r})' for o, s in zip(only, (name_a, name_b)) if o]
        return (f'{where} have different classes: {"; ".join(said) or "the same names, counted differently"}; '
                'both need the same classes')
    i = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    return (f'{where} number their classes differently (class {i} is {a[i]!r} in {name_a}, {b[i]!r} in '
            f'{name_b}): both need them in the same order')


def _check_checkpoint_class_names(ckpt: Dict[str, Any], path: str, flag: str, args: argparse.Namespace) -> None:
    """Refuse data whose classes are not those the checkpoint's run was trained on, in that order (`timm-elastic
    train` records them; checkpoints of other scripts record none and pass): output i would be scored, or trained
    on, as another class, without an error."""
    recorded = getattr(ckpt.get('args'), 'class_names', None)
    data = task_of(args).classes
    if not isinstance(recorded, (list, tuple)) or data is None or list(recorded) == list(data):
        return
    raise UsageError(_class_difference(f'{flag} {path!r} and the data', list(recorded), list(data),
                                       'the checkpoint', 'the data'))


def resolve_config(args: argparse.Namespace, model: nn.Module) -> Dict[str, Any]:
    """timm's `resolve_data_config(vars(args), model=model)`, with a mean and std per input channel: timm keeps
    the pretrained cfg's three for `--in-chans 1` (its train.py then needs --mean / --std); a grey image is
    normalised by their averages, as timm's pretrained loader sums the stem's weights over the colours."""
    from timm.data import resolve_data_config
    config = resolve_data_config(vars(args), model=model)
    # the images are read with --in-chans's channels (create_datasets); timm takes a size without channels from
    # the pretrained cfg, (3, H, W) whatever --in-chans says
    chans = getattr(args, 'in_chans', None) or 3
    if getattr(args, 'input_size', None) and args.input_size[0] != chans:
        raise UsageError(f'--input-size {" ".join(map(str, args.input_size))}: its C is the input channels, '
                         f'{chans} (--in-chans{"" if getattr(args, "in_chans", None) else ", 3 by default"})')
    config['input_size'] = (chans, *config['input_size'][1:])
    for key in ('mean', 'std'):
        if len(config[key]) != chans:
            config[key] = (sum(config[key]) / len(config[key]),) * chans
    return config


def _class_names(dataset) -> Optional[List[str]]:
    classes = getattr(dataset, 'classes', None)
    if classes is None:
        class_to_idx = getattr(getattr(dataset, 'reader', None), 'class_to_idx', None)
        if class_to_idx:
            classes = sorted(class_to_idx, key=class_to_idx.get)
    return list(classes) if classes else None


def combinations_of(dataset, data_dir: Optional[str], split: str) -> Optional[List[Tuple[str, ...]]]:
    """The object-size combination of every image of `dataset`, or None where it is not known:
    the built-in dataset records it; an image folder written by `timm_elastic.data` keeps it in
    its objects.csv."""
    if hasattr(dataset, 'combination'):
        return [dataset.combination(i) for i in range(len(dataset))]
    from .data import is_image_folder, read_combinations
    if data_dir and is_image_folder(data_dir) and hasattr(dataset, 'filename'):
        try:
            known = read_combinations(data_dir, split)
        except ValueError:  # a split that the folder's objects.csv does not list (renamed since): not known
            return None
        files = [dataset.filename(i).replace(os.sep, '/') for i in range(len(dataset))]
        unknown = [f for f in files if f not in known]
        if unknown:  # a table of some images would not be the split's: none, and why
            _logger.warning(f'no per-combination results: objects.csv of {data_dir} lists no object sizes for '
                            f'{len(unknown)} of the {len(files)} images of split {split!r} (e.g. {unknown[0]})')
            return None
        return [known[f] for f in files]
    return None


def _loader_args(args: argparse.Namespace, data_config: Dict[str, Any], device: torch.device) -> Dict[str, Any]:
    """What timm's create_loader gets for training and evaluation alike."""
    return dict(
        mean=data_config['mean'], std=data_config['std'], interpolation=data_config['interpolation'],
        num_workers=args.workers, distributed=args.distributed, device=device, use_prefetcher=False,
        # workers are recreated (and reseeded) every epoch: what makes a resumed run exact
        persistent_workers=False, pin_memory=device.type == 'cuda')


def _eval_loader(dataset, batch_size: int, args: argparse.Namespace, data_config: Dict[str, Any],
                 device: torch.device):
    from timm.data import create_loader
    own = task_of(args).loader(dataset, batch_size, args, data_config, device, training=False)
    if own is not None:
        return own
    return create_loader(
        dataset, input_size=data_config['input_size'], batch_size=batch_size, is_training=False,
        crop_pct=data_config['crop_pct'], crop_mode=data_config.get('crop_mode'),
        **_loader_args(args, data_config, device))


# ---------------------------------------------------------------------------------------------
# model

def elastic_kwargs(args: argparse.Namespace) -> Dict[str, Any]:
    """The `--elastic-*` options that were given, as model kwargs (ablations, Tables 6 and 7)."""
    return {k: v for k, v in (('elastic_ratio', args.elastic_ratio), ('elastic_resample', args.elastic_resample))
            if v is not None}


def create_model(args: argparse.Namespace, num_classes: Optional[int], checkpoint_path: str = '',
                 recorded: Optional[Dict[str, Any]] = None):
    """`args.model` built for `args`; `recorded`: model kwargs a checkpoint's run recorded (timm train.py's
    --model-kwargs), below the options of `args`."""
    from .models._builder import PretrainedWeightsError
    task = task_of(args)
    name = args.model
    if not task.known_model(name):
        raise UsageError(task.unknown_model(name))
    folder = name[len('local-dir:'):] if name.startswith('local-dir:') else None
    if folder is not None and not os.path.isfile(os.path.join(folder, 'config.json')):  # timm: a traceback
        where = '' if os.path.isabs(folder) else f' (from the working folder {os.getcwd()})'
        raise UsageError(f'--model {name}: {folder} has no config.json{where}; local-dir: names a model folder as '
                         'timm-elastic convert (or timm\'s save_for_hf) writes it')
    # validate has no --drop / --drop-path: None is left out by timm.create_model
    kwargs = dict(pretrained=args.pretrained, num_classes=num_classes, drop_rate=getattr(args, 'drop', None),
                  drop_path_rate=getattr(args, 'drop_path', None), checkpoint_path=checkpoint_path or '',
                  **elastic_kwargs(args))
    kwargs = {**(recorded or {}), **{k: v for k, v in kwargs.items() if v is not None}}
    if args.in_chans is not None:
        kwargs['in_chans'] = args.in_chans
    if getattr(args, 'bn_momentum', None) is not None:
        kwargs['bn_momentum'] = args.bn_momentum
    try:
        return task.build_model(name, **kwargs)
    except TypeError as e:
        if elastic_kwargs(args) and 'elastic' in str(e):
            raise UsageError(f'--model {name} has no Elastic blocks, so --elastic-* options do not apply') from None
        if 'bn_momentum' in kwargs and 'bn_momentum' in str(e):
            raise UsageError("--bn-momentum sets the BatchNorm momentum of --task segment's models; timm's models "
                             'keep their own') from None
        raise
    except ValueError as e:  # e.g. elastic_ratio out of range
        raise UsageError(str(e)) from None
    except PretrainedWeightsError as e:  # says what to do instead
        raise UsageError(str(e)) from None
    except (FileNotFoundError, RuntimeError) as e:
        if checkpoint_path and not os.path.isfile(checkpoint_path):
            raise UsageError(f'checkpoint {checkpoint_path!r} does not exist') from None
        if checkpoint_path and isinstance(e, RuntimeError) and 'state_dict' in str(e):  # torch's list of every key
            _initial_checkpoint_misfit(args, num_classes, checkpoint_path)
        # timm's own models: no released weights (a RuntimeError of timm's builder), or none reachable (the Hub's
        # errors are FileNotFoundErrors)
        if args.pretrained and (isinstance(e, FileNotFoundError) or 'No pretrained weights exist' in str(e)):
            raise UsageError(f'--pretrained: could not load the weights of {name} ({error_line(e)}); pass a '
                             'checkpoint of its weights instead') from None
        raise


def _initial_checkpoint_misfit(args: argparse.Namespace, num_classes: Optional[int], path: str) -> None:
    """Raise what does not fit in `--initial-checkpoint` (read as timm's loader reads it: .pth.tar or
    .safetensors), as `check_checkpoint_fits` says it for --resume and --checkpoint."""
    plain = copy.copy(args)
    plain.pretrained = False
    model = create_model(plain, num_classes)
    if path.endswith('.safetensors'):
        from safetensors.torch import load_file
        ckpt = {'state_dict': load_file(path)}
    else:
        ckpt = _load_checkpoint_dict(path, '--initial-checkpoint')
    check_checkpoint_fits(model, ckpt, path, '--initial-checkpoint', args.model)


def _original_note(state: Dict[str, Any], path: str) -> str:
    """Appended to the error that a state dict does not fit: for one of the original ELASTIC code's
    architectures, the model it fits (already in its layout: converted, or a DLA-X / DenseNet baseline, whose
    layout is the same), or how to convert it (the original's layout); '' for any other."""
    import warnings
    from .convert import CheckpointError, ORIGINALS, _target_shapes, infer_arch, num_classes_of
    try:
        with warnings.catch_warnings():  # the conversion's notes (DLA's unused projections dropped)
            warnings.simplefilter('ignore')
            arch = infer_arch(state)
    except (CheckpointError, RuntimeError, ValueError):
        return ''
    model = ORIGINALS[arch].model
    if set(state) <= set(_target_shapes(model, num_classes_of(state, arch))):
        return f'; its weights are those of --model {model}'
    return (f'; it is laid out as a checkpoint of the original ELASTIC code\'s {arch} ({model} here): '
            f'timm-elastic convert {path} --out DIR makes a model folder of it, --model local-dir:DIR --pretrained '
            'loads it')


def _load_checkpoint_dict(path: str, flag: str) -> Dict[str, Any]:
    """A training checkpoint's dict, read as timm reads them: tensors and plain values only
    (`weights_only`), plus the argparse.Namespace of the arguments that timm's scripts save."""
    if os.path.isdir(path):
        raise UsageError(f'{flag} {path!r} is a folder; it takes a training checkpoint file (last.pth.tar), and a '
                         'model folder (timm-elastic convert\'s) loads with --model local-dir:DIR --pretrained')
    if not os.path.isfile(path):
        raise UsageError(f'{flag} {path!r} does not exist')
    try:
        allow = getattr(torch.serialization, 'safe_globals', None)  # a context manager from torch 2.5 on
        if allow is None:  # torch 2.4: allowed for the rest of the process
            torch.serialization.add_safe_globals([argparse.Namespace])
        with allow([argparse.Namespace]) if allow else nullcontext():
            ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise UsageError(f'{flag} {path!r} is not a readable checkpoint ({error_line(e)})') from None
    if not isinstance(ckpt, dict):
        raise UsageError(f'{flag} {path!r} is not a checkpoint dict')
    return ckpt


def check_checkpoint_fits(model: nn.Module, ckpt: Dict[str, Any], path: str, flag: str, arch: str) -> None:
    """Refuse a training checkpoint of another architecture or class count, naming what differs."""
    import timm
    from timm.models import clean_state_dict
    saved_arch = ckpt.get('arch')
    state = clean_state_dict(ckpt.get('state_dict', ckpt))
    if saved_arch and saved_arch != arch and saved_arch != type(model).__name__.lower():
        raise UsageError(f'{flag} {path!r} is a checkpoint of --model {saved_arch}, not {arch}'
                         + ('' if timm.is_model(saved_arch) else _original_note(state, path)))
    own = model.state_dict()
    classifier = model.pretrained_cfg.get('classifier') if hasattr(model, 'pretrained_cfg') else None
    head = f'{classifier}.weight' if classifier else None
    if head in state and head in own and state[head].shape[0] != own[head].shape[0]:
        raise UsageError(f'{flag} {path!r} was trained with {state[head].shape[0]} classes, but the model has '
                         f'{own[head].shape[0]} (--num-classes {own[head].shape[0]}); use --num-classes '
                         f'{state[head].shape[0]}')
    first_conv = model.pretrained_cfg.get('first_conv') if hasattr(model, 'pretrained_cfg') else None
    stem = f'{first_conv}.weight' if first_conv else None
    if stem in state and stem in own and state[stem].ndim == 4 and state[stem].shape[1] != own[stem].shape[1]:
        raise UsageError(f'{flag} {path!r} was trained with {state[stem].shape[1]} input channels, but the model has '
                         f'{own[stem].shape[1]} (--in-chans {own[stem].shape[1]}); use --in-chans '
                         f'{state[stem].shape[1]}')
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f'{k} {list(state[k].shape)} vs {list(own[k].shape)}' for k in own
             if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = [f'{what}: {", ".join(keys[:3])}{" ..." if len(keys) > 3 else ""}'
                 for what, keys in (('missing', missing), ('unexpected', unexpected), ('shape', wrong)) if keys]
        raise UsageError(f'{flag} {path!r} does not fit --model {arch} ({"; ".join(parts)})'
                         + _original_note(state, path))


# ---------------------------------------------------------------------------------------------
# distributed, seeding, precision

def _init_device(args: argparse.Namespace) -> torch.device:
    import torch.distributed as dist
    from timm.utils import init_distributed_device
    if args.device is None:
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        raise UsageError(f'--device {args.device}: CUDA is not available on this machine (use --device cpu)')
    args.dist_backend = getattr(args, 'dist_backend', None) or ('nccl' if args.device.startswith('cuda') else 'gloo')
    if os.environ.get('WORLD_SIZE', '1') != '1':  # found by torch after the processes meet: a traceback on each
        known = [b for b in dist.Backend.backend_list if b != 'undefined']
        if args.dist_backend not in known:
            raise UsageError(f'--dist-backend {args.dist_backend!r} is not a torch.distributed backend; known: '
                             f'{", ".join(known)}')
        if args.dist_backend == 'nccl' and not args.device.startswith('cuda'):
            raise UsageError(f'--dist-backend nccl needs CUDA; on --device {args.device} use gloo (the default)')
    if dist.is_available() and dist.is_initialized():
        # a later command in the same process (compare trains several models): timm's init would start a second
        # process group ("trying to initialize the default process group twice"); the one running serves it
        args.world_size, args.rank = dist.get_world_size(), dist.get_rank()
        args.local_rank = int(os.environ.get('LOCAL_RANK', args.rank))
        args.distributed = args.world_size > 1
        if args.distributed and args.device.startswith('cuda'):  # as timm: each process on its local GPU
            args.device = f'cuda:{args.local_rank}'
            torch.cuda.set_device(args.device)
        return torch.device(args.device)
    device = init_distributed_device(args)
    return device


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of one epoch on one rank: independent streams, a pure function of its arguments,
    so a resumed run draws exactly what an uninterrupted one did."""
    return int(np.random.SeedSequence([seed, epoch + 1, rank]).generate_state(1)[0])


def reseed(seed: int) -> None:
    import random
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def reseed_optimizer(optimizer: torch.optim.Optimizer, seed: int) -> None:
    """An optimiser that draws from a generator of its own (timm's AdaHessian, for its Hessian probes) gets it
    anew from `seed`, on its parameters' device (where AdaHessian would move it, reseeded from its fixed seed)."""
    if isinstance(getattr(optimizer, 'generator', None), torch.Generator):
        optimizer.generator = torch.Generator(optimizer.param_groups[0]['params'][0].device).manual_seed(seed)


def amp_context(args: argparse.Namespace, device: torch.device):
    """(autocast context factory, NativeScaler or None): float16 on CUDA takes a loss scaler;
    bfloat16 (CPU or CUDA) does not need one."""
    from timm.utils import NativeScaler
    if not args.amp:
        return nullcontext, None
    name = args.amp_dtype or ('float16' if device.type == 'cuda' else 'bfloat16')
    dtype = {'float16': torch.float16, 'bfloat16': torch.bfloat16}[name]
    if device.type == 'cpu' and dtype == torch.float16:
        raise UsageError('--amp-dtype float16 needs CUDA; on the CPU use --amp-dtype bfloat16')
    scaler = NativeScaler(device=device.type) if dtype == torch.float16 else None
    return partial(torch.autocast, device_type=device.type, dtype=dtype), scaler


def _is_primary(args) -> bool:
    return getattr(args, 'rank', 0) == 0


# ---------------------------------------------------------------------------------------------
# evaluation

class Progress:
    """One progress bar, shown on the first process when stderr is a terminal; in a log or a pipe
    nothing (a bar there is a stream of carriage-return fragments between the log lines). Training
    draws one bar per epoch, through the training batches and then the evaluation ones; `validate`
    one for its evaluation. The bar disappears when closed: the epoch's line replaces it."""

    def __init__(self, total: int, desc: str, args: argparse.Namespace):
        self.bar = self._logging = None
        if _is_primary(args) and getattr(args, 'progress', True) and sys.stderr.isatty():
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm
            self.bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, mininterval=1.0)
            # log lines (--log-interval's) above the bar, not written into its line
            self._logging = logging_redirect_tqdm()
            self._logging.__enter__()

    def track(self, loader, phase: Optional[str] = None):
        """The loader's batches, advancing the bar by one after each. The loader's iterator is made
        here, at the call: every DataLoader iterator draws its seeds from torch's RNG, so it must be
        made at the same point whether a bar is shown or not."""
        batches = iter(loader)
        if self.bar is None:
            return batches
        if phase:
            self.bar.set_postfix_str(phase, refresh=False)
        return self._advance(batches)

    def _advance(self, batches):
        for batch in batches:
            yield batch
            self.bar.update()

    def note(self, **values) -> None:
        if self.bar is not None:
            self.bar.set_postfix(values, refresh=False)

    def __enter__(self) -> 'Progress':
        return self

    def __exit__(self, *exc) -> None:  # closed when the work raises too: logging is redirected while a bar shows
        self.close()

    def close(self) -> None:
        if self._logging is not None:
            self._logging.__exit__(None, None, None)
            self._logging = None
        if self.bar is not None:
            self.bar.close()


@torch.no_grad()
def evaluate(model: nn.Module, loader, args: argparse.Namespace, device: torch.device, amp_autocast=nullcontext,
             combinations: Optional[Sequence[Tuple[str, ...]]] = None, progress: Optional[Progress] = None,
             phase: str = 'eval') -> Dict[str, Any]:
    """The task's metrics over the whole evaluation set (`--task`: classify: loss, top-1 and top-5 in
    percent; multilabel: loss, P/R/F1 per class and overall, mAP; segment: loss, mIoU, IoU per class), and
    per object-size combination when `combinations` (one per image) is given, plus `count`. With DDP every
    rank evaluates its shard and the per-image records are gathered, so padding duplicates are counted once.
    `progress`: the bar to advance (training's bar of the epoch), else one of its own."""
    task = task_of(args)
    model.eval()
    indices = list(iter(loader.sampler)) if loader.sampler is not None else None
    records: Dict[str, List[torch.Tensor]] = {}
    with Progress(len(loader), phase, args) if progress is None else nullcontext(progress) as progress:
        for x, y in progress.track(loader, phase):
            x, y = x.to(device), y.to(device)
            if args.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with amp_autocast():
                out = model(x)
            for k, v in task.per_image(out.float(), y).items():
                records.setdefault(k, []).append(v)
    if not records:
        raise UsageError('the evaluation data has no images')
    results = {k: torch.cat(v) for k, v in records.items()}
    n = len(next(iter(results.values())))
    if indices is None or len(indices) != n:
        indices = list(range(n))
    return task.summarize(_gather(results, indices, args), combinations)


def _gather(results: Dict[str, torch.Tensor], indices: List[int], args) -> Dict[str, torch.Tensor]:
    """Per-image results in dataset order, gathered from every rank."""
    parts = [(indices, results)]
    if getattr(args, 'distributed', False):
        parts = [None] * args.world_size
        torch.distributed.all_gather_object(parts, (indices, results))
    seen = set()
    order: List[Tuple[int, int, int]] = []
    for p, (idx, _) in enumerate(parts):
        for j, i in enumerate(idx):
            if i not in seen:
                seen.add(i)
                order.append((i, p, j))
    order.sort()
    return {k: torch.stack([parts[p][1][k][j] for _, p, j in order]) for k in results}


# ---------------------------------------------------------------------------------------------
# training

def _summary_rows(path: str) -> List[List[str]]:
    if not os.path.exists(path):
        return []
    with open(path, newline='') as f:
        return list(csv.reader(f))


def trim_summary(path: str, start_epoch: int) -> None:
    """Drop the rows of epochs >= start_epoch that a killed run wrote before its checkpoint, so a
    resumed run's summary.csv has every epoch exactly once (rewritten atomically)."""
    rows = _summary_rows(path)
    if not rows:
        return
    keep = [rows[0]] + [r for r in rows[1:] if r and int(float(r[0])) < start_epoch]
    if len(keep) == len(rows):
        return
    text = io.StringIO()
    csv.writer(text).writerows(keep if len(keep) > 1 else [])
    write_text(path, text.getvalue())


def _drop_discarded_best(saver, folder: str, resume_path: str, resume: Dict[str, Any], start_epoch: int) -> None:
    """A run resumed from an earlier checkpoint (checkpoint-N) discards the epochs after it, as `trim_summary`
    drops their rows; a `model_best` of one of them would outlive them (scored in no row, never replaced by a kept
    epoch that ranks below it). It is replaced by the checkpoint of the best kept epoch that the saver's restored
    ranking names (the resumed checkpoint itself, or a numbered one), or removed where that file is gone (the
    next epoch to rank best writes it; timm's saver then ranks the epochs from the resumed one on)."""
    best = os.path.join(folder, 'model_best' + saver.extension)
    if not os.path.isfile(best):
        return
    try:
        if _load_checkpoint_dict(best, 'model_best').get('epoch', -1) < start_epoch:
            return
    except UsageError:  # not a checkpoint: not ours to judge
        return
    best_epoch = getattr(saver, 'best_epoch', None)
    sources = [resume_path] if resume.get('epoch') == best_epoch else \
        [p for p, _ in getattr(saver, 'checkpoint_files', []) if p == saver._checkpoint_path(best_epoch)]
    source = next((p for p in sources if best_epoch is not None and os.path.isfile(p)), None)
    if source is None:
        os.remove(best)
        saver.best_metric = saver.best_epoch = None
        _logger.warning(f'{best} held an epoch after the resumed checkpoint and was removed: the best kept epoch\'s '
                        'checkpoint is gone; the next epoch writes it')
        return
    saver._duplicate(source, best)  # as timm's saver writes model_best: a hard link to the checkpoint, or a copy


def train(args: argparse.Namespace, datasets=None) -> Dict[str, Any]:
    """Train `args.model` as `timm-elastic train` does; returns the last epoch's eval metrics
    (and `output_dir`). See `timm_elastic.cli` for the flags. `datasets` is what `create_datasets`
    returns, to share them (and their rendered images) between runs."""
    from timm.data import Mixup, create_loader
    from timm.models import load_checkpoint, resume_checkpoint
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3, distribute_bn, get_outdir, update_summary

    task = task_of(args)
    _check_train_args(args)
    task.check_train_args(args)
    args.experiment = _resumed_experiment(args)
    _check_new_experiment(args)
    eval_metric = _eval_metric(args, task)
    device = _init_device(args)
    primary = _is_primary(args)
    amp_autocast, loss_scaler = amp_context(args, device)

    train_ds, eval_ds, data_classes = datasets or create_datasets(args)
    resume = _load_checkpoint_dict(args.resume, '--resume') if args.resume else None
    if resume is not None:
        _check_checkpoint_task(resume, args.resume, '--resume', args)
        _check_checkpoint_class_names(resume, args.resume, '--resume', args)
        saved = getattr(resume.get('args'), 'world_size', None)
        if saved and saved != args.world_size and _is_primary(args):  # it runs, but draws other random numbers
            _logger.warning(f'--resume {args.resume}: the run trained in {saved} process{"es" * (saved > 1)}, this '
                            f'one has {args.world_size}; it continues, but not as the run would have (every '
                            'process draws its own random numbers): resume is exact with the same number')
    num_classes = args.num_classes or data_classes
    if num_classes is None:
        raise UsageError('--num-classes is needed: the classes of --data-dir could not be read')
    if data_classes is not None and num_classes < data_classes:
        raise UsageError(f'--num-classes {num_classes} is less than the {data_classes} classes of the data')
    task.check_classes(num_classes, data_classes, '--model', args.model)

    reseed(epoch_seed(args.seed, -1, 0))  # the same initial weights on every rank
    model = create_model(args, num_classes, args.initial_checkpoint)
    if resume is not None:
        check_checkpoint_fits(model, resume, args.resume, '--resume', args.model)
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    if args.distributed and args.sync_bn:
        if device.type != 'cuda':
            raise UsageError('--sync-bn needs CUDA (torch\'s SyncBatchNorm); on the CPU, --dist-bn reduce (the '
                             'default) averages the BatchNorm statistics of the processes after every epoch')
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)

    data_config = task.data_config(resolve_config(args, model), args, model)  # in the info line
    optimizer = create_optimizer_v2(model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay,
                                    momentum=args.momentum)
    if getattr(optimizer, 'is_second_order', False) and (args.distributed or args.torchcompile):
        what, instead = (("PyTorch's DistributedDataParallel", 'train it in one process') if args.distributed else
                         ("torch.compile's (aot_autograd's) backward", 'leave out --torchcompile'))
        raise UsageError(f'--opt {args.opt} is a second-order optimiser: it differentiates the gradients (backward '
                         f'with create_graph), which {what} does not support; {instead}')
    start_epoch = 0
    kept = {}
    if resume is not None:
        asked = _hyperparameters(optimizer)
        start_epoch = resume_checkpoint(model, args.resume, optimizer=optimizer, loss_scaler=loss_scaler,
                                        log_info=primary) or 0
        # the optimizer's state brings the run's own lr, weight decay and momentum (timm's resume, as its train.py):
        # flags that ask for others do not apply; the checkpoints record what trains
        now = _hyperparameters(optimizer)
        kept = {k: (v, now[k]) for k, v in asked.items() if now[k] != v}
        for k, (_, value) in kept.items():
            setattr(args, k, value)
    model_ema = None
    if args.model_ema:
        model_ema = ModelEmaV3(model, decay=args.model_ema_decay)
        if resume is not None and 'state_dict_ema' in resume:
            load_checkpoint(model_ema.module, args.resume, use_ema=True)
    if args.torchcompile:
        model = torch.compile(model, backend=args.torchcompile)
    if args.distributed:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == 'cuda' else None)

    mixup_fn = None
    if args.mixup > 0 or args.cutmix > 0:
        mixup_fn = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, label_smoothing=args.smoothing,
                         num_classes=num_classes)
    loader_train = task.loader(train_ds, args.batch_size, args, data_config, device, training=True)
    if loader_train is None:
        from .data import is_image_folder
        builtin = not args.data_dir or is_image_folder(args.data_dir)  # the built-in data, or its image folder
        crop_scale = args.scale or ((1., 1.) if builtin else None)
        crop_ratio = args.ratio or ((1., 1.) if builtin else None)
        loader_train = create_loader(
            train_ds, input_size=data_config['input_size'], batch_size=args.batch_size, is_training=True,
            no_aug=args.no_aug, scale=crop_scale, ratio=crop_ratio, hflip=args.hflip, vflip=args.vflip,
            color_jitter=args.color_jitter, **_loader_args(args, data_config, device))
    loader_eval = _eval_loader(eval_ds, args.validation_batch_size or args.batch_size, args, data_config, device)
    combinations = combinations_of(eval_ds, args.data_dir, args.val_split)

    updates_per_epoch = len(loader_train)
    if updates_per_epoch == 0:
        per = f' shared by {args.world_size} processes' if args.distributed else ''
        raise UsageError(f'-b/--batch-size {args.batch_size} is more than the {len(train_ds)} training images{per}: '
                         'training drops an incomplete last batch, so no step would be made; lower -b')
    lr_scheduler, num_epochs = create_scheduler_v2(
        optimizer, sched=args.sched, num_epochs=args.epochs, decay_epochs=args.decay_epochs,
        decay_milestones=args.decay_milestones, decay_rate=args.decay_rate, min_lr=args.min_lr,
        warmup_lr=args.warmup_lr, warmup_epochs=args.warmup_epochs, step_on_epochs=not args.sched_on_updates,
        updates_per_epoch=updates_per_epoch, plateau_mode='min' if eval_metric == 'loss' else 'max')
    if start_epoch >= num_epochs:  # nothing would be trained, and the run would end without a word
        raise UsageError(f'--resume {args.resume!r}: the run has trained {start_epoch} epochs, all that --epochs '
                         f'{args.epochs} asks for; a larger --epochs trains it further')
    if kept and primary:
        flags = ', '.join(f'--{k.replace("_", "-")} {v}' for k, (v, _) in kept.items())
        held = ', '.join(f'{k.replace("_", " ")} {value}' for k, (_, value) in kept.items())
        _logger.warning(f'--resume {args.resume}: {flags} not applied: the optimizer state of the checkpoint keeps '
                        f'the run\'s {held} (timm\'s resume); --initial-checkpoint {args.resume} starts a new run from '
                        'its weights with them')
    changed = _changed_flags(resume.get('args'), args) if resume is not None else ''
    if changed and primary:  # e.g. a resume line without the run's flags: the defaults train on (said once it does)
        _logger.warning(f'--resume {args.resume}: the run was trained with other flags ({changed}); it continues, '
                        'but not as the run would have: resume is exact with the same flags')
    if start_epoch > 0:
        if args.sched_on_updates:
            lr_scheduler.step_update(start_epoch * updates_per_epoch)
        else:
            lr_scheduler.step(start_epoch)

    train_loss_fn = task.train_loss(args, mixup=mixup_fn is not None)

    output_dir = None
    saver = None
    if primary:
        exp_name = args.experiment or '-'.join([time.strftime('%Y%m%d-%H%M%S'), _safe(args.model),
                                               str(data_config['input_size'][-1])])
        output_dir = get_outdir(output_root(args), exp_name) if args.experiment else \
            new_folder(output_root(args), exp_name)
        recorded = _plain_args(args)
        recorded.class_names = list(task.classes) if task.classes is not None else None  # checked where it is read
        saver = AtomicCheckpointSaver(
            model=model, optimizer=optimizer, args=recorded, model_ema=model_ema, amp_scaler=loss_scaler,
            checkpoint_dir=output_dir, recovery_dir=output_dir, decreasing=eval_metric == 'loss',
            max_history=args.checkpoint_hist)
        if resume is not None and _continues_in(args.resume, output_dir) \
                and hasattr(saver, 'load_state_dict_from_checkpoint'):
            saver.load_state_dict_from_checkpoint(args.resume)
        trim_summary(os.path.join(output_dir, 'summary.csv'), start_epoch)
        if resume is not None and _continues_in(args.resume, output_dir):
            _drop_discarded_best(saver, output_dir, args.resume, resume, start_epoch)
        _logger.info(f'{args.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.3f}M parameters, '
                     f'{num_classes} classes, {len(train_ds)} training images at {_data_summary(data_config)}, '
                     f'epochs {start_epoch + 1}..{num_epochs} of {num_epochs}, output {output_dir}')

    eval_metrics: Dict[str, Any] = {}
    for epoch in range(start_epoch, num_epochs):
        reseed(epoch_seed(args.seed, epoch, args.rank))
        reseed_optimizer(optimizer, epoch_seed(args.seed, epoch, 0))  # AdaHessian draws the same on every rank
        if args.distributed and hasattr(loader_train.sampler, 'set_epoch'):
            # torch's DistributedSampler shuffles by its own seed (0: the same order for every --seed) plus the
            # epoch: seeded here as every other generator, and alike on every rank (one permutation, split)
            loader_train.sampler.seed = epoch_seed(args.seed, epoch, 0)
            loader_train.sampler.set_epoch(epoch)
        # one bar per epoch (counted from 1; summary.csv counts from 0): its training batches, then evaluation's
        with Progress(len(loader_train) + len(loader_eval) * (1 if model_ema is None else 2),
                      f'epoch {epoch + 1}/{num_epochs}', args) as progress:
            train_metrics = _train_one_epoch(
                epoch, num_epochs, model, loader_train, optimizer, train_loss_fn, args, device, lr_scheduler,
                amp_autocast, loss_scaler, model_ema, mixup_fn, progress)
            if args.distributed and args.dist_bn in ('broadcast', 'reduce'):
                distribute_bn(model, args.world_size, args.dist_bn == 'reduce')
            eval_metrics = evaluate(model, loader_eval, args, device, amp_autocast, combinations, progress)
            if model_ema is not None:
                if args.distributed and args.dist_bn in ('broadcast', 'reduce'):
                    distribute_bn(model_ema, args.world_size, args.dist_bn == 'reduce')
                eval_metrics = evaluate(model_ema, loader_eval, args, device, amp_autocast, combinations, progress,
                                        'eval ema')
        lr = optimizer.param_groups[0]['lr']
        if not args.sched_on_updates:
            lr_scheduler.step(epoch + 1, eval_metrics[eval_metric])
        if primary:
            summary = os.path.join(output_dir, 'summary.csv')
            update_summary(epoch, train_metrics, task.flat(eval_metrics), summary, lr=lr,
                           write_header=not os.path.exists(summary) or os.path.getsize(summary) == 0)
            saver.save_checkpoint(epoch, metric=eval_metrics[eval_metric])
            weights = ' (EMA weights)' if model_ema is not None else ''  # what summary.csv and model_best rank
            print(f'epoch {epoch + 1}/{num_epochs}: train loss {train_metrics["loss"]:.4f}, eval{weights} '
                  f'{task.line(eval_metrics)}, lr {lr:.4g}', flush=True)
    if args.distributed:
        torch.distributed.barrier()
    return dict(eval_metrics, output_dir=output_dir, num_classes=num_classes, img_size=data_config['input_size'][-1])


# flags that change nothing a run computes, or that a resumed run changes on purpose (--epochs trains it further)
_BOOKKEEPING = {'command', 'func', 'resume', 'epochs', 'experiment', 'output', 'log_interval', 'progress',
                'checkpoint_hist', 'device', 'dist_backend', 'initial_checkpoint', 'rank', 'world_size', 'local_rank',
                'distributed'}


def _hyperparameters(optimizer: torch.optim.Optimizer) -> Dict[str, Any]:
    """The optimizer's lr (its schedule's base, `initial_lr`, once a scheduler has set it), weight decay (the
    largest of its parameter groups': timm's groups of biases and norms have none) and momentum where it has one,
    keyed by the flags' names in `args` (values of None where the optimizer has no such setting)."""
    groups = optimizer.param_groups
    decays = [g['weight_decay'] for g in groups if 'weight_decay' in g]
    return dict(lr=groups[0].get('initial_lr', groups[0].get('lr')), weight_decay=max(decays) if decays else None,
                momentum=groups[0].get('momentum'))


def _changed_flags(recorded: Optional[argparse.Namespace], args: argparse.Namespace) -> str:
    """The training flags of `args` whose values differ from those the resumed run recorded, in words
    ('--batch-size 16 (now 32), --lr 0.002 (now 0.004)'); '' if none (or nothing was recorded)."""
    if recorded is None:
        return ''
    before, now = vars(_plain_args(recorded)), vars(_plain_args(args))
    return ', '.join(f'--{k.replace("_", "-")} {before[k]} (now {now[k]})' for k in sorted(before.keys() & now.keys())
                     if k not in _BOOKKEEPING and before[k] != now[k])


def _data_summary(data_config: Dict[str, Any]) -> str:
    """timm's data config in a few words: '64x64 (bilinear, crop 1.0, mean ..., std ...)'."""
    _, h, w = data_config['input_size']
    return (f'{h}x{w} ({data_config["interpolation"]}, crop_pct {data_config["crop_pct"]}, '
            f'mean {tuple(round(m, 3) for m in data_config["mean"])}, '
            f'std {tuple(round(m, 3) for m in data_config["std"])})')


def _train_one_epoch(epoch, num_epochs, model, loader, optimizer, loss_fn, args, device, lr_scheduler,
                     amp_autocast, loss_scaler, model_ema, mixup_fn, progress: Progress) -> Dict[str, float]:
    model.train()
    # a second-order optimiser (timm's AdaHessian) differentiates the gradients: as timm's train.py
    second_order = getattr(optimizer, 'is_second_order', False)
    updates = len(loader)
    num_updates = epoch * updates
    loss_sum = torch.zeros((), dtype=torch.float64)
    count = 0
    for i, (x, y) in enumerate(progress.track(loader, 'train')):
        x, y = x.to(device), y.to(device)
        if mixup_fn is not None:
            x, y = mixup_fn(x, y)
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with amp_autocast():
            loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        if loss_scaler is not None:
            loss_scaler(loss, optimizer, clip_grad=args.clip_grad, parameters=model.parameters(),
                        create_graph=second_order)
        else:
            loss.backward(create_graph=second_order)
            if args.clip_grad is not None:
                nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
            optimizer.step()
        num_updates += 1
        if model_ema is not None:
            model_ema.update(model, step=num_updates)
        loss_sum += loss.detach().double().cpu() * x.shape[0]
        count += x.shape[0]
        if args.sched_on_updates:
            lr_scheduler.step_update(num_updates=num_updates)
        progress.note(loss=f'{loss.item():.4f}', lr=f'{optimizer.param_groups[0]["lr"]:.3g}')
        if args.log_interval and (i % args.log_interval == 0 or i == updates - 1) and _is_primary(args):
            _logger.info(f'epoch {epoch + 1}/{num_epochs} [{i + 1}/{updates}] loss {loss.item():.4f} '
                         f'lr {optimizer.param_groups[0]["lr"]:.4g}')
    if args.distributed:  # the loss of the epoch over every rank's images
        t = torch.stack([loss_sum, torch.tensor(float(count), dtype=torch.float64)]).to(device)
        torch.distributed.all_reduce(t)
        loss_sum, count = t[0].cpu(), int(t[1])
    return OrderedDict(loss=float(loss_sum / max(count, 1)))


def _eval_metric(args: argparse.Namespace, task) -> str:
    """`--eval-metric`, or the task's default: a metric that the task's evaluation reports."""
    metric = args.eval_metric or task.eval_metrics[0]
    if metric not in task.eval_metrics:
        raise UsageError(f'--eval-metric {metric} is not a metric of --task {task.name}; use one of '
                         f'{", ".join(task.eval_metrics)}')
    return metric


def _check_train_args(args: argparse.Namespace) -> None:
    # (the integer flags' ranges are checked by the command line, cli._check_integers)
    if args.lr is not None and args.lr <= 0:
        raise UsageError(f'--lr must be positive, got {args.lr}')
    if args.initial_checkpoint and not os.path.isfile(args.initial_checkpoint):
        raise UsageError(f'--initial-checkpoint {args.initial_checkpoint!r} does not exist')


def output_root(args: argparse.Namespace) -> str:
    """The folder that holds the runs' `<experiment>` folders: `--output`, by default timm's ./output/train."""
    return args.output or './output/train'


def new_folder(root: str, name: str) -> str:
    """`root/name`, created now by this process, or `name-1`, `name-2`, ... where that is taken (timm's
    `get_outdir(inc=True)` numbering): two runs named by the same second's date and time never share a folder,
    whichever creates it first (one `os.mkdir`, which fails where the folder exists)."""
    os.makedirs(root, exist_ok=True)
    path, count = os.path.join(root, name), 0
    while True:
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            count += 1
            path = os.path.join(root, f'{name}-{count}')


def check_output_paths(args: argparse.Namespace, experiment: Optional[str]) -> None:
    """Refuse an --output, or an --experiment folder under it, where a file stands at the path or at a folder
    above it: the first write fails there (after an epoch: timm's get_outdir)."""
    root = output_root(args)
    for flag, path in (('--output', root), ('--experiment', os.path.join(root, experiment) if experiment else '')):
        while path and not os.path.lexists(path):
            path = os.path.dirname(path)
        if path and not os.path.isdir(path):
            raise UsageError(f'{flag}: {path} is a file, not a folder; choose another {flag}')


def _continues_in(resume: str, folder: str) -> bool:
    """Whether `--resume RESUME` continues the run of `folder` (its checkpoint lies there), rather than starting
    from that checkpoint in another folder."""
    return bool(resume) and os.path.dirname(os.path.abspath(resume)) == os.path.abspath(folder)


def _resumed_experiment(args: argparse.Namespace) -> Optional[str]:
    """`--experiment`; without one, `--resume OUTPUT/NAME/FILE` continues its run in OUTPUT/NAME (NAME may have
    several parts, as compare's runs), where timm's train.py would start a new folder named by date and time (the
    run's summary.csv split in two, its best checkpoint ranked afresh). A checkpoint outside `--output` starts a
    new run there."""
    if args.experiment or not args.resume:
        return args.experiment
    root, folder = os.path.abspath(output_root(args)), os.path.dirname(os.path.abspath(args.resume))
    inside = folder != root and os.path.commonpath([root, folder]) == root
    return os.path.relpath(folder, root) if inside else None


def _check_new_experiment(args: argparse.Namespace) -> None:
    """Refuse to start a run in an `--experiment` folder that holds another's results: its summary.csv
    would be emptied and its checkpoints replaced (timm's saver overwrites model_best and last). `--resume`
    continues the run of the folder its checkpoint lies in; into another folder only if that holds no run. A
    file where a folder goes is refused too (found after the first epoch, in the first write)."""
    check_output_paths(args, args.experiment)
    if not args.experiment:  # timm's default names are new folders (date and time)
        return
    folder = os.path.join(output_root(args), args.experiment)
    if not os.path.isdir(folder):
        return
    if _continues_in(args.resume, folder):
        return
    held = sorted(f for f in os.listdir(folder) if f == 'summary.csv' or f.endswith('.pth.tar'))
    if not held:
        return
    files = first_names(held)
    if args.resume:
        raise UsageError(f'--experiment {args.experiment!r}: {folder} holds another run ({files}), not the one of '
                         f'--resume {args.resume}; continue that run in its own folder, or name a new --experiment')
    raise UsageError(f'--experiment {args.experiment!r}: {folder} holds a run already ({files}); --resume '
                     f'{os.path.join(folder, "last.pth.tar")} continues it, another --experiment (or --output) '
                     'starts a new one')


def _plain_args(args: argparse.Namespace) -> argparse.Namespace:
    """The arguments as saved in checkpoints: plain values only, so `torch.load(weights_only=True)`
    (with timm's allowance for argparse.Namespace) reads them back."""
    plain = (str, int, float, bool, type(None))
    out = {}
    for k, v in vars(args).items():
        if isinstance(v, (list, tuple)) and all(isinstance(e, plain) for e in v):
            out[k] = list(v)
        elif isinstance(v, plain):
            out[k] = v
    return argparse.Namespace(**out)


def _safe(name: str) -> str:
    return ''.join(c if c.isalnum() or c in '._-' else '_' for c in name)


# ---------------------------------------------------------------------------------------------
# validation

def validate(args: argparse.Namespace) -> Dict[str, Any]:
    """Evaluate `args.model` with the weights of `--checkpoint` or `--pretrained` (one of them is
    required; without `--model` the checkpoint's recorded model) as `timm-elastic validate` does:
    the task's metrics (`evaluate`), per size combination too where the data records object sizes."""
    task = task_of(args)
    device = _init_device(args)
    amp_autocast, _ = amp_context(args, device)
    _, eval_ds, data_classes = create_datasets(args, training=False)
    model = load_for_eval(args, data_classes, device)
    data_config = task.data_config(resolve_config(args, model), args, model)
    loader = _eval_loader(eval_ds, args.batch_size, args, data_config, device)
    metrics = evaluate(model, loader, args, device, amp_autocast,
                       combinations_of(eval_ds, args.data_dir, args.val_split))
    return dict(metrics, task=task.name, model=args.model, num_classes=model.num_classes,
                img_size=data_config['input_size'][-1])


def load_for_eval(args: argparse.Namespace, data_classes: Optional[int], device: torch.device,
                  flags: Tuple[str, str] = ('--model', '--checkpoint')) -> nn.Module:
    """`args.model` with the weights of `args.checkpoint` (a training checkpoint; without `--model`,
    the model it records) or of `args.pretrained`, checked against the data's class count, on
    `device` (channels_last with `args.channels_last`), as validate evaluates it. `flags` name the
    options in errors (another command's `--baseline` / `--baseline-checkpoint`)."""
    from timm.models import load_checkpoint
    model_flag, ckpt_flag = flags
    task = task_of(args)
    if args.model and not task.known_model(args.model):  # before the weights: a typo is what is wrong
        raise UsageError(f'{model_flag}: {task.unknown_model(args.model)}')
    ckpt = _load_checkpoint_dict(args.checkpoint, ckpt_flag) if args.checkpoint else None
    if ckpt is None and not args.pretrained:
        raise UsageError(f'no weights to evaluate: pass {ckpt_flag} PATH (a training checkpoint) or --pretrained '
                         "(the model's released weights); without either it would score a randomly initialised model")
    if args.use_ema and (ckpt is None or 'state_dict_ema' not in ckpt):  # timm's loader took the weights instead
        raise UsageError(f'--use-ema: {ckpt_flag} {args.checkpoint!r} holds no EMA weights (its run had no '
                         '--model-ema); leave out --use-ema' if ckpt is not None else
                         f"--use-ema evaluates the EMA weights of a {ckpt_flag}; released weights have none")
    if ckpt is not None:
        _check_checkpoint_task(ckpt, args.checkpoint, ckpt_flag, args)
        _check_checkpoint_class_names(ckpt, args.checkpoint, ckpt_flag, args)
    if not args.model:
        args.model = _recorded_model(ckpt, args.checkpoint, args)
    recorded = None
    if ckpt is not None:
        recorded = _recorded_model_options(args, ckpt)
    else:
        partly = task.partly_pretrained(args.model)
        if partly:  # a randomly initialised part would be scored (as without weights)
            raise UsageError(partly)
    num_classes = args.num_classes or data_classes
    if ckpt is not None and not args.num_classes:
        num_classes = _checkpoint_classes(ckpt, task.classifier(args.model)) or num_classes
    build = args
    if ckpt is not None and args.pretrained:  # the checkpoint holds every weight (--pretrained was for a baseline)
        build = copy.copy(args)
        build.pretrained = False
    model = create_model(build, num_classes, recorded=recorded)
    if ckpt is not None:
        check_checkpoint_fits(model, _pick_state(ckpt, args.use_ema), args.checkpoint, ckpt_flag, args.model)
        load_checkpoint(model, args.checkpoint, use_ema=args.use_ema)
    task.check_classes(model.num_classes, data_classes, model_flag, args.model,
                       checkpoint=f'{ckpt_flag} {args.checkpoint!r}' if ckpt is not None else '')
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def _recorded_model_options(args: argparse.Namespace, ckpt: Dict[str, Any]) -> Dict[str, Any]:
    """The model options the checkpoint's run was trained with, where not given (a given one is used as given):
    `timm-elastic train`'s --elastic-* and timm's train.py --model-kwargs (elastic_resample=nearest, head_window=7,
    ...: those other than --elastic-* are returned, for `create_model`). A model built without them is another
    architecture, and for the resampling modes without parameters (nearest, dilated, ...) its weights loaded
    into it without an error."""
    saved = ckpt.get('args')
    if getattr(saved, 'model', None) != args.model:  # another model's options (or a checkpoint of another script)
        return {}
    recorded = getattr(saved, 'model_kwargs', None)
    recorded = dict(recorded) if isinstance(recorded, dict) else {}
    for key in ('elastic_ratio', 'elastic_resample'):
        value = getattr(saved, key, None)
        value = recorded.pop(key, None) if value is None else value
        if getattr(args, key, None) is None and value is not None:
            setattr(args, key, value)
    return recorded


def _check_checkpoint_task(ckpt: Dict[str, Any], path: str, flag: str, args: argparse.Namespace) -> None:
    """Refuse a checkpoint that `timm-elastic train` made for another --task than `args`' (its outputs mean
    something else); checkpoints of other scripts record no task and pass."""
    task = task_of(args).name
    saved = getattr(ckpt.get('args'), 'task', None)
    if saved and saved != task:
        if not hasattr(args, 'task'):  # a command of one task (policy: single-label classification)
            raise UsageError(f'{flag} {path!r} was trained with --task {saved}; this command takes checkpoints of '
                             f'--task {task} only')
        raise UsageError(f'{flag} {path!r} was trained with --task {saved}; use it with --task {saved}')


def baseline_args(args: argparse.Namespace) -> argparse.Namespace:
    """The options of a command's `--baseline NAME` / `--baseline-checkpoint PATH` as `load_for_eval` takes
    them: the baseline's name and weights, and its own architecture (no --elastic-* options)."""
    b = copy.copy(args)
    b.model, b.checkpoint = args.baseline, args.baseline_checkpoint
    # --pretrained gives a baseline without a checkpoint its released weights; with one, they are not needed
    b.pretrained = args.pretrained and not args.baseline_checkpoint
    b.elastic_ratio = b.elastic_resample = None  # the baseline's own architecture
    return b


def _recorded_model(ckpt: Optional[Dict[str, Any]], path: str, args: argparse.Namespace) -> str:
    """The model name a training checkpoint records (timm's saver keeps `--model` as `arch`)."""
    if ckpt is None:
        raise UsageError('--model is needed with --pretrained (with --checkpoint it defaults to the model that the '
                         'checkpoint records)')
    from timm.models import clean_state_dict
    name = ckpt.get('arch')
    if not isinstance(name, str) or not task_of(args).known_model(name):
        note = _original_note(clean_state_dict(ckpt.get('state_dict', ckpt)), path)
        raise UsageError(f'--checkpoint {path!r} does not record a model name (its arch is {name!r})'
                         + (note or '; pass --model NAME'))
    return name


def _pick_state(ckpt: Dict[str, Any], use_ema: bool) -> Dict[str, Any]:
    if use_ema and 'state_dict_ema' in ckpt:
        return dict(ckpt, state_dict=ckpt['state_dict_ema'])
    return ckpt


def _checkpoint_classes(ckpt: Dict[str, Any], classifier: Optional[str]) -> Optional[int]:
    """The class count of a checkpoint: the rows of its `classifier` module's weight (`Task.classifier`; None
    for hf-hub: / local-dir: names, which bring their own)."""
    head = f'{classifier}.weight' if classifier else None
    state = ckpt.get('state_dict', {})
    return int(state[head].shape[0]) if head in state else None
