"""The built-in scale-challenging dataset (timm_elastic.data): determinism, balance, recorded
objects against the pixels, and the image folder as timm reads it."""
import ast
import csv
import hashlib
import math
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import create_dataset, create_loader

from timm_elastic.data import (
    CLASSES, COMBINATIONS, DEFAULT_SAMPLES, SIZE_RANGES, SIZES, ScaleShapes, combination_name,
    read_combinations, write_image_folder,
)
from timm_elastic.data import scales


def pixels(img: Image.Image) -> bytes:
    assert img.mode == 'RGB'
    return img.tobytes()


def test_constants():
    assert SIZES == ('small', 'medium', 'large')
    # paper Table 4's rows, (Large, Medium, Small) flags 001 ... 111
    flags = [tuple(int(size in combo) for size in ('large', 'medium', 'small')) for combo in COMBINATIONS]
    assert flags == [(0, 0, 1), (0, 1, 0), (0, 1, 1), (1, 0, 0), (1, 0, 1), (1, 1, 0), (1, 1, 1)]
    assert [combination_name(c) for c in COMBINATIONS] == [
        'small', 'medium', 'medium+small', 'large', 'large+small', 'large+medium', 'large+medium+small']
    assert all(tuple(combination_name(c).split('+')) == c for c in COMBINATIONS)
    # timm numbers ImageFolder classes in sorted order: the same order keeps targets equal
    assert len(CLASSES) == 8 and list(CLASSES) == sorted(CLASSES)
    assert DEFAULT_SAMPLES == {'train': 6000, 'validation': 1400}
    buckets = [SIZE_RANGES[s] for s in SIZES]
    assert all(lo < hi for lo, hi in buckets) and all(a[1] < b[0] for a, b in zip(buckets, buckets[1:]))


def test_deterministic_and_independent_of_access_order():
    a = ScaleShapes(split='validation', num_samples=12)
    forward = [pixels(a[i][0]) for i in range(12)]
    np.random.seed(1), torch.manual_seed(1), random.seed(1)
    b = ScaleShapes(split='validation', num_samples=12)
    backward = [pixels(b[i][0]) for i in reversed(range(12))][::-1]
    assert forward == backward
    assert pixels(a[-1][0]) == forward[-1]
    # only (seed, split, i) matter: a longer dataset starts with the same images
    assert pixels(ScaleShapes(split='validation', num_samples=100)[7][0]) == forward[7]
    assert len(set(forward)) == 12
    other_seed = ScaleShapes(split='validation', num_samples=12, seed=1)
    train = ScaleShapes(split='train', num_samples=12)
    for i in range(12):
        assert pixels(other_seed[i][0]) != forward[i]
        assert pixels(train[i][0]) != forward[i]
        assert a.objects(i) == b.objects(i) and a.objects(i) != train.objects(i)


def test_same_bytes_in_a_fresh_process():
    code = ('import hashlib; from timm_elastic.data import ScaleShapes; '
            'ds = ScaleShapes(split="train", num_samples=6, img_size=48, seed=3); '
            'print(hashlib.sha256(b"".join(ds[i][0].tobytes() for i in range(6))).hexdigest())')
    env = dict(os.environ, PYTHONHASHSEED='12345')
    proc = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    ds = ScaleShapes(split='train', num_samples=6, img_size=48, seed=3)
    assert proc.stdout.split()[-1] == hashlib.sha256(b''.join(pixels(ds[i][0]) for i in range(6))).hexdigest()


@pytest.mark.parametrize('split', ['train', 'validation'])
def test_default_splits_are_balanced(split):
    ds = ScaleShapes(split=split)
    n = DEFAULT_SAMPLES[split]
    assert len(ds) == len(ds.targets) == len(ds.combinations) == n
    for counts, k in ((Counter(ds.targets), len(CLASSES)), (Counter(ds.combinations), len(COMBINATIONS))):
        assert len(counts) == k
        assert max(abs(c - n / k) for c in counts.values()) <= 0.02 * n / k
    cells = Counter(zip(ds.targets, ds.combinations))
    assert len(cells) == len(CLASSES) * len(COMBINATIONS)
    if split == 'validation':
        assert set(cells.values()) == {25}


