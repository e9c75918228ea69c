"""The benchmarks run: a smoke test of `benchmarks/speed.py --self-check` on the small twin, at sizes that
take seconds (its numbers mean nothing here; that they are produced and written out is what is checked)."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_speed_self_check_smoke(tmp_path):
    out = tmp_path / 'speed.json'
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'benchmarks', 'speed.py'), '--self-check', 'resnext_tiny_elastic',
         '--settings', 'eager-fp32,eager-fp32-cl', '--modes', 'infer,train', '--rounds', '2', '--min-time', '0.01',
         '--warmup', '1', '--batch-size', '2', '--train-batch-size', '2', '--img-size', '64', '--threads', '1',
         '--json', str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = result['results']
    assert [(r['setting'], r['mode']) for r in rows] == [
        ('eager-fp32', 'infer'), ('eager-fp32', 'train'), ('eager-fp32-cl', 'infer'), ('eager-fp32-cl', 'train')]
    for r in rows:
        assert r['elastic'] == r['baseline'] == 'resnext_tiny_elastic'
        assert len(r['rates'][0]) == len(r['rates'][1]) == 2 and all(v > 0 for v in r['rates'][0] + r['rates'][1])
        assert r['ratio_min'] <= r['ratio'] <= r['ratio_max']
    assert all(r['memory_ratio'] > 0 for r in rows if r['mode'] == 'train')
    assert result['markdown'] in proc.stdout and '| resnext_tiny_elastic | ours | resnext_tiny_elastic |' in proc.stdout
