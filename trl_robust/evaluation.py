"""Reward-model evaluation on preference pairs: accuracy of every head and aggregation, calibration, and how well the
predicted uncertainty flags the pairs the model gets wrong. Works for a BRME and for a plain TRL reward model (one
head, no std), so the two can be compared on the same data."""

import json
import math
from pathlib import Path

import torch
from datasets import Dataset
from torch import nn
from transformers import PreTrainedTokenizerBase

from . import aggregation as agg
from .configuration_brme import BRME_RANGES
from .data import split_dialogue
from .exploits import load_exploits_file, make_exploits, reward_favourite_words
from .metrics import auroc, expected_calibration_error, pair_probability, reliability_bins
from .modeling_brme import BRMERewardModel, aleatoric_uncertainty, epistemic_uncertainty
from .plotting import plot_reliability
from .recipe_checks import check_range
from .scoring import reward_model_outputs
from .tokenization import padding_id, tokenize_for_reward


def preference_metrics(
    means_c: torch.Tensor,
    means_r: torch.Tensor,
    stds_c: torch.Tensor | None = None,
    stds_r: torch.Tensor | None = None,
    robust_lambda: float = 0.4,
    num_bins: int = 10,
    temperature: float = 1.0,
) -> dict[str, float]:
    """
    Metrics of N pairs from the heads' means (and stds) of the chosen and rejected sides, each `[N, K]`:
    accuracy of each head and of nominal / worst / robust / mean, ECE (at T = 1 and at the calibration `temperature`)
    and Brier score of the predicted P(chosen > rejected), and the AUROC with which each uncertainty flags the pairs
    the robust reward ranks wrong: epistemic (the heads' disagreement on the gap), aleatoric (the heads' mean std of
    both answers), the predicted std of the gap, and, as the baseline any reward model has, a small |margin| of the
    robust reward. A plain reward model is K = 1 with no stds: its probability is sigmoid(gap / T) and it has only
    the |margin| baseline.
    """
    has_std = stds_c is not None
    if not has_std:
        stds_c = stds_r = torch.zeros_like(means_c)
    gap = means_c - means_r  # [N, K]
    robust_c = agg.robust(means_c, stds_c, robust_lambda)
    robust_r = agg.robust(means_r, stds_r, robust_lambda)
    wrong = robust_c <= robust_r
    out: dict[str, float] = {"pairs": float(len(gap)), "num_heads": float(gap.shape[1])}
    for k in range(gap.shape[1]):
        out[f"accuracy_head_{k}"] = (gap[:, k] > 0).double().mean().item()
    out["accuracy_robust"] = (~wrong).double().mean().item()
    out["accuracy_nominal"] = (agg.nominal(means_c, stds_c) > agg.nominal(means_r, stds_r)).double().mean().item()
    out["accuracy_worst"] = (agg.worst(means_c) > agg.worst(means_r)).double().mean().item()
    out["accuracy_mean"] = (agg.mean(means_c) > agg.mean(means_r)).double().mean().item()
    var = stds_c.pow(2) + stds_r.pow(2)
    prob = pair_probability(gap, var).mean(-1)  # the ensemble's Bayesian model average
    calibrated = pair_probability(gap, var, temperature).mean(-1)
    out["ece"] = expected_calibration_error(prob, num_bins)
    out["calibrated_ece"] = expected_calibration_error(calibrated, num_bins)
    out["calibration_temperature"] = float(temperature)
    out["brier"] = (1.0 - prob.double()).pow(2).mean().item()  # the chosen side is the true winner of every pair
    out["auroc_margin_flags_errors"] = auroc(-(robust_c - robust_r).abs(), wrong)  # small |margin| = likely wrong
    if has_std:
        out["mean_std"] = torch.cat([stds_c, stds_r]).mean().item()
        out["auroc_std_flags_errors"] = auroc(var.mean(-1).sqrt(), wrong)
        aleatoric = (aleatoric_uncertainty(stds_c) + aleatoric_uncertainty(stds_r)) / 2.0
        out["auroc_aleatoric_flags_errors"] = auroc(aleatoric, wrong)
    if gap.shape[1] > 1:
        out["head_disagreement"] = epistemic_uncertainty(torch.cat([means_c, means_r])).mean().item()
        out["auroc_epistemic_flags_errors"] = auroc(epistemic_uncertainty(gap), wrong)
    return out


