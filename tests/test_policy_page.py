"""The scale policy demo page in a real headless browser: Debian's chromium driven by Playwright."""
import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from timm_elastic import scale_policy
from timm_elastic.data import ScaleShapes
from timm_elastic.report import render_page, write_page
from timm_elastic.report.demo import collect
from timm_elastic.report.page import CHROMIUM, CHROMIUM_ARGS
from test_train import cli, in_a_terminal


def thumb(colour) -> str:
    buf = io.BytesIO()
    Image.new('RGB', (8, 8), colour).save(buf, 'PNG')
    return 'data:image/png;base64,' + base64.b64encode(buf.getvalue()).decode()


def page_data(n=12, blocks=4, classes=('cat', 'dog', 'hot dog'), baseline=True, seed=0):
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        target = i % len(classes)
        top = [int(c) for c in rng.permutation(len(classes))]
        probs = sorted(rng.dirichlet(np.ones(len(classes))), reverse=True)
        images.append(dict(
            thumb=thumb((20 * i % 256, 80, 160)), target=target,
            top5=[[c, float(p)] for c, p in zip(top, probs)],
            base_top5=[[c, float(p)] for c, p in zip(top[::-1], probs)] if baseline else None,
            scores=[round(float(s), 4) for s in rng.normal(0, 0.1, blocks)]))
    return dict(model='resnext_tiny_elastic', baseline='resnext_tiny' if baseline else None,
                blocks=[f'layer1.{b}' for b in range(blocks)], classes=list(classes), images=images)


@pytest.fixture(scope='module')
def browser():
    sync_api = pytest.importorskip('playwright.sync_api', reason='pip install playwright (the test extra has it)')
    if not os.path.exists(CHROMIUM) and not shutil.which('chromium'):
        pytest.skip('no chromium: install it with `apt-get install -y chromium` (Debian); Playwright drives it')
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM if os.path.exists(CHROMIUM) else shutil.which('chromium'),
                              args=list(CHROMIUM_ARGS))
        yield b
        b.close()


def open_page(browser, path):
    page = browser.new_page()
    errors, requests = [], []
    page.on('console', lambda m: errors.append(m.text) if m.type == 'error' else None)
    page.on('pageerror', lambda e: errors.append(str(e)))
    page.on('request', lambda r: requests.append(r.url))
    page.goto('file://' + str(path))
    page.wait_for_selector('body[data-ready="1"]')
    return page, errors, requests


def grid_order(page, visible_only=True):
    sel = '#grid .card:not([hidden])' if visible_only else '#grid .card'
    return [int(i) for i in page.eval_on_selector_all(sel, 'cs => cs.map(c => c.dataset.index)')]


def test_page_sorts_filters_and_shows_details(browser, tmp_path):
    data = page_data()
    data['images'][5]['file'] = 'cat/IMG_0005.jpg'  # an image folder's file (the built-in data's images have none)
    path = write_page(str(tmp_path / 'policy.html'), data)
    page, errors, requests = open_page(browser, path)
    assert page.title() == 'Scale policy of resnext_tiny_elastic'
    assert page.locator('#grid .card').count() == 12
    # by class (the default): class order, then image order
    assert grid_order(page) == sorted(range(12), key=lambda i: (data['images'][i]['target'], i))
    scores = np.array([im['scores'] for im in data['images']])
    for k in (0, 3):
        page.select_option('#sort', 'score')
        page.select_option('#block', str(k))
        assert grid_order(page) == sorted(range(12), key=lambda i: (-scores[i, k], i))
        page.select_option('#direction', 'asc')
        assert grid_order(page) == sorted(range(12), key=lambda i: (scores[i, k], i))
        page.select_option('#direction', 'desc')
    page.select_option('#sort', 'mean')
    assert grid_order(page) == sorted(range(12), key=lambda i: (-scores[i].mean(), i))
    assert not page.is_disabled('#direction')
    page.select_option('#sort', 'class')  # classes in their order: no direction to choose
    assert page.is_disabled('#direction') and page.is_disabled('#block')
    page.select_option('#sort', 'mean')
    # filter: 'do' matches dog and hot dog, 'hot' only hot dog, the class name 'dog' only dog
    page.fill('#filter', 'hot')
    assert grid_order(page) == [i for i in grid_order(page, False) if i % 3 == 2]
    assert page.text_content('#count') == '4 of 12 images'
    page.fill('#filter', 'do')
    assert len(grid_order(page)) == 8
    page.fill('#filter', 'dog')
    assert len(grid_order(page)) == 4
    page.fill('#filter', '')
    assert len(grid_order(page)) == 12
    # a click opens the image's scores and both top-5
    assert page.is_hidden('#detail')
    page.click('#grid .card[data-index="5"]')
    assert page.is_visible('#detail') and page.get_attribute('#detail', 'data-index') == '5'
    assert page.text_content('#detail-title') == 'Image 5: cat/IMG_0005.jpg'
    rows = page.eval_on_selector_all('#detail-scores tr', 'rs => rs.map(r => [...r.cells].map(c => c.textContent))')
    assert [r[:3] for r in rows] == [[str(b + 1), f'layer1.{b}', f'{s:.6f}'] for b, s in enumerate(scores[5])]
    names = data['classes']
    top5 = page.eval_on_selector_all('#detail-top5 li', 'ls => ls.map(l => l.textContent)')
    assert top5 == [f'{names[c]} {100 * p:.1f}%' for c, p in data['images'][5]['top5']]
    base = page.eval_on_selector_all('#detail-base-top5 li', 'ls => ls.map(l => l.textContent)')
    assert base == [f'{names[c]} {100 * p:.1f}%' for c, p in data['images'][5]['base_top5']]
    assert page.text_content('#detail-top5-title') == 'Top-5 of resnext_tiny_elastic'
    page.click('#close')
    assert page.is_hidden('#detail')
    assert errors == []
    assert [u for u in requests if not u.startswith('data:')] == ['file://' + str(path)]


