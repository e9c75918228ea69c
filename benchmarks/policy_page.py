"""How fast the scale policy page (`timm-elastic policy`) loads and responds with N images.

Writes a page of N images of the built-in dataset (thumbnails as the command makes them; the scores
and predictions are random, which the page's speed does not depend on) and opens it in headless
Debian chromium through Playwright, several times: the time from navigation to the grid being
built (`body[data-ready]`), and inside the page the time of a re-sort by S at a block and of a
class filter (each one synchronous DOM update, timed with performance.now()). Prints the medians.

    python benchmarks/policy_page.py --images 2000
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

from timm_elastic.report.page import CHROMIUM, CHROMIUM_ARGS

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _usage import at_least  # noqa: E402


def page_data(n: int, blocks: int, thumb_size: int, seed: int = 0):
    from timm_elastic.data import CLASSES, ScaleShapes
    from timm_elastic.report.demo import _thumbnails
    dataset = ScaleShapes(split='train', num_samples=n)
    thumbs = _thumbnails(dataset, thumb_size)
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        order = [int(c) for c in rng.permutation(len(CLASSES))[:5]]
        probs = sorted(rng.dirichlet(np.ones(5)), reverse=True)
        images.append(dict(thumb=thumbs[i], target=i % len(CLASSES),  # ScaleShapes cycles the classes
                           top5=[[c, round(float(p), 4)] for c, p in zip(order, probs)],
                           base_top5=[[c, round(float(p), 4)] for c, p in zip(order[::-1], probs)],
                           scores=[round(float(s), 5) for s in rng.normal(0, 0.2, blocks)]))
    return dict(model='resnext_tiny_elastic', baseline='resnext_tiny', blocks=[f'block{b}' for b in range(blocks)],
                classes=list(CLASSES), images=images)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--images', type=int, default=2000, help='images on the page (default: 2000)')
    p.add_argument('--blocks', type=int, default=17, help='Elastic blocks per policy (default: 17, ResNeXt50)')
    p.add_argument('--thumb-size', type=int, default=96, help='thumbnail side, as timm-elastic policy (default: 96)')
    p.add_argument('--rounds', type=int, default=5, help='page loads to time (default: 5)')
    p.add_argument('--chromium', default=CHROMIUM, help=f'the browser (default: {CHROMIUM})')
    args = p.parse_args(argv)
    at_least(p, args, 1, 'images', 'blocks', 'thumb_size', 'rounds')
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print('needs Playwright for Python: pip install playwright (the test extra has it)', file=sys.stderr)
        return 2
    if not os.path.exists(args.chromium):
        print(f'no browser at {args.chromium}: apt-get install -y chromium', file=sys.stderr)
        return 2
    from timm_elastic.report import write_page
    with tempfile.TemporaryDirectory() as tmp:
        path = write_page(os.path.join(tmp, 'policy.html'), page_data(args.images, args.blocks, args.thumb_size))
        size = os.path.getsize(path)
        loads, sorts, filters = [], [], []
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, args=list(CHROMIUM_ARGS))
            for _ in range(args.rounds):
                page = browser.new_page()
                start = time.perf_counter()
                page.goto('file://' + path)
                page.wait_for_selector('body[data-ready="1"]')
                loads.append(time.perf_counter() - start)
                sorts.append(page.evaluate("""() => { const t = performance.now();
                    document.getElementById('sort').value = 'score'; document.getElementById('block').value = '3';
                    document.getElementById('block').dispatchEvent(new Event('change'));
                    return (performance.now() - t) / 1000; }"""))
                filters.append(page.evaluate("""() => { const t = performance.now();
                    const f = document.getElementById('filter'); f.value = 'stripes';
                    f.dispatchEvent(new Event('input')); return (performance.now() - t) / 1000; }"""))
                page.close()
            version = browser.version
            browser.close()
    result = dict(images=args.images, blocks=args.blocks, page_mb=round(size / 1e6, 2), chromium=version,
                  load_s=round(statistics.median(loads), 3), sort_s=round(statistics.median(sorts), 4),
                  filter_s=round(statistics.median(filters), 4), rounds=args.rounds)
    print(json.dumps(result))
    print(f'{args.images} images x {args.blocks} blocks, page {result["page_mb"]} MB: load {result["load_s"]:.2f} s, '
          f're-sort {1e3 * result["sort_s"]:.0f} ms, filter {1e3 * result["filter_s"]:.0f} ms '
          f'(medians of {args.rounds}, chromium {version})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
