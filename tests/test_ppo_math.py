"""The PPO math of RobustPPOTrainer, each function against numbers worked out by hand."""

import dataclasses
import math

import pytest
import torch

from trl_robust.ppo_utils import (
    PPOBatchSizes,
    apply_missing_stop_penalty,
    close_with_eos,
    compute_gae,
    compute_rewards,
    correlation,
    discounted_returns,
    entropy_from_logits,
    explained_variance,
    group_baseline,
    group_std,
    kl_penalty,
    last_real_index,
    lengths_to_mask,
    masked_mean,
    masked_var,
    masked_whiten,
    policy_loss,
    position_ids_from_mask,
    ppo_batch_sizes,
    prompt_order,
    token_logprobs,
    truncate_after_stop,
    value_loss,
    whiten_advantages,
)

PAD, EOS = 0, 2


def test_masked_mean_var_whiten():
    values = torch.tensor([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert masked_mean(values, mask).item() == pytest.approx(2.0)  # (1 + 2 + 3) / 3
    assert masked_mean(values, mask, dim=1).tolist() == pytest.approx([1.5, 3.0])
    # deviations -1, 0, 1: biased var 2/3, unbiased 1
    assert masked_var(values, mask, unbiased=False).item() == pytest.approx(2 / 3)
    assert masked_var(values, mask).item() == pytest.approx(1.0)
    whitened = masked_whiten(values, mask)
    assert whitened[0, 0].item() == pytest.approx(-1.0, abs=1e-4)
    assert whitened[0, 1].item() == pytest.approx(0.0, abs=1e-4)
    assert whitened[1, 0].item() == pytest.approx(1.0, abs=1e-4)
    kept = masked_whiten(values, mask, shift_mean=False)
    assert kept[1, 0].item() == pytest.approx(3.0, abs=1e-4)  # scale 1, mean 2 added back
    with pytest.raises(ValueError, match="fewer than 2"):
        masked_var(values, torch.tensor([[1, 0, 0], [0, 0, 0]]))


def test_kl_estimators():
    logp = torch.tensor([math.log(0.5), math.log(0.2)])
    ref = torch.tensor([math.log(0.25), math.log(0.4)])
    k1 = kl_penalty(logp, ref, "k1")
    assert k1.tolist() == pytest.approx([math.log(2), math.log(0.5)])
    k3 = kl_penalty(logp, ref, "k3")
    # r = p_ref / p = 0.5 and 2: (r - 1) - log r
    assert k3.tolist() == pytest.approx([(0.5 - 1) - math.log(0.5), (2 - 1) - math.log(2)], rel=1e-5)
    assert (k3 >= 0).all()
    with pytest.raises(ValueError, match="k1"):
        kl_penalty(logp, ref, "k2")


def test_truncate_after_stop_lengths_include_stop_token_and_pad_equal_eos():
    responses = torch.tensor([[5, 6, EOS, 7, 8], [5, 6, 7, 8, 9], [EOS, 5, EOS, 6, 7]])
    truncated, lengths, has_stop = truncate_after_stop(responses, EOS, pad_token_id=EOS)  # pad == eos
    assert lengths.tolist() == [3, 5, 1]
    assert has_stop.tolist() == [True, False, True]
    assert truncated.tolist() == [[5, 6, EOS, EOS, EOS], [5, 6, 7, 8, 9], [EOS, EOS, EOS, EOS, EOS]]
    truncated, lengths, _ = truncate_after_stop(responses, 7, pad_token_id=PAD)  # any stop token, not only EOS
    assert lengths.tolist() == [4, 3, 5]
    assert truncated[0].tolist() == [5, 6, EOS, 7, PAD]
    _, lengths, has_stop = truncate_after_stop(responses, None, PAD)
    assert lengths.tolist() == [5, 5, 5] and not has_stop.any()
    assert lengths_to_mask(torch.tensor([3, 5, 1]), 5).long().tolist() == [
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1],
        [1, 0, 0, 0, 0],
    ]


def test_missing_stop_penalty():
    scores = torch.tensor([1.0, 2.0])
    has_stop = torch.tensor([True, False])
    assert apply_missing_stop_penalty(scores, has_stop, 1.5).tolist() == [1.0, 0.5]
    assert apply_missing_stop_penalty(scores, has_stop, None).tolist() == [1.0, 2.0]


def test_rewards_put_the_score_on_the_last_real_token():
    kl = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]])
    scores = torch.tensor([10.0, 20.0])
    lengths = torch.tensor([2, 4])
    rewards, non_score = compute_rewards(kl, scores, lengths, kl_coef=0.5)
    expected_non_score = [[-0.05, -0.1, 0.0, 0.0], [-0.25, -0.3, -0.35, -0.4]]
    assert non_score.tolist() == [pytest.approx(row) for row in expected_non_score]
    # score at slot length - 1 (1 and 3), not one after it
    assert rewards.tolist() == [pytest.approx([-0.05, 9.9, 0.0, 0.0]), pytest.approx([-0.25, -0.3, -0.35, 19.6])]