def test_page_works_from_the_keyboard_and_its_detail_covers_no_control(browser, tmp_path):
    """The cards could not be reached or opened without a mouse (no tabindex), and the open detail view covered
    the header's controls (at 800 px: direction, filter and count): Tab reaches the cards after the controls,
    Enter / Space open one, Escape closes it (the focus back on its card), and the controls stay left of it."""
    write_page(str(tmp_path / 'p.html'), page_data())
    page, errors, _ = open_page(browser, tmp_path / 'p.html')
    for width in (1000, 800):
        page.set_viewport_size({'width': width, 'height': 700})
        page.focus('#filter')
        page.keyboard.press('Tab')
        first = grid_order(page)[0]
        assert page.evaluate('document.activeElement.dataset.index') == str(first)
        page.keyboard.press('Enter')
        assert page.is_visible('#detail') and page.get_attribute('#detail', 'data-index') == str(first)
        left = page.locator('#detail').bounding_box()['x']
        for control in ('#sort', '#block', '#direction', '#filter', '#count'):
            box = page.locator(control).bounding_box()
            assert box['x'] + box['width'] <= left, (width, control, box, left)
        page.keyboard.press('Escape')
        assert not page.is_visible('#detail')
        assert page.evaluate('document.activeElement.dataset.index') == str(first)
        page.keyboard.press('Tab')
        page.keyboard.press(' ')
        assert page.get_attribute('#detail', 'data-index') == str(grid_order(page)[1])
        page.keyboard.press('Escape')
    assert errors == []


def test_filter_by_an_exact_class_name_selects_that_class_alone(browser, tmp_path):
    # the list offers 'cat'; choosing it shows the cats, not the tiger cats too. Other text: the classes whose names
    # contain it, in any case
    data = page_data(n=9, classes=('cat', 'tiger cat', 'Dog'))
    page, errors, _ = open_page(browser, write_page(str(tmp_path / 'p.html'), data))
    assert page.eval_on_selector_all('#class-names option', 'os => os.map(o => o.value)') == ['cat', 'tiger cat', 'Dog']
    of = {c: [i for i in range(9) if i % 3 == c] for c in range(3)}
    for text, classes in [('cat', [0]), ('tiger cat', [1]), (' cat ', [0]), ('CAT', [0]), ('dog', [2]), ('at', [0, 1]),
                          ('Cat', [0]), ('ca', [0, 1]), ('', [0, 1, 2]), ('horse', [])]:
        page.fill('#filter', text)
        assert sorted(grid_order(page)) == sorted(i for c in classes for i in of[c]), text
        assert page.text_content('#count') == f'{3 * len(classes)} of 9 images'
    assert errors == []


