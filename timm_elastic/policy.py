"""The scale policy of an Elastic model (paper Sec. 4.1.1, Figs. 1, 5 and 6, Appendix C).

An Elastic block runs some of its paths on the input as it is and the others on the input
downsampled 2x; which group an image drives harder is that block's scale for that image. The
paper's score, for block b and one image:

    S_b = A_high - A_low

where A is the mean activation, over channels and positions, after the ReLU that follows the 3x3
convolution, in the high-resolution group and in the low-resolution group (the latter at its own,
half resolution). S_b > 0: the image is processed mostly at high resolution in block b. An image's
policy is its vector of S_b over the model's Elastic blocks (17 for ResNeXt50+Elastic).

Where the score is read. In a ResNeXt, SE-ResNeXt or DLA path the 3x3 convolution is followed by its
BN and ReLU (`act2`): A is the mean of that ReLU's output, as the paper defines it. A DenseNet path
ends with its 3x3 convolution: its output is concatenated to the block's features and only the
following layers normalise and rectify it (BN-ReLU of their pre-activation), mixed with every other
layer's features. There A is the mean of ReLU(conv2(...)), the positive part of the 3x3
convolution's output: the nearest thing to the paper's "activation after the ReLU after the 3x3
convolution" that belongs to one group alone. The rule, for any path: the output of the first activation
module (torch's or timm's) after the path's last 3x3 convolution; without one, the ReLU of that
convolution's output. In every registered model that activation is a ReLU; in one built with another
`act_layer` (e.g. 'silu'), A is read after that activation (act2), where the paper has its ReLU.

`ScalePolicy` records the scores during any forward passes of an eager model (training or
evaluation mode, any batch size, channels_last, autocast, CPU or CUDA) through forward hooks that
read the activations and change nothing: the model's outputs are bit-identical with and without it.
`scale_policy` runs a model over images, tensors, a Dataset or a DataLoader and returns the scores.

The analyses of Sec. 4.1.1 are functions of the scores that return data (`timm_elastic.report`
plots them): `class_ranking` (Fig. 5), `policy_embedding` (t-SNE, Fig. 6 left), `embedding_order`
(the per-layer strip, Fig. 6 middle) and `improvement_density` (Fig. 6 right). t-SNE needs
scikit-learn, the plots matplotlib: `pip install 'timm-elastic[analysis]'`.
"""
import importlib
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import Elastic

__all__ = [
    'ScalePolicy', 'scale_policy', 'policy_blocks', 'class_ranking', 'policy_embedding', 'embedding_problem',
    'embedding_order', 'improvement_density', 'tsne_perplexity', 'require',
]


def _tap(path: nn.Module) -> Tuple[nn.Module, bool]:
    """(module whose output is read, whether to rectify it) for one group of an Elastic block."""
    modules = list(path.modules())
    convs = [i for i, m in enumerate(modules) if isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (3, 3)]
    if not convs:
        raise ValueError(f'an Elastic path without a 3x3 convolution has no scale policy score: {type(path).__name__}')
    following = modules[convs[-1] + 1:]
    # up to the next convolution (a ResNeXt path's 1x1 conv3): the first layer that is no normalisation, dropout
    # or identity is the activation, torch's, timm's or a user's own (act_layer=MyAct)
    end = next((i for i, m in enumerate(following) if isinstance(m, nn.Conv2d)), len(following))
    after = [m for m in following[:end] if not list(m.children()) and not _passes_through(m)]
    return (after[0], False) if after else (modules[convs[-1]], True)


def _passes_through(module: nn.Module) -> bool:
    """A layer between a convolution and its activation that is not the activation: a normalisation (torch's,
    timm's), dropout (torch's, timm's DropBlock / DropPath) or an identity."""
    where = type(module).__module__
    return isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm,
                               nn.modules.dropout._DropoutNd, nn.Identity)) \
        or where.startswith(('timm.layers.norm', 'timm.layers.drop'))


