"""`timm-elastic policy`: score a trained Elastic model's scale policy on a dataset and write the demo.

Loads the model (and optionally a baseline) as `timm-elastic validate` does, runs the data once
through each with timm's evaluation loader while `policy.ScalePolicy` records the scores, and writes
to the output folder: `policy.html` (the page of `report.page`, self-contained), the PNG plots of
`report.plots` (`class_ranking.png`, `embedding_class.png`, `embedding_score.png`, `strip.png`, and
with a baseline `improvement.png`) and `policy.json` (the scores, block names, targets and
predictions, the images' files, for other analyses: the numbers the page shows, both made by `collect`).
"""
import argparse
import base64
import io
import os
from contextlib import nullcontext
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from .. import policy
from .._io import check_not_a_link, check_outside_cwd, first_names, staged_dir, write_json
from . import page, plots

__all__ = ['run', 'collect', 'OUTPUTS']

# the files `run` writes (some of them: the t-SNE plots need a spread of policies, improvement.png a baseline)
OUTPUTS = ('policy.html', 'policy.json', 'class_ranking.png', 'embedding_class.png', 'embedding_score.png',
           'strip.png', 'improvement.png')


def _thumbnails(dataset, size: int) -> List[str]:
    """Each image of `dataset` as a JPEG data URI at most `size` pixels on its longer side, read
    before any loader sets the dataset's transform."""
    saved = getattr(dataset, 'transform', None)
    dataset.transform = None
    try:
        uris = []
        for i in range(len(dataset)):
            image = dataset[i][0].convert('RGB')
            image.thumbnail((size, size))
            buf = io.BytesIO()
            image.save(buf, 'JPEG', quality=85)
            uris.append('data:image/jpeg;base64,' + base64.b64encode(buf.getvalue()).decode('ascii'))
        return uris
    finally:
        dataset.transform = saved


def _predict(model, dataset, args, device, amp_autocast, recorder: Optional[policy.ScalePolicy] = None,
             name: str = ''):
    """(probabilities (N, classes), targets (N,)) over `dataset` in order; `recorder` (of `model`)
    records the scale policy meanwhile. A progress bar named `name` in a terminal (not with --no-progress)."""
    from ..train import Progress, _eval_loader, resolve_config
    loader = _eval_loader(dataset, args.batch_size, args, resolve_config(args, model), device)
    probs, targets = [], []
    model.eval()
    with Progress(len(loader), name, args) as progress, recorder if recorder is not None else nullcontext(), \
            torch.no_grad():
        for x, y in progress.track(loader):
            x = x.to(device)
            if args.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with amp_autocast():
                logits = model(x)
            probs.append(logits.float().softmax(-1).cpu())
            targets.append(y.cpu())
    return torch.cat(probs), torch.cat(targets)


def _files(dataset) -> Optional[List[str]]:
    """Each image's file as timm's ImageDataset names it (relative to the split's folder), or None for images that
    are no files (the built-in data, generated in memory) or a reader that does not name them."""
    from ..data import ScaleShapes
    if isinstance(dataset, ScaleShapes) or not hasattr(dataset, 'filenames'):
        return None
    return [str(f) for f in dataset.filenames()]


def _ranked(probs: torch.Tensor) -> List[List[List[float]]]:
    """Each image's top 5, [[class index, probability to 4 decimals], ...], most probable first; its first class is
    the prediction, on the page and in policy.json alike. One rule, torch.argmax's: a NaN ranks above every number
    (a diverged model's outputs are all NaN: it predicts class 0) and of equal ones the lower class index first
    (topk orders neither: its top class can differ from argmax's)."""
    p, c = probs.sort(dim=1, descending=True, stable=True)
    k = min(5, probs.shape[1])
    return [[[int(ci), round(float(pi), 4)] for ci, pi in zip(cs, ps)] for cs, ps in zip(c[:, :k], p[:, :k])]