def test_recorded_objects():
    for img_size in (64, 40):
        ds = ScaleShapes(split='validation', num_samples=112, img_size=img_size)
        for i in range(len(ds)):
            objects = ds.objects(i)
            assert tuple(size for size, _, _ in objects) == ds.combination(i) == ds.combinations[i]
            for size, (x0, y0, x1, y1), name in objects:
                assert name == CLASSES[ds.targets[i]]
                assert 0 <= x0 < x1 <= img_size and 0 <= y0 < y1 <= img_size
                lo, hi = SIZE_RANGES[size]
                assert lo <= max(x1 - x0, y1 - y0) / img_size <= hi


def test_objects_are_drawn_where_recorded():
    ds = ScaleShapes(split='validation', num_samples=56)
    s = ds.img_size
    for i in range(len(ds)):
        layout = ds._layout(i)
        full = np.asarray(ds.render(i), dtype=int)
        assert full.shape == (s, s, 3)
        for j, (size, (x0, y0, x1, y1), _) in enumerate(ds.objects(i)):
            rest = layout._replace(objects=layout.objects[:j] + layout.objects[j + 1:])
            diff = np.abs(full - np.asarray(scales._render(rest), dtype=int)).max(2)
            # anti-aliasing may touch the pixel on either side of the box, nothing further
            box = np.zeros((s, s), bool)
            box[max(0, math.floor(y0) - 1):math.ceil(y1) + 1, max(0, math.floor(x0) - 1):math.ceil(x1) + 1] = True
            assert not diff[~box].any(), (i, size)
            # and it stands out from what it covers over a good part of its box
            inside = diff[math.floor(y0):math.ceil(y1), math.floor(x0):math.ceil(x1)]
            assert (inside > 24).mean() > 0.15, (i, size, (inside > 24).mean())


def test_transforms_are_read_at_access_time():
    ds = ScaleShapes(split='validation', num_samples=8, img_size=32)
    img, target = ds[3]
    assert isinstance(img, Image.Image) and img.size == (32, 32) and img.mode == 'RGB'
    assert target == ds.targets[3] and isinstance(target, int)
    ds.transform = lambda im: ('seen', im.size)
    ds.target_transform = lambda t: t + 100
    assert ds[3] == (('seen', (32, 32)), target + 100)


def test_timm_create_loader_sets_the_transform():
    ds = ScaleShapes(split='train', num_samples=16)
    loader = create_loader(ds, input_size=(3, 64, 64), batch_size=8, is_training=True, use_prefetcher=False,
                           num_workers=0, persistent_workers=False, device=torch.device('cpu'))
    assert ds.transform is not None
    batches = list(loader)
    assert len(batches) == 2
    x, y = batches[0]
    assert x.shape == (8, 3, 64, 64) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and 0 <= y.min() and y.max() < len(CLASSES)


def test_filenames():
    ds = ScaleShapes(root='/data/shapes', split='validation', num_samples=200)
    assert ds.filename(123) == os.path.join('validation', CLASSES[ds.targets[123]], '000123.png')
    assert ds.filename(123, basename=True) == '000123.png'
    assert ds.filename(123, absolute=True) == os.path.abspath(os.path.join('/data/shapes', ds.filename(123)))
    assert ds.filenames() == [ds.filename(i) for i in range(200)]
    assert len(set(ds.filenames(basename=True))) == 200