def test_images_that_are_not_square_are_drawn_unstretched(browser, tmp_path):
    """A wide image (a 40x10 thumbnail of an image folder's photo) was stretched to the square of a card and of
    the detail view: drawn whole, it leaves the square's top and bottom empty."""
    buf = io.BytesIO()
    Image.new('RGB', (40, 10), (255, 0, 0)).save(buf, 'PNG')
    data = page_data(n=3)
    for image in data['images']:
        image['thumb'] = 'data:image/png;base64,' + base64.b64encode(buf.getvalue()).decode()
    page, errors, _ = open_page(browser, write_page(str(tmp_path / 'p.html'), data))
    page.click('#grid .card[data-index="1"]')
    for selector in ('#grid .card[data-index="0"] img', '#detail img'):
        shot = Image.open(io.BytesIO(page.locator(selector).screenshot())).convert('RGB')
        w, h = shot.size
        assert abs(w - h) <= 1, (selector, shot.size)  # the square it is drawn in
        assert shot.getpixel((w // 2, h // 2)) == (255, 0, 0), selector
        assert shot.getpixel((w // 2, 2)) != (255, 0, 0) and shot.getpixel((w // 2, h - 3)) != (255, 0, 0), selector
    assert errors == []


def test_page_shows_and_sorts_by_the_scores_of_policy_json(browser, tmp_path):
    # the page's scores are policy.json's, not another rounding of them: -0.0218474 is -0.021847 in both (the
    # page had -0.02185, shown -0.0219), and 0.123451 < 0.123454 orders the page as policy.json (at 5 decimals a tie)
    rng = np.random.default_rng(0)
    n, classes = 6, ['cat', 'dog', 'hot dog']
    scores = rng.normal(0, 0.1, (n, 3)).astype(np.float32)
    scores[0, 0], scores[1, 1], scores[2, 1] = -0.0218474, 0.123451, 0.123454
    probs = torch.softmax(torch.tensor(rng.normal(0, 1, (n, 3))), 1)
    data, record = collect('m', None, ['b0', 'b1', 'b2'], classes, [thumb((9, 9, 9))] * n, np.arange(n) % 3, scores,
                           probs)
    json_scores = json.loads(json.dumps(record))['scores']
    assert json_scores[0][0] == -0.021847 and [im['scores'] for im in data['images']] == json_scores
    page, errors, _ = open_page(browser, write_page(str(tmp_path / 'p.html'), data))
    for i in range(n):
        page.click(f'#grid .card[data-index="{i}"]')
        shown = page.eval_on_selector_all('#detail-scores tr', 'rs => rs.map(r => r.cells[2].textContent)')
        assert shown == [f'{s:.6f}' for s in json_scores[i]]
        page.click('#close')
    page.select_option('#sort', 'score')
    for b in range(3):
        page.select_option('#block', str(b))
        for direction, sign in (('desc', -1), ('asc', 1)):
            page.select_option('#direction', direction)
            assert grid_order(page) == sorted(range(n), key=lambda i: (sign * json_scores[i][b], i))
    assert errors == []


def test_page_and_policy_json_predict_by_one_rule():
    # argmax's rule on both: a NaN above every number (all NaN, a diverged model: class 0), a tie to the lower
    # class; topk (the page's) put class 4 first on all NaN and on equal probabilities
    nan = float('nan')
    probs = torch.tensor([[nan] * 8, [1 / 8] * 8, [.1, .2, .3, .3, .02, .02, .03, .03]])
    data, record = collect('m', 'b', ['b0'], [str(c) for c in range(8)], [thumb((9, 9, 9))] * 3, np.zeros(3, int),
                           np.zeros((3, 1)), probs, base_probs=probs.flip(0))
    assert record['predictions'] == [0, 0, 2] == probs.argmax(1).tolist()
    assert record['baseline_predictions'] == [2, 0, 0]
    assert [im['top5'][0][0] for im in data['images']] == record['predictions']
    assert [im['base_top5'][0][0] for im in data['images']] == record['baseline_predictions']
    assert [[c for c, _ in im['top5']] for im in data['images']] == [[0, 1, 2, 3, 4], [0, 1, 2, 3, 4], [2, 3, 1, 0, 6]]


def test_page_without_baseline_hides_its_top5(browser, tmp_path):
    path = write_page(str(tmp_path / 'p.html'), page_data(n=3, baseline=False))
    page, errors, _ = open_page(browser, path)
    page.click('#grid .card[data-index="0"]')
    assert page.is_hidden('#detail-base-top5') and page.is_hidden('#detail-base-title')
    assert errors == []


def test_script_in_class_names_is_text(browser, tmp_path):
    # names end up in the page as JSON inside <script>: '</script>' must not end it, '<!--<script>' must not
    # turn the rest of the page into the script's text (a blank page)
    names = ('</script><b>x', '<!--<script>', 'a & b')
    path = write_page(str(tmp_path / 'p.html'), page_data(n=3, classes=names))
    page, errors, _ = open_page(browser, path)
    assert page.locator('#grid .card').count() == 3 and errors == []
    assert [page.get_attribute(f'#grid .card[data-index="{i}"]', 'data-class') for i in range(3)] == list(names)


def test_nan_scores_and_probabilities_show_as_nan(browser, tmp_path):
    # a diverged model: JSON has no NaN (the page stayed blank), the page shows it, sorts it last, greys it
    nan = float('nan')
    data = page_data(n=5)
    data['images'][1]['scores'][2] = nan
    data['images'][3]['scores'] = [nan] * 4
    data['images'][3]['top5'][0][1] = nan
    page, errors, _ = open_page(browser, write_page(str(tmp_path / 'p.html'), data))
    assert page.locator('#grid .card').count() == 5
    page.select_option('#sort', 'score')
    page.select_option('#block', '2')
    finite = [i for i in range(5) if i not in (1, 3)]
    s = {i: data['images'][i]['scores'][2] for i in finite}
    assert grid_order(page) == sorted(finite, key=lambda i: (-s[i], i)) + [1, 3]
    page.select_option('#direction', 'asc')
    assert grid_order(page) == sorted(finite, key=lambda i: (s[i], i)) + [1, 3]
    strips = [page.eval_on_selector(f'#grid .card[data-index="{i}"] .strip', 'e => e.style.background')
              for i in (0, 3)]
    colours = [set(re.findall(r'rgb\([^)]*\)', strip)) for strip in strips]
    assert 'rgb(160, 160, 160)' not in colours[0] and colours[1] == {'rgb(160, 160, 160)'}
    page.click('#grid .card[data-index="3"]')
    rows = page.eval_on_selector_all('#detail-scores tr', 'rs => rs.map(r => r.cells[2].textContent)')
    assert rows == ['NaN'] * 4
    assert page.eval_on_selector_all('#detail-top5 li', 'ls => ls[0].textContent').endswith(' NaN%')
    assert errors == []


def test_a_page_of_many_images_and_blocks_loads(browser, tmp_path):
    # 2000 images x 70 blocks (DenseNet201+Elastic): 140,000 scores, more than one call's arguments can hold
    data = page_data(n=2000, blocks=70)
    page, errors, _ = open_page(browser, write_page(str(tmp_path / 'p.html'), data))
    assert page.locator('#grid .card').count() == 2000 and errors == []


def test_bad_page_data_is_refused():
    data = page_data(n=2)
    data['images'][1]['scores'] = [0.]
    with pytest.raises(ValueError, match='image 1 has 1 scores for 4 blocks'):
        render_page(data)
    with pytest.raises(ValueError, match="page data needs 'blocks'"):
        render_page({k: v for k, v in page_data().items() if k != 'blocks'})


def checkpoint(path, name, seed):
    # a training checkpoint as timm's saver writes it: the state dict and the model name
    torch.manual_seed(seed)
    model = timm.create_model(name)
    torch.save({'state_dict': model.state_dict(), 'arch': name, 'epoch': 0}, path)
    return model.eval()


def test_policy_command_writes_the_page_plots_and_scores(browser, tmp_path):
    elastic = checkpoint(tmp_path / 'e.pth.tar', 'resnext_tiny_elastic', 1)
    twin = checkpoint(tmp_path / 't.pth.tar', 'resnext_tiny', 2)
    out = tmp_path / 'out'
    proc = cli('policy', '--checkpoint', str(tmp_path / 'e.pth.tar'), '--baseline', 'resnext_tiny',
               '--baseline-checkpoint', str(tmp_path / 't.pth.tar'), '--val-num-samples', '16', '-b', '5',
               '--out', str(out))
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(out)) == ['class_ranking.png', 'embedding_class.png', 'embedding_score.png',
                                       'improvement.png', 'policy.html', 'policy.json', 'strip.png']
    assert f'open {out / "policy.html"} in a browser' in proc.stdout
    # the size the images were scored at, the model's own as validate's (resnext_tiny's is the built-in data's 64):
    # not said before, where a DLA checkpoint trained at 64 was scored at 224
    assert 'resnext_tiny_elastic: top-1 ' in proc.stdout and '% on 16 images at 64x64, scale policy over 5 ' \
        'Elastic blocks' in proc.stdout
    # the default perplexity, 30, is more than 16 images allow: it was lowered to 5 without a word
    assert 't-SNE perplexity 5, (N - 1) / 3 for the 16 images: --perplexity 30 needs more than 90' in proc.stdout
    result = json.loads((out / 'policy.json').read_text())
    data = ScaleShapes(split='validation', num_samples=16)
    # the scores and predictions of the saved weights, computed here through the library call
    torch.testing.assert_close(torch.tensor(result['scores']), scale_policy(elastic, data), rtol=1e-4, atol=1e-5)
    assert result['blocks'] == ['layer1.0', 'layer1.1', 'layer2.1', 'layer2.2', 'layer3.1']
    assert result['files'] is None  # the built-in data's images are generated, no files
    assert result['targets'] == [data[i][1] for i in range(16)] and result['classes'] == list(data.classes)
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=twin))
    x = torch.stack([transform(data[i][0]) for i in range(16)])
    with torch.no_grad():
        assert result['predictions'] == elastic(x).argmax(1).tolist()
        assert result['baseline_predictions'] == twin(x).argmax(1).tolist()
    page, errors, requests = open_page(browser, out / 'policy.html')
    assert page.locator('#grid .card').count() == 16 and errors == []
    assert [u for u in requests if not u.startswith('data:')] == ['file://' + str(out / 'policy.html')]
    page.click('#grid .card[data-index="7"]')
    assert page.eval_on_selector_all('#detail-scores tr', 'rs => rs.length') == 5
    assert len(page.eval_on_selector_all('#detail-base-top5 li', 'ls => ls')) == 5


def test_policy_command_reads_an_image_folder(tmp_path):
    from timm_elastic.data import write_image_folder
    write_image_folder(str(tmp_path / 'folder'), num_samples={'train': 8, 'validation': 16})
    model = checkpoint(tmp_path / 'e.pth.tar', 'resnext_tiny_elastic', 1)
    proc = cli('policy', '--checkpoint', str(tmp_path / 'e.pth.tar'), '--data-dir', str(tmp_path / 'folder'),
               '--out', str(tmp_path / 'out'))
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / 'out' / 'policy.json').read_text())
    # timm's folder reader orders the files by class folder, then name: the same images, sorted by class
    data = ScaleShapes(split='validation', num_samples=16)
    order = sorted(range(16), key=lambda i: data.filename(i))
    assert result['targets'] == [data.targets[i] for i in order] and result['classes'] == list(data.classes)
    # each image's file, relative to the split's folder: which image a row of policy.json is
    assert result['files'] == [os.path.relpath(data.filename(i), 'validation') for i in order]
    expected = scale_policy(model, [data[i][0] for i in order])
    torch.testing.assert_close(torch.tensor(result['scores']), expected, rtol=1e-4, atol=1e-5)