def policy_blocks(model: nn.Module) -> List[Tuple[str, Elastic]]:
    """The Elastic blocks of `model` in forward order, as (name, Elastic module) pairs.

    A block's name is its module path without the trailing `.elastic` (`'layer1.0'` in a ResNeXt,
    `'features.denseblock1.denselayer1'` in a DenseNet), in the model itself: a wrapper's prefix
    (DistributedDataParallel's or DataParallel's `module.`, torch.compile's `_orig_mod.`, timm's ModelEma) is
    not part of it (`timm.utils.unwrap_model`). Raises ValueError, in one line, for a model without Elastic
    blocks.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f'the scale policy needs an Elastic model (an nn.Module), got {type(model).__name__}')
    from timm.utils import unwrap_model
    model = unwrap_model(model)
    blocks = [(name[:-len('.elastic')] if name.endswith('.elastic') else name, m)
              for name, m in model.named_modules() if isinstance(m, Elastic)]
    if not blocks:
        arch = getattr(model, 'default_cfg', {}).get('architecture') or type(model).__name__
        raise ValueError(f'{arch} has no Elastic blocks, so it has no scale policy; use an Elastic model '
                         f'(`timm-elastic models` lists them)')
    return blocks


class ScalePolicy:
    """Records the scale policy score S of every Elastic block of `model` while it runs.

        with ScalePolicy(model) as policy:
            for x, _ in loader:
                model(x)
        policy.scores   # (N, B) float32, one row per image in the order the model saw them
        policy.names    # the B block names, e.g. ['layer1.0', ..., 'layer3.4']

    Every forward pass adds its batch's rows; `reset()` forgets them. The hooks only read: outputs,
    gradients and BN statistics are those of the model without the recorder. Scores stay on the
    model's device until `scores` is read (then they are copied to the CPU once). Meant for eager
    models: run `torch.compile`d models without it. Checkpointed blocks (`set_grad_checkpointing()`,
    DenseNet's memory-efficient layers) run again in the backward pass; those runs are not recorded.
    """

    def __init__(self, model: nn.Module):
        blocks = policy_blocks(model)
        self.names: List[str] = [name for name, _ in blocks]
        self._taps = [(_tap(block.high), _tap(block.low)) for _, block in blocks]
        self._means: List[Tuple[List[torch.Tensor], List[torch.Tensor]]] = [([], []) for _ in self.names]
        self._handles: List[Any] = []

    def reset(self) -> None:
        """Forget every recorded score."""
        for high, low in self._means:  # in place: the hooks hold these lists
            high.clear()
            low.clear()

    def __enter__(self) -> 'ScalePolicy':
        if self._handles:
            raise RuntimeError('this ScalePolicy is already recording')
        for (high, low), (high_means, low_means) in zip(self._taps, self._means):
            for (module, rectify), means in ((high, high_means), (low, low_means)):
                self._handles.append(module.register_forward_hook(_recorder(means, rectify)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @property
    def scores(self) -> torch.Tensor:
        """(N, B) float32 on the CPU: S = A_high - A_low per recorded image and Elastic block."""
        counts = {(name, side): sum(len(t) for t in means)
                  for name, pair in zip(self.names, self._means) for side, means in zip(('high', 'low'), pair)}
        if len(set(counts.values())) > 1:
            seen = ', '.join(f'{name} {side}: {n}' for (name, side), n in counts.items())
            raise RuntimeError(f'the Elastic blocks recorded different numbers of images ({seen}); record whole '
                               f'forward passes of the model')
        if not next(iter(counts.values())):
            return torch.zeros(0, len(self.names))
        return torch.stack([torch.cat(high) - torch.cat(low) for high, low in self._means], 1).cpu()


def _recorder(means: List[torch.Tensor], rectify: bool):
    def hook(module: nn.Module, args, output: torch.Tensor) -> None:
        # inside a backward pass the forward runs again only to recompute a checkpointed segment (timm's
        # set_grad_checkpointing): the image was recorded already (PyTorch has no public test for this)
        if torch._C._current_graph_task_id() != -1:
            return
        # detached first: no autograd graph (a checkpointed segment must save the same tensors when it is
        # recomputed, where this returns early); not in place: the model's tensor stays as it is
        out = F.relu(output.detach()) if rectify else output.detach()
        means.append(out.mean(dim=(1, 2, 3), dtype=torch.float32))
    return hook


def _batches(images, batch_size: int, model: nn.Module) -> Iterable[torch.Tensor]:
    """Batches of model inputs from a tensor, a sequence of images or tensors, a Dataset or a DataLoader."""
    if isinstance(images, torch.Tensor):
        if images.dim() != 4:
            raise ValueError(f'images as a tensor must be (N, C, H, W), got shape {tuple(images.shape)}')
        if len(images):
            yield from images.split(batch_size)
        return
    if isinstance(images, torch.utils.data.DataLoader):
        for batch in images:
            yield batch[0] if isinstance(batch, (tuple, list)) else batch
        return
    from PIL import Image
    transform = None
    batch: List[torch.Tensor] = []
    # a map-style Dataset need not be iterable: index it (an IterableDataset has a __getitem__ that raises)
    indexed = hasattr(images, '__getitem__') and not isinstance(images, torch.utils.data.IterableDataset)
    items = (images[i] for i in range(len(images))) if indexed else images
    for item in items:
        if isinstance(item, (tuple, list)):  # a dataset's (image, target)
            item = item[0]
        if isinstance(item, Image.Image):
            if transform is None:
                transform = _eval_transform(model)
            # timm's transforms expect RGB, as its datasets read every image (greyscale, RGBA, palette ...)
            item = transform(item if item.mode == 'RGB' else item.convert('RGB'))
        elif not isinstance(item, torch.Tensor):
            raise ValueError(
                f'images must be PIL images or (C, H, W) tensors, got an item of type {type(item).__name__}')
        batch.append(item)
        if len(batch) == batch_size:
            yield torch.stack(batch)
            batch = []
    if batch:
        yield torch.stack(batch)


def _eval_transform(model: nn.Module):
    from timm.data import create_transform, resolve_data_config
    return create_transform(**resolve_data_config({}, model=model))


def scale_policy(model: nn.Module, images, batch_size: int = 64, device: Optional[torch.device] = None
                 ) -> torch.Tensor:
    """The scale policy scores of `model` on `images`: a (N, B) float32 CPU tensor.

    Row n is image n's policy, column b the score S = A_high - A_low of Elastic block b, in the order
    of `ScalePolicy(model).names` (B = 17 for `resnext50_elastic`).

    Args:
        model: an Elastic model, in whatever mode the caller set (eval for its learnt statistics).
        images: a (N, C, H, W) tensor ready for the model; a sequence of PIL images (transformed
            with timm's evaluation transform for the model's pretrained cfg) or of (C, H, W)
            tensors; a Dataset whose items are images or (image, target); or a DataLoader whose
            batches are tensors or (input, target).
        batch_size: images per forward pass (not used for a DataLoader, which has its own).
        device: where to run; default the model's device. Runs under `torch.no_grad()` and under any
            autocast the caller entered.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f'batch_size must be a positive int, got {batch_size!r}')
    recorder = ScalePolicy(model)
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device('cpu'))
    seen = 0
    with recorder, torch.no_grad():
        for x in _batches(images, batch_size, model):
            model(x.to(device))
            seen += x.shape[0]
    if not seen:
        raise ValueError('no images to score: the data is empty')
    return recorder.scores


