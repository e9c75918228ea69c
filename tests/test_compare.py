"""The main job's statistics and text (`timm_elastic.compare`), on results written by hand; the command itself
runs in tests/test_train.py (test_compare_table4_over_seeds_is_repeatable)."""
import math

import pytest

from timm_elastic.compare import format_comparison, spread
from timm_elastic.data import COMBINATIONS, combination_name

TWIN, ELASTIC = 'resnext_tiny', 'resnext_tiny_elastic'


def test_spread_is_mean_and_sample_standard_deviation():
    assert spread([40., 42., 44.]) == (42., 2.)  # deviations -2, 0, 2: sqrt(8 / 2)
    assert spread([1., 2.]) == pytest.approx((1.5, math.sqrt(0.5)))
    single = spread([7.])
    assert single.mean == 7. and math.isnan(single.std)
    assert format(spread([40., 42., 44.]), '.2f') == '42.00 ± 2.00' and format(single, '+.2f') == '+7.00'
    with pytest.raises(ValueError):
        spread([])


def results(twin, elastic, small_twin=None, small_elastic=None):
    """Runs with the given overall top-1 per seed; every combination as overall but images with small objects
    only, which get their own values where given."""
    def runs(top1s, small):
        out = []
        for i, top1 in enumerate(top1s):
            per = {combination_name(c): dict(top1=top1, count=200) for c in COMBINATIONS}
            if small is not None:
                per['small']['top1'] = small[i]
            out.append(dict(seed=i, top1=top1, count=1400, per_combination=per, seconds=10.))
        return out
    return {TWIN: runs(twin, small_twin), ELASTIC: runs(elastic, small_elastic)}


def test_a_gain_larger_than_the_spread_stands_above_the_noise():
    text = format_comparison(results([40., 42., 44.], [45., 47.5, 48.5], [20., 20., 20.], [23., 26., 29.]),
                             TWIN, ELASTIC)
    lines = text.splitlines()
    assert lines[0].endswith('mean ± standard deviation over 3 seeds (0, 1, 2):')
    small = next(ln for ln in lines if ln.split('|')[0].split() == ['-', '-', 'x'])
    # twin 20, 20, 20; Elastic 23, 26, 29 (mean 26, std 3); gains 3, 6, 9 (mean 6, std 3): +30% of 20
    assert [c.strip() for c in small.split('|')[1:]] == ['200', '20.00 ± 0.00', '26.00 ± 3.00', '+6.00 ± 3.00',
                                                         '+30.0%']
    overall = next(ln for ln in lines if ln.strip().startswith('all'))
    # Elastic 45, 47.5, 48.5: deviations -2, 0.5, 1.5, std sqrt(6.5 / 2) = 1.80; gains 5, 5.5, 4.5: std 0.5
    assert [c.strip() for c in overall.split('|')[1:]] == ['1400', '42.00 ± 2.00', '47.00 ± 1.80', '+5.00 ± 0.50',
                                                           '+11.9%']
    assert lines[-3] == ('Averaged over the 3 seeds, resnext_tiny_elastic is ahead of resnext_tiny on 7 of the 7 '
                         'size combinations; its best is images with small objects only (+6.00 points), its worst '
                         'the other 6 combinations alike (+5.00).')
    # 5 -+ 4.303 * 0.5 / sqrt(3) = 5 -+ 1.242
    assert lines[-2] == ('Overall, resnext_tiny_elastic 47.00% vs resnext_tiny 42.00% top-1: a gain of +5.00 ± 0.50 '
                         "points over 3 seeds (per seed +5.00, +5.50, +4.50); its 95% confidence interval (paired over "
                         "the seeds; Student's t, 2 degrees of freedom) is +3.76 to +6.24 points, which excludes 0: "
                         'the difference stands above the noise of these runs.')
    assert lines[-1] == 'Training took 30 s (resnext_tiny) and 30 s (resnext_tiny_elastic) in all.'