def test_policy_baseline_checkpoint_is_not_also_pretrained(tmp_path):
    # --pretrained for the Elastic model; the baseline (resnext_tiny, which has no released weights)
    # comes from its checkpoint alone
    from timm_elastic.cli import build_parser
    from timm_elastic.train import baseline_args
    args = build_parser().parse_args(['policy', '--model', 'resnext50_elastic', '--pretrained', '--baseline',
                                      'resnext_tiny', '--baseline-checkpoint', 'T', '--elastic-ratio', '0.25',
                                      '--out', str(tmp_path)])
    b = baseline_args(args)
    assert (b.model, b.checkpoint, b.pretrained, b.elastic_ratio) == ('resnext_tiny', 'T', False, None)
    assert args.pretrained and args.model == 'resnext50_elastic'  # the Elastic model's options are kept
    args.baseline_checkpoint = ''
    assert baseline_args(args).pretrained


@pytest.mark.parametrize('extra, message', [
    (['--model', 'resnext_tiny', '--checkpoint', 'T'], 'resnext_tiny has no Elastic blocks, so it has no scale policy'),
    (['--checkpoint', 'E', '--baseline-checkpoint', 'T'], '--baseline-checkpoint needs --baseline NAME'),
    (['--checkpoint', 'E', '--baseline', 'resnext_tiny'], 'no weights to evaluate: pass --baseline-checkpoint PATH'),
    (['--checkpoint', 'E', '--out', 'E'], 'is a file; name a folder'),
    (['--checkpoint', 'E', '--thumb-size', '0'], '--thumb-size must be positive, got 0'),
    (['--checkpoint', 'E', '--perplexity', '0'], '--perplexity must be positive, got 0.0'),
    # scikit-learn's t-SNE takes seeds in [0, 2**32): its traceback came after the scoring
    (['--checkpoint', 'E', '--seed', '-1'], '--seed must be at least 0, got -1'),
    (['--checkpoint', 'E', '--seed', str(2 ** 32)], '--seed must be at least 0 and less than 2**32 (the t-SNE seed)'),
    (['--checkpoint', 'E', '--data-seed', '-1'], '--data-seed must be at least 0, got -1'),  # not the t-SNE --seed
])
def test_policy_command_errors(tmp_path, extra, message):
    checkpoint(tmp_path / 'e.pth.tar', 'resnext_tiny_elastic', 1)
    checkpoint(tmp_path / 't.pth.tar', 'resnext_tiny', 2)
    extra = [str(tmp_path / 'e.pth.tar') if a == 'E' else str(tmp_path / 't.pth.tar') if a == 'T' else a for a in extra]
    proc = cli('policy', '--val-num-samples', '8', '--out', str(tmp_path / 'out'), *extra)  # a later --out wins
    assert proc.returncode == 2
    assert proc.stderr.startswith('timm-elastic policy: error: ') and message in proc.stderr
    assert proc.stderr.count('\n') == 1


