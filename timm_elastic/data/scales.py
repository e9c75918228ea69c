"""ScaleShapes: a procedurally generated, scale-challenging image-classification dataset.

The ELASTIC paper shows its largest gains on "scale challenging images" (Sec. 4.2, Table 4): it
splits the MS COCO validation images by which object sizes (small / medium / large) they
contain and reports accuracy for each of the 7 non-empty combinations. ScaleShapes rebuilds that
experiment in miniature so that a small model trains on a 2-core CPU in minutes and is then
scored per size combination:

- an image shows 1 to 3 objects of one class, one object per size of its combination
  (`COMBINATIONS`, in the order of Table 4's rows); the label is the class;
- the 8 classes (`CLASSES`) are told apart by the pattern that fills an object (stripes, checks,
  dots, rings...), in two random colours of strong contrast, whatever its outline (a disc or a
  rotated square, at random). A pattern repeats 3 times across its object, so it scales with
  the object as a real object's appearance does: at the large size (30-40 pixels at 64x64) it
  is coarse and obvious, at the small size (9-13 pixels) its period is 3-4 pixels, near the limit
  of what the input resolves (a small model reads it with a stem of 3x3 convolutions, as the tiny
  twins have, far less well with timm's 7x7 stride-2 one);
- the background is clutter that never fills an area with a pattern: a smooth random colour
  gradient, pixel noise, and thin line segments, open arcs and specks;
- in the multi-label mode (`multilabel=True`, the paper's COCO experiment in miniature) each
  object has a class of its own, all different, and the target is the set of classes present;
  the image is otherwise the single-label one;
- in the segmentation mode (`segmentation=True`, the paper's PASCAL VOC experiment in miniature) the
  images are the multi-label mode's and the target is the class of every pixel (`SEGMENTATION_CLASSES`:
  0 the background, 1 + the index in `CLASSES` for an object).

The classes are patterns rather than outlines because a small CNN learns them within the few
thousand images a CPU trains on in a minute: with outlines (disc, ring, star...) the same models
were at 20-40% top-1 after 24,000 images, far from converged even on the large objects.

Image `i` of a split is a pure function of `(seed, split, i)`: a layout (the class, the objects'
sizes, boxes and colours, the clutter) is sampled first from
`numpy.random.default_rng([seed, split_index, i])`, then rendered from the layout alone. So the
recorded boxes (`ScaleShapes.objects`) are exactly what was drawn, they come without rendering,
and neither the access order nor the global RNG state changes an image. Shapes are drawn with
PIL at 4x the image side and box-filtered down, so small objects are anti-aliased.

`write_image_folder` stores the splits as an ImageFolder tree that timm reads as is
(`timm.data.create_dataset('', root=root, split='validation')`, or `train.py --data-dir root`)
with an `objects.csv` beside it, and `read_combinations` reads the size combination of each of
its files back.
"""
import csv
import math
import os
import shutil
import uuid
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch.utils.data
from PIL import Image, ImageDraw

from .._io import OutputExistsError, check_not_a_link, check_outside_cwd, first_names, replace_dir

__all__ = [
    'SIZES', 'SIZE_RANGES', 'COMBINATIONS', 'CLASSES', 'SEGMENTATION_CLASSES', 'SPLITS', 'DEFAULT_SAMPLES',
    'MIN_IMG_SIZE', 'combination_name', 'ScaleShapes', 'write_image_folder', 'is_image_folder', 'read_combinations',
]

SIZES: Tuple[str, ...] = ('small', 'medium', 'large')

# An object's size is the longer side of its axis-aligned bounding box (after rotation) as a
# fraction of the image side. COCO calls an object small below 32x32 pixels in a ~640x480 image
# and large above 96x96, i.e. roughly under 1/15 and over 1/5 of the side; at 64x64 a 1/15 object
# is ~4 pixels, too few to hold any pattern, so the buckets are shifted up and spaced so that
# neighbouring sizes differ by ~1.8x with a gap between them. The smallest object (0.14 of 64 =
# 9 pixels) still holds 3 periods of 3 pixels, resolvable in the input.
SIZE_RANGES: Dict[str, Tuple[float, float]] = {
    'small': (0.14, 0.20),
    'medium': (0.26, 0.36),
    'large': (0.46, 0.62),
}

# The rows of the paper's Table 4, as (Large, Medium, Small) flags 001, 010, 011, 100, 101, 110,
# 111; a combination names its sizes from large to small.
COMBINATIONS: Tuple[Tuple[str, ...], ...] = (
    ('small',),
    ('medium',),
    ('medium', 'small'),
    ('large',),
    ('large', 'small'),
    ('large', 'medium'),
    ('large', 'medium', 'small'),
)