def test_image_folder_is_read_by_timm(tmp_path):
    root = tmp_path / 'shapes'
    assert write_image_folder(root, num_samples=60, img_size=32, seed=5) == str(root)
    with open(root / 'objects.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ['split', 'file', 'class', 'target', 'combination', 'small', 'medium', 'large']
    assert len(rows) == 120 and all((root / r['file']).is_file() for r in rows)

    for split in ('train', 'validation'):
        ds = ScaleShapes(split=split, num_samples=60, img_size=32, seed=5)
        folder = create_dataset('', root=str(root), split=split)
        assert len(folder) == 60
        assert folder.reader.class_to_idx == {name: i for i, name in enumerate(CLASSES)}
        combos = read_combinations(root, split)
        assert len(combos) == 60
        for k in range(len(folder)):
            img, target = folder[k]
            i = int(os.path.splitext(folder.filename(k, basename=True))[0])
            assert target == ds.targets[i]
            assert pixels(img) == pixels(ds[i][0])  # PNG is lossless
            assert combos[folder.filename(k)] == ds.combination(i)
        for r in (r for r in rows if r['split'] == split):
            i = int(r['file'][-10:-4])
            assert r['file'] == ds.filename(i).replace(os.sep, '/')
            assert (r['class'], int(r['target'])) == (CLASSES[ds.targets[i]], ds.targets[i])
            assert r['combination'] == combination_name(ds.combination(i))
            assert [int(r[size]) for size in SIZES] == [ds.combination(i).count(size) for size in SIZES]


def test_existing_root_is_refused_unless_forced(tmp_path):
    root = tmp_path / 'shapes'
    root.mkdir()
    write_image_folder(root, splits=('validation',), num_samples=8, img_size=32)  # an empty folder is fine
    first = (root / 'objects.csv').read_text()
    with pytest.raises(FileExistsError, match='force=True'):
        write_image_folder(root, splits=('validation',), num_samples=8, img_size=32, seed=1)
    assert (root / 'objects.csv').read_text() == first

    write_image_folder(root, splits=('train',), num_samples=16, img_size=32, force=True)
    assert sorted(p.name for p in root.iterdir()) == ['objects.csv', 'train']
    assert sorted(p.name for p in tmp_path.iterdir()) == ['shapes']  # no temporary folder left

    # force replaces a dataset, not a folder that merely sits at the path
    other = tmp_path / 'home'
    other.mkdir()
    (other / 'notes.txt').write_text('keep me')
    with pytest.raises(FileExistsError, match='not a dataset written by write_image_folder'):
        write_image_folder(other, num_samples=8, img_size=32, force=True)
    assert (other / 'notes.txt').read_text() == 'keep me'
    # nor one that holds an objects.csv of another kind (a detection dataset's, say)
    (other / 'objects.csv').write_text('image,xmin,ymin,xmax,ymax,label\nphoto1.jpg,1,2,3,4,cat\n')
    with pytest.raises(FileExistsError, match='not a dataset written by write_image_folder'):
        write_image_folder(other, num_samples=8, img_size=32, force=True)
    assert sorted(p.name for p in other.iterdir()) == ['notes.txt', 'objects.csv']
    # nor a dataset that a user has put files of their own in
    (root / 'my_predictions.csv').write_text('keep me')
    with pytest.raises(FileExistsError, match='holds my_predictions.csv besides a dataset'):
        write_image_folder(root, splits=('train',), num_samples=16, img_size=32, force=True)
    assert (root / 'my_predictions.csv').read_text() == 'keep me'
    # ... at any depth: a class folder of one's own in a split, a note beside the images (both were deleted)
    (root / 'my_predictions.csv').unlink()
    images = sorted(p for p in (root / 'train').iterdir())[0]
    (images / 'notes.txt').write_text('keep me')
    (root / 'train' / 'zebra').mkdir()
    (root / 'train' / 'zebra' / '0.png').write_bytes(b'mine')
    with pytest.raises(FileExistsError, match=f'holds train/zebra/, train/{images.name}/notes.txt besides a dataset'):
        write_image_folder(root, splits=('train',), num_samples=16, img_size=32, force=True)
    assert (images / 'notes.txt').read_text() == 'keep me' and (root / 'train' / 'zebra' / '0.png').exists()
    (images / 'notes.txt').unlink()
    # ... also a user's image that a row of objects.csv was added for (so that validate's per-size table counts it):
    # the rows name the images it writes, <split>/<class>/<index:06d>.png, and no other file is its own
    (root / 'train' / 'zebra' / '0.png').write_bytes(b'mine')
    with open(root / 'objects.csv', 'a', newline='') as f:
        f.write('train,train/zebra/0.png,checks,0,small,1,0,0\n')
    with pytest.raises(FileExistsError, match='holds train/zebra/ besides a dataset'):
        write_image_folder(root, splits=('train',), num_samples=16, img_size=32, force=True)
    assert (root / 'train' / 'zebra' / '0.png').read_bytes() == b'mine'
    shutil.rmtree(root / 'train' / 'zebra')
    write_image_folder(root, splits=('train',), num_samples=16, img_size=32, force=True)  # its own files only
    (tmp_path / 'file').write_text('')
    with pytest.raises(FileExistsError, match='not a directory'):
        write_image_folder(tmp_path / 'file', num_samples=8, img_size=32, force=True)
    # a symbolic link to a folder is named as one (it was 'not a directory'), as convert and policy name it
    (tmp_path / 'link').symlink_to(root)
    with pytest.raises(FileExistsError, match=f'link is a symbolic link \\(to {root}\\); name the folder itself'):
        write_image_folder(tmp_path / 'link', num_samples=8, img_size=32, force=True)
    assert os.path.islink(tmp_path / 'link')


def test_the_working_folder_is_not_replaced(tmp_path, monkeypatch):
    """`--out .` (or a folder above it) would be put in place of the folder a shell stands in."""
    from timm_elastic._io import staged_dir
    here = tmp_path / 'here'
    here.mkdir()
    monkeypatch.chdir(here)
    for out in ('.', '', str(tmp_path)):
        with pytest.raises(ValueError, match='is the current working folder or holds it'):
            write_image_folder(out, num_samples=8, img_size=32, force=True)
        with pytest.raises(ValueError, match='is the current working folder or holds it'):
            with staged_dir(out):
                pass
    assert os.path.samefile(os.getcwd(), here) and os.listdir(here) == []
    write_image_folder('sub', num_samples=8, img_size=32)  # a folder inside it is fine
    assert sorted(os.listdir(here / 'sub')) == ['objects.csv', 'train', 'validation']


@pytest.mark.skipif(not hasattr(signal, 'setitimer'), reason='needs POSIX interval timers')
@pytest.mark.parametrize('existing', [False, True])
def test_interrupted_write_leaves_no_partial_root(tmp_path, existing):
    root = tmp_path / 'shapes'
    if existing:
        write_image_folder(root, splits=('validation',), num_samples=8, img_size=32)
    before = (root / 'objects.csv').read_text() if existing else None
    seen = []

    def interrupt(signum, frame):
        # a real Ctrl-C, once images are on disk: the write is under way
        written = sum(1 for p in tmp_path.rglob('*.png') if root not in p.parents)
        if not written:
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            return
        seen.append((written, (root / 'objects.csv').read_text() if existing else root.exists()))
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(KeyboardInterrupt):
            write_image_folder(root, num_samples=20000, img_size=32, force=True)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    (written, root_then), = seen
    assert written > 0 and root_then == (before if existing else False)
    # the temporary tree is gone; the old dataset, if any, is untouched
    assert [p.name for p in tmp_path.iterdir()] == (['shapes'] if existing else [])
    if existing:
        assert (root / 'objects.csv').read_text() == before
        assert sorted(p.name for p in root.iterdir()) == ['objects.csv', 'validation']


@pytest.mark.skipif(not hasattr(signal, 'SIGTERM') or sys.platform == 'win32', reason='needs POSIX signals')
def test_terminated_data_command_leaves_no_partial_folder(tmp_path):
    """`kill` (SIGTERM) of `timm-elastic data` while it writes: the staged folder beside --out is removed as after
    Ctrl-C (it stayed, .DIR.partial-*, under Python's default SIGTERM) and the old folder is kept."""
    import shutil
    import time
    root = tmp_path / 'shapes'
    write_image_folder(root, splits=('validation',), num_samples=8, img_size=32)
    before = (root / 'objects.csv').read_text()
    proc = subprocess.Popen([shutil.which('timm-elastic'), 'data', '--out', str(root), '--force', '--img-size', '32',
                             '--train-num-samples', '20000', '--val-num-samples', '8'],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not any(p.name.startswith('.shapes.partial-') and any(p.rglob('*.png'))
                                             for p in tmp_path.iterdir()):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert [p.name for p in tmp_path.iterdir()] == ['shapes'], err  # no staged folder left
    assert (root / 'objects.csv').read_text() == before


@pytest.mark.parametrize('make,message', [
    (lambda: ScaleShapes(split='val'), "split must be one of 'train', 'validation', got 'val'"),
    (lambda: ScaleShapes(img_size=8), 'img_size must be an integer of at least 32, got 8'),
    (lambda: ScaleShapes(num_samples=0), 'num_samples must be an integer of at least 1, got 0'),
    (lambda: ScaleShapes(num_samples=2.5), 'num_samples must be an integer of at least 1, got 2.5'),
    (lambda: ScaleShapes(seed=-1), 'seed must be an integer of at least 0, got -1'),
    (lambda: combination_name(('small', 'large')), "combination must be one of .*got \\('small', 'large'\\)"),
    (lambda: write_image_folder('/nonexistent/x', splits=()), "splits must name at least one of 'train'"),
    (lambda: write_image_folder('/nonexistent/x', splits=('val',)), "split must be one of 'train', 'validation'"),
    (lambda: write_image_folder('/nonexistent/x', splits=('train', 'train')), 'splits must not repeat'),
    (lambda: write_image_folder('/nonexistent/x', num_samples=7), 'num_samples must be at least 8'),
])
def test_bad_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_bad_index_and_split_lookup(tmp_path):
    ds = ScaleShapes(split='validation', num_samples=10)
    with pytest.raises(IndexError):
        ds[10]
    with pytest.raises(IndexError):
        ds.objects(-11)
    write_image_folder(tmp_path / 'shapes', splits=('validation',), num_samples=8, img_size=32)
    with pytest.raises(ValueError, match="split must be one of 'validation' .*got 'train'"):
        read_combinations(tmp_path / 'shapes', 'train')


def test_data_package_imports_no_models():
    # the models import the dataset's classes, so the dataset must not import the models
    package = pathlib.Path(scales.__file__).parent
    for path in package.glob('*.py'):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                # the package's stdlib-only file helpers (timm_elastic._io) are the one import from above
                assert node.level <= 1 or (node.level, node.module) == (2, '_io'), path
                assert not (node.module or '').startswith(('timm', 'timm_elastic')), path
            elif isinstance(node, ast.Import):
                assert not any(a.name.split('.')[0] in ('timm', 'timm_elastic') for a in node.names), path


def test_fill_cache_renders_every_image_once(monkeypatch):
    """compare renders the data before the first run's clock starts: after fill_cache nothing is rendered again,
    and the cached images are the rendered ones."""
    expected = [pixels(ScaleShapes(split='validation', num_samples=5, seed=3).render(i)) for i in range(5)]
    cached = ScaleShapes(split='validation', num_samples=5, seed=3, cache=True)
    cached.fill_cache()

    def no_render(layout):
        raise AssertionError('rendered again')
    monkeypatch.setattr(scales, '_render', no_render)
    assert [pixels(cached[i][0]) for i in range(5)] == expected
    with pytest.raises(AssertionError, match='rendered again'):  # without the cache it would render
        ScaleShapes(split='validation', num_samples=5, seed=3).render(0)


def test_every_pattern_is_its_own_mirror_image():
    """Training flips images horizontally (timm's default hflip 0.5): a flipped object must still show its class.
    For every class some phase (and diagonal direction) draws the mirror image of the pattern exactly, away from
    its edges; a diagonal of the same direction does not, so the check can tell."""
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-20, 20, 2000), rng.uniform(-20, 20, 2000)
    period, phase = 4.7, (0.23, 0.61)
    candidates = [((pu, pv), flip) for pu in np.arange(0, 1, 0.01) for pv in (phase[1],) for flip in (False, True)]
    for name in CLASSES:
        mirrored = scales._pattern(name, -x, y, period, phase, False)
        agree = max((scales._pattern(name, x, y, period, p, f) == mirrored).mean() for p, f in candidates)
        assert agree > 0.99, (name, agree)
    mirrored = scales._pattern('diagonal', -x, y, period, phase, False)
    same_way = max((scales._pattern('diagonal', x, y, period, p, False) == mirrored).mean() for p, _ in candidates)
    assert same_way < 0.9, same_way


def test_a_pattern_repeats_three_times_across_its_object():
    """The pattern scales with the object: its period is a third of the object's extent, so the smallest objects
    (0.14 of the side) hold periods of about 3 pixels at 64x64."""
    ds = ScaleShapes(split='validation', num_samples=56)
    for i in range(len(ds)):
        for obj in ds._layout(i).objects:
            x0, y0, x1, y1 = obj.bbox
            assert obj.period == pytest.approx(max(x1 - x0, y1 - y0) / 3)
            assert obj.period >= 0.14 * 64 / 3 - 1e-9


def test_multilabel_mode_gives_each_object_a_class_of_its_own():
    single = ScaleShapes(split='validation', num_samples=112, seed=5)
    multi = ScaleShapes(split='validation', num_samples=112, seed=5, multilabel=True)
    counts = Counter()
    for i in range(112):
        objects, labels = multi.objects(i), multi.labels(i)
        assert len(labels) == len(set(labels)) == len(objects) == len(multi.combination(i))
        assert objects[0][2] == CLASSES[single.targets[i]]  # the largest object keeps the image's class
        assert sorted(CLASSES.index(o[2]) for o in objects) == list(labels)
        assert [o[:2] for o in objects] == [o[:2] for o in single.objects(i)]  # same sizes and boxes
        image, target = multi[i]
        assert target.dtype == torch.float32 and target.nonzero().flatten().tolist() == list(labels)
        counts.update(labels)
        # the images differ only where an object other than the largest is drawn (+1 pixel of edge)
        diff = np.abs(np.asarray(image, np.int16) - np.asarray(single.render(i), np.int16)).max(2) > 0
        inside = np.zeros_like(diff)
        for _, (x0, y0, x1, y1), _ in objects[1:]:
            inside[max(0, math.floor(y0) - 1):math.ceil(y1) + 1, max(0, math.floor(x0) - 1):math.ceil(x1) + 1] = True
        assert not (diff & ~inside).any(), i
        assert diff.any() == (len(objects) > 1), i
    assert len(counts) == len(CLASSES)  # every class shows up as a label
    # the other objects' classes are drawn per image, not fixed by the largest one's
    assert len({multi.labels(i) for i in range(112) if len(multi.labels(i)) == 3}) > len(CLASSES)
    assert single[0][1] == single.targets[0] and single.labels(3) == (single.targets[3],)
    # deterministic, like the single-label images
    again = ScaleShapes(split='validation', num_samples=112, seed=5, multilabel=True)
    assert all(again.labels(i) == multi.labels(i) for i in range(0, 112, 5))
    assert np.array_equal(np.asarray(again.render(50)), np.asarray(multi.render(50)))


def test_segmentation_masks_follow_the_layout():
    """Issue 20's segmentation mode: the mask labels each pixel with 1 + the class of the object covering it
    (0 elsewhere); every object of the image is in it, inside its recorded box, single- and multi-label."""
    import numpy as np
    from timm_elastic.data import CLASSES, ScaleShapes
    for multilabel in (False, True):
        ds = ScaleShapes(split='validation', num_samples=56, multilabel=multilabel)
        for i in range(0, 56, 5):
            mask = np.asarray(ds.segmentation(i))
            assert mask.shape == (64, 64) and mask.dtype == np.uint8
            assert set(np.unique(mask)) == {0, *(c + 1 for c in ds.labels(i))}
            inside = np.zeros_like(mask, dtype=bool)
            for _, (x0, y0, x1, y1), name in ds.objects(i):
                box = np.zeros_like(inside)
                box[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))] = True
                assert (mask[box] == CLASSES.index(name) + 1).any()
                inside |= box & (mask == CLASSES.index(name) + 1)
            assert inside[mask > 0].all()  # no labelled pixel outside its object's box