def test_a_gain_within_the_spread_does_not_tell_the_models_apart():
    # gains 1, 3, -1: mean 1, std 2; t(0.975, 2 degrees of freedom) = 4.303 (the tables'), so the interval is
    # 1 -+ 4.303 * 2 / sqrt(3) = 1 -+ 4.968: -3.97 to +5.97
    lines = format_comparison(results([40., 42., 44.], [41., 45., 43.]), TWIN, ELASTIC).splitlines()
    assert lines[-2].endswith("a gain of +1.00 ± 2.00 points over 3 seeds (per seed +1.00, +3.00, -1.00); its 95% "
                              "confidence interval (paired over the seeds; Student's t, 2 degrees of freedom) is -3.97 "
                              'to +5.97 points, which holds 0: these runs do not tell the two models apart.')
    # gains 7, 3, -1: mean 3, std 4: 3 -+ 9.94
    text = format_comparison(results([40., 42., 44.], [47., 45., 43.]), TWIN, ELASTIC)
    assert 'a gain of +3.00 ± 4.00 points' in text and text.splitlines()[-2].endswith(
        'is -6.94 to +12.94 points, which holds 0: these runs do not tell the two models apart.')
    # a loss larger than the spread stands above it too (gains -10, -9.5, -10.5)
    lines = format_comparison(results([40., 42., 44.], [30., 32.5, 33.5]), TWIN, ELASTIC).splitlines()
    assert 'a gain of -10.00 ± 0.50 points' in lines[-2] and lines[-2].endswith('stands above the noise of these runs.')
    # the same gain everywhere: no best nor worst combination
    assert lines[-3] == ('Averaged over the 3 seeds, resnext_tiny_elastic is ahead of resnext_tiny on 0 of the 7 size '
                         'combinations, by the same -10.00 points on each.')


def test_the_verdict_is_a_paired_interval_not_the_models_spreads():
    """The gain is judged by its paired interval: the models' own spreads (what a seed moves in both alike) do not
    hide a gain every seed agrees on, and two seeds (1 degree of freedom: t = 12.706) need more than a gain a few
    times its spread. The old rule (mean gain above the largest spread of the twin, the Elastic model and the gain)
    said the opposite in both cases."""
    # 20 seeds, twin 40 + 2i, Elastic the twin + 0.5 or + 1: the models' spreads 11.8, the gains' 0.26;
    # interval 0.75 -+ 2.093 * 0.2566 / sqrt(20) = 0.75 -+ 0.120
    twin = [40. + 2 * i for i in range(20)]
    lines = format_comparison(results(twin, [t + (0.5 if i % 2 else 1.) for i, t in enumerate(twin)]), TWIN,
                              ELASTIC).splitlines()
    assert lines[-2].endswith("(paired over the seeds; Student's t, 19 degrees of freedom) is +0.63 to +0.87 points, "
                              'which excludes 0: the difference stands above the noise of these runs.'), lines[-2]
    # 2 seeds: gains 2 and 2.5, mean 2.25, std 0.354: 2.25 -+ 12.706 * 0.354 / sqrt(2) = 2.25 -+ 3.18
    lines = format_comparison(results([80., 80.5], [82., 83.]), TWIN, ELASTIC).splitlines()
    assert lines[-2].endswith("(paired over the seeds; Student's t, 1 degree of freedom) is -0.93 to +5.43 points, "
                              'which holds 0: these runs do not tell the two models apart.'), lines[-2]


def test_t_quantile_is_the_tables():
    """Two-sided 95% critical values of Student's t as printed in statistics tables (3 decimals), and SciPy's."""
    from scipy.stats import t
    from timm_elastic.compare import t_quantile
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262, 10: 2.228, 19: 2.093, 29: 2.045, 30: 2.042}
    assert {df: round(t_quantile(0.95, df), 3) for df in table} == table
    for df in range(1, 121):
        assert t_quantile(0.95, df) == pytest.approx(t.ppf(0.975, df), rel=1e-12)
        assert t_quantile(0.5, df) == pytest.approx(t.ppf(0.75, df), rel=1e-12)
    with pytest.raises(ValueError, match='positive integer df'):
        t_quantile(0.95, 0)