def test_a_wrong_baseline_is_refused_before_any_image_is_scored(tmp_path, monkeypatch):
    """A --baseline-checkpoint that is not there (or a baseline without weights) was found after the Elastic model
    had scored every image: the whole run's time on a large split."""
    from timm_elastic.cli import build_parser
    from timm_elastic.report import demo
    from timm_elastic.train import UsageError

    def scored(*args, **kwargs):
        raise AssertionError('an image was scored before the baseline was loaded')
    monkeypatch.setattr(demo, '_predict', scored)
    monkeypatch.setattr(demo, '_thumbnails', scored)
    checkpoint(tmp_path / 'e.pth.tar', 'resnext_tiny_elastic', 1)
    for extra, message in ((['--baseline-checkpoint', str(tmp_path / 'typo.pth.tar')], 'does not exist'),
                           ([], 'no weights to evaluate: pass --baseline-checkpoint PATH')):
        args = build_parser().parse_args(['policy', '--checkpoint', str(tmp_path / 'e.pth.tar'), '--baseline',
                                          'resnext_tiny', *extra, '--val-num-samples', '8', '--out',
                                          str(tmp_path / 'out')])
        with pytest.raises(UsageError, match=message):
            demo.run(args)


def image_folder(root, classes, image=lambda c: Image.new('RGB', (40, 40), (30 * c, 90, 200))):
    for c in range(classes):
        (root / 'validation' / f'c{c}').mkdir(parents=True)
        image(c).save(root / 'validation' / f'c{c}' / '1.png')
    return root


