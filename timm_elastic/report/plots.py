"""Plots of the scale policy analyses (paper Fig. 5 and the three panels of Fig. 6) and of the scale
stress test (Fig. 7).

Each function takes what a `timm_elastic.policy` function returned and a path, draws on its own
matplotlib `Figure` (no pyplot state, no display needed) and writes it atomically, in the format of the path's
extension (`plot_format`: PNG without one).
"""
import io
import os
from typing import Optional, Sequence, Tuple

import numpy as np

from .._io import write_bytes
from ..policy import require

__all__ = ['plot_class_ranking', 'plot_embedding', 'plot_strip', 'plot_improvement_density', 'plot_stress']


_FOR = 'plotting (the scale policy, the stress test)'


def _figure(size: Tuple[float, float]):
    require('matplotlib', _FOR)
    from matplotlib.figure import Figure
    return Figure(figsize=size, dpi=100, layout='constrained')


def plot_format(path: str) -> str:
    """The format matplotlib writes `path` in: its extension's (png, svg, pdf, ...), png without one. A name whose
    extension matplotlib does not write is a ValueError (an .svg named file held PNG bytes before)."""
    require('matplotlib', _FOR)
    from matplotlib.backend_bases import FigureCanvasBase
    ext = os.path.splitext(path)[1][1:].lower()
    known = FigureCanvasBase.get_supported_filetypes()
    if ext and ext not in known:
        raise ValueError(f'{path!r}: matplotlib does not write .{ext} files; name the file .png, .svg, .pdf or '
                         f'another of {", ".join(sorted(known))}')
    return ext or 'png'


def _save(fig, path: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format=plot_format(path))
    write_bytes(path, buf.getvalue())
    return path


def plot_class_ranking(ranking: Sequence[Tuple[str, float, int]], path: str) -> str:
    """Fig. 5: one bar per class, its mean score S, in the order of `policy.class_ranking`."""
    names = [r[0] for r in ranking]
    fig = _figure((max(5.5, 0.35 * len(names) + 1.5), 3.5))  # the title's width
    ax = fig.add_subplot()
    values = [r[1] for r in ranking]
    ax.bar(range(len(names)), values, color=['tab:red' if v > 0 else 'tab:blue' for v in values])
    ax.set_xticks(range(len(names)), names, rotation=60, ha='right', fontsize=8)
    ax.axhline(0, color='black', linewidth=0.5)
    ax.set_ylabel('mean scale policy score S')
    ax.set_title('Classes by scale policy: high resolution (S > 0) to low (S < 0)', fontsize=10)
    return _save(fig, path)


def plot_embedding(embedding: np.ndarray, path: str, values: Optional[Sequence[float]] = None,
                   labels: Optional[Sequence[int]] = None, class_names: Optional[Sequence[str]] = None) -> str:
    """Fig. 6 (left): the t-SNE of the policies, coloured by class (`labels`; up to 20 classes named in a
    legend, more by class index on a colour bar: distinct colours and a legend run out) or by a value per
    image (`values`, e.g. the mean S)."""
    if (values is None) == (labels is None):
        raise ValueError('colour the embedding by exactly one of values= (per image) or labels= (class indices)')
    fig = _figure((6., 5.))
    ax = fig.add_subplot()
    if values is not None:
        values = np.asarray(values, dtype=np.float64)
        # centred on 0, as the strip and the page: red is S > 0 (high resolution), blue S < 0
        limit = float(np.abs(values).max()) or 1.
        points = ax.scatter(embedding[:, 0], embedding[:, 1], c=values, s=6, cmap='coolwarm', vmin=-limit,
                            vmax=limit)
        fig.colorbar(points, ax=ax, label='mean S')
    elif len(np.unique(labels)) > 20:
        points = ax.scatter(embedding[:, 0], embedding[:, 1], c=np.asarray(labels), s=6, cmap='turbo')
        fig.colorbar(points, ax=ax, label='class index')
    else:
        import matplotlib
        labels, cmap = np.asarray(labels), matplotlib.colormaps['tab20']
        for c in np.unique(labels):
            name = class_names[c] if class_names is not None else str(c)
            ax.scatter(*embedding[labels == c].T, s=6, label=name, color=cmap(int(c) % 20))
        ax.legend(fontsize=7, markerscale=2, loc='best')
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title('Images embedded by their scale policy (t-SNE)')
    return _save(fig, path)