def _gae_by_hand(rewards, values, length, gamma, lam):
    """The textbook loop over one episode of `length` steps."""
    adv = [0.0] * len(rewards)
    last = 0.0
    for t in reversed(range(length)):
        next_value = values[t + 1] if t + 1 < length else 0.0
        delta = rewards[t] + gamma * next_value - values[t]
        last = delta + gamma * lam * last
        adv[t] = last
    return adv


def test_gae_matches_hand_loop_with_padding():
    gamma, lam = 0.9, 0.8
    rewards = torch.tensor([[0.1, -0.2, 1.0, 9.0], [0.3, 0.0, -0.1, 2.0]])  # 9.0 sits on padding: ignored
    values = torch.tensor([[0.5, 0.4, 0.3, 7.0], [0.2, 0.1, 0.0, -0.5]])
    lengths = torch.tensor([3, 4])
    mask = lengths_to_mask(lengths, 4)
    adv, ret = compute_gae(rewards, values, mask, gamma, lam)
    for i in range(2):
        n = int(lengths[i])
        expected = _gae_by_hand(rewards[i].tolist(), values[i].tolist(), n, gamma, lam)
        assert adv[i].tolist() == pytest.approx(expected, abs=1e-6)
        expected_returns = [a + v for a, v in zip(expected[:n], values[i, :n].tolist(), strict=True)]
        assert ret[i, :n].tolist() == pytest.approx(expected_returns)
    assert adv[0, 3].item() == 0.0 and ret[0, 3].item() == 0.0
    # first row by hand: delta2 = 1.0 - 0.3 = 0.7; delta1 = -0.2 + 0.9*0.3 - 0.4 = -0.33; A1 = -0.33 + 0.72*0.7
    assert adv[0, 2].item() == pytest.approx(0.7)
    assert adv[0, 1].item() == pytest.approx(-0.33 + 0.72 * 0.7)


def test_discounted_returns_by_hand_and_gae_with_zero_values_is_them():
    rewards = torch.tensor([[1.0, 2.0, 4.0, 8.0], [0.5, -1.0, 3.0, 0.0]])
    mask = lengths_to_mask(torch.tensor([3, 4]), 4)  # row 0's 8.0 sits on padding
    returns = discounted_returns(rewards, mask, 0.5)
    # row 0: G2 = 4, G1 = 2 + 0.5 * 4 = 4, G0 = 1 + 0.5 * 4 = 3; row 1: G3 = 0, G2 = 3, G1 = -1 + 1.5 = 0.5,
    # G0 = 0.5 + 0.25 = 0.75
    assert returns.tolist() == [[3.0, 4.0, 4.0, 0.0], [0.75, 0.5, 3.0, 0.0]]
    # A critic that outputs 0: GAE's advantages (and returns) are the returns discounted by gamma * lam.
    adv, ret = compute_gae(rewards, torch.zeros_like(rewards), mask, gamma=1.0, lam=0.5)
    assert torch.allclose(adv, returns) and torch.allclose(ret, returns)