def test_policy_of_identical_images_has_no_embedding(browser, tmp_path):
    # one image in each of the 8 classes, the same image: one policy, which t-SNE cannot spread (scikit-learn
    # crashed the process there); the page and the other files are written and the output says why
    checkpoint(tmp_path / 'e.pth.tar', 'resnext_tiny_elastic', 1)
    data = image_folder(tmp_path / 'data', 8, image=lambda c: Image.new('RGB', (40, 40), (120, 90, 200)))
    out = tmp_path / 'out'
    proc = cli('policy', '--checkpoint', str(tmp_path / 'e.pth.tar'), '--data-dir', str(data), '--out', str(out))
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(out)) == ['class_ranking.png', 'policy.html', 'policy.json']
    assert ('no t-SNE plots (embedding_*.png, strip.png, improvement.png): an embedding needs at least 2 different '
            'policies, got 8 images with 1') in proc.stdout
    page, errors, _ = open_page(browser, out / 'policy.html')
    assert page.locator('#grid .card').count() == 8 and errors == []
    # a second run into the folder: refused, then with --force the folder is the new run's alone (an earlier
    # run's plots left there would be read as this one's)
    (out / 'strip.png').write_bytes(b'an earlier run')
    again = ['policy', '--checkpoint', str(tmp_path / 'e.pth.tar'), '--data-dir', str(data), '--out', str(out)]
    proc = cli(*again)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"timm-elastic policy: error: --out '{out}' holds files already; pass --force to replace the folder"]
    assert (out / 'strip.png').read_bytes() == b'an earlier run'
    proc = cli(*again, '--force')
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(out)) == ['class_ranking.png', 'policy.html', 'policy.json']
    assert sorted(os.listdir(tmp_path)) == ['data', 'e.pth.tar', 'out']  # no staging folder left behind
    # --force replaces a folder of policy's outputs only: one that holds the run's checkpoint (or its data, a
    # user's files) was deleted with it
    proc = cli('policy', '--checkpoint', str(tmp_path / 'e.pth.tar'), '--data-dir', str(data), '--out',
               str(tmp_path), '--force')
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"timm-elastic policy: error: --out '{tmp_path}' holds files that policy does not write (data, e.pth.tar, "
        "out); --force replaces only a folder of its outputs: choose another --out"], proc.stderr
    assert sorted(os.listdir(tmp_path)) == ['data', 'e.pth.tar', 'out']