def test_segmentation_of_a_disc_by_hand():
    """A disc of radius 8 centred at (16, 16) in a 32-pixel image: pixels more than half covered, about
    pi * 64 = 201 of them, all within 8.5 pixels of the centre, every pixel whose centre is within 7.3."""
    import numpy as np
    from timm_elastic.data.scales import _Layout, _Object, _segmentation
    disc = _Object('large', None, (8., 8., 24., 24.), (0, 0, 0), (255, 255, 255), 3., (0., 0.), False, 4)
    layout = _Layout(32, 4, ('large',), np.zeros((2, 3)), (0., 0., 0.), 0., (0,), (), (disc,))
    mask = _segmentation(layout)
    assert set(np.unique(mask)) == {0, 5}
    assert abs(int((mask == 5).sum()) - 201) <= 8
    yy, xx = np.mgrid[:32, :32] + 0.5
    r = np.hypot(xx - 16, yy - 16)
    assert (r[mask == 5] < 8.5).all() and (mask[r < 7.3] == 5).all()


def test_the_segmentation_mode_gives_images_with_their_masks(monkeypatch):
    """`segmentation=True`: the multi-label mode's images with their masks as targets, through `transforms` of the
    pair; with `cache`, fill_cache computes every mask once and later items read them back."""
    import numpy as np
    from timm_elastic.data import SEGMENTATION_CLASSES, ScaleShapes
    multi = ScaleShapes(split='validation', num_samples=6, multilabel=True)
    seg = ScaleShapes(split='validation', num_samples=6, segmentation=True)
    assert seg.classes == SEGMENTATION_CLASSES == ('background', *multi.classes)
    expected = [np.asarray(multi.segmentation(i)) for i in range(6)]
    for i in range(6):
        image, mask = seg[i]
        assert np.array_equal(np.asarray(image), np.asarray(multi.render(i)))
        assert np.array_equal(np.asarray(mask), expected[i])
    seg.transforms = lambda image, mask: (image.size, int(np.asarray(mask).max()))
    assert seg[2] == ((64, 64), int(expected[2].max()))
    cached = ScaleShapes(split='validation', num_samples=6, segmentation=True, cache=True)
    cached.fill_cache()

    def no_mask(layout):
        raise AssertionError('computed again')
    monkeypatch.setattr(scales, '_segmentation', no_mask)
    assert all(np.array_equal(np.asarray(cached[i][1]), expected[i]) for i in range(6))
    with pytest.raises(AssertionError, match='computed again'):  # without the cache it would compute it
        multi.segmentation(0)
