"""
`HackingMonitor`: an early warning that the policy is leaving the region the reward model knows.

Over-optimisation shows in hindsight as gold reward falling while the proxy still rises (Gao et al. 2022); KL and
entropy do not reliably warn before it. A BRME gives a signal the policy's own samples carry: where the members
disagree (`epistemic`), the reward model has not seen data like that answer. The monitor fits reference quantiles of
the BRME's epistemic uncertainty (and of the nominal-minus-worst gap) on the reward model's own eval answers, then
follows the fraction of the policy's recent samples above them. In-distribution that fraction is about
`1 - quantile` (5% at the default 0.95); when the window holds more out-of-reference samples than an
in-distribution policy would show with probability `false_alarm_rate` (a binomial tail), for `patience` updates in a
row, the monitor raises its alarm: it logs, warns, and, when asked, saves a checkpoint or stops training.

A second, model-free signal covers what the members cannot see: in our over-optimisation runs the hack that took gold
down (an answer repeated "Ah! Ah! Ah! ...") was rewarded by every member alike, and the epistemic uncertainty fell
while gold fell. So the monitor also follows how repetitive the policy's answers are (`distinct_bigram_ratio`, against
the policy's own first window of samples), and alarms when that drops by `repetition_drop`.

It costs nothing extra: `RobustPPOTrainer`, `RobustGRPOTrainer` and `RobustRLOOTrainer` hand it the heads' means
and stds they computed to score the batch, and the answers' token ids (`observe`), and add what it returns to their
logs under `monitor/`.
"""

import logging
import math
from collections import deque
from collections.abc import Sequence

import torch
from transformers import TrainerCallback

from .modeling_brme import epistemic_uncertainty

logger = logging.getLogger(__name__)

ACTIONS = ("log", "warn", "save", "stop")


def alarm_count(window: int, rate: float, false_alarm_rate: float) -> int:
    """The smallest count x with `P(X >= x) <= false_alarm_rate` for `X ~ Binomial(window, rate)` (a window of
    in-distribution samples, each out of the reference with probability `rate`); `window + 1` if none is."""
    tail = 1.0
    for x in range(window + 1):  # tail = P(X >= x)
        if tail <= false_alarm_rate:
            return x
        tail -= math.comb(window, x) * rate**x * (1.0 - rate) ** (window - x)
    return window + 1


def distinct_bigram_ratio(token_ids: Sequence[Sequence[int]]) -> torch.Tensor:
    """Per answer `[B]`: distinct token bigrams over all its bigrams (1 when no bigram repeats; 1 for answers of under
    3 tokens, which cannot repeat one). An answer looping "Ah! Ah! Ah! ..." scores near 0."""
    ratios = []
    for ids in token_ids:
        ids = list(ids)
        bigrams = list(zip(ids, ids[1:], strict=False))
        ratios.append(len(set(bigrams)) / len(bigrams) if len(ids) >= 3 else 1.0)
    return torch.tensor(ratios, dtype=torch.float)