def test_policy_out_is_checked_again_before_it_is_replaced(tmp_path, monkeypatch):
    """A file put into --out while the images were scored was deleted with the folder (what --out held was
    checked at the start only): the run is refused then, the file kept. A symbolic link --out was replaced by a
    folder (the folder it named kept its old files): refused at the start, as convert and data refuse one."""
    from timm_elastic.cli import build_parser
    from timm_elastic.report import demo
    from timm_elastic.train import UsageError
    checkpoint(tmp_path / 'e.pth.tar', 'resnext_tiny_elastic', 1)
    out = tmp_path / 'out'
    args = build_parser().parse_args(['policy', '--checkpoint', str(tmp_path / 'e.pth.tar'), '--val-num-samples',
                                      '4', '--no-progress', '--out', str(out)])
    write_page = demo.page.write_page

    def meanwhile(path, data):  # the user saves a note into the folder while policy runs
        out.mkdir(exist_ok=True)
        (out / 'notes.txt').write_text('mine')
        return write_page(path, data)
    monkeypatch.setattr(demo.page, 'write_page', meanwhile)
    with pytest.raises(UsageError, match=re.escape(f"--out '{out}' holds files already; pass --force")):
        demo.run(args)
    assert os.listdir(out) == ['notes.txt'] and (out / 'notes.txt').read_text() == 'mine'
    assert sorted(os.listdir(tmp_path)) == ['e.pth.tar', 'out']  # no staging folder left behind
    args.force = True
    with pytest.raises(UsageError, match=re.escape("holds files that policy does not write (notes.txt)")):
        demo.run(args)
    assert os.listdir(out) == ['notes.txt']

    monkeypatch.undo()
    (tmp_path / 'real').mkdir()
    (tmp_path / 'link').symlink_to(tmp_path / 'real')
    proc = cli('policy', '--checkpoint', str(tmp_path / 'e.pth.tar'), '--val-num-samples', '4', '--out',
               str(tmp_path / 'link'))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"timm-elastic policy: error: --out: {tmp_path / 'link'} is a symbolic link (to {tmp_path / 'real'}); name "
        "the folder itself, or another folder"], proc.stderr
    assert os.path.islink(tmp_path / 'link') and os.listdir(tmp_path / 'real') == []