# Sorted by name, so that timm's ImageFolder reader (which numbers class folders in sorted order)
# gives a written folder the same targets as ScaleShapes.
CLASSES: Tuple[str, ...] = ('checks', 'diagonal', 'dots', 'grid', 'hstripes', 'plain', 'rings', 'vstripes')
# the classes of a pixel in the segmentation mode: the background first, as in PASCAL VOC
SEGMENTATION_CLASSES: Tuple[str, ...] = ('background', *CLASSES)

SPLITS: Tuple[str, ...] = ('train', 'validation')
# 1400 = 8 classes x 7 combinations x 25: every (class, combination) cell equally often
DEFAULT_SAMPLES: Dict[str, int] = {'train': 6000, 'validation': 1400}
MIN_IMG_SIZE = 32

_SUPERSAMPLE = 4
# Minimum luma difference (0-255) between an object and what it is drawn on; clutter gets less so
# that some of it is faint, as real clutter is.
_OBJECT_CONTRAST = 56.
# between a pattern's two colours: the pattern, not the outline, is the class, so it must show
_PATTERN_CONTRAST = 80.
_CLUTTER_CONTRAST = 28.
# How much of an object's box may lie in the box of a larger object drawn before it: partial
# occlusion, never a hidden object.
_MAX_OVERLAP = 0.3
_CSV_NAME = 'objects.csv'
_CSV_FIELDS = ('split', 'file', 'class', 'target', 'combination', *SIZES)


def combination_name(combination: Sequence[str]) -> str:
    """The name of a size combination: its sizes from large to small joined by '+'.

    `('large', 'small')` -> `'large+small'`; the inverse is `tuple(name.split('+'))`. Raises
    ValueError for anything that is not one of `COMBINATIONS`.
    """
    combination = tuple(combination)
    if combination not in COMBINATIONS:
        raise ValueError(f'combination must be one of {", ".join(map(repr, COMBINATIONS))}, got {combination!r}')
    return '+'.join(combination)


# An object's outline, in unit coordinates (|p| <= 1): a square (rotated at random) or a disc.
# The outline is not the class: it only varies what the pattern is cut to.
_SQUARE = np.array([(-1., -1.), (1., -1.), (1., 1.), (-1., 1.)])
_OUTLINES = ('disc', 'square')
# Periods of the pattern across the object's extent (the longer side of its box)
_REPEATS = 3.


def _pattern(name: str, x: np.ndarray, y: np.ndarray, period: float, phase: Tuple[float, float],
             flip: bool) -> np.ndarray:
    """Where class `name` paints its second colour, at points (x, y) (pixels, relative to the
    object's centre): a boolean array. Every pattern is its own mirror image (a flipped diagonal
    is a diagonal), so a horizontal flip keeps the class."""
    x, y = np.broadcast_arrays(x, y)
    u, v = x / period + phase[0], y / period + phase[1]
    if name == 'plain':
        return np.zeros(x.shape, bool)
    if name == 'hstripes':
        return (v % 1.) < 0.5
    if name == 'vstripes':
        return (u % 1.) < 0.5
    if name == 'diagonal':  # stripes at 45 degrees, either way, with the same period across them
        return (((u - v if flip else u + v) / math.sqrt(2.)) % 1.) < 0.5
    if name == 'checks':
        return ((np.floor(2 * u) + np.floor(2 * v)) % 2) == 0
    if name == 'grid':
        return ((u % 1.) < 0.3) | ((v % 1.) < 0.3)
    if name == 'dots':
        return ((u % 1.) - 0.5) ** 2 + ((v % 1.) - 0.5) ** 2 < 0.3 ** 2
    if name == 'rings':  # centred on the object
        return ((np.hypot(x, y) / period + phase[0]) % 1.) < 0.5
    raise ValueError(f'unknown pattern {name!r}')


class _Object(NamedTuple):
    size: str
    polygon: Optional[np.ndarray]  # the outline in pixel coordinates; None for a disc
    bbox: Tuple[float, float, float, float]  # (x0, y0, x1, y1) in pixels
    colour: Tuple[int, int, int]  # the pattern's first colour, the one that contrasts with what is below
    colour2: Tuple[int, int, int]  # its second colour, in contrast with the first
    period: float  # pixels
    phase: Tuple[float, float]  # in periods
    flip: bool  # which way the diagonal goes
    cls: int  # the index in CLASSES of its pattern


class _Stroke(NamedTuple):
    kind: str  # 'line', 'arc' or 'speck'
    box: Tuple[float, ...]  # line: (x0, y0, x1, y1); arc, speck: ellipse box (x0, y0, x1, y1); pixels
    width: float  # pixels
    arc: Tuple[float, float]  # start, end in degrees (arc only)
    colour: Tuple[int, int, int]


