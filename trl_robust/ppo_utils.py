"""The PPO maths and tensor helpers of `RobustPPOTrainer`, as small functions over `[batch, response_length]` tensors.

Each is unit-tested against hand computations in `tests/test_ppo_math.py`; the trainer (`robust_ppo_trainer.py`) only
wires them together, as TRL keeps `trainer/utils.py` beside its trainers.

Conventions: a response tensor holds `response_length` slots per row; `mask` is 1 (True) on the real tokens of a
response (everything up to and including the stop token) and 0 on the padding after it, so real tokens are always a
prefix of the row. Sources: PPO (Schulman et al. 2017, arXiv 1707.06347), GAE (Schulman et al. 2016, arXiv
1506.02438), and the RLHF implementation details of Huang et al. 2024 ("The N+ Implementation Details of RLHF with
PPO", arXiv 2403.17031) for whitening and value clipping.
"""

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .robust_ppo_config import RobustPPOConfig

# --------------------------------------------------------------------------------------------------------------------
# Masked statistics
# --------------------------------------------------------------------------------------------------------------------


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean over the masked positions, `sum(x * m) / max(sum(m), 1)` (over all of them, or along `dim`)."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1.0)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over the masked positions, `masked_mean((x - mu)^2)`; `unbiased` applies Bessel's correction
    `n / (n - 1)` (n = number of masked positions) and needs n >= 2."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        n = mask.to(values.dtype).sum()
        if n < 2:
            raise ValueError(
                "Cannot whiten over fewer than 2 real tokens; raise per_device_train_batch_size, "
                "gradient_accumulation_steps or response_length."
            )
        var = var * n / (n - 1)
    return var


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Whitening with the masked positions' statistics, `(x - mu) / sqrt(var + 1e-8)` (unbiased var). With
    `shift_mean=False` the mean is added back (only the scale changes), as for rewards, whose sign carries meaning."""
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    return whitened if shift_mean else whitened + mean


def whiten_advantages(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`masked_whiten(A, mask) * mask`: advantages whitened with the statistics of the real tokens only; padding
    stays 0."""
    return masked_whiten(advantages, mask) * mask.to(advantages.dtype)


# --------------------------------------------------------------------------------------------------------------------
# Responses: stop token, masks, positions
# --------------------------------------------------------------------------------------------------------------------