def exploit_metrics(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list,
    answers: list,
    answer_means: torch.Tensor,
    answer_stds: torch.Tensor,
    batch_size: int = 16,
    max_length: int | None = None,
    exploits_file: str | Path | None = None,
    favourite_words: list[str] | None = None,
) -> dict[str, float]:
    """
    How well a BRME's epistemic uncertainty (per answer: the members' disagreement, the population std of their means)
    separates in-distribution answers (`answers` to `prompts`, already scored: `answer_means`, `answer_stds`) from
    each kind of [`trl_robust.exploits.make_exploits`] made from them, and from the rows of `exploits_file` (kind
    `file`). Per kind: `exploit_auroc_{kind}` (AUROC of epistemic, exploit = positive; 1 = every exploit is more
    uncertain than every real answer), `exploit_reward_auroc_{kind}` (the same for the robust reward: above 0.5 the
    reward model prefers the exploits, so they really are exploits of it), `exploit_answers_{kind}`, and
    `exploit_dropped_{kind}` (over `max_length` tokens, not scored).
    """
    if favourite_words is None:
        favourite_words = reward_favourite_words(model, tokenizer, prompts, answers, max_candidates=100, max_prompts=4)
    kinds = {kind: (prompts, made) for kind, made in make_exploits(answers, favourite_words).items()}
    if exploits_file is not None:
        kinds["file"] = load_exploits_file(exploits_file)
    base_epistemic = epistemic_uncertainty(answer_means)
    base_reward = agg.robust(answer_means, answer_stds, model.config.robust_lambda)
    out: dict[str, float] = {}
    for kind, (kind_prompts, completions) in kinds.items():
        ids = [tokenize_for_reward(tokenizer, c, p) for p, c in zip(kind_prompts, completions, strict=True)]
        keep = [x for x in ids if max_length is None or len(x) <= max_length]
        out[f"exploit_answers_{kind}"] = float(len(keep))
        out[f"exploit_dropped_{kind}"] = float(len(ids) - len(keep))
        if not keep:
            out[f"exploit_auroc_{kind}"] = out[f"exploit_reward_auroc_{kind}"] = float("nan")
            continue
        means, stds = reward_model_outputs(model, keep, padding_id(tokenizer), batch_size, progress=f"Exploits {kind}")
        means, stds = means.cpu(), stds.cpu()
        is_exploit = torch.cat([torch.ones(len(keep)), torch.zeros(len(base_epistemic))])
        out[f"exploit_auroc_{kind}"] = auroc(torch.cat([epistemic_uncertainty(means), base_epistemic]), is_exploit)
        reward = agg.robust(means, stds, model.config.robust_lambda)
        out[f"exploit_reward_auroc_{kind}"] = auroc(torch.cat([reward, base_reward]), is_exploit)
    return out


def split_prompts(dataset: Dataset) -> tuple[list, list] | None:
    """`(prompts, chosen answers)` of preference pairs: the `prompt` column, or (implicit-prompt text pairs) the
    dialogue both sides share up to its last Assistant turn; None where neither applies."""
    if "prompt" in dataset.column_names:
        return list(dataset["prompt"]), list(dataset["chosen"])
    prompts, answers = [], []
    for row in dataset:
        if not isinstance(row["chosen"], str):
            return None
        try:
            parts = split_dialogue(row["chosen"], row["rejected"])
        except ValueError:
            return None
        prompts.append(parts["prompt"])
        answers.append(parts["chosen"])
    return prompts, answers


