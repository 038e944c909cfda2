import math
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trl_robust import aggregation as rewards
from trl_robust.aggregation import Aggregation

finite = st.floats(-50.0, 50.0, allow_nan=False, width=32)
positive = st.floats(0.125, 20.0, allow_nan=False, width=32)


@st.composite
def heads(draw, max_batch: int = 3, max_k: int = 5):
    """A `[batch, K]` pair of means and stds."""
    batch, k = draw(st.integers(1, max_batch)), draw(st.integers(1, max_k))
    means = draw(st.lists(st.lists(finite, min_size=k, max_size=k), min_size=batch, max_size=batch))
    stds = draw(st.lists(st.lists(positive, min_size=k, max_size=k), min_size=batch, max_size=batch))
    return torch.tensor(means), torch.tensor(stds)


@settings(max_examples=80, deadline=None)
@given(heads(), st.floats(0.0, 1.0), st.floats(0.0, 10.0), st.floats(1e-2, 1e3))
def test_every_aggregation_lies_between_the_heads(ms, lam, c, beta):
    means, stds = ms
    low, high = means.min(-1).values, means.max(-1).values
    tol = 1e-4 * (1.0 + means.abs().max())
    for name, params in [
        ("nominal", {}),
        ("worst", {}),
        ("robust", {"robust_lambda": lam}),
        ("mean", {}),
        ("kl_dro", {"kl_dro_beta": beta}),
    ]:
        value = rewards.aggregate(name, means, stds, **params)
        assert value.shape == (means.shape[0],)
        assert bool(((low - tol <= value) & (value <= high + tol)).all()), name
    # UWO only subtracts: never above the mean (it may fall below the minimum for large c)
    assert bool((rewards.uwo(means, c) <= rewards.mean(means) + tol).all())


@settings(max_examples=60, deadline=None)
@given(heads())
def test_lambda_endpoints_and_uwo_zero(ms):
    means, stds = ms
    torch.testing.assert_close(rewards.robust(means, stds, 1.0), rewards.nominal(means, stds))
    torch.testing.assert_close(rewards.robust(means, stds, 0.0), rewards.worst(means))
    torch.testing.assert_close(rewards.uwo(means, 0.0), rewards.mean(means))
    torch.testing.assert_close(rewards.aggregate("robust", means, stds), rewards.robust(means, stds, 0.4))
    # nominal is the mean of the head with the smallest std
    expected = means[torch.arange(means.shape[0]), stds.argmin(-1)]
    torch.testing.assert_close(rewards.nominal(means, stds), expected)


@settings(max_examples=60, deadline=None)
@given(heads(), st.floats(1e-2, 1e2))
def test_kl_dro_between_min_and_mean_and_its_limits(ms, beta):
    means, _ = ms
    k = means.shape[-1]
    low, avg = rewards.worst(means), rewards.mean(means)
    value = rewards.kl_dro(means, beta)
    tol = 1e-4 * (1.0 + means.abs().max())
    # Jensen: -beta log E exp(-mu/beta) <= E mu; and it never exceeds min + beta * log K
    assert bool((value <= avg + tol).all())
    assert bool((value >= low - tol).all())
    assert bool((value <= low + beta * math.log(k) + tol).all())
    # beta -> 0: the minimum; beta -> inf: the mean (gap ~ Var / (2 beta))
    torch.testing.assert_close(rewards.kl_dro(means, 1e-4), low, atol=1e-4 * math.log(k) + 1e-5, rtol=1e-5)
    torch.testing.assert_close(rewards.kl_dro(means, 1e7), avg, atol=1e-3, rtol=1e-5)


def test_kl_dro_is_stable_at_extreme_scales():
    means = torch.tensor([[1e4, -1e4, 0.0], [3.0, 3.0, 3.0]])
    assert torch.isfinite(rewards.kl_dro(means, 1e-6)).all()
    torch.testing.assert_close(rewards.kl_dro(means, 1e-6), torch.tensor([-1e4, 3.0]))
    # float32 with a huge beta: the expm1/log1p form keeps the mean to float precision
    means = torch.tensor([[10.0, 12.0]])
    torch.testing.assert_close(rewards.kl_dro(means, 1e6), torch.tensor([11.0]), atol=1e-4, rtol=0)
    # identical heads: every aggregation is that value
    same = torch.full((2, 4), 1.5)
    for name in rewards.AGGREGATIONS:
        torch.testing.assert_close(rewards.aggregate(name, same, torch.ones(2, 4)), torch.full((2,), 1.5))