class _Layout(NamedTuple):
    img_size: int
    target: int
    combination: Tuple[str, ...]
    colours: np.ndarray  # (2, 3) gradient end colours
    ramp: Tuple[float, float, float]  # gradient position t = a + b * x + c * y, clipped to [0, 1]
    noise: float  # pixel noise standard deviation, 0-255 units
    noise_key: Tuple[int, ...]
    strokes: Tuple[_Stroke, ...]
    objects: Tuple[_Object, ...]


def _cell(index: int) -> Tuple[int, int]:
    # (class, combination) cycles through all 56 cells, so any 56 consecutive images hold each
    # cell once and the per-combination accuracies of a split are measured on equal class mixes
    cell = index % (len(CLASSES) * len(COMBINATIONS))
    return cell % len(CLASSES), cell // len(CLASSES)


_LUMA = np.array([0.299, 0.587, 0.114])


def _background(layout: _Layout, xy: np.ndarray) -> np.ndarray:
    a, b, c = layout.ramp
    t = np.clip(a + b * xy[:, 0] + c * xy[:, 1], 0., 1.)[:, None]
    return layout.colours[0] + t * (layout.colours[1] - layout.colours[0])


def _pick_colours(rng: np.random.Generator, below: np.ndarray, contrast: float) -> List[Tuple[int, int, int]]:
    """For each row of `below` ((n, m, 3): the m colours one drawing covers), a colour whose luma
    differs from all of them by at least `contrast`, else the one that differs most."""
    # a fixed number of candidates per drawing keeps the number of draws, and so the rest of the
    # stream, independent of which candidate wins
    candidates = rng.integers(0, 256, (len(below), 32, 3))
    if below.ndim == 2:
        below = below[:, None]
    diff = np.abs((candidates @ _LUMA)[:, :, None] - (below @ _LUMA)[:, None, :]).min(2)
    ok = diff >= contrast
    pick = np.where(ok.any(1), ok.argmax(1), diff.argmax(1))
    return [tuple(c) for c in candidates[np.arange(len(below)), pick].tolist()]


def _multilabel_classes(seed: int, split_index: int, index: int) -> Tuple[int, ...]:
    """The class of each object of a multi-label image, largest first: the largest keeps the image's
    class, the others take other classes, all different. Drawn from a stream of their own, so the
    rest of the layout is the single-label image's, and cheap to get without the layout."""
    target, combo = _cell(index)
    others = np.random.default_rng([seed, split_index, index, 2]).permutation(
        [c for c in range(len(CLASSES)) if c != target])
    return (target, *(int(c) for c in others[:len(COMBINATIONS[combo]) - 1]))