def test_group_baselines_by_hand():
    scores = torch.tensor([1.0, 3.0, 2.0, -4.0, 0.0, 1.0])  # two prompts, three answers each
    assert group_baseline(scores, 3, "none").tolist() == [0.0] * 6
    assert group_baseline(scores, 3, "prompt_mean").tolist() == [2.0, 2.0, 2.0, -1.0, -1.0, -1.0]
    # leave-one-out: (3 + 2) / 2, (1 + 2) / 2, (1 + 3) / 2; (0 + 1) / 2, (-4 + 1) / 2, (-4 + 0) / 2
    assert group_baseline(scores, 3, "prompt_loo").tolist() == [2.5, 1.5, 2.0, 0.5, -1.5, -2.0]
    with pytest.raises(ValueError, match="num_samples_per_prompt=4"):
        group_baseline(scores, 4, "prompt_mean")
    with pytest.raises(ValueError, match="advantage_baseline"):
        group_baseline(scores, 3, "median")
    # GRPO's scale: each prompt's unbiased std, sqrt(((1-2)^2 + (3-2)^2 + 0) / 2) = 1; sqrt((9 + 1 + 4) / 2) = sqrt(7)
    assert group_std(scores, 3).tolist() == pytest.approx([1.0] * 3 + [7**0.5] * 3)
    with pytest.raises(ValueError, match="num_samples_per_prompt=1 >= 2"):
        group_std(scores, 1)


def test_explained_variance_and_correlation_by_hand():
    returns = torch.tensor([[1.0, 3.0, 99.0], [5.0, 7.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])  # real returns 1, 3, 5, 7, 9: mean 5, biased var 8
    # errors R - V = 1, -1, 1, -1, 0 (the padding's value is ignored): mean 0, var 4 / 5 = 0.8 -> EV = 1 - 0.1
    values = torch.tensor([[0.0, 4.0, -50.0], [4.0, 8.0, 9.0]])
    assert explained_variance(values, returns, mask).item() == pytest.approx(0.9)
    assert explained_variance(returns, returns, mask).item() == pytest.approx(1.0)
    constant = torch.full_like(returns, 5.0)
    assert explained_variance(constant, returns, mask).item() == pytest.approx(0.0)
    # a critic worse than a constant: V = 10 - R, errors 2 (R - 5), variance 4 * 8 = 32: EV = 1 - 32 / 8
    assert explained_variance(10.0 - returns, returns, mask).item() == pytest.approx(-3.0)
    # x = 1, 2, 3, y = 2, 4, 7: centred -1, 0, 1 and -7/3, -1/3, 8/3; cov 5, |x| = sqrt 2, |y| = sqrt(114 / 9)
    x, y = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 7.0])
    assert correlation(x, y).item() == pytest.approx(5 / math.sqrt(2 * 114 / 9))
    assert correlation(x, -2 * x).item() == pytest.approx(-1.0)