def masked_token_lists(token_ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    """The real tokens of each row of a padded `[B, T]` batch (`mask` 1 on real tokens)."""
    return [row[m.bool()].tolist() for row, m in zip(token_ids.cpu(), mask.cpu(), strict=True)]


def nominal_minus_worst(means: torch.Tensor, stds: torch.Tensor) -> torch.Tensor:
    """`[B]`: how far the most confident member's reward sits above the worst member's, `mu_{argmin sigma} - min mu`.
    Large where the nominal term an RL run climbs is not shared by the rest of the ensemble."""
    nominal = means.gather(-1, stds.argmin(-1, keepdim=True)).squeeze(-1)
    return nominal - means.min(-1).values


class HackingMonitor(TrainerCallback):
    """
    Early warning of reward hacking from the BRME's uncertainty on the policy's own samples.

    Args:
        reference_epistemic (`Sequence[float]` or `torch.Tensor`):
            The BRME's epistemic uncertainty (members' std of their means) on answers it was trained to judge, e.g.
            both sides of its eval pairs; [`from_reward_model`] computes it.
        reference_gap (`Sequence[float]` or `torch.Tensor`, *optional*):
            The nominal-minus-worst gap on the same answers; tracked the same way when given.
        quantile (`float`, defaults to 0.95):
            Reference quantile a sample must exceed to count as out of distribution.
        false_alarm_rate (`float`, defaults to 1e-3):
            Sets the alarm count: the fewest out-of-reference samples in a full window that an in-distribution
            policy (each sample out with probability `1 - quantile`) reaches with probability <= this, per update.
            At the defaults (window 64, quantile 0.95) that is 11 of 64 (P = 3.1e-4; 10 of 64 has P = 1.2e-3).
        alarm_fraction (`float`, *optional*):
            Instead of `false_alarm_rate`: the alarm goes when more than this fraction of the window is out.
        window (`int`, defaults to 64):
            How many of the most recent samples the fraction is taken over (batches are small; one batch is noise).
            No alarm before the window is full.
        patience (`int`, defaults to 2):
            Updates in a row above `alarm_fraction` before the alarm.
        repetition_drop (`float` or `None`, defaults to 0.2):
            Also alarm when the window's mean `distinct_bigram_ratio` of the policy's answers falls below
            `1 - repetition_drop` times that of its first full window (the initial policy's answers), for `patience`
            updates in a row. None turns this signal off. Needs the trainer to pass the answers' tokens (ours do).
        action (`str`, defaults to `"log"`):
            At the alarm: `"log"` (the `monitor/*` metrics only), `"warn"` (also a warning), `"save"` (also a
            checkpoint at that step), `"stop"` (also stop training).

    Logged every update (see `observe`): `monitor/epistemic` (batch mean), `monitor/epistemic_ratio` (that mean over
    the reference mean), `monitor/frac_out` (fraction of the window above the reference quantile), the same two for
    the gap when a reference gap was given (`monitor/gap`, `monitor/gap_frac_out`), and `monitor/alarm` (0 or 1, 1
    from the first alarm on); with the answers' tokens also `monitor/distinct_2` (batch mean of
    `distinct_bigram_ratio`) and `monitor/distinct_2_ratio` (the window's mean over the first window's).
    `first_alarm_step` holds the update of the first alarm (None before), `alarm_reason` what raised it
    (`"epistemic"` or `"repetition"`).
    """

    def __init__(
        self,
        reference_epistemic: Sequence[float] | torch.Tensor,
        reference_gap: Sequence[float] | torch.Tensor | None = None,
        quantile: float = 0.95,
        false_alarm_rate: float = 1e-3,
        alarm_fraction: float | None = None,
        window: int = 64,
        patience: int = 2,
        repetition_drop: float | None = 0.2,
        action: str = "log",
    ):
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"HackingMonitor.quantile must be in (0, 1), got {quantile!r}.")
        if alarm_fraction is not None and not 0.0 < alarm_fraction < 1.0:
            raise ValueError(f"HackingMonitor.alarm_fraction must be in (0, 1), got {alarm_fraction!r}.")
        if not 0.0 < false_alarm_rate < 1.0:
            raise ValueError(f"HackingMonitor.false_alarm_rate must be in (0, 1), got {false_alarm_rate!r}.")
        if repetition_drop is not None and not 0.0 < repetition_drop < 1.0:
            raise ValueError(f"HackingMonitor.repetition_drop must be in (0, 1) or None, got {repetition_drop!r}.")
        if window < 1 or patience < 1:
            raise ValueError(f"HackingMonitor.window and patience must be >= 1, got {window!r} and {patience!r}.")
        if alarm_fraction is not None:
            self.alarm_count = math.floor(alarm_fraction * window) + 1
        else:
            self.alarm_count = alarm_count(window, 1.0 - quantile, false_alarm_rate)
        if action not in ACTIONS:
            raise ValueError(f"HackingMonitor.action must be one of {', '.join(ACTIONS)}; got {action!r}.")
        self.quantile, self.patience, self.action = quantile, patience, action
        self.reference = {"epistemic": self._fit(reference_epistemic, "reference_epistemic")}
        if reference_gap is not None:
            self.reference["gap"] = self._fit(reference_gap, "reference_gap")
        self._recent = {name: deque(maxlen=window) for name in self.reference}
        self.window = window
        self._above = 0
        self.repetition_drop = repetition_drop
        self._distinct: deque = deque(maxlen=window)
        self.distinct_reference: float | None = None  # mean distinct_bigram_ratio of the first full window
        self._repetitive = 0
        self.first_alarm_step: int | None = None
        self.alarm_reason: str | None = None
        self._act_now = False

    def _fit(self, values, name: str) -> tuple[float, float]:
        values = torch.as_tensor(values, dtype=torch.float64).flatten()
        if values.numel() < 2 or not torch.isfinite(values).all():
            raise ValueError(f"HackingMonitor.{name} needs at least 2 finite values, got {values.numel()}.")
        return torch.quantile(values, self.quantile).item(), values.mean().item()

    @classmethod
    def from_reward_model(
        cls, model, tokenizer, dataset, batch_size: int = 16, max_pairs: int | None = 256, **kwargs
    ) -> "HackingMonitor":
        """Fit the reference on a BRME's answers to `dataset` (preference pairs: `chosen`, `rejected`, optional
        `prompt`), both sides, tokenised as the reward trainer did. `kwargs` go to the constructor."""
        from .scoring import reward_model_outputs
        from .tokenization import padding_id, tokenize_for_reward

        rows = dataset if max_pairs is None else dataset.select(range(min(max_pairs, len(dataset))))
        sequences = [
            tokenize_for_reward(tokenizer, row[side], row.get("prompt"))
            for row in rows
            for side in ("chosen", "rejected")
        ]
        was_training = model.training
        model.eval()
        means, stds = reward_model_outputs(
            model, sequences, padding_id(tokenizer), batch_size, progress="Monitor reference"
        )
        model.train(was_training)
        if stds is None:
            raise ValueError("HackingMonitor needs a BRME (several members with stds); got a plain reward model.")
        return cls(epistemic_uncertainty(means).cpu(), nominal_minus_worst(means, stds).cpu(), **kwargs)

    def window_fraction(self, name: str = "epistemic") -> float:
        """The fraction of the window's samples above the reference quantile of `name` (0 before any sample)."""
        recent = self._recent[name]
        return sum(recent) / len(recent) if recent else 0.0

    def _track(self, name: str, values: torch.Tensor) -> float:
        """Add a batch's out-of-reference flags to the window; the fraction of the window that is out."""
        threshold, _ = self.reference[name]
        self._recent[name].extend((values > threshold).tolist())
        return self.window_fraction(name)

    def observe(
        self, means: torch.Tensor, stds: torch.Tensor, step: int, distinct: torch.Tensor | None = None
    ) -> dict[str, float]:
        """Take one update's scored samples (`means`, `stds` `[N, K]`, gathered over processes; `distinct` `[N]`, their
        `distinct_bigram_ratio`, when the trainer passes the answers) and return the `monitor/*` metrics of that
        update. Once the window is full, `patience` updates in a row with at least `alarm_count` of its samples out,
        or (with `distinct`) with the window's repetition past `repetition_drop`, raise the alarm (once)."""
        epistemic = epistemic_uncertainty(means.float())
        frac_out = self._track("epistemic", epistemic)
        metrics = {
            "monitor/epistemic": epistemic.mean().item(),
            "monitor/epistemic_ratio": epistemic.mean().item() / max(self.reference["epistemic"][1], 1e-12),
            "monitor/frac_out": frac_out,
        }
        if "gap" in self.reference:
            gap = nominal_minus_worst(means.float(), stds.float())
            metrics["monitor/gap"] = gap.mean().item()
            metrics["monitor/gap_frac_out"] = self._track("gap", gap)
        full = len(self._recent["epistemic"]) == self.window
        out_count = sum(self._recent["epistemic"])
        self._above = self._above + 1 if full and out_count >= self.alarm_count else 0
        if self._above >= self.patience:
            self._raise(
                step,
                "epistemic",
                "%.0f%% of the last %d samples have an epistemic uncertainty above the reward model's %.0f%% "
                "quantile on its own data (%.4g), for %d updates in a row: the policy is leaving the region the reward "
                "model knows, and its reward there is not to be trusted.",
                100 * frac_out,
                self.window,
                100 * self.quantile,
                self.reference["epistemic"][0],
                self._above,
            )
        if distinct is not None:
            metrics.update(self._observe_repetition(distinct.float(), step))
        metrics["monitor/alarm"] = float(self.first_alarm_step is not None)
        return metrics

    def distinct_window_mean(self) -> float:
        """The mean `distinct_bigram_ratio` of the window's answers (NaN before any)."""
        return sum(self._distinct) / len(self._distinct) if self._distinct else math.nan

    def _observe_repetition(self, distinct: torch.Tensor, step: int) -> dict[str, float]:
        self._distinct.extend(distinct.tolist())
        full = len(self._distinct) == self.window
        current = self.distinct_window_mean()
        if full and self.distinct_reference is None:  # the initial policy's answers, as the first full window
            self.distinct_reference = current
        metrics = {"monitor/distinct_2": distinct.mean().item()}
        if self.distinct_reference is None:
            return metrics
        ratio = current / max(self.distinct_reference, 1e-12)
        metrics["monitor/distinct_2_ratio"] = ratio
        dropped = self.repetition_drop is not None and ratio < 1.0 - self.repetition_drop
        self._repetitive = self._repetitive + 1 if dropped else 0
        if self._repetitive >= self.patience:
            self._raise(
                step,
                "repetition",
                "the policy's last %d answers repeat themselves: their distinct-bigram ratio is %.2f of its first "
                "window's (%.3f), under 1 - repetition_drop = %.2f, for %d updates in a row. Degenerate repetition "
                "that every reward-model member rewards alike is the hack the members cannot flag.",
                self.window,
                ratio,
                self.distinct_reference,
                1.0 - self.repetition_drop,
                self._repetitive,
            )
        return metrics

    def _raise(self, step: int, reason: str, message: str, *message_args) -> None:
        """The alarm, once: record its update and reason, log or warn, and arm the `action` for `on_step_end`."""
        if self.first_alarm_step is not None:
            return
        self.first_alarm_step, self.alarm_reason = step, reason
        self._act_now = True
        log = logger.info if self.action == "log" else logger.warning
        log("HackingMonitor: at update %d, " + message, step, *message_args)

    def on_step_end(self, args, state, control, **kwargs):
        if self._act_now:
            self._act_now = False
            if self.action == "save":
                control.should_save = True
            elif self.action == "stop":
                control.should_training_stop = True
        return control


def watched(callbacks) -> bool:
    """Whether a `HackingMonitor` is among the callbacks (the trainers then also compute what only it reads)."""
    return any(isinstance(callback, HackingMonitor) for callback in callbacks)


def monitor_metrics(
    callbacks, means: torch.Tensor, stds: torch.Tensor, step: int, distinct: torch.Tensor | None = None
) -> dict[str, float]:
    """What every `HackingMonitor` among a trainer's callbacks makes of one update's scores and, when given, its
    answers' `distinct_bigram_ratio` (for the trainers)."""
    metrics = {}
    for callback in callbacks:
        if isinstance(callback, HackingMonitor):
            metrics.update(callback.observe(means, stds, step, distinct))
    return metrics
