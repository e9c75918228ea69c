"""The scale policy demo the paper promised (Appendix C, Figs. 8-9): one self-contained HTML page.

`render_page(data)` returns the page for the data that `timm_elastic.report.demo` collects (or any
dict of the same shape), with everything inline: no network, no CDN, thumbnails as data URIs. The
page shows a grid of images, each with its true class, the Elastic model's prediction and its
per-block policy strip (red: high resolution, S > 0; blue: low); it sorts by class or by S at any
block (or the mean over blocks), filters by class (a class's exact name selects that class alone, other text
the classes whose names contain it, in any case), and a click opens the image's per-block scores and both
models' top-5.

`data` holds: `model` (name), `baseline` (name or None), `blocks` (B block names), `classes`
(class names), `images`: one dict per image with `thumb` (a data URI), `target` (class index),
`top5` ([[class index, probability], ...], the Elastic model's), `base_top5` (the baseline's or
None), optionally `file` (its file, shown in the detail view) and `scores` (B floats, shown with `SCORE_DECIMALS`
decimals: `timm-elastic policy` rounds them so, once, and writes the same numbers to policy.json). The grid is
built once; sorting moves the cards and filtering hides them, so a few thousand images stay responsive.
"""
import html
import json
from typing import Any, Dict

from .._io import json_finite, write_text

__all__ = ['render_page', 'write_page', 'check_page_data', 'SCORE_DECIMALS', 'CHROMIUM', 'CHROMIUM_ARGS']

# The scores' precision in policy.json and on the page. The page shows them as they are, not rounded again: two
# roundings (to this, then fewer digits) can move the last digit shown away from the value of policy.json
SCORE_DECIMALS = 6