def plot_strip(scores, order: Sequence[int], block_names: Sequence[str], path: str) -> str:
    """Fig. 6 (middle): the N x B scores as an image, one column per image in `order`, one row per
    block (first block on top); red = high resolution, blue = low."""
    scores = np.asarray(scores, dtype=np.float64)[np.asarray(order)]
    fig = _figure((8., max(2.5, 0.18 * len(block_names) + 1.2)))
    ax = fig.add_subplot()
    limit = float(np.abs(scores).max()) or 1.
    image = ax.imshow(scores.T, aspect='auto', cmap='coolwarm', vmin=-limit, vmax=limit, interpolation='nearest')
    ax.set_yticks(range(len(block_names)), block_names, fontsize=6)
    ax.set_xlabel('images, in embedding order')
    fig.colorbar(image, ax=ax, label='S')
    ax.set_title('Scale policy per block')
    return _save(fig, path)


def plot_improvement_density(density, path: str) -> str:
    """Fig. 6 (right): the density of all images in the embedding and of those the Elastic model
    gets right and the baseline wrong (`policy.improvement_density`)."""
    fig = _figure((9., 4.))
    extent = (density['x_edges'][0], density['x_edges'][-1], density['y_edges'][0], density['y_edges'][-1])
    for i, (key, title) in enumerate((('all', f'all images ({density["images"]})'),
                                      ('improved', f'Elastic right, baseline wrong ({density["improved_images"]})'))):
        ax = fig.add_subplot(1, 2, i + 1)
        ax.imshow(density[key].T, origin='lower', extent=extent, aspect='auto', cmap='magma')
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    return _save(fig, path)


def plot_stress(relative, path: str, title: str) -> str:
    """Fig. 7: per test size, a bar per metric of the relative improvement (percent) of the Elastic model
    over its baseline; `relative` is {metric: {size: [value per seed]}}, the bar the mean and, with
    several seeds, a line from the lowest to the highest seed (None values, a baseline at 0, are left out)."""
    labels = {'f1_o': 'F1-Overall', 'f1_c': 'F1-PerClass', 'top1': 'top-1'}
    metrics = list(relative)
    sizes = list(next(iter(relative.values())))
    fig = _figure((max(5., 1.1 * len(sizes) + 1.5), 3.8))
    ax = fig.add_subplot()
    width = 0.8 / len(metrics)
    for k, m in enumerate(metrics):
        values = [np.asarray([v for v in relative[m][s] if v is not None] or [np.nan], dtype=float) for s in sizes]
        x = np.arange(len(sizes)) + (k - (len(metrics) - 1) / 2) * width
        ax.bar(x, [v.mean() for v in values], width, label=labels.get(m, m))
        if any(len(v) > 1 for v in values):
            ax.vlines(x, [v.min() for v in values], [v.max() for v in values], color='black', linewidth=1)
    if all(v is None for m in metrics for s in sizes for v in relative[m][s]):  # no bar at all: say why
        ax.text(0.5, 0.7, 'n/a at every size: the baseline scored 0,\nso no relative improvement exists',
                transform=ax.transAxes, ha='center', va='center', fontsize=9)
    ax.set_xticks(range(len(sizes)), [f'{s}x{s}' for s in sizes])
    ax.axhline(0, color='black', linewidth=0.5)
    ax.set_xlabel('test size')
    ax.set_ylabel('relative improvement (%)')
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return _save(fig, path)
