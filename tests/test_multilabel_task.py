"""`--task multilabel` through the one training loop (issue 19): train / validate on a tiny COCO-format folder
read with pycocotools and on the built-in multi-label data, the metrics the commands report against the
model's own outputs, DDP with two CPU processes, a `.coco`-style 80-class model, the stress test (Fig. 7),
`compare --task multilabel`, and one-line errors for bad inputs."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import timm
import timm_elastic  # noqa: F401
from timm_elastic.tasks.multilabel import BCEPerImage, multilabel_metrics

from test_train import cli, summary, validate_in_two_processes_and_one

pytest.importorskip('pycocotools', reason="pip install 'timm-elastic[coco]' (the test extra has it)")

QUICK = ['-j', '0', '--no-progress', '--log-interval', '0']


def write_coco(root, split, n_images, categories=((3, 'car'), (1, 'person'), (90, 'toothbrush')), seed=0):
    """A COCO-format split: `n_images` 40x32 PNGs, each a coloured box per category present (the colour is
    the category's, so the labels can be learnt), areas small, medium and large by category; every 7th image
    has no annotation, every 5th annotation is a crowd one. Categories keep the given (gapped, out-of-order) ids."""
    g = torch.Generator().manual_seed(seed)
    (root / 'annotations').mkdir(parents=True, exist_ok=True)
    (root / split).mkdir()
    colours = [(220, 40, 40), (40, 200, 40), (40, 40, 220)]
    colours += [(3 * k % 256, 7 * k % 256, 11 * k % 256) for k in range(3, len(categories))]
    images, anns = [], []
    for i in range(n_images):
        img = Image.new('RGB', (40, 32), (128, 128, 128))
        present = [] if i % 7 == 6 else [c for c in range(len(categories)) if torch.rand(1, generator=g) < 0.5]
        for c in present:
            x, y = int(torch.randint(0, 24, (1,), generator=g)), int(torch.randint(0, 16, (1,), generator=g))
            side = 6 + 4 * (c % 3)
            img.paste(colours[c], (x, y, x + side, y + side))
            anns.append(dict(id=len(anns) + 1, image_id=100 + i, category_id=categories[c][0],
                             area=(500., 3000., 10000.)[c % 3], iscrowd=int(len(anns) % 5 == 4),
                             bbox=[x, y, side, side], segmentation=[]))
        name = f'{i:04d}.png'
        img.save(root / split / name)
        images.append(dict(id=100 + i, file_name=name, width=40, height=32))
    cats = [dict(id=cid, name=name) for cid, name in categories]
    (root / 'annotations' / f'instances_{split}.json').write_text(
        json.dumps(dict(images=images, annotations=anns, categories=cats)))


@pytest.fixture(scope='module')
def coco(tmp_path_factory):
    root = tmp_path_factory.mktemp('coco')
    write_coco(root, 'train2014', 48)
    write_coco(root, 'val2014', 21, seed=1)
    return root


def images_and_targets(root, split, size):
    """Every image of a COCO split as the original evaluates it (the whole image resized to size x size, its
    `Resize((S, S))`, ImageNet normalisation) and its 0/1 targets in the file's category order, read here."""
    import torchvision.transforms.functional as TF
    ann = json.loads((root / 'annotations' / f'instances_{split}.json').read_text())
    cat_ids = [c['id'] for c in ann['categories']]
    x, y = [], []
    for im in ann['images']:
        img = Image.open(root / split / im['file_name']).convert('RGB').resize((size, size), Image.BILINEAR)
        x.append(TF.normalize(TF.to_tensor(img), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
        t = torch.zeros(len(cat_ids))
        for a in ann['annotations']:
            if a['image_id'] == im['id']:
                t[cat_ids.index(a['category_id'])] = 1
        y.append(t)
    return torch.stack(x), torch.stack(y)


def logits_of(checkpoint, root, split, size):
    """The model's outputs on every image of a COCO split, computed here from the checkpoint's weights."""
    ckpt = torch.load(checkpoint, map_location='cpu', weights_only=False)
    model = timm.create_model(ckpt['arch'], num_classes=ckpt['state_dict']['fc.weight'].shape[0])
    model.load_state_dict(ckpt['state_dict'])
    model.eval()
    x, y = images_and_targets(root, split, size)
    with torch.no_grad():
        return model(x), y


@pytest.mark.slow
def test_train_and_validate_on_coco_match_the_models_outputs(coco, tmp_path):
    """Training lowers the loss; validate's metrics are multilabel_metrics of the model's outputs computed
    here (the original's whole-image resize), its loss the BCE's mean (validate_multi's); the results file has
    every metric, per object-size combination too."""
    out = tmp_path / 'runs'
    proc = cli('train', '--task', 'multilabel', '--data-dir', str(coco), '--model', 'resnext_tiny_elastic',
               '--img-size', '32', '--epochs', '4', '-b', '16', '--lr', '0.01', '--output', str(out),
               '--experiment', 'a', *QUICK)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = summary(out / 'a' / 'summary.csv')
    head = rows[0]
    assert head[:3] == ['epoch', 'train_loss', 'eval_loss'] and 'eval_f1_o' in head and 'eval_map' in head
    losses = [float(r[1]) for r in rows[1:]]
    assert losses[-1] < losses[0], losses
    assert 'eval F1-C' in proc.stdout and 'mAP' in proc.stdout

    ckpt = out / 'a' / 'last.pth.tar'
    proc = cli('validate', '--task', 'multilabel', '--data-dir', str(coco), '--split', 'val', '--checkpoint',
               str(ckpt), '--img-size', '32', '--results-file', str(tmp_path / 'r.json'), *QUICK[:3])
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads((tmp_path / 'r.json').read_text())
    logits, targets = logits_of(ckpt, coco, 'val2014', 32)
    want = multilabel_metrics(logits, targets)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=1e-6), k
    loss = F.binary_cross_entropy_with_logits(logits, targets)
    assert got['loss'] == pytest.approx(float(loss), rel=1e-5)
    assert got['count'] == 21 and got['num_classes'] == 3 and got['task'] == 'multilabel'
    annotated = {a['image_id'] for a in json.loads((coco / 'annotations' / 'instances_val2014.json').read_text())[
        'annotations']}
    assert 3 <= 21 - len(annotated) < 21
    assert sum(r['count'] for r in got['per_combination'].values()) == len(annotated)
    assert len(got['per_combination']) >= 4 and set(got['per_combination']['small']) == set(want) | {'loss', 'count'}
    assert f'F1-O {got["f1_o"]:.2f}%' in proc.stdout

    # the checkpoint records the classes it was trained on: a file listing them in another order was scored
    # without a word (output 0, trained as 'car', scored as 'person')
    assert torch.load(ckpt, weights_only=False)['args'].class_names == ['car', 'person', 'toothbrush']
    other = tmp_path / 'other_order'
    write_coco(other, 'val2014', 4, categories=((1, 'person'), (3, 'car'), (90, 'toothbrush')), seed=1)
    proc = cli('validate', '--task', 'multilabel', '--data-dir', str(other), '--checkpoint', str(ckpt),
               '--img-size', '32', *QUICK[:3])
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"timm-elastic validate: error: --checkpoint '{ckpt}' and the data number their classes differently "
        "(class 0 is 'car' in the checkpoint, 'person' in the data): both need them in the same order"], proc.stderr


def test_per_combination_metrics_are_the_metrics_of_those_images():
    from timm_elastic.tasks import get_task
    task = get_task('multilabel')
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 4, generator=g)
    targets = (torch.rand(12, 4, generator=g) < 0.4)
    combos = [('small',), ('large', 'small'), ('medium',)] * 4
    results = task.per_image(logits, targets.float())
    out = task.summarize(results, combos)
    for name, combo in (('small', ('small',)), ('large+small', ('large', 'small'))):
        mask = torch.tensor([c == combo for c in combos])
        want = multilabel_metrics(logits[mask], targets[mask])
        assert {k: out['per_combination'][name][k] for k in want} == pytest.approx(want)
        assert out['per_combination'][name]['count'] == 4
    assert list(out['per_combination']) == ['small', 'medium', 'large+small']  # Table 4's order