def _sample_layout(seed: int, split_index: int, index: int, img_size: int, multilabel: bool = False) -> _Layout:
    rng = np.random.default_rng([seed, split_index, index])
    target, combo = _cell(index)
    s = float(img_size)

    theta = rng.uniform(0, 2 * math.pi)
    dx, dy = math.cos(theta), math.sin(theta)
    half = (abs(dx) + abs(dy)) * s / 2  # the ramp spans exactly corner to corner
    ramp = (0.5 - (dx + dy) * s / 2 / (2 * half), dx / (2 * half), dy / (2 * half))
    layout = _Layout(img_size, target, COMBINATIONS[combo], rng.integers(0, 256, (2, 3)).astype(float), ramp,
                     noise=float(rng.uniform(3, 10)), noise_key=(seed, split_index, index, 1), strokes=(), objects=())

    # clutter, drawn in one batch: 6-12 strokes of kind line (40%), arc (30%) or speck (30%)
    n = int(rng.integers(6, 13))
    u = rng.random((n, 7))
    kinds = np.searchsorted([0.4, 0.7], u[:, 0], side='right')
    centres = u[:, 1:3] * s
    colours = _pick_colours(rng, _background(layout, centres), _CLUTTER_CONTRAST)
    strokes = []
    for kind, (cx, cy), (u3, u4, u5, u6), colour in zip(kinds.tolist(), centres.tolist(), u[:, 3:].tolist(), colours):
        arc = (0., 0.)
        if kind == 0:
            half_len, angle = (0.06 + 0.19 * u4) * s, math.pi * u5
            dx, dy = half_len * math.cos(angle), half_len * math.sin(angle)
            box = (cx - dx, cy - dy, cx + dx, cy + dy)
        elif kind == 1:
            r = (0.05 + 0.17 * u4) * s
            # at most 200 degrees: an arc never closes into a ring
            arc = (360 * u5, 360 * u5 + 45 + 155 * u6)
            box = (cx - r, cy - r, cx + r, cy + r)
        else:
            # at most 0.045 of the side, well under the smallest object (0.10): never a disc
            rx, ry = (0.008 + 0.014 * u4) * s, (0.008 + 0.014 * u6) * s
            box = (cx - rx, cy - ry, cx + rx, cy + ry)
        strokes.append(_Stroke(('line', 'arc', 'speck')[kind], box, 0.5 + 0.9 * u3, arc, colour))

    objects = []
    for size in layout.combination:
        lo, hi = SIZE_RANGES[size]
        extent = rng.uniform(lo, hi) * s
        angle = rng.uniform(0, 2 * math.pi)
        disc = _OUTLINES[int(rng.integers(len(_OUTLINES)))] == 'disc'
        c, sn = math.cos(angle), math.sin(angle)
        pts = np.array([(-1., -1.), (1., 1.)]) if disc else _SQUARE @ np.array([[c, sn], [-sn, c]])
        lo_xy, hi_xy = pts.min(0), pts.max(0)
        scale = extent / (hi_xy - lo_xy).max()
        w, h = (hi_xy - lo_xy) * scale

        # combinations list sizes from large to small, so the objects already placed (and
        # painted before this one) are the larger ones: take the first candidate position (box
        # fully inside the image) that they cover little enough, else the least covered one
        corners = rng.uniform(0, 1, (16, 2)) * (s - np.array([w, h]))
        covered = np.zeros(len(corners))
        for other in objects:
            ox0, oy0, ox1, oy1 = other.bbox
            ix = np.clip(np.minimum(corners[:, 0] + w, ox1) - np.maximum(corners[:, 0], ox0), 0, None)
            iy = np.clip(np.minimum(corners[:, 1] + h, oy1) - np.maximum(corners[:, 1], oy0), 0, None)
            covered = np.maximum(covered, ix * iy / (w * h))
        ok = np.flatnonzero(covered <= _MAX_OVERLAP)
        x0, y0 = corners[ok[0] if len(ok) else int(covered.argmin())]
        bbox = (float(x0), float(y0), float(x0 + w), float(y0 + h))

        polygon = None if disc else pts * scale + (np.array([x0, y0]) - lo_xy * scale)
        below = [_background(layout, np.array([[x0, y0], [x0 + w, y0], [x0, y0 + h], [x0 + w, y0 + h],
                                               [x0 + w / 2, y0 + h / 2]]))]
        below += [np.array([o.colour], float) for o in objects
                  if o.bbox[0] < bbox[2] and bbox[0] < o.bbox[2] and o.bbox[1] < bbox[3] and bbox[1] < o.bbox[3]]
        colour, = _pick_colours(rng, np.concatenate(below)[None], _OBJECT_CONTRAST)
        colour2, = _pick_colours(rng, np.array([[colour]], float), _PATTERN_CONTRAST)
        phase = rng.uniform(0, 1, 2)
        flip = bool(rng.integers(2))
        objects.append(_Object(size, polygon, bbox, colour, colour2, extent / _REPEATS,
                               (float(phase[0]), float(phase[1])), flip, target))
    if multilabel:
        objects = [o._replace(cls=c) for o, c in zip(objects, _multilabel_classes(seed, split_index, index))]
    return layout._replace(strokes=tuple(strokes), objects=tuple(objects))


# layout coordinates are continuous, pixel i covering [i, i + 1); PIL's lines and polygons take pixel
# centres (i + 0.5 -> i), its ellipse boxes the first and last pixel covered
def _pt(v: float, k: int) -> float:
    return v * k - 0.5


def _ellipse_box(x0: float, y0: float, x1: float, y1: float, k: int) -> Tuple[float, float, float, float]:
    return x0 * k, y0 * k, max(x0 * k, x1 * k - 1), max(y0 * k, y1 * k - 1)


def _outline(obj: _Object, img_size: int, k: int) -> Tuple[int, int, Image.Image]:
    """(left, top, mask): the object's outline drawn at k times the image side, 255 inside, over its box
    (one supersampled pixel of margin) whose corner is (left, top)."""
    s = img_size
    x0, y0, x1, y1 = obj.bbox
    left, top = max(0, math.floor(x0 * k) - 1), max(0, math.floor(y0 * k) - 1)
    right, bottom = min(s * k, math.ceil(x1 * k) + 1), min(s * k, math.ceil(y1 * k) + 1)
    mask = Image.new('L', (right - left, bottom - top), 0)
    outline = ImageDraw.Draw(mask)
    if obj.polygon is None:
        bx0, by0, bx1, by1 = _ellipse_box(x0, y0, x1, y1, k)
        outline.ellipse((bx0 - left, by0 - top, bx1 - left, by1 - top), fill=255)
    else:
        outline.polygon([(_pt(x, k) - left, _pt(y, k) - top) for x, y in obj.polygon], fill=255)
    return left, top, mask