def collect(model: str, baseline: Optional[str], blocks: List[str], classes: List[str], thumbs: List[str],
            targets: np.ndarray, scores: np.ndarray, probs: torch.Tensor, base_probs: Optional[torch.Tensor] = None,
            files: Optional[List[str]] = None) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(the data of `report.page`, the content of policy.json) for N images and B Elastic blocks.

    targets (N,) class indices; scores (N, B) the scale policy; probs and base_probs (N, classes) the two
    models' probabilities (base_probs None without a baseline); files (N,) each image's file (None where the
    images are no files: the built-in data). Both hold the same numbers: the scores rounded once to
    `page.SCORE_DECIMALS` (the page shows and sorts by these) and the predictions of `_ranked`.
    """
    rounded = [[round(float(v), page.SCORE_DECIMALS) for v in row] for row in scores]
    top5 = _ranked(probs)
    base_top5 = _ranked(base_probs) if base_probs is not None else [None] * len(targets)
    data = dict(model=model, baseline=baseline, blocks=blocks, classes=classes, images=[
        dict(thumb=thumbs[i], target=int(targets[i]), top5=top5[i], base_top5=base_top5[i], scores=rounded[i],
             file=files[i] if files is not None else None)
        for i in range(len(targets))])
    record = dict(model=model, baseline=baseline, blocks=blocks, classes=classes, files=files,
                  targets=[int(t) for t in targets], predictions=[row[0][0] for row in top5],
                  baseline_predictions=[row[0][0] for row in base_top5] if base_probs is not None else None,
                  scores=rounded)
    return data, record


def _check_out(args: argparse.Namespace) -> None:
    """Refuse an --out that holds files, without --force, or files that policy does not write (the run's
    checkpoints, its data, a user's files: --force would delete them with the folder)."""
    from ..train import UsageError
    held = sorted(os.listdir(args.out)) if os.path.isdir(args.out) else []
    if held and not getattr(args, 'force', False):
        raise UsageError(f'--out {args.out!r} holds files already; pass --force to replace the folder')
    others = [f for f in held if f not in OUTPUTS]
    if others:
        raise UsageError(f'--out {args.out!r} holds files that policy does not write ({first_names(others)}); '
                         '--force replaces only a folder of its outputs: choose another --out')


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """Score, plot and write the page for `args` (the options of `timm-elastic policy`); returns
    what was written: `{'folder', 'files', 'images', 'size' (H, W), 'blocks', 'model', 'baseline', 'top1',
    'baseline_top1', 'no_embedding', 'no_ranking', 'perplexity'}` (why the t-SNE plots / the class ranking are
    missing, or None; the t-SNE perplexity where it is not --perplexity's, too large for the images, or None)."""
    from ..train import UsageError, _class_names, _init_device, amp_context, baseline_args, create_datasets, \
        load_for_eval, resolve_config
    if args.baseline_checkpoint and not args.baseline:
        raise UsageError('--baseline-checkpoint needs --baseline NAME (the model it holds)')
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f'--out {args.out!r} is a file; name a folder (it is created if missing)')
    try:
        check_not_a_link(os.path.abspath(args.out))
        check_outside_cwd(args.out)
    except (ValueError, FileExistsError) as e:
        raise UsageError(f'--out: {e}') from None
    _check_out(args)
    for flag, value in (('--thumb-size', args.thumb_size), ('--perplexity', args.perplexity)):
        if not value > 0:
            raise UsageError(f'{flag} must be positive, got {value}')
    if not 0 <= args.seed < 2 ** 32:  # scikit-learn's random_state; found after the scoring otherwise
        raise UsageError(f'--seed must be at least 0 and less than 2**32 (the t-SNE seed), got {args.seed}')
    policy.require('sklearn.manifold', 'timm-elastic policy (t-SNE)')
    policy.require('matplotlib', 'timm-elastic policy (plots)')
    device = _init_device(args)
    amp_autocast, _ = amp_context(args, device)
    _, dataset, data_classes = create_datasets(args, training=False)
    if not len(dataset):
        raise UsageError('the data has no images to score')
    model = load_for_eval(args, data_classes, device)
    if data_classes is not None and data_classes != model.num_classes:
        # the page names output i by the data's class i: fewer class folders than outputs shift every later name
        raise UsageError(f'the data has {data_classes} classes but --model {args.model} has {model.num_classes} '
                         'outputs; the page names each output by its class in the data, so the data needs one '
                         'class (an image folder: one subfolder) per output, as the model was trained')
    try:
        recorder = policy.ScalePolicy(model)
    except ValueError as e:
        raise UsageError(f'--model: {e}') from None
    baseline = None
    if args.baseline:
        bargs = baseline_args(args)
        baseline = load_for_eval(bargs, data_classes, device, flags=('--baseline', '--baseline-checkpoint'))
        args.baseline = bargs.model
    size = resolve_config(args, model)['input_size'][1:]  # the model's own unless --img-size (timm's validate.py)
    thumbs = _thumbnails(dataset, args.thumb_size)  # after the models: a wrong one fails before this work
    probs, targets = _predict(model, dataset, args, device, amp_autocast, recorder, name=args.model)
    base_probs = None
    if baseline is not None:
        base_probs, _ = _predict(baseline, dataset, bargs, device, amp_autocast, name=bargs.model)
    classes = _class_names(dataset) or [str(i) for i in range(probs.shape[1])]
    names = recorder.names

    # a complete folder or the one that was there, never a mix; what --out holds is checked again at the end
    with staged_dir(args.out, recheck=lambda: _check_out(args)) as staged:
        files = []

        def out(name: str) -> str:
            files.append(name)
            return os.path.join(staged, name)

        s, t = recorder.scores.numpy(), targets.numpy()
        data, record = collect(args.model, args.baseline or None, names, classes, thumbs, t, s, probs, base_probs,
                               files=_files(dataset))
        correct = np.asarray(record['predictions']) == t
        base_correct = np.asarray(record['baseline_predictions']) == t if base_probs is not None else None
        no_ranking = None if np.isfinite(s).all() else 'the scores have NaN or infinite ones (a diverged model?)'
        if not no_ranking:  # a class's mean of NaN scores: a figure without bars
            plots.plot_class_ranking(policy.class_ranking(s, t, classes), out('class_ranking.png'))
        no_embedding = policy.embedding_problem(s)
        perplexity = policy.tsne_perplexity(args.perplexity, len(t))
        if not no_embedding:
            embedding = policy.policy_embedding(s, perplexity=args.perplexity, seed=args.seed)
            plots.plot_embedding(embedding, out('embedding_class.png'), labels=t, class_names=classes)
            plots.plot_embedding(embedding, out('embedding_score.png'), values=s.mean(1))
            plots.plot_strip(s, policy.embedding_order(embedding), names, out('strip.png'))
            if base_correct is not None:
                plots.plot_improvement_density(policy.improvement_density(embedding, correct, base_correct),
                                               out('improvement.png'))
        page.write_page(out('policy.html'), data)
        write_json(out('policy.json'), record)
    return dict(folder=args.out, files=files, images=len(t), size=tuple(size), blocks=len(names), model=args.model,
                no_embedding=no_embedding, no_ranking=no_ranking,
                perplexity=perplexity if not no_embedding and perplexity != args.perplexity else None,
                baseline=args.baseline or None, top1=100. * float(correct.mean()),
                baseline_top1=100. * float(base_correct.mean()) if base_correct is not None else None)