def test_the_loss_is_the_originals_bce_times_the_classes():
    """The original trains on `BCEWithLogitsLoss()(output, target) * 80` with its 80 classes."""
    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(6, 80, generator=g), (torch.rand(6, 80, generator=g) < 0.1).float()
    assert float(BCEPerImage()(logits, targets)) == pytest.approx(
        float(torch.nn.BCEWithLogitsLoss()(logits, targets) * 80), rel=1e-6)


def test_the_evaluation_loss_is_the_originals_validation_loss():
    """The original's validate_multi reports `BCEWithLogitsLoss()(output, target)`, without the training's
    factor 80 (it was reported 80 times larger here)."""
    from timm_elastic.tasks import get_task
    task = get_task('multilabel')
    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(6, 80, generator=g), (torch.rand(6, 80, generator=g) < 0.1)
    records = task.per_image(logits, targets)
    assert task.metrics(records)['loss'] == pytest.approx(
        float(torch.nn.BCEWithLogitsLoss()(logits, targets.float())), rel=1e-6)


@pytest.mark.slow
def test_ddp_two_cpu_processes_count_each_image_once(tmp_path):
    """torchrun with two gloo processes validates 113 built-in multi-label images (one rank gets a padding
    duplicate): the metrics are those of a single process, count 113."""
    torch.manual_seed(0)
    model = timm.create_model('resnext_tiny_elastic', num_classes=8)
    ckpt = tmp_path / 'm.pth.tar'
    torch.save({'state_dict': model.state_dict(), 'arch': 'resnext_tiny_elastic'}, ckpt)
    common = ['validate', '--task', 'multilabel', '--checkpoint', str(ckpt), '--val-num-samples', '113', *QUICK[:3]]
    ddp, one = validate_in_two_processes_and_one(common, tmp_path)
    assert ddp['count'] == one['count'] == 113
    for k in ('p_c', 'r_c', 'f1_c', 'p_o', 'r_o', 'f1_o', 'map', 'loss'):
        assert ddp[k] == pytest.approx(one[k], rel=1e-5, abs=1e-6), k
    assert ddp['per_combination'].keys() == one['per_combination'].keys()