def _segmentation(layout: _Layout) -> np.ndarray:
    """The class of every pixel: 0 for the background, 1 + the object's class index where an object covers at
    least half of the pixel (of its supersampled area), the later-drawn object where two overlap, as drawn."""
    s, k = layout.img_size, _SUPERSAMPLE
    labels = np.zeros((s, s), dtype=np.uint8)
    for obj in layout.objects:
        left, top, mask = _outline(obj, s, k)
        # the image pixels that the outline's box touches, at k x k supersampled pixels each
        x0, y0 = left // k, top // k
        x1, y1 = -(-(left + mask.width) // k), -(-(top + mask.height) // k)
        cover = np.zeros(((y1 - y0) * k, (x1 - x0) * k), dtype=np.float32)
        cover[top - y0 * k:top - y0 * k + mask.height, left - x0 * k:left - x0 * k + mask.width] = \
            np.asarray(mask, dtype=np.float32) / 255.
        cover = cover.reshape(y1 - y0, k, x1 - x0, k).mean(axis=(1, 3))
        labels[y0:y1, x0:x1][cover >= 0.5] = obj.cls + 1
    return labels


def _render(layout: _Layout) -> Image.Image:
    s, k = layout.img_size, _SUPERSAMPLE
    xs = np.arange(s) + 0.5
    a, b, c = layout.ramp
    t = np.clip(a + b * xs[None, :] + c * xs[:, None], 0., 1.)[..., None]
    base = layout.colours[0] + t * (layout.colours[1] - layout.colours[0])
    # nearest-neighbour upsampling keeps each 4x4 block constant, so after the box filter the
    # background is exactly `base` and only the objects' edges are blended
    canvas = Image.fromarray(np.rint(base).astype(np.uint8)).resize((s * k, s * k), Image.NEAREST)
    draw = ImageDraw.Draw(canvas)

    for st in layout.strokes:
        width = max(1, round(st.width * k))
        if st.kind == 'line':
            draw.line([_pt(v, k) for v in st.box], fill=st.colour, width=width)
        elif st.kind == 'arc':
            draw.arc(_ellipse_box(*st.box, k), st.arc[0], st.arc[1], fill=st.colour, width=width)
        else:
            draw.ellipse(_ellipse_box(*st.box, k), fill=st.colour)
    for obj in layout.objects:
        # the outline as a mask, the pattern painted through it, both over the object's box only
        x0, y0, x1, y1 = obj.bbox
        left, top, mask = _outline(obj, s, k)
        right, bottom = left + mask.width, top + mask.height
        # the centres of the supersampled pixels, in image pixels relative to the object's centre
        xs = (np.arange(left, right) + 0.5) / k - (x0 + x1) / 2
        ys = (np.arange(top, bottom) + 0.5) / k - (y0 + y1) / 2
        second = _pattern(CLASSES[obj.cls], xs[None, :], ys[:, None], obj.period, obj.phase, obj.flip)
        paint = np.where(second[..., None], np.array(obj.colour2, np.uint8), np.array(obj.colour, np.uint8))
        canvas.paste(Image.fromarray(paint.astype(np.uint8)), (left, top), mask)

    pixels = np.asarray(canvas.reduce(k), dtype=np.float32)
    rng = np.random.default_rng(layout.noise_key)
    # triangular noise (the difference of two uniforms, scaled to std `noise`): close enough to
    # Gaussian at half the cost, which is a tenth of the whole image
    noise = rng.random(pixels.shape, dtype=np.float32) - rng.random(pixels.shape, dtype=np.float32)
    pixels = np.clip(pixels + (layout.noise * math.sqrt(6)) * noise + 0.5, 0, 255)
    return Image.fromarray(pixels.astype(np.uint8))


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f'{name} must be an integer of at least {minimum}, got {value!r}')
    return int(value)


def _check_split(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f'split must be one of {", ".join(map(repr, SPLITS))}, got {split!r}')
    return SPLITS.index(split)