def test_the_reading_names_every_combination_that_shares_the_best_or_worst_gain():
    """Gains that print alike are named alike (the first of them was named the best, as if it stood alone)."""
    res = results([40., 42.], [40., 42.])
    for runs, combo, top1 in ((res[ELASTIC], 'small', 49.), (res[ELASTIC], 'medium', 49.),
                              (res[ELASTIC], 'large', 35.)):
        for run in runs:
            run['per_combination'][combo]['top1'] = run['top1'] + (top1 - 40.)
    lines = format_comparison(res, TWIN, ELASTIC).splitlines()
    assert lines[-3] == ('Averaged over the 2 seeds, resnext_tiny_elastic is ahead of resnext_tiny on 2 of the 7 size '
                         'combinations; its best is images with small objects only and images with medium objects '
                         'only alike (+9.00 points), its worst images with large objects only (-5.00).'), lines[-3]


def test_columns_fit_their_widest_value():
    # images with small objects only: twin 20, 20, 20, Elastic 0, 25, 0: a gain of -11.67 ± 14.43, wider than
    # the column's usual 13 characters
    lines = format_comparison(results([40., 42., 44.], [40., 42., 44.], [20., 20., 20.], [0., 25., 0.]),
                              TWIN, ELASTIC).splitlines()
    table = [ln for ln in lines[2:] if '|' in ln]
    assert len(table) == 9 and any('-11.67 ± 14.43 |' in ln for ln in table)
    bars = {tuple(i for i, ch in enumerate(ln) if ch == '|') for ln in table}
    assert len(bars) == 1, table  # every row's separators under the header's
    rules = [ln for ln in lines if set(ln) == {'-'}]
    assert len(rules) == 2 and all(len(r) == len(table[0]) for r in rules)


def test_one_seed_says_it_measures_no_spread():
    lines = format_comparison(results([40.], [43.5]), TWIN, ELASTIC).splitlines()
    assert lines[0].endswith('(paper Table 4); seed 0:')
    overall = next(ln for ln in lines if ln.strip().startswith('all'))
    assert [c.strip() for c in overall.split('|')[1:]] == ['1400', '40.00', '43.50', '+3.50', '+8.8%']
    assert lines[-3].startswith('In this run, resnext_tiny_elastic is ahead of resnext_tiny on 7 of the 7')
    assert lines[-2] == ('Overall, resnext_tiny_elastic 43.50% vs resnext_tiny 40.00% top-1 (+3.50 points). One seed '
                         'measures no spread, and the seed alone moves a small model by points: run several '
                         '(--seeds 0 1 2) before reading a winner into it.')


def multilabel_results(f1_twin, f1_elastic, stress_twin, stress_elastic):
    """Multi-label runs: every metric and combination at the seed's F1 value, stress F1s per size as given."""
    keys = ('p_c', 'r_c', 'f1_c', 'p_o', 'r_o', 'f1_o', 'map')

    def runs(f1s, stress):
        out = []
        for i, f1 in enumerate(f1s):
            per = {combination_name(c): dict({k: f1 for k in keys}, count=200) for c in COMBINATIONS}
            st = {size: {k: v[i] for k in keys} for size, v in stress.items()}
            out.append(dict({k: f1 for k in keys}, seed=i, count=1400, per_combination=per, stress=st, seconds=10.))
        return out
    return {TWIN: runs(f1_twin, stress_twin), ELASTIC: runs(f1_elastic, stress_elastic)}


def test_multilabel_prints_table_3_table_4_in_f1_o_and_fig_7():
    res = multilabel_results([60., 62.], [63., 65.], {32: [50., 40.], 64: [60., 62.]}, {32: [45., 42.], 64: [63., 65.]})
    lines = format_comparison(res, TWIN, ELASTIC, 'multilabel').splitlines()
    assert lines[0].startswith('Multi-label metrics (%) on the built-in validation set (1400 images; paper Table 3')
    # twin 60, 62 (std sqrt 2); Elastic 63, 65; gains 3, 3: +3.00 ± 0.00, 3 / 61 = +4.9%
    f1c = next(ln for ln in lines if ln.strip().startswith('F1-C |'))
    assert [c.strip() for c in f1c.split('|')] == ['F1-C', '61.00 ± 1.41', '64.00 ± 1.41', '+3.00 ± 0.00', '+4.9%']
    assert [ln.split('|')[0].strip() for ln in lines[4:11]] == ['F1-C', 'F1-O', 'P-C', 'R-C', 'P-O', 'R-O', 'mAP']
    assert any(ln.startswith('F1-O (%) on the built-in validation set (1400 images), by the sizes') for ln in lines)
    assert any('vs resnext_tiny 61.00% F1-O: a gain of +3.00 points in each of the 2 seeds' in ln for ln in lines)
    # Fig. 7: relative F1 per seed (45 - 50) / 50 = -10%, (42 - 40) / 40 = +5%: -2.50 ± 10.61
    row32 = next(ln for ln in lines if ln.strip().startswith('32x32 |'))
    assert [c.strip() for c in row32.split('|')] == ['32x32', '-2.50 ± 10.61%', '-2.50 ± 10.61%']
    assert any(ln.startswith('Scale stress test (paper Fig. 7)') and "each seed's 100 (Elastic - twin) / twin" in ln
               for ln in lines)  # not Table 3's mean gain over the mean