def lengths_to_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """Boolean `[batch, width]` mask, `mask[i, t] = t < lengths[i]`: True on the first `lengths[i]` slots of row i."""
    return torch.arange(width, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def truncate_after_stop(
    responses: torch.Tensor, stop_token_id: int | None, pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    Cut every response after its first `stop_token_id` and fill the rest with `pad_token_id`.

    Returns `(truncated, lengths, has_stop)`: `lengths[i]` is the number of real tokens of response i, the stop token
    included (`first stop index + 1`, the full width when it never stops), and `has_stop[i]` whether response i
    produced the stop token. The lengths come from the stop token's position, never from comparing with
    `pad_token_id`, so they stay right when the pad token is the EOS token.
    """
    batch, width = responses.shape
    if stop_token_id is None:
        lengths = torch.full((batch,), width, dtype=torch.long, device=responses.device)
        return responses.clone(), lengths, torch.zeros(batch, dtype=torch.bool, device=responses.device)
    is_stop = responses == stop_token_id
    has_stop = is_stop.any(dim=1)
    # argmax of a 0/1 row gives the first 1; rows without a stop get the full width.
    first_stop = is_stop.long().argmax(dim=1)
    lengths = torch.where(has_stop, first_stop + 1, torch.full_like(first_stop, width))
    truncated = responses.masked_fill(~lengths_to_mask(lengths, width), pad_token_id)
    return truncated, lengths, has_stop


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, `max(cumsum(mask) - 1, 0)`, so a left-padded row gets the positions
    generation gave it."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def last_real_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of every row, `argmax_t(mask_t * t)` (works for left and right padding and for
    pad == eos)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * positions).argmax(-1)


def close_with_eos(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, eos_token_id: int, pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Every row's real tokens closed with `eos_token_id`, as `tokenization.append_eos` closes the text a reward model is
    trained and scored on (TRL's reward training closes standard text with EOS, and a last-token reward head learns to
    read the EOS position): a row whose last real token (by the mask) is not EOS gets one in the slot after it, the
    batch one column wider (filled with `pad_token_id`, masked) when any row needs it; rows that end in EOS are left
    as they are.
    """
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    last = last_real_index(attention_mask)
    open_rows = input_ids[rows, last] != eos_token_id
    if not open_rows.any():
        return input_ids, attention_mask
    input_ids = torch.cat([input_ids, input_ids.new_full((input_ids.shape[0], 1), pad_token_id)], dim=1)
    attention_mask = torch.cat([attention_mask, attention_mask.new_zeros((attention_mask.shape[0], 1))], dim=1)
    input_ids[rows[open_rows], last[open_rows] + 1] = eos_token_id
    attention_mask[rows[open_rows], last[open_rows] + 1] = 1
    return input_ids, attention_mask


# --------------------------------------------------------------------------------------------------------------------
# Rewards and advantages
# --------------------------------------------------------------------------------------------------------------------


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """
    Per-token estimate of KL(pi || pi_ref) from the log-probabilities of the sampled tokens
    (J. Schulman, "Approximating KL divergence", http://joschu.net/blog/kl-approx.html):

    - `k1 = log p - log p_ref`: unbiased, can be negative per token;
    - `k3 = (r - 1) - log r` with `r = p_ref / p`: unbiased, never negative, lower variance.
    """
    if estimator == "k1":
        return logprobs - ref_logprobs
    if estimator == "k3":
        log_r = ref_logprobs - logprobs
        return torch.expm1(log_r) - log_r
    raise ValueError(f"kl_estimator must be 'k1' or 'k3', got {estimator!r}.")


def apply_missing_stop_penalty(scores: torch.Tensor, has_stop: torch.Tensor, penalty: float | None) -> torch.Tensor:
    """`score - penalty * (1 - has_stop)`: subtract `penalty` from the score of every response that never produced
    the stop token (TRL's `missing_eos_penalty`); `None` leaves the scores as they are."""
    if penalty is None:
        return scores
    return scores - penalty * (~has_stop).to(scores.dtype)


def compute_rewards(
    kl: torch.Tensor, scores: torch.Tensor, lengths: torch.Tensor, kl_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Per-token rewards (Ziegler et al. 2019, arXiv 1909.08593): `r_t = -kl_coef * KL_t` on every real token, plus the
    sequence score on the LAST REAL token (slot `length - 1`, the stop token when there is one; TRL 1.12 put it one
    slot after, TRL issue #3750). Padding slots get 0.

    Returns `(rewards, non_score_rewards)`, the latter being the `-kl_coef * KL_t` part alone.
    """
    mask = lengths_to_mask(lengths, kl.shape[1])
    non_score = -kl_coef * kl * mask
    rewards = non_score.clone()
    rows = torch.arange(kl.shape[0], device=kl.device)
    rewards[rows, lengths - 1] += scores.to(rewards.dtype)
    return rewards, non_score


def compute_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Generalised advantage estimation over masked rows (Schulman et al. 2016, arXiv 1506.02438):

        delta_t = r_t + gamma * V_{t+1} - V_t,     A_t = delta_t + gamma * lam * A_{t+1},

    where the episode ends at the last real token (V and A beyond it count as 0). Returns `(advantages, returns)`
    with `returns = advantages + values`; both are 0 on padding.
    """
    mask = mask.to(values.dtype)
    rewards, values = rewards * mask, values * mask
    width = rewards.shape[1]
    advantages = torch.zeros_like(values)
    next_advantage = torch.zeros_like(values[:, 0])
    next_value = torch.zeros_like(values[:, 0])
    for t in reversed(range(width)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    return advantages, (advantages + values) * mask


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, discount: float) -> torch.Tensor:
    """
    Reward-to-go of every real token, `G_t = sum_{l >= 0} discount^l * r_{t+l}` up to the last real token (0 on
    padding): the advantages of the critic-free mode (`use_critic=False`, with `discount = gamma`), and what GAE gives
    with a value of 0 everywhere (`compute_gae(r, 0, mask, gamma, lam)` = `discounted_returns(r, mask, gamma * lam)`).
    """
    mask = mask.to(rewards.dtype)
    rewards = rewards * mask
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = (rewards[:, t] + discount * running) * mask[:, t]
        returns[:, t] = running
    return returns


def group_baseline(scores: torch.Tensor, group_size: int, kind: str) -> torch.Tensor:
    """
    The baseline subtracted from each sequence score when every prompt is answered `group_size` times (consecutive
    rows are one prompt's answers), as RLOO and GRPO take it:

    - `"none"`: 0;
    - `"prompt_mean"`: the group mean, `b_i = mean_{j in g(i)} s_j`;
    - `"prompt_loo"`: the mean of the OTHER answers, `b_i = (sum_{j in g(i)} s_j - s_i) / (k - 1)` (leave-one-out,
      unbiased; `s_i - b_i = k / (k - 1) * (s_i - mean)`), which needs `k >= 2`.
    """
    if kind == "none":
        return torch.zeros_like(scores)
    if scores.shape[0] % group_size:
        raise ValueError(f"{scores.shape[0]} scores do not split into groups of num_samples_per_prompt={group_size}.")
    groups = scores.view(-1, group_size)
    if kind == "prompt_mean":
        return groups.mean(1, keepdim=True).expand_as(groups).reshape(-1)
    if kind == "prompt_loo":
        if group_size < 2:
            raise ValueError("advantage_baseline='prompt_loo' needs num_samples_per_prompt >= 2.")
        return ((groups.sum(1, keepdim=True) - groups) / (group_size - 1)).reshape(-1)
    raise ValueError(f"advantage_baseline must be 'none', 'prompt_mean' or 'prompt_loo', got {kind!r}.")


def group_std(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """For each score, the std of its prompt's `group_size` scores (consecutive rows; unbiased, as GRPO's
    `scale_rewards="group"` takes it): `sigma_i = sqrt(sum_{j in g(i)} (s_j - mean)^2 / (k - 1))`."""
    if group_size < 2 or scores.shape[0] % group_size:
        raise ValueError(
            f"{scores.shape[0]} scores do not split into groups of num_samples_per_prompt={group_size} >= 2."
        )
    groups = scores.view(-1, group_size)
    return groups.std(1, keepdim=True).expand_as(groups).reshape(-1)


# --------------------------------------------------------------------------------------------------------------------
# Diagnostics
# --------------------------------------------------------------------------------------------------------------------


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """
    How much of the returns' variance the value model explains, over real tokens:

        EV = 1 - Var(R - V) / Var(R)      (biased variances, masked).

    1: perfect; 0: no better than predicting the mean return; < 0: worse than a constant (its errors add noise to
    the advantages). NaN when the returns do not vary.
    """
    var_returns = masked_var(returns, mask, unbiased=False)
    var_error = masked_var(returns - values, mask, unbiased=False)
    return 1.0 - var_error / var_returns


def correlation(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of two 1-D tensors, `cov(x, y) / (std(x) * std(y))`; NaN when either is constant."""
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    return ((x * y).sum() / (x.square().sum().sqrt() * y.square().sum().sqrt())).float()


# --------------------------------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------------------------------


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    PPO's clipped surrogate (Schulman et al. 2017, arXiv 1707.06347, eq. 7, as a loss), with
    `ratio = exp(log p - log p_old)`:

        loss = masked_mean(max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)))   over real tokens.

    Returns `(loss, clipfrac, approxkl)`: the fraction of real tokens where the clipped term was chosen, and
    `0.5 * mean((log ratio)^2)`, an estimate of KL(pi_old || pi).
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).float(), mask)
        approxkl = 0.5 * masked_mean(log_ratio**2, mask)
    return loss, clipfrac, approxkl


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Clipped value loss (OpenAI baselines' PPO2; Huang et al. 2024, arXiv 2403.17031), over real tokens:

        loss = 0.5 * masked_mean(max((V - R)^2, (clip(V, V_old - eps, V_old + eps) - R)^2)).

    Returns `(loss, clipfrac)`, the fraction of real tokens where the clipped term was larger.
    """
    clipped_values = torch.clamp(values, old_values - cliprange_value, old_values + cliprange_value)
    unclipped_loss = (values - returns) ** 2
    clipped_loss = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped_loss, clipped_loss), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped_loss > unclipped_loss).float(), mask)
    return loss, clipfrac


# --------------------------------------------------------------------------------------------------------------------
# Log-probabilities and entropy from logits
# --------------------------------------------------------------------------------------------------------------------

# Full-vocabulary temporaries are made a block of rows at a time, about this many logits (16 MiB in fp32): small next
# to the logits, and small enough that a CPU allocator reuses the blocks instead of mapping fresh pages every time.
_ROW_BLOCK = 2**22


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """
    Log-probability of `tokens` under `logits / temperature` (the distribution they were sampled from), in fp32 (fp64
    for fp64 logits): `log_softmax(x / T).gather(tokens) = x_k / T - logsumexp(x / T)`, computed as the chosen logit
    minus the logsumexp of its row, so that no full-vocabulary log-softmax is materialised.

    The backward is written out (`_TokenLogprobs`): it keeps the logits themselves (no scaled fp32 copy) and the row
    logsumexps, and builds the gradient `(onehot(token) - softmax(x / T)) * grad / T` in a single full-vocabulary
    buffer, where autograd would chain the division, logsumexp, gather and their sum through several.
    """
    return _TokenLogprobs.apply(logits, tokens, temperature)


class _TokenLogprobs(torch.autograd.Function):
    """`token_logprobs` with its hand-written backward (see there)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
        dtype = torch.promote_types(logits.dtype, torch.float32)
        rows = logits.reshape(-1, logits.shape[-1])
        lse = torch.empty(rows.shape[0], dtype=dtype, device=logits.device)
        step = max(1, _ROW_BLOCK // rows.shape[1])  # blocks of rows: the scaled copy stays small
        for start in range(0, rows.shape[0], step):
            lse[start : start + step] = torch.logsumexp(rows[start : start + step].to(dtype) / temperature, dim=-1)
        lse = lse.view(tokens.shape)
        chosen = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).to(dtype) / temperature
        ctx.save_for_backward(logits, tokens, lse)
        ctx.temperature = temperature
        return chosen - lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        logits, tokens, lse = ctx.saved_tensors
        scale = (grad / ctx.temperature).unsqueeze(-1)
        # d/dx_j (x_k / T - logsumexp(x / T)) = (1[j = k] - softmax(x / T)_j) / T, built in place in one buffer.
        buffer = logits.to(lse.dtype, copy=True).div_(ctx.temperature).sub_(lse.unsqueeze(-1)).exp_().mul_(-scale)
        buffer.scatter_add_(-1, tokens.unsqueeze(-1), scale)
        return buffer.to(logits.dtype), None, None


@torch.no_grad()
def entropy_from_logits(
    logits: torch.Tensor, temperature: float = 1.0, chunk_elements: int = _ROW_BLOCK
) -> torch.Tensor:
    """
    Entropy of the categorical distribution of every `[..., vocab]` row of `x = logits / temperature`, in fp32 and
    without gradient (it is a metric): `H = logsumexp(x) - sum(softmax(x) * x)`, over blocks of rows of about
    `chunk_elements` logits, so the temporaries stay small whatever the batch and vocabulary.
    """
    rows = logits.reshape(-1, logits.shape[-1])
    entropy = torch.empty(rows.shape[0], dtype=torch.float32, device=logits.device)
    step = max(1, chunk_elements // rows.shape[1])
    for start in range(0, rows.shape[0], step):
        x = rows[start : start + step].float()
        if temperature != 1.0:
            x = x / temperature
        weighted = torch.softmax(x, dim=-1).mul_(x).sum(-1)
        entropy[start : start + step] = torch.logsumexp(x, dim=-1) - weighted
    return entropy.view(logits.shape[:-1])


# --------------------------------------------------------------------------------------------------------------------
# Batch sizes
# --------------------------------------------------------------------------------------------------------------------


def exact_div(a: int, b: int, what: str) -> int:
    """`a // b`, raising a `ValueError` that says which fields to change when `b` does not divide `a`."""
    if b <= 0 or a % b != 0:
        raise ValueError(f"{what}: {a} is not divisible by {b}.")
    return a // b


@dataclass(frozen=True)
class PPOBatchSizes:
    """The sizes of a PPO run derived from its config (see `ppo_batch_sizes`). "local" counts one rank's share."""

    world_size: int
    local_batch_size: int  # episodes per rank per update: per_device_train_batch_size * gradient_accumulation_steps
    batch_size: int  # episodes per update (one rollout) over all ranks: local_batch_size * world_size
    local_mini_batch_size: int  # episodes per rank per optimiser step: local_batch_size / num_mini_batches
    mini_batch_size: int  # episodes per optimiser step over all ranks: local_mini_batch_size * world_size
    local_micro_batch_size: int  # episodes per rank per forward/backward: min(per_device_train_batch_size, minibatch)
    grad_accum_steps: int  # micro-batches accumulated into one optimiser step: local_mini / local_micro
    total_episodes: int  # episodes in the run
    num_total_batches: int  # PPO updates in the run: ceil(total_episodes / batch_size)
    batches_per_epoch: int  # updates per pass over the dataset (drop-last): len(dataset) // prompts_per_update
    num_samples_per_prompt: int = 1  # answers sampled per prompt (one prompt's answers stay on one rank)
    local_prompts_per_update: int = 0  # prompts per rank per update: local_batch_size / num_samples_per_prompt
    prompts_per_update: int = 0  # prompts per update over all ranks: batch_size / num_samples_per_prompt

    @property
    def one_micro_batch_per_update(self) -> bool:
        """Whether an update's whole rollout is a single micro-batch (then the rollout's forward can be the first
        PPO epoch's)."""
        return self.local_micro_batch_size == self.local_batch_size


def ppo_batch_sizes(args: "RobustPPOConfig", world_size: int, dataset_len: int) -> PPOBatchSizes:
    """
    Every derived size of a PPO run, as TRL 1.12's `PPOTrainer` derived them. One update (one rollout) holds
    `batch_size = per_device_train_batch_size * gradient_accumulation_steps * world_size` episodes, split into
    `num_mini_batches` optimiser steps per PPO epoch, each accumulated over micro-batches of
    `per_device_train_batch_size` (or the whole minibatch when it is smaller). The run is `max_steps` updates when it
    is > 0, else `ceil(total_episodes / batch_size)` (`total_episodes` defaulting to `num_train_epochs` passes over the
    dataset). With `num_samples_per_prompt = k`, an update answers `batch_size / k` prompts k times each (every rank
    holds whole groups, so a per-prompt baseline is local), and a pass over the dataset is `k * len(dataset)`
    episodes.

    Raises a `ValueError` naming the fields when a division is not exact or the dataset holds fewer prompts than one
    update.
    """
    local_batch_size = args.per_device_train_batch_size * args.gradient_accumulation_steps
    local_mini_batch_size = exact_div(
        local_batch_size,
        args.num_mini_batches,
        "per_device_train_batch_size * gradient_accumulation_steps must be divisible by num_mini_batches",
    )
    local_micro_batch_size = min(args.per_device_train_batch_size, local_mini_batch_size)
    grad_accum_steps = exact_div(
        local_mini_batch_size,
        local_micro_batch_size,
        "the per-rank minibatch (per_device_train_batch_size * gradient_accumulation_steps / num_mini_batches) "
        "must be divisible by per_device_train_batch_size",
    )
    samples = args.num_samples_per_prompt
    local_prompts = exact_div(
        local_batch_size,
        samples,
        "per_device_train_batch_size * gradient_accumulation_steps must be divisible by num_samples_per_prompt",
    )
    batch_size = local_batch_size * world_size
    prompts_per_update = local_prompts * world_size
    if dataset_len < prompts_per_update:
        raise ValueError(
            f"train_dataset has {dataset_len} prompts, fewer than one update's batch_size "
            f"{batch_size} (per_device_train_batch_size * gradient_accumulation_steps * num_processes)"
            + (f" / num_samples_per_prompt {samples} = {prompts_per_update} prompts." if samples > 1 else ".")
        )
    if args.max_steps > 0:  # TrainingArguments' own way to fix the run length wins, counted in updates
        total_episodes = args.max_steps * batch_size
    elif args.total_episodes is None:
        total_episodes = int(args.num_train_epochs * dataset_len * samples)
    else:
        total_episodes = args.total_episodes
    return PPOBatchSizes(
        world_size=world_size,
        local_batch_size=local_batch_size,
        batch_size=batch_size,
        local_mini_batch_size=local_mini_batch_size,
        mini_batch_size=local_mini_batch_size * world_size,
        local_micro_batch_size=local_micro_batch_size,
        grad_accum_steps=grad_accum_steps,
        total_episodes=total_episodes,
        num_total_batches=math.ceil(total_episodes / batch_size),
        batches_per_epoch=dataset_len // prompts_per_update,
        num_samples_per_prompt=samples,
        local_prompts_per_update=local_prompts,
        prompts_per_update=prompts_per_update,
    )


def prompt_order(dataset_len: int, seed: int, epoch: int) -> list[int]:
    """The order in which `RobustPPOTrainer` reads its prompts in epoch `epoch` (0-based): a permutation of the
    dataset seeded by `seed + epoch` alone, so that the data order depends only on the update index (resuming is
    exact) and another trainer can be given the same order."""
    return torch.randperm(dataset_len, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