@pytest.mark.slow
def test_a_coco_model_with_80_classes_validates_through_the_same_path(tmp_path):
    """A `.coco`-style model (an original COCO fine-tune's stand-in converted to a timm folder, 80 classes,
    squash crop) validated on an 80-category COCO folder: the metrics of its own outputs."""
    from original import as_release, stand_in_state
    from test_hub import convert
    from timm_elastic.tasks.coco import COCO_CLASSES
    release = tmp_path / 'coco_resnext50.pth.tar'
    torch.save(as_release(stand_in_state('resnext50', num_classes=80)), release)
    proc = convert(str(release), '--arch', 'resnext50', '--out', str(tmp_path / 'hub'))
    assert proc.returncode == 0, proc.stderr
    ids = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
    write_coco(tmp_path / 'coco', 'val2017', 5, categories=tuple(zip(ids, COCO_CLASSES)))
    proc = cli('validate', '--task', 'multilabel', '--data-dir', str(tmp_path / 'coco'), '--model',
               f'local-dir:{tmp_path / "hub"}', '--pretrained', '--results-file', str(tmp_path / 'r.json'),
               *QUICK[:3])
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads((tmp_path / 'r.json').read_text())
    assert got['num_classes'] == 80 and got['count'] == 5 and got['img_size'] == 224
    model = timm.create_model(f'local-dir:{tmp_path / "hub"}', pretrained=True).eval()
    x, targets = images_and_targets(tmp_path / 'coco', 'val2017', 224)
    assert targets.shape == (5, 80)
    with torch.no_grad():
        want = multilabel_metrics(model(x), targets)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=1e-4), k