def test_policy_of_a_diverged_model(browser, tmp_path):
    # NaN weights: NaN scores and probabilities. policy.json is standard JSON (null), the page loads and shows them
    torch.manual_seed(1)
    model = timm.create_model('resnext_tiny_elastic')
    with torch.no_grad():
        model.layer2[1].elastic.low.conv2.weight[0, 0, 0, 0] = float('nan')
    torch.save({'state_dict': model.state_dict(), 'arch': 'resnext_tiny_elastic'}, tmp_path / 'nan.pth.tar')
    out = tmp_path / 'out'
    proc = cli('policy', '--checkpoint', str(tmp_path / 'nan.pth.tar'), '--val-num-samples', '6', '--out', str(out))
    assert proc.returncode == 0, proc.stderr
    assert 'no t-SNE plots' in proc.stdout and 'these have NaN or infinite ones' in proc.stdout
    # its class ranking was a figure without bars, listed among the files written
    assert 'no class ranking (class_ranking.png): the scores have NaN or infinite ones' in proc.stdout
    assert sorted(os.listdir(out)) == ['policy.html', 'policy.json']

    def refuse(constant):
        raise ValueError(f'not JSON: {constant}')
    result = json.loads((out / 'policy.json').read_text(), parse_constant=refuse)
    assert all(row[2] is None for row in result['scores']) and all(row[0] is not None for row in result['scores'])
    page, errors, _ = open_page(browser, out / 'policy.html')
    assert page.locator('#grid .card').count() == 6 and errors == []
    # the page predicts what policy.json does (it showed the top class of topk over NaN, policy.json argmax's)
    names = result['classes']
    for i in range(6):
        assert page.text_content(f'#grid .card[data-index="{i}"] .pred') == '\u2192 ' + names[result['predictions'][i]]
    page.click('#grid .card[data-index="0"]')
    assert page.eval_on_selector_all('#detail-top5 li', 'ls => ls[0].textContent') == f'{names[0]} NaN%'


def test_policy_shows_progress_in_a_terminal(tmp_path, monkeypatch):
    """A bar per model in a terminal, none with --no-progress; each bar counts its model's batches."""
    checkpoint(tmp_path / 'e.pth.tar', 'resnext_tiny_elastic', 1)
    checkpoint(tmp_path / 't.pth.tar', 'resnext_tiny', 2)
    flags = ['policy', '--checkpoint', str(tmp_path / 'e.pth.tar'), '--baseline', 'resnext_tiny',
             '--baseline-checkpoint', str(tmp_path / 't.pth.tar'), '--val-num-samples', '16', '-b', '8']
    status, shown, _ = in_a_terminal(*flags, '--out', str(tmp_path / 'a'))
    assert status == 0, shown
    for name in ('resnext_tiny_elastic', 'resnext_tiny'):  # drawn when made (tqdm redraws once a second at most)
        assert re.search(rf'{name}: +0%.*\| 0/2 ', shown), shown
    status, shown, _ = in_a_terminal(*flags, '--out', str(tmp_path / 'b'), '--no-progress')
    assert status == 0 and '%|' not in shown, shown
    # what each bar is advanced through, observed in process: every batch of its model
    import timm_elastic.train as train_module
    from timm_elastic.cli import build_parser
    from timm_elastic.report.demo import run
    bars = []

    class Counting(train_module.Progress):
        def __init__(self, total, desc, args):
            super().__init__(total, desc, args)
            self.record = [desc, total, 0]
            bars.append(self.record)

        def track(self, loader, phase=None):
            for batch in super().track(loader, phase):
                self.record[2] += 1
                yield batch
    monkeypatch.setattr(train_module, 'Progress', Counting)
    run(build_parser().parse_args([*flags, '--out', str(tmp_path / 'c')]))
    assert bars == [['resnext_tiny_elastic', 2, 2], ['resnext_tiny', 2, 2]]


def test_policy_of_fewer_classes_than_outputs_is_refused(tmp_path):
    # 7 class folders for a model of 8 outputs: output 7's name is missing, and a folder left out shifts the rest
    checkpoint(tmp_path / 'e.pth.tar', 'resnext_tiny_elastic', 1)
    data = image_folder(tmp_path / 'data', 7)
    proc = cli('policy', '--checkpoint', str(tmp_path / 'e.pth.tar'), '--data-dir', str(data),
               '--out', str(tmp_path / 'out'))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        'timm-elastic policy: error: the data has 7 classes but --model resnext_tiny_elastic has 8 outputs; the page '
        'names each output by its class in the data, so the data needs one class (an image folder: one subfolder) '
        'per output, as the model was trained'], proc.stderr
    assert not (tmp_path / 'out').exists()


def test_page_benchmark_runs(browser):
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks', 'policy_page.py')
    proc = subprocess.run([sys.executable, script, '--images', '24', '--rounds', '1'], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[0])
    assert result['images'] == 24 and result['load_s'] > 0 and result['sort_s'] >= 0