def test_uwo_formula():
    means = torch.tensor([[1.0, 3.0]])  # mean 2, population variance 1
    torch.testing.assert_close(rewards.uwo(means, 0.5), torch.tensor([1.5]))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m, s: rewards.aggregate("median", m, s), "allowed: nominal, worst, robust, mean, uwo, kl_dro"),
        (lambda m, s: rewards.aggregate("robust", m, s, robust_lambda=1.5), "robust_lambda"),
        (lambda m, s: rewards.aggregate("robust", m, s, robust_lambda=-0.1), "robust_lambda"),
        (lambda m, s: rewards.aggregate("uwo", m, s, uwo_coef=-1.0), "uwo_coef"),
        (lambda m, s: rewards.aggregate("kl_dro", m, s, kl_dro_beta=0.0), "kl_dro_beta"),
        (lambda m, s: rewards.aggregate("kl_dro", m, s, kl_dro_beta=-1.0), "kl_dro_beta"),
        (lambda m, s: rewards.aggregate("kl_dro", m, s, kl_dro_beta=float("inf")), "kl_dro_beta"),
        (lambda m, s: rewards.aggregate("mean", m, s, kl_dro_beta=1.0), "accepts: none"),
        (lambda m, s: rewards.aggregate("uwo", m, s, kl_dro_beta=1.0), "accepts: uwo_coef"),
        (lambda m, s: Aggregation("median"), "reward aggregation must be one of"),
        (lambda m, s: Aggregation("uwo", uwo_coef=float("nan")), "uwo_coef"),
        (lambda m, s: Aggregation.from_setting("robust:2"), "Setting 'robust:2': robust_lambda must be in"),
        (lambda m, s: Aggregation.from_setting("mean:0.3"), "takes no parameter"),
        (lambda m, s: Aggregation.from_setting("robust:x"), "is not a number"),
        (lambda m, s: Aggregation.from_setting("median"), "unknown aggregation 'median'"),
        (lambda m, s: rewards.aggregate("nominal", m, None), "needs the heads' stds"),
        (lambda m, s: rewards.aggregate("mean", m, s[:, :2]), "stds must have the shape"),
        (lambda m, s: rewards.aggregate("worst", m[0], s), "means must be a"),
        (lambda m, s: rewards.worst(m[:, :0]), "K >= 1"),
        (lambda m, s: rewards.robust(m, s, 2.0), "robust_lambda"),
    ],
)
def test_bad_arguments_raise(call, match):
    means, stds = torch.randn(2, 3), torch.rand(2, 3) + 0.1
    with pytest.raises(ValueError, match=match):
        call(means, stds)


def test_aggregation_object_applies_its_parameter_only():
    means, stds = torch.tensor([[1.0, 3.0], [0.0, 2.0]]), torch.tensor([[0.5, 0.1], [0.2, 0.3]])
    # robust: 0.25 * nominal + 0.75 * worst, nominal being the smaller-std head (3.0 in row 0, 0.0 in row 1)
    torch.testing.assert_close(Aggregation("robust", robust_lambda=0.25)(means, stds), torch.tensor([1.5, 0.0]))
    torch.testing.assert_close(Aggregation("uwo", uwo_coef=2.0)(means, stds), torch.tensor([0.0, -1.0]))
    assert Aggregation("uwo", uwo_coef=2.0).params == {"uwo_coef": 2.0} and Aggregation("mean").params == {}
    assert Aggregation("kl_dro", kl_dro_beta=0.5).describe() == "kl_dro (kl_dro_beta=0.5)"
    # the other fields do not enter
    torch.testing.assert_close(Aggregation("mean", robust_lambda=0.9)(means, stds), torch.tensor([2.0, 1.0]))


def test_from_setting_parses_the_harness_settings():
    assert Aggregation.from_setting("robust:0.2") == Aggregation("robust", robust_lambda=0.2)
    assert Aggregation.from_setting("uwo:2") == Aggregation("uwo", uwo_coef=2.0)
    assert Aggregation.from_setting("worst") == Aggregation("worst")
    assert Aggregation.from_setting("kl_dro:0.5").kl_dro_beta == 0.5


@dataclass
class AggregationFields:
    """The four aggregation fields of the robust RL configs (RobustRewardFields), without a TrainingArguments."""

    reward_aggregation: str = "robust"
    robust_lambda: float | None = None
    uwo_coef: float = 1.0
    kl_dro_beta: float = 1.0


def test_from_config_takes_the_brmes_lambda_unless_one_is_given():
    unset = AggregationFields(reward_aggregation="robust")
    assert unset.robust_lambda is None
    assert Aggregation.from_config(unset, brme_robust_lambda=0.7).robust_lambda == 0.7
    assert Aggregation.from_config(unset).robust_lambda == 0.4  # no BRME: the package default
    explicit = AggregationFields(reward_aggregation="robust", robust_lambda=0.2)
    assert Aggregation.from_config(explicit, brme_robust_lambda=0.7).robust_lambda == 0.2
    bad = AggregationFields(reward_aggregation="robust", kl_dro_beta=0.0)
    with pytest.raises(ValueError, match=r"AggregationFields\.kl_dro_beta must be a finite number > 0"):
        Aggregation.from_config(bad)


def test_head_metrics_by_hand():
    means, stds = torch.tensor([[1.0, 3.0], [0.0, 2.0]]), torch.tensor([[0.5, 0.1], [0.2, 0.3]])
    m = Aggregation("robust", robust_lambda=0.5).head_metrics(means, stds)
    assert m["nominal"] == pytest.approx((3.0 + 0.0) / 2) and m["worst"] == pytest.approx(0.5)
    assert m["robust"] == pytest.approx(0.5 * 1.5 + 0.5 * 0.5) and m["mean"] == pytest.approx(1.5)
    assert m["mean_std"] == pytest.approx(0.275) and m["head_disagreement"] == pytest.approx(1.0)
    assert m["head_0_mean"] == pytest.approx(0.5) and m["head_1_mean"] == pytest.approx(2.5)
    assert set(Aggregation("uwo").head_metrics(means, stds, ("nominal", "uwo"))) == {
        "nominal",
        "uwo",
        "mean_std",
        "head_disagreement",
        "head_0_mean",
        "head_1_mean",
    }


def test_old_module_name_still_works():
    from trl_robust import rewards as old

    assert old.aggregate is rewards.aggregate and old.Aggregation is Aggregation