def test_whiten_advantages_uses_real_tokens_only():
    adv = torch.tensor([[1.0, 3.0, 50.0], [2.0, -7.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    out = whiten_advantages(adv, mask)
    assert out[0, 2].item() == 0.0 and out[1, 1].item() == 0.0
    assert out[0, :2].tolist() == pytest.approx([-1.0, 1.0], abs=1e-4)  # mean 2, unbiased std 1
    assert out[1, 0].item() == pytest.approx(0.0, abs=1e-4)


def test_policy_loss_clipping_by_hand():
    old = torch.zeros(1, 3)
    new = torch.tensor([[math.log(1.5), math.log(0.9), 5.0]])  # ratios 1.5, 0.9; the third slot is padding
    adv = torch.tensor([[1.0, -2.0, 100.0]])
    mask = torch.tensor([[1, 1, 0]])
    loss, clipfrac, approxkl = policy_loss(new, old, adv, mask, cliprange=0.2)
    # slot 0: max(-1.5, -1.2) = -1.2 (clipped); slot 1: max(1.8, 1.8) = 1.8 (not clipped: 0.9 inside the range)
    assert loss.item() == pytest.approx((-1.2 + 1.8) / 2)
    assert clipfrac.item() == pytest.approx(0.5)
    assert approxkl.item() == pytest.approx(0.5 * (math.log(1.5) ** 2 + math.log(0.9) ** 2) / 2)


def test_value_loss_clipping_by_hand():
    old = torch.tensor([[0.0, 0.0, 0.0]])
    new = torch.tensor([[1.0, 0.1, 4.0]])
    returns = torch.tensor([[2.0, -1.0, 0.0]])
    mask = torch.tensor([[1, 1, 0]])
    loss, clipfrac = value_loss(new, old, returns, mask, cliprange_value=0.2)
    # slot 0: (1-2)^2 = 1, clipped (0.2-2)^2 = 3.24 -> 3.24; slot 1: (0.1+1)^2 = 1.21, clip keeps 0.1 -> 1.21
    assert loss.item() == pytest.approx(0.5 * (3.24 + 1.21) / 2)
    assert clipfrac.item() == pytest.approx(0.5)


def test_logprob_entropy_positions():
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    assert token_logprobs(logits, torch.tensor([[1]]), 1.0).item() == pytest.approx(math.log(0.75))
    # temperature 2 -> logits 0, log(3)/2: p1 = sqrt(3) / (1 + sqrt(3))
    assert token_logprobs(logits, torch.tensor([[1]]), 2.0).item() == pytest.approx(
        math.log(math.sqrt(3) / (1 + math.sqrt(3)))
    )
    assert entropy_from_logits(torch.zeros(1, 4)).item() == pytest.approx(math.log(4))
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 3]]
    assert last_real_index(mask).tolist() == [4, 3]


def test_close_with_eos_appends_eos_after_the_last_real_token_only_where_missing():
    # left-padded prompt [5, 6] + answers: 7 8 (full width, open), 7 EOS (closed), 9 (open, one pad after it)
    ids = torch.tensor([[5, 6, 7, 8], [PAD, 6, 7, EOS], [5, 6, 9, PAD]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1], [1, 1, 1, 0]])
    closed, closed_mask = close_with_eos(ids, mask, EOS, PAD)
    assert closed.tolist() == [[5, 6, 7, 8, EOS], [PAD, 6, 7, EOS, PAD], [5, 6, 9, EOS, PAD]]
    assert closed_mask.tolist() == [[1, 1, 1, 1, 1], [0, 1, 1, 1, 0], [1, 1, 1, 1, 0]]
    assert ids.tolist()[0] == [5, 6, 7, 8]  # the caller's tensors are not written to
    # every row already closed (pad == eos too): nothing changes, not even the width
    done = torch.tensor([[5, EOS, EOS], [6, 7, EOS]])
    done_mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    same, same_mask = close_with_eos(done, done_mask, EOS, EOS)
    assert same.tolist() == done.tolist() and same_mask.tolist() == done_mask.tolist()