def test_stress_sizes_and_command(tmp_path):
    """The paper's sizes scaled to the training size; `timm-elastic stress` evaluates both models at each size
    (at the training size, what validate gives) and writes Fig. 7's chart and the relative improvements."""
    from timm_elastic.stress import relative_improvement, scaled_sizes
    assert scaled_sizes(224) == [96, 224, 448, 896]
    assert scaled_sizes(64) == [32, 64, 128, 256]  # 96 * 64 / 224 = 27.4: at least 32
    assert relative_improvement(50., 55.) == pytest.approx(10.) and relative_improvement(0., 3.) is None
    ckpts = {}
    for seed, name in ((0, 'resnext_tiny'), (1, 'resnext_tiny_elastic')):
        torch.manual_seed(seed)
        ckpts[name] = tmp_path / f'{name}.pth.tar'
        torch.save({'state_dict': timm.create_model(name, num_classes=8).state_dict(), 'arch': name}, ckpts[name])
    common = ['--task', 'multilabel', '--val-num-samples', '56', *QUICK[:3]]
    proc = cli('stress', *common, '--checkpoint', str(ckpts['resnext_tiny_elastic']), '--baseline', 'resnext_tiny',
               '--baseline-checkpoint', str(ckpts['resnext_tiny']), '--sizes', '32', '64', '--plot',
               str(tmp_path / 'fig7.png'), '--results-file', str(tmp_path / 's.json'))
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads((tmp_path / 's.json').read_text())
    assert got['model'] == 'resnext_tiny_elastic' and got['baseline'] == 'resnext_tiny'
    m = got['metrics']
    for metric in ('f1_o', 'f1_c'):
        for size in ('32', '64'):
            b, e = m['baseline'][size][metric], m['model'][size][metric]
            assert got['relative'][metric][size] == (pytest.approx(100 * (e - b) / b) if b else None)
    assert (tmp_path / 'fig7.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    table = proc.stdout[proc.stdout.index('resnext_tiny_elastic relative to resnext_tiny per test size'):]
    row = next(ln for ln in table.splitlines() if ln.strip().startswith('64x64 |'))
    relative = got['relative']['f1_o']['64']
    assert row.split('|')[1].strip() == (f'{relative:+.2f}%' if relative is not None else 'n/a')
    # --pretrained, there for a baseline without a checkpoint, does not apply to a model with one (none is released
    # for resnext_tiny_elastic: loading it raised)
    proc = cli('validate', *common, '--checkpoint', str(ckpts['resnext_tiny_elastic']), '--pretrained',
               '--results-file', str(tmp_path / 'v.json'))
    assert proc.returncode == 0, proc.stderr[-3000:]
    v = json.loads((tmp_path / 'v.json').read_text())
    assert {k: v[k] for k in ('f1_o', 'f1_c', 'map', 'loss')} == pytest.approx(
        {k: m['model']['64'][k] for k in ('f1_o', 'f1_c', 'map', 'loss')})


@pytest.mark.slow
def test_compare_multilabel_prints_tables_3_4_and_fig_7(tmp_path):
    proc = cli('compare', '--task', 'multilabel', '--seeds', '0', '--epochs', '1', '--train-num-samples', '112',
               '--val-num-samples', '56', '--stress-sizes', '32', '64', '--output', str(tmp_path), '--experiment',
               'c', *QUICK)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert 'paper Table 3: F1-C is its F1-PerClass, F1-O its F1-Overall' in out
    assert 'F1-O (%) on the built-in validation set (56 images)' in out
    assert 'Scale stress test (paper Fig. 7)' in out and '     32x32 |' in out and '     64x64 |' in out
    res = json.loads((tmp_path / 'c' / 'compare.json').read_text())
    twin = res['resnext_tiny'][0]
    table3 = next(ln for ln in out.splitlines() if ln.strip().startswith('F1-O |'))
    assert table3.split('|')[1].strip() == f'{twin["f1_o"]:.2f}'
    all_row = next(ln for ln in out.splitlines() if ln.strip().startswith('all |'))
    assert all_row.split('|')[2].strip() == f'{twin["f1_o"]:.2f}'
    assert twin['stress']['64']['f1_o'] == pytest.approx(twin['f1_o'])  # the last checkpoint at the trained size
    assert (tmp_path / 'c' / 'stress.png').exists()


# a base install: the analysis extra (matplotlib) is optional
WITHOUT_MATPLOTLIB = """
import sys


class NoMatplotlib:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'matplotlib':
            raise ImportError(f'No module named {name!r}')


sys.meta_path.insert(0, NoMatplotlib())
from timm_elastic.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_the_stress_test_without_matplotlib(tmp_path):
    """stress --plot says at once that it needs matplotlib (it said so after every evaluation, and lost them);
    compare --task multilabel prints and writes its results and says why there is no stress.png (it ended in a
    traceback after training, --results-file unwritten)."""
    script = tmp_path / 'base_install.py'
    script.write_text(WITHOUT_MATPLOTLIB)

    def run(*args):
        return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=900)

    proc = run('stress', '--task', 'multilabel', '--model', 'resnext_tiny_elastic', '--pretrained', '--baseline',
               'resnext_tiny', '--plot', str(tmp_path / 'fig7.png'))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "timm-elastic stress: error: --plot needs matplotlib, which is not installed: "
        "pip install 'timm-elastic[analysis]'"], proc.stderr
    proc = run('compare', '--task', 'multilabel', '--seeds', '0', '--epochs', '1', '--train-num-samples', '32',
               '--val-num-samples', '16', '-b', '16', '--stress-sizes', '32', '--output', str(tmp_path),
               '--experiment', 'c', '--results-file', str(tmp_path / 'r.json'), *QUICK)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'Scale stress test (paper Fig. 7)' in proc.stdout
    assert "No bar chart of the stress test (stress.png): plotting (the scale policy, the stress test) needs " \
           "matplotlib" in proc.stdout
    assert json.loads((tmp_path / 'r.json').read_text()) == json.loads((tmp_path / 'c' / 'compare.json').read_text())
    assert not (tmp_path / 'c' / 'stress.png').exists()


@pytest.mark.parametrize('case,message', [
    ('no_annotations', "--task multilabel reads MS COCO annotations: no COCO annotations for split 'validation'"),
    ('image_folder', 'is single-label data: --task classify'),
    ('missing_image', "1 of the 21 images of split 'val2014' are missing, e.g. "),
    ('unknown_category', 'has category_id 77, which its categories do not list'),
    ('no_file_name', 'have no file_name, e.g. image id 102'),
    # a checkpoint's class count: --num-classes 3 (the advice it gave) is refused as not fitting the checkpoint
    ('wrong_classes', "has 8 classes, but the multi-label data has 3: one output per class is needed (--checkpoint "
                      "'{ckpt}' was trained with 8: evaluate it on data of those classes)"),
    ('classify_checkpoint', 'was trained with --task classify; use it with --task classify'),
    # each split numbers the categories its file lists: output 0 would be trained as one and scored as another
    ('other_order', "number their classes differently (class 0 is 'person' in 'train', 'car' in 'validation')"),
    ('other_classes', "have different classes: 1 only in 'train' (e.g. 'bus'); both need the same classes"),
    ('empty_val', "split 'validation' of --data-dir"),
    # a test split's image_info file: every metric was 0.00%, printed as a score
    ('no_labels', "split 'val2014' in '{root}' has 21 images but no annotations (a test split's image_info file?)"),
    # train2017 re-uses most of val2014's images: paired by 'train' / 'validation' where no year has both files
    ('years_mixed', "the training split is train2017 and the evaluation split val2014 (from --train-split 'train' "
                    "and --val-split 'validation'), but train2017 holds most of val2014's images"),
    ('mixup', '--mixup makes single-label soft targets; --task multilabel trains on its 0/1 targets'),
    ('metric', '--eval-metric top1 is not a metric of --task multilabel; use one of map, f1_o, f1_c, loss'),
    ('stress_sizes', '--stress-sizes must be at least 32 pixels, got 16'),
    ('stress_sizes_twice', '--stress-sizes repeats 64; each size is evaluated once'),  # stress' rule (merged before)
])
def test_bad_inputs_are_one_line_errors(coco, tmp_path, case, message):
    ckpt = tmp_path / 'm.pth.tar'
    model = timm.create_model('resnext_tiny_elastic', num_classes=8)
    saved = {'state_dict': model.state_dict(), 'arch': 'resnext_tiny_elastic'}
    root = coco
    if case == 'classify_checkpoint':
        import argparse
        saved['args'] = argparse.Namespace(task='classify')
    torch.save(saved, ckpt)
    if case == 'no_annotations':
        root = tmp_path / 'empty'
        root.mkdir()
    elif case == 'image_folder':
        proc = cli('data', '--out', str(tmp_path / 'folder'), '--train-num-samples', '8', '--val-num-samples', '8')
        assert proc.returncode == 0, proc.stderr
        root = tmp_path / 'folder'
    elif case in ('other_order', 'other_classes', 'empty_val'):
        root = tmp_path / case
        cats = ((1, 'person'), (3, 'car'), (90, 'toothbrush')) if case == 'other_order' else \
            ((3, 'car'), (1, 'person'), (90, 'toothbrush'), (6, 'bus'))
        write_coco(root, 'train2014', 8, categories=cats if case != 'empty_val' else cats[:3])
        write_coco(root, 'val2014', 0 if case == 'empty_val' else 4, seed=1)
    elif case == 'years_mixed':
        root = tmp_path / case
        write_coco(root, 'train2017', 8)
        write_coco(root, 'val2014', 4, seed=1)
    elif case in ('missing_image', 'unknown_category', 'no_file_name', 'no_labels'):
        import shutil
        root = tmp_path / 'coco'
        shutil.copytree(coco, root)
        if case == 'missing_image':
            os.remove(root / 'val2014' / '0005.png')
        else:
            path = root / 'annotations' / 'instances_val2014.json'
            ann = json.loads(path.read_text())
            if case == 'unknown_category':
                ann['annotations'][0]['category_id'] = 77
            elif case == 'no_labels':
                del ann['annotations']
            else:
                del ann['images'][2]['file_name']
            path.write_text(json.dumps(ann))
    if case in ('other_order', 'other_classes', 'empty_val', 'years_mixed'):
        proc = cli('train', '--task', 'multilabel', '--data-dir', str(root), '-b', '4', '--output', str(tmp_path),
                   '--experiment', 'x', *QUICK)
        assert not (tmp_path / 'x').exists()
    elif case in ('mixup', 'metric'):
        flag = ['--mixup', '0.2'] if case == 'mixup' else ['--eval-metric', 'top1']
        proc = cli('train', '--task', 'multilabel', *flag, '--output', str(tmp_path), *QUICK)
    elif case.startswith('stress_sizes'):
        sizes = ['16', '64'] if case == 'stress_sizes' else ['64', '32', '64']
        proc = cli('compare', '--task', 'multilabel', '--stress-sizes', *sizes, '--output', str(tmp_path), *QUICK)
    elif case in ('wrong_classes', 'classify_checkpoint'):
        proc = cli('validate', '--task', 'multilabel', '--checkpoint', str(ckpt), '--data-dir', str(root), '--split',
                   'val', *QUICK[:3]) if case == 'wrong_classes' else \
            cli('validate', '--task', 'multilabel', '--checkpoint', str(ckpt), '--val-num-samples', '8', *QUICK[:3])
    else:
        proc = cli('validate', '--task', 'multilabel', '--checkpoint', str(ckpt), '--data-dir', str(root),
                   *QUICK[:3])
    assert proc.returncode == 2, (proc.stdout, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('timm-elastic '), proc.stderr[-2000:]
    assert message.format(root=root, ckpt=ckpt) in lines[0], lines[0]