def evaluate_reward_model(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    dataset: Dataset,
    batch_size: int = 16,
    max_length: int | None = None,
    robust_lambda: float | None = None,
    num_bins: int = 10,
    output_dir: str | Path | None = None,
    temperature: float | None = None,
    exploits: bool | None = None,
    exploits_file: str | Path | None = None,
    max_exploit_answers: int | None = 256,
) -> dict:
    """
    Evaluate a BRME (or a plain reward model) on preference pairs (`chosen` / `rejected`, optional `prompt`; text or
    conversational), tokenised as `BRMERewardTrainer` trains. Pairs longer than `max_length` tokens are dropped and
    counted. `robust_lambda` defaults to the BRME's own, `temperature` (of `calibrated_ece`) to the model's
    `config.calibration_temperature` (1.0 for a plain model). `exploits` (default: on for a BRME of K > 1 heads
    whose pairs have prompts) adds [`exploit_metrics`] on the first `max_exploit_answers` kept pairs' chosen answers
    (and on `exploits_file`, which turns exploits on). With `output_dir`, writes `metrics.json`, `metrics.md` and
    `reliability.png` there. Returns the metrics, with the reliability bins under `"reliability"`.
    """
    missing = {"chosen", "rejected"} - set(dataset.column_names)
    if missing:
        raise ValueError(
            f"The evaluation dataset needs columns {sorted(missing)}; it has {sorted(dataset.column_names)}."
        )
    model.eval()
    is_brme = isinstance(model, BRMERewardModel)
    if robust_lambda is None:
        robust_lambda = model.config.robust_lambda if is_brme else 1.0
    if temperature is None:
        temperature = getattr(model.config, "calibration_temperature", 1.0) if is_brme else 1.0
    check_range("evaluate_reward_model: temperature", temperature, BRME_RANGES["calibration_temperature"])
    chosen, rejected = [], []
    for row in dataset:
        prompt = row.get("prompt")
        chosen.append(tokenize_for_reward(tokenizer, row["chosen"], prompt))
        rejected.append(tokenize_for_reward(tokenizer, row["rejected"], prompt))
    keep = [i for i in range(len(chosen)) if max_length is None or max(len(chosen[i]), len(rejected[i])) <= max_length]
    if not keep:
        raise ValueError(f"Every pair is longer than max_length={max_length} tokens.")
    sequences = [chosen[i] for i in keep] + [rejected[i] for i in keep]
    means, stds = reward_model_outputs(model, sequences, padding_id(tokenizer), batch_size, progress="Scoring")
    means, stds = means.cpu(), None if stds is None else stds.cpu()
    n = len(keep)
    metrics = preference_metrics(
        means[:n],
        means[n:],
        None if stds is None else stds[:n],
        None if stds is None else stds[n:],
        robust_lambda,
        num_bins,
        temperature,
    )
    metrics["dropped_over_max_length"] = float(len(chosen) - n)
    metrics["robust_lambda"] = robust_lambda

    multi_head = is_brme and means.shape[1] > 1
    wanted = exploits if exploits is not None else (multi_head or exploits_file is not None)
    if wanted:
        if not multi_head:
            raise ValueError("Exploit detection needs a BRME with num_heads > 1 (its epistemic uncertainty).")
        split = split_prompts(dataset.select(keep))
        if split is None:
            if exploits:
                raise ValueError(
                    "Exploit detection needs prompts: a 'prompt' column, or text pairs that share a dialogue up to "
                    "their last Assistant turn."
                )
        else:
            m = n if max_exploit_answers is None else min(n, max_exploit_answers)
            prompts, answers = split[0][:m], split[1][:m]
            metrics.update(
                exploit_metrics(
                    model, tokenizer, prompts, answers, means[:m], stds[:m], batch_size, max_length, exploits_file
                )
            )
    gap = means[:n] - means[n:]
    var = torch.zeros_like(gap) if stds is None else stds[:n].pow(2) + stds[n:].pow(2)
    metrics["reliability"] = reliability_bins(pair_probability(gap, var).mean(-1), num_bins)
    if output_dir is not None:
        write_report(metrics, output_dir)
    return metrics


def write_report(metrics: dict, output_dir: str | Path) -> Path:
    """`metrics.json`, a Markdown table `metrics.md` (with a per-kind table of the exploit metrics) and the reliability
    diagram `reliability.png`."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    lines = ["| metric | value |", "| --- | ---: |"]
    lines += [
        f"| {k} | {v:.4f} |"
        for k, v in metrics.items()
        if isinstance(v, float) and not math.isnan(v) and not k.startswith("exploit_")
    ]
    kinds = [k.removeprefix("exploit_answers_") for k in metrics if k.startswith("exploit_answers_")]
    if kinds:
        lines += [
            "",
            "| exploit | answers | dropped | AUROC epistemic | AUROC reward |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        lines += [
            f"| {kind} | {metrics[f'exploit_answers_{kind}']:.0f} | {metrics[f'exploit_dropped_{kind}']:.0f} | "
            f"{metrics[f'exploit_auroc_{kind}']:.4f} | {metrics[f'exploit_reward_auroc_{kind}']:.4f} |"
            for kind in kinds
        ]
    (out / "metrics.md").write_text("\n".join(lines) + "\n")
    plot_reliability(metrics["reliability"], metrics["ece"], out / "reliability.png")
    return out