def test_fig_7_says_when_a_size_has_fewer_seeds():
    # seed 1's twin scores 0 at 32: nothing to be relative to, so seed 0's -10% alone
    res = multilabel_results([60., 62.], [63., 65.], {32: [50., 0.], 64: [60., 62.]}, {32: [45., 3.], 64: [63., 65.]})
    lines = format_comparison(res, TWIN, ELASTIC, 'multilabel').splitlines()
    row32 = next(ln for ln in lines if ln.strip().startswith('32x32 |'))
    assert [c.strip() for c in row32.split('|')] == ['32x32', '-10.00% (1 of 2 seeds)', '-10.00% (1 of 2 seeds)']
    row64 = next(ln for ln in lines if ln.strip().startswith('64x64 |'))
    assert len(row64) == len(row32) and row64.index('|', 10) == row32.index('|', 10)
    assert lines[-1].startswith('Training took')


def test_seeds_that_agree_to_the_digit_measure_no_spread():
    """Identical per-seed gains give an interval of no width, which said the gain "stands above the noise": on a
    small evaluation set scores move in steps (100 / 35 images = 2.86 points), so seeds often agree. No spread
    was measured, so no interval is drawn (as for one seed)."""
    for twin, elastic in (([40., 42., 44.], [45., 47., 49.]), ([40., 42.], [40. + 100 / 35, 42. + 100 / 35])):
        lines = format_comparison(results(twin, elastic), TWIN, ELASTIC).splitlines()
        n, gain = len(twin), elastic[0] - twin[0]
        assert lines[-2] == (
            f'Overall, resnext_tiny_elastic {sum(elastic) / n:.2f}% vs resnext_tiny {sum(twin) / n:.2f}% top-1: a gain '
            f'of {gain:+.2f} points in each of the {n} seeds. Seeds that agree to the printed digit measure no spread '
            '(on a small evaluation set the scores move in coarse steps), so no interval can be drawn: run more seeds '
            'or more evaluation images before reading a winner into it.'), lines[-2]


def test_a_gain_that_prints_as_zero_is_no_lead():
    """Per-seed gains that cancel leave float residue (100 / 24 is not exact: +8.33 and -8.33 average 3.6e-15),
    which the reading counted as a lead while the table printed +0.00."""
    res = results([40., 42.], [39., 41.5], small_twin=[100 * 5 / 24, 100 * 17 / 24],
                  small_elastic=[100 * 7 / 24, 100 * 15 / 24])
    lines = format_comparison(res, TWIN, ELASTIC).splitlines()
    small = next(ln for ln in lines if ln.split('|')[0].split() == ['-', '-', 'x'])
    assert small.split('|')[4].strip() == '+0.00 ± 11.79'
    assert lines[-3] == ('Averaged over the 2 seeds, resnext_tiny_elastic is ahead of resnext_tiny on 0 of the 7 size '
                         'combinations; its best is images with small objects only (+0.00 points), its worst the other '
                         '6 combinations alike (-0.75).'), lines[-3]


def test_the_table_names_the_split_it_scored():
    """compare --val-split train scores the training images: the table said "validation set" all the same."""
    res = results([40., 42.], [41., 45.])
    for runs in res.values():
        for run in runs:
            run['split'] = 'train'
    assert 'on the built-in training set (1400 images)' in format_comparison(res, TWIN, ELASTIC).splitlines()[0]
    del res[TWIN][0]['split']  # compare.json of a version that did not record it: the default split
    assert 'on the built-in validation set (1400 images)' in format_comparison(res, TWIN, ELASTIC).splitlines()[0]