class ScaleShapes(torch.utils.data.Dataset):
    """The scale-challenging images (patterned objects of three sizes), rendered on the fly.

    Args:
        root: where `write_image_folder` puts (or would put) this dataset; only used by
            `filename(absolute=True)`. Nothing is read from it.
        split: 'train' or 'validation', two independent streams of images.
        num_samples: number of images; `DEFAULT_SAMPLES[split]` if None.
        img_size: image side in pixels (at least `MIN_IMG_SIZE`); object sizes scale with it.
        seed: non-negative integer; image i is a function of (seed, split, i) only.
        transform: applied to the PIL image at access time (timm's `create_loader` sets it after
            construction).
        target_transform: applied to the integer target.
        cache: keep every rendered image in memory (3 x img_size^2 bytes each, 74 MB for the
            default training split at 64x64; in the segmentation mode its mask too, a third of
            that), so that later epochs skip rendering. The cache is
            per process: it pays off with `num_workers=0` or persistent workers.
        multilabel: the multi-label mode (paper Sec. 4.2 in miniature): each object of an image
            has a class of its own, all different (the largest one keeps the single-label image's
            class; everything else about the image is the single-label one), and the target is
            the set of classes present.
        segmentation: the segmentation mode (paper Sec. 4.3 in miniature): the multi-label mode's
            images, and the target is their mask (`segmentation(i)`); `transforms`, when given, is
            applied to the (image, mask) pair (`transform` / `target_transform` are then not used).
        transforms: the segmentation mode's transform of the (image, mask) pair.

    `dataset[i]` is `(image, target)`: a `img_size` x `img_size` RGB PIL image (or whatever
    `transform` makes of it) and the index of its class in `CLASSES`, in the multi-label mode a
    float tensor of `len(CLASSES)` zeros and ones, in the segmentation mode its mask (an 'L' PIL
    image of indices in `SEGMENTATION_CLASSES`, the dataset's `classes` there). Targets cycle through every (class,
    combination) pair, see `targets` (in the multi-label mode, the largest object's class; `labels`
    gives all) and `combinations`.
    """

    classes = CLASSES

    def __init__(
            self,
            root: Optional[str] = None,
            split: str = 'train',
            num_samples: Optional[int] = None,
            img_size: int = 64,
            seed: int = 0,
            transform: Optional[Callable] = None,
            target_transform: Optional[Callable] = None,
            cache: bool = False,
            multilabel: bool = False,
            segmentation: bool = False,
            transforms: Optional[Callable] = None,
    ):
        self._split_index = _check_split(split)
        self.segmentation_mode = bool(segmentation)
        self.multilabel = bool(multilabel) or self.segmentation_mode
        if self.segmentation_mode:
            self.classes = SEGMENTATION_CLASSES
        self.transforms = transforms
        self.root = root
        self.split = split
        self.num_samples = DEFAULT_SAMPLES[split] if num_samples is None else _check_int('num_samples', num_samples, 1)
        self.img_size = _check_int('img_size', img_size, MIN_IMG_SIZE)
        self.seed = _check_int('seed', seed, 0)
        self.transform = transform
        self.target_transform = target_transform
        cells = [_cell(i) for i in range(self.num_samples)]
        self.targets: List[int] = [cls for cls, _ in cells]
        self.combinations: List[Tuple[str, ...]] = [COMBINATIONS[combo] for _, combo in cells]
        self._cache: Optional[Dict[int, np.ndarray]] = {} if cache else None
        self._mask_cache: Optional[Dict[int, np.ndarray]] = {} if cache else None

    def __len__(self) -> int:
        return self.num_samples

    def _index(self, index: int) -> int:
        if not -self.num_samples <= index < self.num_samples:
            raise IndexError(f'index {index} out of range for {self.num_samples} images')
        return index % self.num_samples

    def _layout(self, index: int) -> _Layout:
        return _sample_layout(self.seed, self._split_index, self._index(index), self.img_size, self.multilabel)

    def render(self, index: int) -> Image.Image:
        """Image `index` as an RGB PIL image, before `transform`."""
        if self._cache is None:
            return _render(self._layout(index))
        index = self._index(index)
        pixels = self._cache.get(index)
        if pixels is None:
            pixels = self._cache[index] = np.asarray(_render(self._layout(index)))
        return Image.fromarray(pixels)

    def fill_cache(self) -> None:
        """Render every image into the cache now (nothing without `cache`)."""
        if self._cache is not None:
            for i in range(self.num_samples):
                self.render(i)
                if self.segmentation_mode:
                    self.segmentation(i)

    def labels(self, index: int) -> Tuple[int, ...]:
        """The classes (indices in `CLASSES`) of image `index`'s objects, sorted, without rendering
        it: its target's class alone, or in the multi-label mode one class per object."""
        if not self.multilabel:
            return (self.targets[self._index(index)],)
        return tuple(sorted(_multilabel_classes(self.seed, self._split_index, self._index(index))))

    def __getitem__(self, index: int):
        if self.segmentation_mode:
            img, mask = self.render(index), self.segmentation(index)
            return self.transforms(img, mask) if self.transforms is not None else (img, mask)
        img, target = self.render(index), self.targets[self._index(index)]
        if self.multilabel:
            target = torch.zeros(len(CLASSES))
            target[list(self.labels(index))] = 1.
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def segmentation(self, index: int) -> Image.Image:
        """Image `index`'s segmentation mask, computed from its layout (no rendering): an `img_size` x
        `img_size` 'L' image whose pixels are 0 for the background and 1 + the class index (in `CLASSES`)
        where an object covers at least half of the pixel; where objects overlap, the one drawn on top.
        In the multi-label mode each object has its own class, as drawn. Kept in memory with `cache`."""
        if self._mask_cache is None:
            return Image.fromarray(_segmentation(self._layout(index)), mode='L')
        index = self._index(index)
        labels = self._mask_cache.get(index)
        if labels is None:
            labels = self._mask_cache[index] = _segmentation(self._layout(index))
        return Image.fromarray(labels, mode='L')

    def combination(self, index: int) -> Tuple[str, ...]:
        """The sizes of image `index`'s objects, from large to small: one of `COMBINATIONS`."""
        return self.combinations[self._index(index)]

    def objects(self, index: int) -> List[Tuple[str, Tuple[float, float, float, float], str]]:
        """The objects of image `index` as drawn, without rendering it: a list of
        `(size, (x0, y0, x1, y1), class_name)`, the box in pixels (continuous coordinates, pixel
        (i, j) covers [i, i+1) x [j, j+1)), tight around the (rotated) outline, largest object first."""
        layout = self._layout(index)
        return [(obj.size, obj.bbox, CLASSES[obj.cls]) for obj in layout.objects]

    def filename(self, index: int, basename: bool = False, absolute: bool = False) -> str:
        """Image `index`'s path in the folder `write_image_folder` writes, as timm's
        `ImageDataset.filename`: `<split>/<class>/<index:06d>.png` relative to `root`, the file
        name only (`basename`, unique within a split), or the absolute path (`absolute`)."""
        index = self._index(index)
        name = f'{index:06d}.png'
        if basename:
            return name
        path = os.path.join(self.split, CLASSES[self.targets[index]], name)
        return os.path.abspath(os.path.join(self.root or os.curdir, path)) if absolute else path

    def filenames(self, basename: bool = False, absolute: bool = False) -> List[str]:
        return [self.filename(i, basename, absolute) for i in range(self.num_samples)]


