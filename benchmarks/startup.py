"""What the automatic registration costs a Python process that never imports timm.

Installing timm-elastic puts `timm_elastic_autoload.pth` in site-packages; its one line runs at
every interpreter start-up. Two measurements, in fresh interpreters, interleaved:

1. the line itself: `site.addpackage` of that file (read, parse, exec), timed inside a
   `python -S` process, so nothing else is in the clock;
2. whole start-ups, `python -c pass`, with the hook on and with `TIMM_ELASTIC_AUTOLOAD=0`,
   alternating ABAB..., and the difference of the medians.

Also checks that such a process imports nothing of timm, torch or timm_elastic. The goal (issue
5) is less than 5 ms.

    python benchmarks/startup.py [--runs 40] [--json out.json]
"""
import argparse
import os
import statistics
import subprocess
import sys
import sysconfig
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _usage import at_least, output_path  # noqa: E402

PTH = 'timm_elastic_autoload.pth'

_TIME_LINE = r"""
import site, sys, time
t = time.perf_counter()
site.addpackage(sys.argv[1], sys.argv[2], set())
dt = time.perf_counter() - t
print(dt * 1e3, any(getattr(f, 'timm_elastic_autoload', False) for f in sys.meta_path))
"""


def find_pth():
    for d in {sysconfig.get_paths()['purelib'], sysconfig.get_paths()['platlib'], *sys.path}:
        if d and os.path.isfile(os.path.join(d, PTH)):
            return d
    raise SystemExit(f'{PTH} is not installed in this environment (pip install . or pip install -e .)')


def start_up_ms(env):
    t = time.perf_counter()
    subprocess.run([sys.executable, '-c', 'pass'], env=env, check=True)
    return (time.perf_counter() - t) * 1e3


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--runs', type=int, default=40, help='start-ups per measurement (default: 40)')
    parser.add_argument('--json', metavar='PATH', help='also write the results as JSON')
    args = parser.parse_args(argv)
    at_least(parser, args, 1, 'runs')
    output_path(parser, args.json)
    site_dir = find_pth()

    # the hook on: this process's own TIMM_ELASTIC_AUTOLOAD (=0 turns the hook off) is not passed on
    env_on = {k: v for k, v in os.environ.items() if k != 'TIMM_ELASTIC_AUTOLOAD'}
    env_off = dict(env_on, TIMM_ELASTIC_AUTOLOAD='0')
    line_ms = []
    for _ in range(args.runs):
        out = subprocess.run([sys.executable, '-S', '-c', _TIME_LINE, site_dir, PTH], env=env_on,
                             capture_output=True, text=True, check=True).stdout.split()
        if out[1] != 'True':
            raise SystemExit(f'{os.path.join(site_dir, PTH)}: its line did not install its stub finder')
        line_ms.append(float(out[0]))

    on, off = [], []
    for i in range(args.runs):
        pair = [(on, env_on), (off, env_off)]
        for times, env in (pair if i % 2 == 0 else pair[::-1]):
            times.append(start_up_ms(env))

    probe = 'import sys; print(sorted(m for m in ("timm", "torch", "timm_elastic", "_timm_elastic_autoload") ' \
            'if m in sys.modules))'
    imported = subprocess.run([sys.executable, '-c', probe], env=env_on, capture_output=True, text=True,
                              check=True).stdout.strip()

    res = dict(
        python=sys.version.split()[0], runs=args.runs, pth=os.path.join(site_dir, PTH),
        pth_line_ms_median=statistics.median(line_ms), pth_line_ms_max=max(line_ms),
        startup_on_ms_median=statistics.median(on), startup_off_ms_median=statistics.median(off),
        imported_at_startup=imported,
    )
    res['startup_diff_ms'] = res['startup_on_ms_median'] - res['startup_off_ms_median']
    print(f'| measurement ({args.runs} fresh interpreters each) | median ms |')
    print('|---|---|')
    print(f'| the .pth line alone (site.addpackage, python -S) | {res["pth_line_ms_median"]:.3f} '
          f'(max {res["pth_line_ms_max"]:.3f}) |')
    print(f'| `python -c pass`, hook on | {res["startup_on_ms_median"]:.2f} |')
    print(f'| `python -c pass`, TIMM_ELASTIC_AUTOLOAD=0 | {res["startup_off_ms_median"]:.2f} |')
    print(f'| difference | {res["startup_diff_ms"]:+.2f} |')
    print(f'\nmodules of timm / torch / timm_elastic imported by `python -c pass`: {imported}')
    ok = res['pth_line_ms_median'] < 5 and imported == '[]'
    print(f'goal (< 5 ms, nothing imported): {"met" if ok else "NOT met"}')
    if args.json:
        from timm_elastic._io import write_json  # (imports torch: after the measurement, which it would slow)
        write_json(args.json, res)
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
