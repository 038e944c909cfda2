"""PPO for RLHF on current TRL, with the old `PPOTrainer` call shape and a robust (BRME) reward.

The file reads top to bottom: first the PPO math as small functions over `[batch, response_length]` tensors (each
unit-tested against hand computations in `tests/test_ppo_math.py`), then the model plumbing, then the trainer.

Conventions of the math functions: a response tensor holds `response_length` slots per row; `mask` is 1 (True) on the
real tokens of a response (everything up to and including the stop token) and 0 on the padding after it, so real
tokens are always a prefix of the row.
"""

import torch
import torch.nn.functional as F

# --------------------------------------------------------------------------------------------------------------------
# PPO math
# --------------------------------------------------------------------------------------------------------------------


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `values` over the positions where `mask` is set (over all of them, or along `dim`)."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1.0)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of `values` over the masked positions; `unbiased` applies Bessel's correction n / (n - 1)."""
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
    """Normalise `values` to zero mean and unit variance using the masked positions' statistics. With
    `shift_mean=False` the mean is kept (only the scale changes), as for rewards, whose sign carries meaning."""
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    return whitened if shift_mean else whitened + mean


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """
    Per-token estimate of KL(pi || pi_ref) from the log-probabilities of the sampled tokens
    (http://joschu.net/blog/kl-approx.html):

    - `k1 = log p - log p_ref`: unbiased, can be negative per token;
    - `k3 = (r - 1) - log r` with `r = p_ref / p`: unbiased, never negative, lower variance.
    """
    if estimator == "k1":
        return logprobs - ref_logprobs
    if estimator == "k3":
        log_r = ref_logprobs - logprobs
        return torch.expm1(log_r) - log_r
    raise ValueError(f"kl_estimator must be 'k1' or 'k3', got {estimator!r}.")


def truncate_after_stop(
    responses: torch.Tensor, stop_token_id: int | None, pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    Cut every response after its first `stop_token_id` and fill the rest with `pad_token_id`.

    Returns `(truncated, lengths, has_stop)`: `lengths[i]` is the number of real tokens of response i, the stop token
    included (the full width when it never stops), and `has_stop[i]` whether response i produced the stop token. The
    lengths come from the stop token's position, never from comparing with `pad_token_id`, so they stay right when the
    pad token is the EOS token.
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


def lengths_to_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """Boolean `[batch, width]` mask that is True on the first `lengths[i]` slots of row i."""
    return torch.arange(width, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def apply_missing_stop_penalty(scores: torch.Tensor, has_stop: torch.Tensor, penalty: float | None) -> torch.Tensor:
    """Subtract `penalty` from the score of every response that never produced the stop token."""
    if penalty is None:
        return scores
    return scores - penalty * (~has_stop).to(scores.dtype)


def compute_rewards(
    kl: torch.Tensor, scores: torch.Tensor, lengths: torch.Tensor, kl_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Per-token rewards: `-kl_coef * KL` on every real token, plus the sequence score on the LAST REAL token (slot
    `length - 1`, the stop token when there is one). Padding slots get 0.

    Returns `(rewards, non_score_rewards)`.
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
    Generalised advantage estimation over masked rows (Schulman et al. 2016):

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


def whiten_advantages(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Whiten advantages with the statistics of the real tokens only; padding stays 0."""
    return masked_whiten(advantages, mask) * mask.to(advantages.dtype)


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    PPO's clipped surrogate, `mean(max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)))` over real tokens.

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
    Clipped value loss, `0.5 * mean(max((V - R)^2, (clip(V, V_old - eps, V_old + eps) - R)^2))` over real tokens.

    Returns `(loss, clipfrac)`, the fraction of real tokens where the clipped term was larger.
    """
    clipped_values = torch.clamp(values, old_values - cliprange_value, old_values + cliprange_value)
    unclipped_loss = (values - returns) ** 2
    clipped_loss = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped_loss, clipped_loss), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped_loss > unclipped_loss).float(), mask)
    return loss, clipfrac


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution of every `[..., vocab]` logits row."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """Log-probability of `tokens` under `logits / temperature` (the distribution they were sampled from)."""
    logp = F.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so a left-padded row gets the positions generation gave it."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def last_real_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of every row (works for left and right padding and for pad == eos)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * positions).argmax(-1)