def write_image_folder(
        root: str,
        splits: Sequence[str] = SPLITS,
        num_samples: Union[None, int, Dict[str, Optional[int]]] = None,
        img_size: int = 64,
        seed: int = 0,
        force: bool = False,
) -> str:
    """Render `splits` of ScaleShapes into an ImageFolder tree at `root`; returns its absolute path.

    Writes `root/<split>/<class>/<index:06d>.png` (timm reads it with
    `create_dataset('', root=root, split=split)`, and `train.py` / `validate.py` with
    `--data-dir root`) and `root/objects.csv` with one row per image: split, file (relative to
    root, '/'-separated), class, target, combination (`combination_name`) and the number of
    objects of each size. `num_samples` is one count for every split, or a dict split -> count
    (None: `DEFAULT_SAMPLES`), at least `len(CLASSES)` so that every class folder holds an image.

    The tree is built in a temporary folder beside `root` and renamed into place, so `root` is
    either absent or complete. An existing non-empty `root` raises FileExistsError unless `force`;
    even then it is only replaced if it is such a tree (`is_image_folder`, with nothing else beside its
    splits), so that a mistyped path cannot delete an unrelated folder. `root` may not be the working
    folder or hold it (ValueError).
    """
    root = os.path.abspath(os.fspath(root))
    splits = (splits,) if isinstance(splits, str) else tuple(splits)
    if len(set(splits)) != len(splits):
        raise ValueError(f'splits must not repeat a split, got {splits!r}')
    counts = num_samples if isinstance(num_samples, dict) else dict.fromkeys(splits, num_samples)
    sets = [ScaleShapes(root, split, counts.get(split), img_size, seed) for split in splits]
    if not sets:
        raise ValueError(f'splits must name at least one of {", ".join(map(repr, SPLITS))}, got {splits!r}')
    small = [ds for ds in sets if len(ds) < len(CLASSES)]
    if small:  # timm numbers only the class folders that hold images: an empty one would shift targets
        raise ValueError(f'num_samples must be at least {len(CLASSES)} (one image per class) for an image folder, '
                         f'got {len(small[0])} for split {small[0].split!r}')
    _check_replaceable(root, force)

    parent, name = os.path.split(root)
    os.makedirs(parent, exist_ok=True)
    # os.mkdir rather than tempfile.mkdtemp: the folder becomes `root`, so it takes the umask's
    # permissions instead of mkdtemp's owner-only ones
    tmp = os.path.join(parent, f'.{name}.partial-{uuid.uuid4().hex[:12]}')
    os.mkdir(tmp)
    try:
        with open(os.path.join(tmp, _CSV_NAME), 'w', newline='') as f:
            rows = csv.writer(f)
            rows.writerow(_CSV_FIELDS)
            for ds in sets:
                for cls in CLASSES:
                    os.makedirs(os.path.join(tmp, ds.split, cls))
                for i in range(len(ds)):
                    file = ds.filename(i)
                    ds.render(i).save(os.path.join(tmp, file), format='PNG')
                    combo = ds.combination(i)
                    rows.writerow([ds.split, file.replace(os.sep, '/'), CLASSES[ds.targets[i]], ds.targets[i],
                                   combination_name(combo), *(combo.count(size) for size in SIZES)])
        _check_replaceable(root, force)  # again: something may have appeared while writing
        replace_dir(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def _check_replaceable(root: str, force: bool) -> None:
    check_outside_cwd(root)
    check_not_a_link(root)
    if not os.path.lexists(root):
        return
    if not os.path.isdir(root):
        raise FileExistsError(f'{root} exists and is not a directory; remove it or choose another root')
    if not os.listdir(root):
        return
    if not force:
        raise OutputExistsError(f'{root} exists and is not empty; pass {{force}} to replace it')
    if not is_image_folder(root):
        raise OutputExistsError(f'{root} is not a dataset written by write_image_folder (no {_CSV_NAME} of its '
                                f'columns); not replacing it even with {{force}}, remove it yourself')
    others = _files_of_others(root)
    if others:  # a dataset folder that a user has put files of their own in, at any depth
        raise OutputExistsError(f'{root} holds {first_names(others)} besides a dataset written by write_image_folder; '
                                f'not replacing it even with {{force}}, move them or remove the folder yourself')


def _files_of_others(root: str) -> List[str]:
    """What a dataset folder of `write_image_folder` holds besides its objects.csv and the images it lists (and the
    folders of those): paths relative to `root` with '/', a folder's ending in '/' (its content not listed)."""
    with open(os.path.join(root, _CSV_NAME), newline='') as f:
        # only the names it writes (<split>/<class>/<index:06d>.png): a user's own file that a row was added for
        # is still the user's
        listed = {row['file'] for row in csv.DictReader(f) if _written_name(row['file'])}
    folders = {path.rsplit('/', n)[0] for path in listed for n in range(1, path.count('/') + 1)}
    others = []
    for here, dirs, files in os.walk(root):
        rel = os.path.relpath(here, root).replace(os.sep, '/')
        prefix = '' if rel == '.' else rel + '/'
        others += sorted(prefix + d + '/' for d in dirs if prefix + d not in folders)
        others += sorted(prefix + f for f in files if prefix + f not in listed and prefix + f != _CSV_NAME)
        dirs[:] = sorted(d for d in dirs if prefix + d in folders)
    return others


def _written_name(path: str) -> bool:
    """Whether `path` (relative to the root, with '/') is a name `write_image_folder` gives an image."""
    parts = path.split('/')
    stem = parts[-1][:-len('.png')] if parts[-1].endswith('.png') else ''
    return len(parts) == 3 and parts[0] in SPLITS and parts[1] in CLASSES and len(stem) >= 6 and stem.isdigit()


def is_image_folder(root: str) -> bool:
    """Whether `root` holds an image folder written by `write_image_folder`: its objects.csv, with the columns
    that it writes (a file of that name in another folder is someone else's, e.g. a detection dataset's)."""
    try:
        with open(os.path.join(root, _CSV_NAME), newline='') as f:
            return tuple(next(csv.reader(f), ())) == _CSV_FIELDS
    except (OSError, UnicodeDecodeError, csv.Error):
        return False


def read_combinations(root: str, split: str) -> Dict[str, Tuple[str, ...]]:
    """The size combination of every image of `split` in a folder from `write_image_folder`.

    Keys are file paths relative to the split's folder (`<class>/<index:06d>.png`, native
    separators): what timm's `create_dataset('', root=root, split=split).filename(i)` returns, so
    a timm evaluation can be broken down per combination. Values are members of `COMBINATIONS`.
    """
    path = os.path.join(root, _CSV_NAME)
    with open(path, newline='') as f:
        rows = list(csv.DictReader(f))
    out = {}
    for row in rows:
        if row['split'] == split:
            parts = row['file'].split('/')
            out[os.path.join(*parts[1:])] = tuple(row['combination'].split('+'))
    if not out:
        found = sorted({row['split'] for row in rows})
        raise ValueError(f'split must be one of {", ".join(map(repr, found))} (the splits in {path}), got {split!r}')
    return out
