"""The multi-label metrics of the paper's Table 3, as the original `validate_multi` computes them."""
import pytest
import torch

from timm_elastic.tasks.multilabel import average_precision, multilabel_metrics

LOGITS = torch.tensor([[2., -1., 0.5], [1., 3., -2.], [-1., 2., 1.], [-3., -1., -1.]])
TARGETS = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])


def test_metrics_by_hand():
    # predicted (logit > 0): [1 0 1], [1 1 0], [0 1 1], [0 0 0]
    # class 0: TP 1, FP 1, FN 1 -> P = R = F1 = 0.5; class 1: TP 2 -> 1, 1, 1; class 2: TP 0 -> 0, 0, 0
    # (its 2 false positives count only overall). Overall: TP 3, FP 3, FN 1 -> P 3/6, R 3/4, F1 0.6.
    # AP: class 0 ranks pos, neg, pos, neg -> (1 + 2/3) / 2; class 1 ranks its 2 positives first -> 1;
    # class 2 has no positive image: left out of the mean.
    m = multilabel_metrics(LOGITS, TARGETS)
    expected = dict(p_c=50., r_c=50., f1_c=50., p_o=50., r_o=75., f1_o=60., map=100 * (5 / 6 + 1) / 2)
    assert m.keys() == expected.keys()
    for k, v in expected.items():
        assert m[k] == pytest.approx(v, abs=1e-9), k


def test_per_class_f1_is_the_mean_of_the_class_f1s():
    # class 0: P 1/2, R 1 -> F1 2/3; class 1: P 1, R 1/2 -> F1 2/3; the F1 of the mean P and R would be 3/4
    logits = torch.tensor([[1., 1.], [1., -1.], [-1., -1.]])
    targets = torch.tensor([[1, 1], [0, 0], [0, 1]])
    m = multilabel_metrics(logits, targets)
    assert (m['p_c'], m['r_c']) == (pytest.approx(75.), pytest.approx(75.))
    assert m['f1_c'] == pytest.approx(200 / 3)


def test_nothing_predicted_or_nothing_positive_gives_zeros():
    for logits in (-torch.ones(3, 2), torch.zeros(3, 2)):  # a logit of 0 (probability 0.5) is not positive
        m = multilabel_metrics(logits, torch.tensor([[1, 0], [0, 0], [0, 1]]))
        assert m['p_o'] == m['r_o'] == m['f1_o'] == m['f1_c'] == 0.
    m = multilabel_metrics(torch.ones(2, 2), torch.zeros(2, 2))
    assert m['p_o'] == m['f1_o'] == m['map'] == 0.


def test_average_precision_with_ties_by_hand_and_against_scikit_learn():
    # scores 1, 1, 0 for pos, neg, pos: threshold 1 -> P 1/2 at R 1/2; threshold 0 -> P 2/3 at R 1
    assert average_precision(torch.tensor([1., 1., 0.]), torch.tensor([True, False, True])) == pytest.approx(
        0.5 * 0.5 + 0.5 * 2 / 3)
    metrics = pytest.importorskip('sklearn.metrics')
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        scores = torch.randint(0, 6, (40,), generator=g).float()  # many ties
        positive = torch.rand(40, generator=g) < 0.3
        assert average_precision(scores, positive) == pytest.approx(
            metrics.average_precision_score(positive.numpy(), scores.numpy()), abs=1e-12)


def test_nan_scores_rank_last():
    # a diverged model's NaN is a negative label at the F1 threshold, and ranks below every score: 2 (neg),
    # 1 (pos), 0 (neg), NaN (pos) -> P 1/2 at R 1/2, P 2/4 at R 1 -> AP 1/2 (a NaN ranked first would give 5/6)
    nan = float('nan')
    positive = torch.tensor([True, False, True, False])
    assert average_precision(torch.tensor([nan, 2., 1., 0.]), positive) == pytest.approx(0.5)
    # NaN everywhere carries no ranking: the same metrics as logits all equal and negative
    targets = torch.tensor([[1, 0], [0, 0], [1, 1], [0, 1], [0, 0]])
    assert multilabel_metrics(torch.full((5, 2), nan), targets) == multilabel_metrics(-torch.ones(5, 2), targets)


@pytest.mark.parametrize('logits, targets, message', [
    (torch.zeros(2, 3), torch.zeros(2, 4), 'must both be (N, C), got (2, 3) and (2, 4)'),
    (torch.zeros(3), torch.zeros(3), 'must both be (N, C)'),
    (torch.zeros(2, 2), torch.full((2, 2), 2), 'targets must be 0 or 1'),
])
def test_bad_inputs(logits, targets, message):
    with pytest.raises(ValueError) as info:
        multilabel_metrics(logits, targets)
    assert message in str(info.value)


def test_against_scikit_learn_micro_and_macro_scores():
    # F1-O is scikit-learn's micro F1; the per-class means are its macro scores with 0 for 0 / 0
    metrics = pytest.importorskip('sklearn.metrics')
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(50, 7, generator=g)
    targets = (torch.rand(50, 7, generator=g) < 0.3).long()
    targets[:, 6] = 0  # a class without positives
    m = multilabel_metrics(logits, targets)
    y, p = targets.numpy(), (logits > 0).long().numpy()
    assert m['f1_o'] == pytest.approx(100 * metrics.f1_score(y, p, average='micro'))
    assert m['p_o'] == pytest.approx(100 * metrics.precision_score(y, p, average='micro'))
    assert m['r_o'] == pytest.approx(100 * metrics.recall_score(y, p, average='micro'))
    for key, score in (('p_c', metrics.precision_score), ('r_c', metrics.recall_score), ('f1_c', metrics.f1_score)):
        assert m[key] == pytest.approx(100 * score(y, p, average='macro', zero_division=0)), key
    assert m['map'] == pytest.approx(100 * metrics.average_precision_score(y[:, :6], logits[:, :6].numpy()))