@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.0])
def test_selective_token_logprobs_equal_log_softmax_and_gather(temperature):
    torch.manual_seed(0)
    logits = (torch.randn(3, 5, 50) * 4).requires_grad_()
    tokens = torch.randint(0, 50, (3, 5))
    expected_logits = logits.detach().clone().requires_grad_()
    expected = torch.log_softmax(expected_logits / temperature, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    got = token_logprobs(logits, tokens, temperature)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    weights = torch.randn(3, 5)  # the gradient too: it is what PPO trains on
    (got * weights).sum().backward()
    (expected * weights).sum().backward()
    torch.testing.assert_close(logits.grad, expected_logits.grad, rtol=0, atol=1e-5)
    # the hand-written backward against finite differences, in fp64; a non-contiguous slice of logits too
    wide = torch.randn(2, 4, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: token_logprobs(x[:, 1:], tokens[:2, :3] % 7, temperature), (wide,))
    # bf16 logits are scored in fp32, as the fp32 log-softmax of the same values
    low = logits.detach().bfloat16()
    expected_low = torch.log_softmax(low.float() / temperature, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    assert token_logprobs(low, tokens, temperature).dtype == torch.float32
    torch.testing.assert_close(token_logprobs(low, tokens, temperature), expected_low, rtol=0, atol=1e-5)


@pytest.mark.parametrize("chunk_elements", [7, 50, 2**24])
def test_entropy_in_row_blocks_equals_the_full_formula(chunk_elements):
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 50) * 5
    logp = torch.log_softmax(logits / 0.7, -1)
    expected = -(logp.exp() * logp).sum(-1)
    got = entropy_from_logits(logits.requires_grad_(), 0.7, chunk_elements=chunk_elements)  # one row, a few, all
    assert got.shape == (2, 3) and not got.requires_grad
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_config_validation_names_the_field():
    from trl_robust import RobustPPOConfig

    common = dict(output_dir="unused", report_to="none", use_cpu=True)
    for bad, field in [
        (dict(stop_token="eos", stop_token_id=2), "stop_token"),
        (dict(kl_estimator="k2"), "kl_estimator"),
        (dict(reward_aggregation="median"), "reward_aggregation"),
        (dict(robust_lambda=1.5), "robust_lambda"),
        (dict(uwo_coef=-1.0), "uwo_coef"),
        (dict(kl_dro_beta=0.0), "kl_dro_beta"),
        (dict(temperature=0.0), "temperature"),
        (dict(missing_eos_penalty=-1.0), "missing_eos_penalty"),
        (dict(num_mini_batches=0), "num_mini_batches"),
        (dict(num_samples_per_prompt=0), "num_samples_per_prompt"),
        (dict(advantage_baseline="prompt_mean"), "advantage_baseline"),
        (dict(advantage_baseline="median", num_samples_per_prompt=2), "advantage_baseline"),
        (dict(value_head_init="random"), "value_head_init"),
        (dict(scale_by_prompt_std=True), "scale_by_prompt_std"),
        (dict(value_learning_rate=-1.0), "value_learning_rate"),
        (dict(num_critic_warmup_updates=-1), "num_critic_warmup_updates"),
        (dict(use_critic=False, num_critic_warmup_updates=2), "num_critic_warmup_updates"),
        (dict(use_critic=False, value_head_init="zero"), "value_head_init"),
    ]:
        with pytest.raises(ValueError, match=field):
            RobustPPOConfig(**common, **bad)
    config = RobustPPOConfig(**common)
    assert (config.learning_rate, config.response_length, config.kl_coef, config.reward_aggregation) == (
        3e-6,
        53,
        0.05,
        "robust",
    )
    assert config.world_size == 1  # TrainingArguments' property, not shadowed by a field


def _ppo_config(**fields):
    from trl_robust import RobustPPOConfig

    return RobustPPOConfig(output_dir="unused", report_to="none", use_cpu=True, **fields)


def test_ppo_batch_sizes_by_hand():
    # 4 per device x 2 accumulation steps on 1 process = 8 episodes per update, 2 minibatches of 4 = one micro-batch
    # each; num_train_epochs 3 (the default) over 16 prompts = 48 episodes = 6 updates, 2 per pass over the data.
    sizes = ppo_batch_sizes(
        _ppo_config(per_device_train_batch_size=4, gradient_accumulation_steps=2, num_mini_batches=2), 1, 16
    )
    assert sizes == PPOBatchSizes(
        world_size=1,
        local_batch_size=8,
        batch_size=8,
        local_mini_batch_size=4,
        mini_batch_size=4,
        local_micro_batch_size=4,
        grad_accum_steps=1,
        total_episodes=48,
        num_total_batches=6,
        batches_per_epoch=2,
        num_samples_per_prompt=1,
        local_prompts_per_update=8,
        prompts_per_update=8,
    )
    assert not sizes.one_micro_batch_per_update

    # 2 processes x 2 per device x 4 steps = 16 per update, one minibatch of 8 per rank = 4 micro-batches of 2;
    # 50 episodes round up to ceil(50 / 16) = 4 updates; 20 prompts hold one update (drop-last).
    config = _ppo_config(per_device_train_batch_size=2, gradient_accumulation_steps=4, total_episodes=50)
    sizes = ppo_batch_sizes(config, 2, 20)
    assert (sizes.local_batch_size, sizes.batch_size, sizes.local_mini_batch_size, sizes.mini_batch_size) == (
        8,
        16,
        8,
        16,
    )
    assert (sizes.local_micro_batch_size, sizes.grad_accum_steps) == (2, 4)
    assert (sizes.total_episodes, sizes.num_total_batches, sizes.batches_per_epoch) == (50, 4, 1)

    # 4 minibatches of 2 from 8 episodes: the minibatch is smaller than per_device_train_batch_size, so it is the
    # micro-batch; max_steps wins over total_episodes: 5 updates of 8 = 40 episodes.
    config = _ppo_config(
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        num_mini_batches=4,
        total_episodes=999,
        max_steps=5,
    )
    sizes = ppo_batch_sizes(config, 1, 16)
    assert (sizes.local_mini_batch_size, sizes.local_micro_batch_size, sizes.grad_accum_steps) == (2, 2, 1)
    assert (sizes.total_episodes, sizes.num_total_batches) == (40, 5)

    # 8 per device, no accumulation, one minibatch: the update is one micro-batch (the rollout forward is reused);
    # num_train_epochs 1.5 over 20 prompts = int(30) episodes = ceil(30 / 8) = 4 updates.
    sizes = ppo_batch_sizes(_ppo_config(per_device_train_batch_size=8, num_train_epochs=1.5), 1, 20)
    assert sizes.one_micro_batch_per_update and (sizes.total_episodes, sizes.num_total_batches) == (30, 4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        sizes.batch_size = 16


def test_ppo_batch_sizes_with_several_samples_per_prompt():
    # 8 episodes per update = 2 prompts x 4 answers; 2 processes: 4 prompts per update, so 10 prompts hold 2 updates
    # per pass; the default run is num_train_epochs (3) passes, each answering every prompt 4 times: 120 episodes.
    config = _ppo_config(per_device_train_batch_size=8, num_samples_per_prompt=4)
    sizes = ppo_batch_sizes(config, 2, 10)
    assert (sizes.local_prompts_per_update, sizes.prompts_per_update, sizes.batch_size) == (2, 4, 16)
    assert (sizes.batches_per_epoch, sizes.total_episodes, sizes.num_total_batches) == (2, 120, 8)
    with pytest.raises(ValueError, match=r"divisible by num_samples_per_prompt: 8 is not divisible by 3"):
        ppo_batch_sizes(_ppo_config(per_device_train_batch_size=8, num_samples_per_prompt=3), 1, 16)
    with pytest.raises(ValueError, match=r"num_samples_per_prompt 4 = 4 prompts"):
        ppo_batch_sizes(config, 2, 3)


def test_ppo_batch_sizes_that_do_not_divide_name_the_fields():
    with pytest.raises(ValueError, match=r"must be divisible by num_mini_batches: 6 is not divisible by 4"):
        ppo_batch_sizes(_ppo_config(per_device_train_batch_size=6, num_mini_batches=4), 1, 16)
    # 4 x 3 = 12 per rank, minibatches of 6: not a whole number of micro-batches of 4
    with pytest.raises(ValueError, match=r"divisible by per_device_train_batch_size: 6 is not divisible by 4"):
        ppo_batch_sizes(
            _ppo_config(per_device_train_batch_size=4, gradient_accumulation_steps=3, num_mini_batches=2), 1, 16
        )
    with pytest.raises(ValueError, match=r"train_dataset has 15 prompts, fewer than one update's batch_size 16"):
        ppo_batch_sizes(_ppo_config(per_device_train_batch_size=8), 2, 15)


def test_prompt_order_is_a_permutation_seeded_by_seed_plus_epoch():
    order = prompt_order(7, seed=3, epoch=1)
    assert sorted(order) == list(range(7))
    assert order == torch.randperm(7, generator=torch.Generator().manual_seed(4)).tolist()
    assert order == prompt_order(7, seed=4, epoch=0) and order != prompt_order(7, seed=3, epoch=0)