# Opening the page headless where there is no network (the tests, benchmarks/policy_page.py): Debian's
# chromium, with the flags that keep it from background connections and updates
CHROMIUM = '/usr/bin/chromium'
CHROMIUM_ARGS = ('--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                 '--disable-background-networking', '--disable-component-update', '--disable-sync')


def check_page_data(data: Dict[str, Any]) -> None:
    """Raise ValueError, in one line, where `data` does not have the shape the page reads."""
    for key in ('model', 'blocks', 'classes', 'images'):
        if key not in data:
            raise ValueError(f'page data needs {key!r}; it has {sorted(data)}')
    blocks, classes = len(data['blocks']), len(data['classes'])
    for i, image in enumerate(data['images']):
        if len(image['scores']) != blocks:
            raise ValueError(f'image {i} has {len(image["scores"])} scores for {blocks} blocks')
        if not 0 <= image['target'] < classes or any(not 0 <= c < classes for c, _ in image['top5']):
            raise ValueError(f'image {i} names a class outside the {classes} classes')


def render_page(data: Dict[str, Any]) -> str:
    """The page as one HTML string (see the module docstring for `data`)."""
    check_page_data(data)
    title = f'Scale policy of {data["model"]}'
    # JSON inside <script>: '</' would end the element early and '<!--' change how it is parsed, so no '<' (nor
    # '>' or '&') is written as itself; they occur only inside strings, where the escapes mean the same
    payload = json.dumps(json_finite(data), separators=(',', ':'), allow_nan=False)
    payload = payload.replace('<', '\\u003c').replace('>', '\\u003e').replace('&', '\\u0026')
    return _TEMPLATE.replace('__TITLE__', html.escape(title)).replace('__DECIMALS__', str(SCORE_DECIMALS)) \
        .replace('__DATA__', payload)


def write_page(path: str, data: Dict[str, Any]) -> str:
    """Write `render_page(data)` to `path` atomically; returns `path`."""
    write_text(path, render_page(data))
    return path


_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
  content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>__TITLE__</title>
<style>
body { font: 13px system-ui, sans-serif; margin: 0; color: #222; }
header { position: sticky; top: 0; background: #f4f4f4; border-bottom: 1px solid #ccc; padding: 8px 12px; z-index: 2; }
header h1 { font-size: 16px; margin: 0 0 6px 0; }
header label { margin-right: 12px; }
#grid { display: flex; flex-wrap: wrap; gap: 6px; padding: 10px; }
.card { width: 112px; border: 1px solid #ccc; border-radius: 4px; padding: 4px; cursor: pointer; background: #fff; }
.card[hidden] { display: none; }
.card img { width: 104px; height: 104px; object-fit: contain; image-rendering: pixelated; display: block; }
.card .strip { height: 10px; margin-top: 3px; border: 1px solid #aaa; }
.card .cls { font-size: 11px; overflow: hidden; white-space: nowrap; text-overflow: ellipsis; }
.card .pred.wrong { color: #b00; }
.card .pred.right { color: #070; }
#detail { position: fixed; right: 0; top: 0; bottom: 0; width: 340px; overflow: auto; background: #fff;
  border-left: 2px solid #888; padding: 10px; z-index: 3; box-shadow: -4px 0 8px rgba(0,0,0,.15); }
#detail[hidden] { display: none; }
/* an open detail view takes the right of the window: the controls and the grid move left of it, not under it */
@media (min-width: 720px) { body.detail-open { margin-right: 364px; } }
@media (max-width: 719px) { #detail { width: auto; left: 0; } }
.card:focus-visible { outline: 2px solid #06c; outline-offset: 1px; }
#detail img { width: 192px; height: 192px; object-fit: contain; image-rendering: pixelated; }
#detail table { border-collapse: collapse; width: 100%; }
#detail td { padding: 1px 4px; font-size: 12px; }
#detail .bar { height: 8px; }
</style>
</head>
<body>
<header>
<h1 id="title"></h1>
<label>sort by <select id="sort"><option value="class">class</option><option value="score">score S at block</option>
<option value="mean">mean S over blocks</option></select></label>
<label>block <select id="block"></select></label>
<label><select id="direction"><option value="desc">highest first</option>
<option value="asc">lowest first</option></select></label>
<label>class <input id="filter" type="search" placeholder="filter by class name" list="class-names"></label>
<datalist id="class-names"></datalist>
<span id="count"></span>
</header>
<main id="grid"></main>
<aside id="detail" hidden>
<button id="close" type="button">close</button>
<h2 id="detail-title"></h2>
<img id="detail-img" alt="">
<p id="detail-classes"></p>
<h3>Scale policy per block</h3>
<table id="detail-scores"></table>
<h3 id="detail-top5-title">Top-5</h3>
<ol id="detail-top5"></ol>
<h3 id="detail-base-title">Baseline top-5</h3>
<ol id="detail-base-top5"></ol>
</aside>
<script id="policy-data" type="application/json">__DATA__</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById('policy-data').textContent);
const IMAGES = DATA.images, CLASSES = DATA.classes, BLOCKS = DATA.blocks, DECIMALS = __DECIMALS__;
// JSON's null is a NaN of the model (a diverged one): shown as NaN, sorted last, grey in the strips
const num = x => x === null ? NaN : x;
for (const im of IMAGES) {
  im.scores = im.scores.map(num);
  for (const list of [im.top5, im.base_top5 || []]) for (const e of list) e[1] = num(e[1]);
}
let LIMIT = 1e-12;  // a loop: a spread of every score overflows the call stack past ~100k scores
for (const im of IMAGES) for (const s of im.scores) if (Math.abs(s) > LIMIT) LIMIT = Math.abs(s);

function colour(s) {  // S > 0 red (high resolution), S < 0 blue (low)
  if (Number.isNaN(s)) return 'rgb(160,160,160)';
  const t = Math.min(1, Math.abs(s) / LIMIT), v = Math.round(255 * (1 - t));
  return s >= 0 ? `rgb(255,${v},${v})` : `rgb(${v},${v},255)`;
}
function strip(scores) {
  const w = 100 / scores.length;
  return 'linear-gradient(to right,' + scores.map((s, b) => `${colour(s)} ${b * w}% ${(b + 1) * w}%`).join(',') + ')';
}
function mean(xs) { return xs.reduce((a, b) => a + b, 0) / xs.length; }
function pct(p) { return (100 * p).toFixed(1) + '%'; }

document.getElementById('title').textContent = `Scale policy of ${DATA.model}` +
  (DATA.baseline ? ` (baseline ${DATA.baseline})` : '') + `: ${IMAGES.length} images, ${BLOCKS.length} blocks`;
const blockSelect = document.getElementById('block');
BLOCKS.forEach((name, b) => blockSelect.add(new Option(`${b + 1}: ${name}`, String(b))));
const names = document.getElementById('class-names');
CLASSES.forEach(c => { const o = document.createElement('option'); o.value = c; names.appendChild(o); });

const grid = document.getElementById('grid');
const cards = IMAGES.map((im, i) => {
  im.mean = mean(im.scores);
  const card = document.createElement('div');
  card.className = 'card';
  card.dataset.index = String(i);
  card.dataset.class = CLASSES[im.target];
  const img = document.createElement('img');
  img.src = im.thumb; img.alt = CLASSES[im.target]; img.loading = 'lazy';
  const pred = im.top5[0][0];
  const truth = document.createElement('div'); truth.className = 'cls'; truth.textContent = CLASSES[im.target];
  const guess = document.createElement('div');
  guess.className = 'cls pred ' + (pred === im.target ? 'right' : 'wrong');
  guess.textContent = '\u2192 ' + CLASSES[pred];
  const s = document.createElement('div'); s.className = 'strip'; s.style.background = strip(im.scores);
  s.title = 'scale policy, block 1 (left) to ' + BLOCKS.length + ' (right)';
  card.append(img, truth, guess, s);
  card.tabIndex = 0;  // reached with Tab, opened with Enter or Space as with a click
  card.setAttribute('role', 'button');
  card.addEventListener('click', () => show(i));
  card.addEventListener('keydown', e => {
    if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); show(i); }
  });
  return card;
});
for (const card of cards) grid.appendChild(card);

function order() {
  const how = document.getElementById('sort').value, b = Number(blockSelect.value);
  const sign = document.getElementById('direction').value === 'asc' ? 1 : -1;
  const key = how === 'class' ? (i => IMAGES[i].target) : how === 'mean' ? (i => IMAGES[i].mean)
    : (i => IMAGES[i].scores[b]);
  const idx = IMAGES.map((_, i) => i);
  const nan = i => Number.isNaN(key(i));  // last in either direction
  if (how === 'class') idx.sort((a, c) => key(a) - key(c) || a - c);
  else idx.sort((a, c) => nan(a) - nan(c) || (nan(a) ? 0 : sign * (key(a) - key(c))) || a - c);
  return idx;
}
// The classes a filter text selects (null: all): a class's exact name, as the list offers it, that class alone
// though other names contain it ('cat', 'tiger cat'); else the names equal to the text in any case; else the
// names that contain it
const LOWER = CLASSES.map(c => c.toLowerCase());
function selected(value) {
  const text = value.trim().toLowerCase();
  if (text === '') return null;
  for (const match of [c => CLASSES[c] === value, c => LOWER[c] === text, c => LOWER[c].includes(text)]) {
    const hits = new Set(CLASSES.map((_, c) => c).filter(match));
    if (hits.size) return hits;
  }
  return new Set();
}
function update() {
  const idx = order();
  const classes = selected(document.getElementById('filter').value);
  let shown = 0;
  const frag = document.createDocumentFragment();
  for (const i of idx) {
    const hide = classes !== null && !classes.has(IMAGES[i].target);
    cards[i].hidden = hide;
    if (!hide) shown++;
    frag.appendChild(cards[i]);
  }
  grid.appendChild(frag);
  document.getElementById('count').textContent = `${shown} of ${IMAGES.length} images`;
  blockSelect.disabled = document.getElementById('sort').value !== 'score';
  document.getElementById('direction').disabled = document.getElementById('sort').value === 'class';
}
function top5(list, target, el) {
  el.replaceChildren(...list.map(([c, p]) => {
    const li = document.createElement('li');
    li.textContent = `${CLASSES[c]} ${pct(p)}`;
    if (c === target) li.style.fontWeight = 'bold';
    return li;
  }));
}
function show(i) {
  const im = IMAGES[i];
  document.body.classList.add('detail-open');
  document.getElementById('detail').hidden = false;
  document.getElementById('detail').dataset.index = String(i);
  document.getElementById('detail-title').textContent = `Image ${i}` + (im.file ? `: ${im.file}` : '');
  document.getElementById('detail-img').src = im.thumb;
  document.getElementById('detail-classes').textContent =
    `class ${CLASSES[im.target]}; ${DATA.model}: ${CLASSES[im.top5[0][0]]}` +
    (im.base_top5 ? `; ${DATA.baseline}: ${CLASSES[im.base_top5[0][0]]}` : '') + `; mean S ${im.mean.toFixed(4)}`;
  const rows = im.scores.map((s, b) => {
    const tr = document.createElement('tr');
    const bar = document.createElement('div');
    bar.className = 'bar'; bar.style.background = colour(s);
    bar.style.width = `${Math.round(100 * Math.abs(s) / LIMIT)}%`;
    const cells = [`${b + 1}`, BLOCKS[b], s.toFixed(DECIMALS)].map(t => { const td = document.createElement('td');
      td.textContent = t; return td; });
    const td = document.createElement('td'); td.style.width = '80px'; td.append(bar);
    tr.append(...cells, td);
    return tr;
  });
  document.getElementById('detail-scores').replaceChildren(...rows);
  document.getElementById('detail-top5-title').textContent = `Top-5 of ${DATA.model}`;
  top5(im.top5, im.target, document.getElementById('detail-top5'));
  const base = im.base_top5 !== null && im.base_top5 !== undefined;
  document.getElementById('detail-base-title').hidden = !base;
  document.getElementById('detail-base-top5').hidden = !base;
  if (base) {
    document.getElementById('detail-base-title').textContent = `Top-5 of ${DATA.baseline}`;
    top5(im.base_top5, im.target, document.getElementById('detail-base-top5'));
  }
}
function hideDetail() {
  const detail = document.getElementById('detail');
  if (detail.hidden) return;
  detail.hidden = true;
  document.body.classList.remove('detail-open');
  cards[Number(detail.dataset.index)].focus();  // back where the keyboard was
}
document.getElementById('close').addEventListener('click', hideDetail);
document.addEventListener('keydown', e => { if (e.key === 'Escape') hideDetail(); });
for (const id of ['sort', 'block', 'direction']) document.getElementById(id).addEventListener('change', update);
document.getElementById('filter').addEventListener('input', update);
update();
document.body.dataset.ready = '1';
</script>
</body>
</html>
"""