def require(module: str, feature: str):
    """Import an optional dependency of the analyses, or fail in one line naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package = {'sklearn': 'scikit-learn'}.get(module.split('.')[0], module.split('.')[0])
        raise ImportError(f"{feature} needs {package}, which is not installed: pip install 'timm-elastic[analysis]'"
                          ) from None


def _matrix(scores) -> np.ndarray:
    scores = np.asarray(scores.detach().cpu() if isinstance(scores, torch.Tensor) else scores, dtype=np.float64)
    if scores.ndim != 2 or not scores.shape[0] or not scores.shape[1]:
        raise ValueError(f'scores must be an (N, B) array with N, B >= 1 (scale_policy returns one), '
                         f'got shape {scores.shape}')
    return scores


def class_ranking(scores, targets: Sequence[int], class_names: Optional[Sequence[str]] = None
                  ) -> List[Tuple[str, float, int]]:
    """Paper Fig. 5: the classes sorted by their mean score S, over all blocks and all their images.

    scores: (N, B) from `scale_policy`; targets: N class indices. Returns (class name, mean S, number
    of images) per class present, highest S first (a tie: the lower class index first). A class is
    named `class_names[i]`, or `str(i)` without names.
    """
    scores = _matrix(scores)
    targets = np.asarray(targets, dtype=np.int64).reshape(-1)
    if targets.shape[0] != scores.shape[0]:
        raise ValueError(f'{scores.shape[0]} score rows but {targets.shape[0]} targets')
    per_image = scores.mean(1)
    rows = []
    for c in np.unique(targets):
        if class_names is not None and not 0 <= c < len(class_names):
            raise ValueError(f'target {c} has no name: class_names has {len(class_names)}')
        mine = per_image[targets == c]
        rows.append((class_names[c] if class_names is not None else str(c), float(mine.mean()), int(mine.size), c))
    rows.sort(key=lambda r: (-r[1], r[3]))
    return [r[:3] for r in rows]


def policy_embedding(scores, perplexity: float = 30., seed: int = 0) -> np.ndarray:
    """Paper Fig. 6 (left): a t-SNE of the images' policy vectors, (N, 2).

    scikit-learn's `TSNE` (PCA initialisation, automatic learning rate, `random_state=seed`: the same
    scores give the same embedding) at `tsne_perplexity(perplexity, N)`. Needs finite scores and at least 2
    different rows (ValueError).
    """
    manifold = require('sklearn.manifold', 't-SNE of the scale policy')
    scores = _matrix(scores)
    problem = embedding_problem(scores)
    if problem:
        raise ValueError(problem)
    perplexity = tsne_perplexity(perplexity, scores.shape[0])
    init = 'pca' if scores.shape[1] >= 2 else 'random'  # PCA to 2 dimensions needs 2 of them
    tsne = manifold.TSNE(2, perplexity=perplexity, init=init, learning_rate='auto', random_state=seed)
    return tsne.fit_transform(scores).astype(np.float64)


def tsne_perplexity(perplexity: float, n: int) -> float:
    """The t-SNE perplexity `policy_embedding` uses for `n` images: `perplexity`, at most (n - 1) / 3 (and at
    least 1). t-SNE models each image's 3 x perplexity nearest neighbours (van der Maaten's Barnes-Hut code
    refuses fewer images); as the perplexity nears n every image becomes every image's neighbour and clusters
    merge (two clusters of 12 images: apart at 7.7, mixed at 23)."""
    return float(min(perplexity, max(1., (n - 1) / 3.)))


def embedding_problem(scores) -> Optional[str]:
    """Why `policy_embedding` cannot embed `scores` (N, B), in a sentence, or None where it can."""
    scores = _matrix(scores)
    if not np.isfinite(scores).all():
        return 'an embedding needs finite scores; these have NaN or infinite ones (a diverged model?)'
    distinct = len(np.unique(scores, axis=0))
    if distinct < 2:  # scikit-learn's t-SNE divides by a zero spread there: NaNs, then a crash of the process
        return f'an embedding needs at least 2 different policies, got {scores.shape[0]} images with {distinct}'
    return None


def embedding_order(embedding: np.ndarray) -> np.ndarray:
    """Paper Fig. 6 (middle): an order of the images that follows the embedding, so that images
    with similar policies sit side by side in the per-layer strip: by position along the
    embedding's principal axis, pointed the way of its largest component (along x: left to right).
    Returns N indices."""
    embedding = _matrix(embedding)
    centred = embedding - embedding.mean(0)
    axis = np.linalg.svd(centred, full_matrices=False)[2][0] if embedding.shape[0] > 1 else np.ones(embedding.shape[1])
    if axis[np.argmax(np.abs(axis))] < 0:
        axis = -axis
    return np.argsort(centred @ axis, kind='stable')


def improvement_density(embedding: np.ndarray, elastic_correct: Sequence[bool], baseline_correct: Sequence[bool],
                        bins: int = 32) -> Dict[str, Any]:
    """Paper Fig. 6 (right): where in the embedding the images lie that the Elastic model gets right
    and the baseline gets wrong, against where all images lie.

    Returns `all` and `improved`, (bins, bins) histograms over the same grid each normalised to sum
    to 1 (`improved` is all zeros when there is no such image), `x_edges` / `y_edges` (bins + 1),
    and the counts `images` and `improved_images`. Row i of a histogram is the i-th bin of x.
    """
    embedding = _matrix(embedding)
    if embedding.shape[1] != 2:
        raise ValueError(f'embedding must be (N, 2), got shape {embedding.shape}')
    elastic_correct = np.asarray(elastic_correct, dtype=bool).reshape(-1)
    baseline_correct = np.asarray(baseline_correct, dtype=bool).reshape(-1)
    n = embedding.shape[0]
    if elastic_correct.size != n or baseline_correct.size != n:
        raise ValueError(f'{n} embedded images but {elastic_correct.size} Elastic and {baseline_correct.size} '
                         f'baseline results')
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f'bins must be a positive int, got {bins!r}')
    improved = elastic_correct & ~baseline_correct
    lo, hi = embedding.min(0), embedding.max(0)
    hi = np.where(hi > lo, hi, lo + 1.)  # one point, or all on a line: a grid of width 1
    x_edges, y_edges = np.linspace(lo[0], hi[0], bins + 1), np.linspace(lo[1], hi[1], bins + 1)

    def density(points: np.ndarray) -> np.ndarray:
        h = np.histogram2d(points[:, 0], points[:, 1], bins=(x_edges, y_edges))[0]
        return h / h.sum() if h.sum() else h

    return {'all': density(embedding), 'improved': density(embedding[improved]), 'x_edges': x_edges,
            'y_edges': y_edges, 'images': int(n), 'improved_images': int(improved.sum())}
