"""
The reward over-optimisation experiment (Gao et al. 2022; Coste et al. 2023) with a BRME proxy.

1. A gold scorer (`trl_robust.gold_scorers`) stands in for humans. It labels pairs of answers that the initial policy
   samples; a fraction `label_noise` of the labels is flipped, as human labels disagree.
2. A proxy BRME learns from those few noisy pairs (`BRMERewardTrainer`).
3. Each method optimises the policy against the proxy, once per reward aggregation and seed: PPO
   (`RobustPPOTrainer`), GRPO (`RobustGRPOTrainer`), and best-of-n over a fixed pool of answers, whose KL to the
   initial policy is `log n - (n - 1) / n`. Every `eval_every` updates, gold and proxy reward of fresh answers to
   held-out prompts and the KL of the policy to the initial one are measured.
4. A hacked proxy shows as proxy reward that keeps rising while gold reward peaks and falls. The outputs:
   `curves.csv` (every measurement), `summary.csv` / `summary.md` (peak gold, final gold, drop from peak, KL at peak,
   mean and standard deviation over seeds) and `gold_vs_sqrt_kl.png`, the plot of those papers.
"""

import copy
import csv
import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from torch import nn
from tqdm.auto import tqdm
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedTokenizerBase,
    TrainerCallback,
    set_seed,
)

from . import aggregation as agg
from .aggregation import Aggregation
from .brme_reward_config import BRMERewardConfig
from .brme_reward_trainer import BRMERewardTrainer
from .data import load_hh_rlhf_harmless
from .gold_scorers import GoldScorer, load_gold_scorer
from .modeling_brme import BRMERewardModel, epistemic_uncertainty
from .monitor import HackingMonitor, nominal_minus_worst
from .overoptimization_config import OverOptimizationConfig
from .ppo_utils import position_ids_from_mask, token_logprobs
from .scoring import BRMEScorer, BRMEScores
from .script_args import resolve_model

CURVE_FIELDS = [
    "method",
    "setting",
    "seed",
    "step",
    "kl",
    "sqrt_kl",
    "gold",
    "proxy",
    "proxy_nominal",
    "proxy_worst",
    "proxy_mean",
    "proxy_std",
    "proxy_epistemic",
    "monitor_frac_out",
    "monitor_distinct_ratio",
    "monitor_first_alarm",
]
# Answers of the initial policy the HackingMonitor's reference quantiles are fitted on (RL training prompts).
MONITOR_REFERENCE_ANSWERS = 128


@dataclass
class Answers:
    """Answers sampled for some prompts: left-padded prompt ids, response ids (pad after the stop token), masks and
    the decoded response text."""

    query_ids: torch.Tensor
    query_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    texts: list[str]


# ---------------------------------------------------------------------------------------------------------------------
# Prompts, sampling, KL
# ---------------------------------------------------------------------------------------------------------------------


def load_prompts(tokenizer: PreTrainedTokenizerBase, max_prompt_length: int) -> tuple[list[str], list[str], int]:
    """Distinct prompts (last Human turn) of the shipped HH-RLHF train and test splits that fit `max_prompt_length`
    tokens, and how many were left out for length."""
    data = load_hh_rlhf_harmless(explicit_prompt=True, last_turn_only=True)
    dropped = 0
    splits = []
    for split in ("train", "test"):
        prompts = list(dict.fromkeys(data[split]["prompt"]))
        lengths = [len(ids) for ids in tokenizer(prompts)["input_ids"]]
        dropped += sum(n > max_prompt_length for n in lengths)
        splits.append([p for p, n in zip(prompts, lengths, strict=True) if n <= max_prompt_length])
    return splits[0], splits[1], dropped


@torch.no_grad()
def sample_answers(
    policy: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int,
    temperature: float,
) -> Answers:
    """One answer per prompt, sampled as the RL trainers sample (top_k=0, top_p=1, `temperature`), cut after EOS."""
    device = next(policy.parameters()).device
    tokenizer.padding_side = "left"
    encoded = tokenizer(prompts, return_tensors="pt", padding=True).to(device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = policy.generate(
        **encoded,
        do_sample=True,
        temperature=temperature,
        top_k=0,
        top_p=1.0,
        max_new_tokens=max_new_tokens,
        pad_token_id=pad,
        eos_token_id=tokenizer.eos_token_id,
    )
    responses = out[:, encoded["input_ids"].shape[1] :]
    response_mask, texts = cut_after_eos(tokenizer, responses)
    return Answers(encoded["input_ids"], encoded["attention_mask"], responses, response_mask, texts)


def cut_after_eos(tokenizer: PreTrainedTokenizerBase, responses: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
    """The mask of each generated row's tokens up to and including its first EOS (it was sampled; the rest is
    generation padding), and the text of those tokens."""
    is_eos = responses == tokenizer.eos_token_id
    after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
    response_mask = (~after_eos).long()
    texts = [
        tokenizer.decode(row[mask.bool()], skip_special_tokens=True)
        for row, mask in zip(responses, response_mask, strict=True)
    ]
    return response_mask, texts


@torch.no_grad()
def sample_pool(
    policy: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    pool_size: int,
    config: OverOptimizationConfig,
) -> list[list[str]]:
    """
    `pool_size` answers to each prompt, `[prompt][answer]`, sampled as `sample_answers` samples, the prompt's forward
    pass run once: its key/value cache is copied into every batch of `generation_batch_size` answers, and generation
    only runs the answers' tokens. From the same random state this draws the same tokens as sampling without the
    cache (tested). On a CPU, SmolLM2-135M, 16-token answers: 1.54x the answers per CPU-second at equal batches, 2.2x
    at batches of 128 (`benchmarks/bon_pool.py`, docs/benchmarks.md).
    """
    device = next(policy.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    pools = []
    progress = tqdm(total=len(prompts) * pool_size, desc="Best-of-n pool", unit="answer")
    for prompt in prompts:
        ids = tokenizer([prompt], return_tensors="pt").input_ids.to(device)
        # The cache holds all but the last prompt token: generate() runs what the cache does not hold.
        prefix = policy(input_ids=ids[:, :-1], use_cache=True).past_key_values if ids.shape[1] > 1 else None
        texts = []
        for start in range(0, pool_size, config.generation_batch_size):
            n = min(config.generation_batch_size, pool_size - start)
            cache = None
            if prefix is not None:
                cache = copy.deepcopy(prefix)
                cache.batch_repeat_interleave(n)
            out = policy.generate(
                input_ids=ids.repeat(n, 1),
                attention_mask=torch.ones(n, ids.shape[1], dtype=torch.long, device=device),
                past_key_values=cache,
                do_sample=True,
                temperature=config.temperature,
                top_k=0,
                top_p=1.0,
                max_new_tokens=config.response_length,
                pad_token_id=pad,
                eos_token_id=tokenizer.eos_token_id,
            )
            texts += cut_after_eos(tokenizer, out[:, ids.shape[1] :])[1]
            progress.update(n)
        pools.append(texts)
    progress.close()
    return pools


def sample_in_batches(
    policy: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[str], config: OverOptimizationConfig
) -> list[Answers]:
    step = config.generation_batch_size
    return [
        sample_answers(policy, tokenizer, prompts[i : i + step], config.response_length, config.temperature)
        for i in range(0, len(prompts), step)
    ]


@torch.no_grad()
def sequence_logprobs(model: nn.Module, answers: Answers, temperature: float) -> torch.Tensor:
    """Log-probability of each whole response under `model` at `temperature`, shape `[batch]`."""
    input_ids = torch.cat([answers.query_ids, answers.response_ids], 1)
    mask = torch.cat([answers.query_mask, answers.response_mask], 1)
    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    context = answers.query_ids.shape[1]
    logprobs = token_logprobs(logits[:, context - 1 : -1], answers.response_ids, temperature)
    return (logprobs * answers.response_mask).sum(-1)


def best_of_n_kl(n: int) -> float:
    """KL of best-of-n sampling to the sampling policy, log n - (n - 1) / n (Stiennon et al. 2020)."""
    return math.log(n) - (n - 1) / n


# ---------------------------------------------------------------------------------------------------------------------
# Gold labels and the proxy
# ---------------------------------------------------------------------------------------------------------------------


def label_pairs(
    prompts: list[str],
    first: list[str],
    second: list[str],
    gold_first: list[float],
    gold_second: list[float],
    label_noise: float,
    min_gold_margin: float,
    rng: np.random.Generator,
) -> tuple[list[dict], int]:
    """Preference rows (`prompt`, `chosen`, `rejected`) from two answers per prompt: gold prefers the higher score; a
    `label_noise` fraction of labels is flipped at random; ties (gold margin <= `min_gold_margin`) are left out.
    Returns the rows and the number of flipped labels."""
    rows, flipped = [], 0
    for prompt, a, b, ga, gb in zip(prompts, first, second, gold_first, gold_second, strict=True):
        if abs(ga - gb) <= min_gold_margin:
            continue
        chosen, rejected = (a, b) if ga > gb else (b, a)
        if rng.random() < label_noise:
            chosen, rejected = rejected, chosen
            flipped += 1
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows, flipped


def gold_labelled_pairs(
    policy: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    gold: GoldScorer,
    config: OverOptimizationConfig,
) -> tuple[list[dict], list[dict], dict]:
    """Training pairs (noisy labels) and evaluation pairs (clean labels) for the proxy, from two answers of the
    initial policy per prompt, drawing prompts until both sets are full or the prompts run out."""
    rng = np.random.default_rng(config.proxy_seed)
    needed = config.num_proxy_pairs + config.num_proxy_eval_pairs
    rows, sampled = [], 0
    progress = tqdm(total=needed, desc="Gold-labelled pairs", unit="pair")
    for start in range(0, len(prompts), config.generation_batch_size):
        if len(rows) >= needed:
            break
        chunk = prompts[start : start + config.generation_batch_size]
        first = sample_answers(policy, tokenizer, chunk, config.response_length, config.temperature).texts
        second = sample_answers(policy, tokenizer, chunk, config.response_length, config.temperature).texts
        sampled += len(chunk)
        # Labels stay clean here; noise goes on the training pairs only, below.
        new, _ = label_pairs(
            chunk, first, second, gold(chunk, first), gold(chunk, second), 0.0, config.min_gold_margin, rng
        )
        progress.update(min(len(new), needed - len(rows)))
        rows += new
    progress.close()
    eval_rows = rows[: config.num_proxy_eval_pairs]
    train_rows = rows[config.num_proxy_eval_pairs : needed]
    if len(train_rows) < 8:
        raise ValueError(
            f"Only {len(train_rows)} non-tied gold-labelled training pairs from {sampled} prompts: the gold scorer "
            f"gives these answers (nearly) equal scores. Use a gold scorer with more spread, a smaller "
            f"min_gold_margin ({config.min_gold_margin}), or more prompts."
        )
    flips = rng.random(len(train_rows)) < config.label_noise
    for row, flip in zip(train_rows, flips, strict=True):
        if flip:
            row["chosen"], row["rejected"] = row["rejected"], row["chosen"]
    stats = {
        "prompts_sampled": sampled,
        "train_pairs": len(train_rows),
        "eval_pairs": len(eval_rows),
        "flipped_labels": int(flips.sum()),
        "ties_left_out": sampled - len(rows),
    }
    return train_rows, eval_rows, stats


def train_proxy(train_rows: list[dict], eval_rows: list[dict], config: OverOptimizationConfig, out: Path) -> dict:
    """Train the proxy BRME on the noisy pairs and measure its agreement with gold on the clean held-out pairs."""
    backbone = resolve_model(config.proxy_backbone)
    set_seed(config.proxy_seed)  # the heads' random init
    model = BRMERewardModel.from_backbone(backbone, num_heads=config.proxy_num_heads)
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    args = BRMERewardConfig(
        output_dir=str(out / "proxy_checkpoints"),
        num_heads=config.proxy_num_heads,
        num_train_epochs=config.proxy_epochs,
        per_device_train_batch_size=config.proxy_batch_size,
        per_device_eval_batch_size=2 * config.proxy_batch_size,
        learning_rate=config.proxy_learning_rate,
        max_length=None,
        gradient_checkpointing=False,
        logging_steps=5,
        save_strategy="no",
        report_to="none",
        seed=config.proxy_seed,
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    trainer = BRMERewardTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        processing_class=tokenizer,
    )
    trainer.train()
    metrics = trainer.evaluate() if eval_rows else {}
    trainer.save_model(str(out / "proxy"))
    tokenizer.save_pretrained(str(out / "proxy"))
    shutil.rmtree(out / "proxy_checkpoints", ignore_errors=True)
    return {k.removeprefix("eval_"): v for k, v in metrics.items() if "accuracy" in k or k in ("eval_ece", "eval_loss")}


# ---------------------------------------------------------------------------------------------------------------------
# Measuring a policy
# ---------------------------------------------------------------------------------------------------------------------


@contextmanager
def seeded_sampling(seed: int) -> Iterator[None]:
    """Random draws from `seed` inside a forked random state (CPU, and the current GPU when there is one), so that
    measuring leaves the training runs' random streams as they were."""
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
        torch.manual_seed(seed)
        yield


class PolicyJudge:
    """Gold reward, proxy reward (each aggregation) and KL to the initial policy of fresh answers to fixed prompts.
    Sampling uses its own fixed seed inside `torch.random.fork_rng`, so measuring never changes a run's random
    stream, and every policy is measured on the same random draws."""

    def __init__(
        self,
        reference: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        prompts: list[str],
        gold: GoldScorer,
        proxy: BRMEScorer,
        config: OverOptimizationConfig,
    ):
        self.reference, self.tokenizer, self.prompts = reference, tokenizer, prompts
        self.gold, self.proxy, self.config = gold, proxy, config
        self.last_answers: list[dict] = []  # prompt, answer and gold score of the last measurement

    def __call__(self, policy: nn.Module, setting: str, seed: int) -> dict[str, float]:
        was_training = policy.training
        policy.eval()
        with seeded_sampling(10_000 + seed):
            batches = sample_in_batches(policy, self.tokenizer, self.prompts, self.config)
        kl = torch.cat(
            [
                sequence_logprobs(policy, a, self.config.temperature)
                - sequence_logprobs(self.reference, a, self.config.temperature)
                for a in batches
            ]
        )
        policy.train(was_training)
        texts = [text for a in batches for text in a.texts]
        gold = torch.tensor(self.gold(self.prompts, texts), dtype=torch.float)
        self.last_answers = [
            {"prompt": p, "answer": t, "gold": g} for p, t, g in zip(self.prompts, texts, gold.tolist(), strict=True)
        ]
        return {
            "kl": kl.mean().item(),
            "gold": gold.mean().item(),
            **proxy_terms(self.proxy.score(self.prompts, texts), setting),
        }


EVALUATION_NOISE_DRAWS = 5  # measurements of the initial policy behind the evaluation noise's std


class HeldOutReward(TrainerCallback):
    """
    A callback measuring the reward of fresh answers to fixed held-out prompts (prompts the policy never trains on):
    before the first update `draws` times with different sampling seeds (the evaluation noise: the same policy
    measured again), then every `every` updates and after the last with the first seed. Each measurement samples one
    answer per prompt (`sample_answers`, at the run's response length and temperature) in a forked random state
    (`seeded_sampling`), so the run's own random stream is as without it, and scores them with `scorer` (a
    `BRMEScorer`: its aggregation's rewards, averaged). `policy` returns the model to sample from (a trainer
    unwraps it only once built). Results: `start_draws`, `noise_std` (their sample std) and `curve`, (update, reward)
    pairs.
    """

    def __init__(
        self,
        policy: Callable[[], nn.Module],
        tokenizer: PreTrainedTokenizerBase,
        prompts: list[str],
        scorer: BRMEScorer,
        response_length: int,
        temperature: float,
        every: int,
        draws: int = EVALUATION_NOISE_DRAWS,
    ):
        if draws < 2:
            raise ValueError(f"HeldOutReward needs draws >= 2 to measure its noise, got {draws}.")
        self.policy, self.tokenizer, self.prompts, self.scorer = policy, tokenizer, prompts, scorer
        self.response_length, self.temperature, self.every, self.draws = response_length, temperature, every, draws
        self.start_draws: list[float] = []
        self.curve: list[tuple[int, float]] = []
        self.noise_std = math.nan

    def measure(self, seed: int) -> float:
        policy = self.policy()
        was_training = policy.training
        policy.eval()
        with seeded_sampling(20_000 + seed):
            answers = sample_answers(policy, self.tokenizer, self.prompts, self.response_length, self.temperature)
        policy.train(was_training)
        return self.scorer.score(self.prompts, answers.texts).rewards.mean().item()

    def on_train_begin(self, args, state, control, **kwargs):
        self.start_draws = [self.measure(seed) for seed in range(self.draws)]
        self.noise_std = float(np.std(self.start_draws, ddof=1))
        self.curve = [(state.global_step, self.start_draws[0])]

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self.curve.append((state.global_step, self.measure(0)))


def proxy_terms(scores, setting: str) -> dict[str, float]:
    """Mean proxy reward under `setting` and the nominal, worst and mean terms and mean std of some scored answers."""
    means, stds = scores.means, scores.stds
    return {
        "proxy": Aggregation.from_setting(setting)(means, stds).mean().item(),
        "proxy_nominal": agg.nominal(means, stds).mean().item(),
        "proxy_worst": agg.worst(means).mean().item(),
        "proxy_mean": agg.mean(means).mean().item(),
        "proxy_std": stds.mean().item(),
        "proxy_epistemic": epistemic_uncertainty(means).mean().item(),
    }


def curve_row(method: str, setting: str, seed: int, step: int, measured: dict[str, float]) -> dict:
    return {
        "method": method,
        "setting": setting,
        "seed": seed,
        "step": step,
        "sqrt_kl": math.sqrt(max(measured["kl"], 0.0)),  # a sampled KL estimate can dip below 0 near the start
        **measured,
    }


# ---------------------------------------------------------------------------------------------------------------------
# The methods
# ---------------------------------------------------------------------------------------------------------------------


def best_of_n_rows(
    gold: torch.Tensor, means: torch.Tensor, stds: torch.Tensor, settings: list[str], seeds: list[int]
) -> list[dict]:
    """
    Best-of-n on a pool of answers: for each prompt, the first n answers of a seeded random order of its pool, the one
    the proxy (under each setting) ranks highest, with its gold and proxy scores, for n = 1, 2, 4, ... up to the pool.

    Args:
        gold (`torch.Tensor` of shape `[prompts, pool]`): gold score of every pooled answer.
        means, stds (`torch.Tensor` of shape `[prompts, pool, K]`): the proxy heads' scores of every pooled answer.
    """
    num_prompts, pool, _ = means.shape
    sizes = [2**i for i in range(int(math.log2(pool)) + 1)]
    rows = []
    for seed in seeds:
        order = torch.stack(
            [
                torch.randperm(pool, generator=torch.Generator().manual_seed(seed * 100_003 + i))
                for i in range(num_prompts)
            ]
        )
        for setting in settings:
            flat = Aggregation.from_setting(setting)(means.flatten(0, 1), stds.flatten(0, 1)).view(num_prompts, pool)
            for n in sizes:
                candidates = order[:, :n]
                best = candidates.gather(1, flat.gather(1, candidates).argmax(1, keepdim=True)).squeeze(1)
                index = torch.arange(num_prompts)
                picked = BRMEScores(means[index, best], stds[index, best], flat[index, best])
                measured = {
                    "kl": best_of_n_kl(n),
                    "gold": gold[index, best].mean().item(),
                    **proxy_terms(picked, setting),
                }
                rows.append(curve_row("bon", setting, seed, n, measured))
    return rows


def monitor_reference(
    reference: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    proxy: BRMEScorer,
    config: OverOptimizationConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The proxy's epistemic uncertainty and nominal-minus-worst gap on fresh answers of the initial policy to
    `prompts`: the region the proxy knows (it learned from that policy's answers), which `HackingMonitor` fits its
    reference quantiles on. Sampled under a fixed seed in `fork_rng`, so it leaves the runs' random streams alone."""
    with seeded_sampling(config.proxy_seed + 20_000):
        texts = [text for a in sample_in_batches(reference, tokenizer, prompts, config) for text in a.texts]
    scores = proxy.score(prompts, texts)
    return epistemic_uncertainty(scores.means).cpu(), nominal_minus_worst(scores.means, scores.stds).cpu()


class _MeasureEvery(TrainerCallback):
    """Measure the policy every `every` optimiser updates and after the last one."""

    def __init__(self, measure: Callable[[int], None], every: int, total: int):
        self.measure, self.every, self.total = measure, every, total

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == self.total:
            self.measure(state.global_step)


class ReseedEachUpdate(TrainerCallback):
    """`set_seed(1000 * seed + update)` at the start of every update (`on_step_begin`: before GRPO's generation in
    `training_step`, and before RobustPPOTrainer's rollout), so that each update samples from a random state that
    depends on the run's seed and the update alone, whatever the trainer drew in between (its set-up, PPO's minibatch
    order). Two trainers that read the same prompts then sample the same answers wherever their policies agree: what
    `benchmarks/ppo_vs_grpo.py --reseed-each-update` uses to compare two loops as algorithms."""

    def __init__(self, seed: int):
        self.seed = seed

    def on_step_begin(self, args, state, control, **kwargs):
        set_seed(1000 * self.seed + state.global_step)


def rl_prompts(train_prompts: list[str], config: OverOptimizationConfig) -> list[str]:
    """The prompts of an RL run's dataset: the first `rl_steps * rl_batch_size` of `train_prompts`, cycled if fewer."""
    episodes = config.rl_steps * config.rl_batch_size
    return (train_prompts * (1 + episodes // len(train_prompts)))[:episodes]


def run_rl(
    method: str,
    setting: str,
    seed: int,
    config: OverOptimizationConfig,
    policy_path: str,
    proxy_dir: Path,
    train_prompts: list[str],
    judge: PolicyJudge,
    out: Path,
    config_overrides: dict | None = None,
    monitor_reference: tuple[torch.Tensor, torch.Tensor] | None = None,
    callbacks: list[TrainerCallback] | None = None,
) -> list[dict]:
    """One PPO or GRPO run against the proxy with `setting`'s aggregation; its measurements as curve rows.
    `config_overrides` are fields of the method's config (RobustPPOConfig / RobustGRPOConfig) that win over the
    harness's (e.g. a benchmark's PPO arm). With `monitor_reference` (epistemic, gap; see `monitor_reference()`), a
    `HackingMonitor` (`config.monitor_window` samples) watches the run, and each row records the fraction of its
    window out of the reference, its answers' distinct-bigram ratio over the first window's, and the update of its
    first alarm (NaN before it). `callbacks` are added to the trainer's (e.g. a benchmark's `ReseedEachUpdate`)."""
    from .robust_grpo_config import RobustGRPOConfig
    from .robust_grpo_trainer import RobustGRPOTrainer
    from .robust_ppo_config import GROUP_MODE, RobustPPOConfig
    from .robust_ppo_trainer import RobustPPOTrainer, load_ppo_models

    aggregation = Aggregation.from_setting(setting)
    tokenizer = AutoTokenizer.from_pretrained(policy_path)
    proxy_tokenizer = AutoTokenizer.from_pretrained(proxy_dir)
    run_dir = out / "runs" / f"{method}-{setting.replace(':', '')}-seed{seed}"
    episodes = config.rl_steps * config.rl_batch_size
    prompts = Dataset.from_dict({"prompt": rl_prompts(train_prompts, config)})
    common = dict(
        output_dir=str(run_dir),
        reward_aggregation=aggregation.name,  # every parameter explicit: the setting's, else the RL defaults
        robust_lambda=aggregation.robust_lambda,
        uwo_coef=aggregation.uwo_coef,
        kl_dro_beta=aggregation.kl_dro_beta,
        per_device_train_batch_size=config.rl_batch_size,
        temperature=config.temperature,
        learning_rate=config.rl_learning_rate,
        logging_steps=1,
        gradient_checkpointing=False,
        save_strategy="no",
        report_to="none",
        seed=seed,
        disable_tqdm=True,
    )
    set_seed(seed)
    if method == "ppo":
        # PPO as it learned this proxy in docs/benchmarks.md ("PPO against GRPO on a learned reward"): GRPO's rollouts
        # and advantages inside PPO (num_generations answers per prompt, centred and scaled by their prompt's mean and
        # std), no critic, one epoch; TRL 1.12's recipe (a critic from the policy with a random head) gained 0.11x
        # of GRPO's proxy reward there. A benchmark's overrides can bring the critic back.
        fields = dict(
            **common,
            local_rollout_forward_batch_size=config.rl_batch_size,
            total_episodes=episodes,
            num_samples_per_prompt=config.num_generations,
            **GROUP_MODE,
            num_ppo_epochs=config.num_ppo_epochs,
            response_length=config.response_length,
            stop_token="eos",
            kl_coef=config.kl_coef,
            num_sample_generations=0,
        ) | dict(config_overrides or {})
        models = load_ppo_models(policy_path, str(proxy_dir), use_critic=fields["use_critic"])
        # A value model started from the policy (the proxy reads another tokenizer) has a random head: zeroed, GAE
        # starts from the returns (docs/benchmarks.md: it learned where the random head did not), unless the
        # overrides choose.
        if fields["use_critic"] and models["reward_processing_class"] is not None:
            fields.setdefault("value_head_init", "zero")
        args = RobustPPOConfig(**fields)
        trainer = RobustPPOTrainer(args=args, train_dataset=prompts, **models)

        def policy() -> nn.Module:
            return trainer.accelerator.unwrap_model(trainer.model).policy

    else:
        fields = dict(
            **common,
            num_generations=config.num_generations,
            max_completion_length=config.response_length,
            max_steps=config.rl_steps,
            beta=config.kl_coef,
            top_k=0,
            top_p=1.0,
        ) | dict(config_overrides or {})
        args = RobustGRPOConfig(**fields)
        trainer = RobustGRPOTrainer(
            model=policy_path,
            reward_funcs=BRMERewardModel.from_pretrained(proxy_dir),
            args=args,
            train_dataset=prompts,
            processing_class=tokenizer,
            reward_processing_classes=proxy_tokenizer,
        )

        def policy() -> nn.Module:
            return trainer.accelerator.unwrap_model(trainer.model)

    rows = []
    monitor = None
    if monitor_reference is not None:
        monitor = HackingMonitor(*monitor_reference, window=config.monitor_window)
        trainer.add_callback(monitor)
    for callback in callbacks or []:
        trainer.add_callback(callback)

    def monitor_state() -> dict[str, float]:
        if monitor is None:
            return {}
        reference = monitor.distinct_reference
        return {
            "monitor_frac_out": monitor.window_fraction("epistemic"),
            "monitor_distinct_ratio": math.nan if reference is None else monitor.distinct_window_mean() / reference,
            "monitor_first_alarm": math.nan if monitor.first_alarm_step is None else float(monitor.first_alarm_step),
        }

    samples = out / "samples" / f"{run_dir.name}.jsonl"
    samples.parent.mkdir(parents=True, exist_ok=True)
    samples.unlink(missing_ok=True)

    def measure(step: int) -> None:
        rows.append(curve_row(method, setting, seed, step, judge(policy(), setting, seed) | monitor_state()))
        with samples.open("a") as f:  # what the policy says, next to what gold and the proxy made of it
            f.writelines(json.dumps({"step": step, **answer}) + "\n" for answer in judge.last_answers)

    measure(0)
    trainer.add_callback(_MeasureEvery(measure, config.eval_every, config.rl_steps))
    trainer.train()
    # The trainer's own per-update logs (reward terms, KL, `monitor/*`): what the curves sample every `eval_every`.
    logs = out / "logs" / f"{run_dir.name}.jsonl"
    logs.parent.mkdir(parents=True, exist_ok=True)
    logs.write_text("".join(json.dumps(entry) + "\n" for entry in trainer.state.log_history))
    shutil.rmtree(run_dir, ignore_errors=True)  # the curves are the result; checkpoints of every run would be GBs
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# Summary and plots
# ---------------------------------------------------------------------------------------------------------------------


def summarize(rows: list[dict]) -> list[dict]:
    """Per method and setting, over seeds (mean and std): peak gold, final gold, drop from peak, KL at peak, final KL
    and final proxy reward. For best-of-n, "final" is the largest n."""
    groups: dict[tuple[str, str], dict[int, list[dict]]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["setting"]), {}).setdefault(row["seed"], []).append(row)
    summary = []
    for (method, setting), by_seed in groups.items():
        per_seed = []
        for curve in by_seed.values():
            curve = sorted(curve, key=lambda r: r["step"])
            peak = max(curve, key=lambda r: r["gold"])
            final = curve[-1]
            per_seed.append(
                {
                    "peak_gold": peak["gold"],
                    "final_gold": final["gold"],
                    "drop_from_peak": peak["gold"] - final["gold"],
                    "kl_at_peak": peak["kl"],
                    "final_kl": final["kl"],
                    "final_proxy": final["proxy"],
                }
            )
        entry = {"method": method, "setting": setting, "seeds": len(per_seed)}
        for key in per_seed[0]:
            values = np.array([s[key] for s in per_seed], dtype=float)
            entry[key] = float(values.mean())
            entry[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        summary.append(entry)
    return summary


def per_run(rows: list[dict]) -> list[dict]:
    """One row per RL run (method, setting, seed): its gold peak and the update it came at, final gold, drop from the
    peak (absolute, and as a fraction of the peak's size), KL at the peak, and the update of the `HackingMonitor`'s
    first alarm (NaN if none) and whether it came no later than the peak (None without a monitor or an alarm)."""
    runs: dict[tuple, list[dict]] = {}
    for row in rows:
        if row["method"] != "bon":
            runs.setdefault((row["method"], row["setting"], row["seed"]), []).append(row)
    table = []
    for (method, setting, seed), curve in runs.items():
        curve = sorted(curve, key=lambda r: r["step"])
        peak, final = max(curve, key=lambda r: r["gold"]), curve[-1]
        alarm = final.get("monitor_first_alarm", math.nan)
        alarm = math.nan if alarm in ("", None) else float(alarm)
        table.append(
            {
                "method": method,
                "setting": setting,
                "seed": seed,
                "start_gold": curve[0]["gold"],
                "peak_gold": peak["gold"],
                "peak_step": peak["step"],
                "final_gold": final["gold"],
                "drop_from_peak": peak["gold"] - final["gold"],
                "drop_fraction": (peak["gold"] - final["gold"]) / max(abs(peak["gold"]), 1e-12),
                "kl_at_peak": peak["kl"],
                "final_kl": final["kl"],
                "proxy_at_peak": peak["proxy"],
                "final_proxy": final["proxy"],
                "first_alarm": alarm,
                "alarm_by_peak": None if math.isnan(alarm) else alarm <= peak["step"],
            }
        )
    return table


def evaluation_noise(
    judge: "PolicyJudge", policy: nn.Module, setting: str, draws: int = EVALUATION_NOISE_DRAWS
) -> dict[str, float]:
    """The standard deviation of gold and of proxy over `draws` measurements of one policy with different sampling
    seeds (judge seeds 100, 101, ..., apart from the runs' 0, 1, ...): how far a point of a curve moves by chance."""
    measured = [judge(policy, setting, 100 + i) for i in range(draws)]
    return {key: float(np.std([m[key] for m in measured], ddof=1)) for key in ("gold", "proxy")}


def describe_runs(table: list[dict], gold_noise: float) -> list[str]:
    """
    One sentence per RL run of `per_run`'s table: where its gold peaked and ended, whether the drop is beyond the
    evaluation noise (more than 3 x `gold_noise`, the std of one policy's gold measured several times), whether the
    proxy it optimised rose meanwhile (gold down, proxy up: reward hacking), and the monitor's first alarm.
    """
    sentences = []
    for r in table:
        text = (
            f"{r['method'].upper()} {r['setting']} (seed {r['seed']}): gold went from {r['start_gold']:.3f} to a peak "
            f"of {r['peak_gold']:.3f} at update {r['peak_step']:.0f} and ended at {r['final_gold']:.3f}"
        )
        if r["drop_from_peak"] > 3 * gold_noise:
            text += (
                f", {100 * r['drop_fraction']:.0f}% below its peak (beyond the evaluation noise, std {gold_noise:.3f})"
            )
            if r["final_proxy"] > r["proxy_at_peak"]:
                text += (
                    f", while the proxy it optimised rose from {r['proxy_at_peak']:.3f} to {r['final_proxy']:.3f}: "
                    "reward hacking"
                )
        else:
            text += f", no drop beyond the evaluation noise (std {gold_noise:.3f})"
        if math.isnan(r["first_alarm"]):
            text += "; the monitor did not alarm."
        else:
            alarm, peak = r["first_alarm"], r["peak_step"]
            when = "before" if alarm < peak else "at" if alarm == peak else "after"
            text += f"; the monitor first alarmed at update {r['first_alarm']:.0f}, {when} the gold peak."
        sentences.append(text)
    return sentences


def per_run_markdown(table: list[dict]) -> str:
    lines = [
        "| method | setting | seed | gold start | peak gold (update) | final gold | drop from peak | KL at peak "
        "| final proxy | first alarm |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in table:
        alarm = "-" if math.isnan(r["first_alarm"]) else f"{r['first_alarm']:.0f}"
        lines.append(
            f"| {r['method']} | {r['setting']} | {r['seed']} | {r['start_gold']:.3f} | {r['peak_gold']:.3f} "
            f"({r['peak_step']}) | {r['final_gold']:.3f} | {r['drop_from_peak']:.3f} ({100 * r['drop_fraction']:.0f}%) "
            f"| {r['kl_at_peak']:.2f} | {r['final_proxy']:.3f} | {alarm} |"
        )
    return "\n".join(lines) + "\n"


def summary_markdown(summary: list[dict]) -> str:
    keys = ["peak_gold", "final_gold", "drop_from_peak", "kl_at_peak", "final_kl", "final_proxy"]
    lines = [
        "| method | setting | seeds | " + " | ".join(keys) + " |",
        "|---|---|---:|" + "---:|" * len(keys),
    ]
    for e in summary:
        cells = [f"{e[k]:.3f} ± {e[k + '_std']:.3f}" for k in keys]
        lines.append(f"| {e['method']} | {e['setting']} | {e['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(rows: list[dict], path: Path, title: str) -> Path:
    """Gold (top) and proxy (bottom) reward against sqrt(KL), one column per method, one line per setting (means over
    seeds at each step)."""
    from .plotting import plt, save_figure  # matplotlib only when a plot is made

    methods = list(dict.fromkeys(r["method"] for r in rows))
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    colours = plt.get_cmap("tab10")
    fig, axes = plt.subplots(2, len(methods), figsize=(5 * len(methods), 7.5), squeeze=False)
    for column, method in enumerate(methods):
        for index, setting in enumerate(settings):
            steps: dict[int, list[dict]] = {}
            for r in rows:
                if r["method"] == method and r["setting"] == setting:
                    steps.setdefault(r["step"], []).append(r)
            if not steps:
                continue
            points = sorted(steps.items())
            x = [np.mean([r["sqrt_kl"] for r in group]) for _, group in points]
            for row, key in enumerate(("gold", "proxy")):
                y = [np.mean([r[key] for r in group]) for _, group in points]
                style = "-" if setting.startswith("robust") else "--"
                axes[row][column].plot(x, y, style, marker="o", markersize=3, color=colours(index % 10), label=setting)
        for row, key in enumerate(("gold reward", "proxy reward (optimised)")):
            ax = axes[row][column]
            ax.set_title(f"{method.upper()}: {key}")
            ax.set_xlabel("sqrt(KL to the initial policy)")
            ax.grid(alpha=0.3)
        axes[0][column].legend(fontsize=7)
    return save_figure(fig, path, title)


def write_csv(rows: list[dict], path: Path, fields: list[str]) -> None:
    tmp = path.with_suffix(path.suffix + ".partial")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)  # a reader never sees half a file


def plot_runs(table_rows: list[dict], rows: list[dict], path: Path, title: str) -> Path:
    """Gold reward against the update, one panel per RL method, one line per (setting, seed), each run's first
    `HackingMonitor` alarm as a dotted vertical line in its colour: does the warning come before gold turns down?"""
    from .plotting import plt, save_figure  # matplotlib only when a plot is made

    methods = list(dict.fromkeys(r["method"] for r in table_rows))
    settings = list(dict.fromkeys(r["setting"] for r in table_rows))
    colours = plt.get_cmap("tab10")
    seeds = sorted({r["seed"] for r in table_rows})
    fig, axes = plt.subplots(1, len(methods), figsize=(max(7.5, 5.5 * len(methods)), 4.5), squeeze=False)
    for ax, method in zip(axes[0], methods, strict=True):
        for run in (r for r in table_rows if r["method"] == method):
            colour = colours(settings.index(run["setting"]) % 10)  # a colour per setting, a line style per seed
            style = ("-", "--", "-.", ":")[seeds.index(run["seed"]) % 4]
            curve = sorted(
                (r for r in rows if (r["method"], r["setting"], r["seed"]) == (method, run["setting"], run["seed"])),
                key=lambda r: r["step"],
            )
            label = f"{run['setting']} (seed {run['seed']})"
            steps, gold = [r["step"] for r in curve], [r["gold"] for r in curve]
            ax.plot(steps, gold, style, marker="o", ms=3, color=colour, label=label)
            if not math.isnan(run["first_alarm"]):
                ax.axvline(run["first_alarm"], color=colour, linestyle=style, alpha=0.5, lw=3)
        ax.set_title(f"{method.upper()}: gold reward (vertical line: the monitor's first alarm)", fontsize=10)
        ax.set_xlabel("update")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save_figure(fig, path, title)


def write_report(
    rows: list[dict], out: Path, title: str, gold_noise: float | None = None
) -> tuple[list[dict], str, Path]:
    """`curves.csv`, `summary.csv`, `summary.md` and `gold_vs_sqrt_kl.png` of some curve rows, in `out`; with RL runs
    among them also `runs.csv`, `runs.md` (one row per run: peak, drop, first alarm; with `gold_noise`, the evaluation
    noise's std, a sentence per run from `describe_runs`) and `gold_by_update.png`."""
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "curves.csv", CURVE_FIELDS)
    summary = summarize(rows)
    write_csv(summary, out / "summary.csv", list(summary[0]))
    table = summary_markdown(summary)
    (out / "summary.md").write_text(table)
    runs = per_run(rows)
    if runs:
        write_csv(runs, out / "runs.csv", list(runs[0]))
        runs_md = per_run_markdown(runs)
        if gold_noise is not None:
            runs_md += "\n" + "".join(f"- {sentence}\n" for sentence in describe_runs(runs, gold_noise))
        table += "\nPer run:\n\n" + runs_md
        (out / "runs.md").write_text(runs_md)
        plot_runs(runs, rows, out / "gold_by_update.png", title)
    return summary, table, plot_curves(rows, out / "gold_vs_sqrt_kl.png", title)


def read_curves(*paths: str | Path) -> list[dict]:
    """Curve rows from one or more `curves.csv` files (to report several sweeps together with `write_report`)."""
    rows = []
    for path in paths:
        with Path(path).open(newline="") as f:
            for row in csv.DictReader(f):
                # a field some rows lack (best-of-n has no monitor) is written empty: read it as NaN
                rows.append(
                    {k: v if k in ("method", "setting") else float(v) if v != "" else math.nan for k, v in row.items()}
                )
                rows[-1]["seed"], rows[-1]["step"] = int(rows[-1]["seed"]), int(rows[-1]["step"])
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# The experiment
# ---------------------------------------------------------------------------------------------------------------------


def run_overoptimization(config: OverOptimizationConfig, gold: str | GoldScorer | None = None) -> dict:
    """
    Run the whole experiment (see the module docstring) and write its outputs to `config.output_dir`. `gold` overrides
    `config.gold` with a scorer object. Returns the summary rows and the paths written.
    """
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gold_scorer = load_gold_scorer(gold if gold is not None else config.gold)
    policy_path = resolve_model(config.policy_model)
    tokenizer = AutoTokenizer.from_pretrained(policy_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    train_prompts, eval_prompts, dropped = load_prompts(tokenizer, config.max_prompt_length)
    eval_prompts = eval_prompts[: config.num_eval_prompts]
    print(
        f"[trl-robust] {len(train_prompts)} train and {len(eval_prompts)} evaluation prompts "
        f"({dropped} longer than {config.max_prompt_length} tokens left out)"
    )
    reference = AutoModelForCausalLM.from_pretrained(policy_path).to(device).eval()

    timings = {}
    started = time.perf_counter()
    if config.proxy_model is None:
        print("[trl-robust] 1/3 gold-labelled pairs and the proxy BRME")
        set_seed(config.proxy_seed)
        train_rows, eval_rows, pair_stats = gold_labelled_pairs(
            reference, tokenizer, train_prompts, gold_scorer, config
        )
        proxy_metrics = train_proxy(train_rows, eval_rows, config, out)
        proxy_dir = out / "proxy"
    else:
        proxy_dir = Path(config.proxy_model)
        earlier = proxy_dir.parent / "run_info.json"  # what the run that trained it measured, when it is there
        earlier = json.loads(earlier.read_text()) if earlier.is_file() else {}
        pair_stats, proxy_metrics = earlier.get("pairs", {}), earlier.get("proxy_gold_agreement", {})
        print(f"[trl-robust] 1/3 reusing the proxy BRME {proxy_dir}")
    timings["proxy_s"] = time.perf_counter() - started
    proxy = BRMEScorer(
        BRMERewardModel.from_pretrained(proxy_dir).to(device),
        AutoTokenizer.from_pretrained(proxy_dir),
        batch_size=config.generation_batch_size,
    )
    print(f"[trl-robust] proxy: {pair_stats}; agreement with gold on clean held-out pairs: {proxy_metrics}")

    judge = PolicyJudge(reference, tokenizer, eval_prompts, gold_scorer, proxy, config)
    gold_name = gold if isinstance(gold, str) else config.gold if gold is None else getattr(gold, "__name__", "custom")
    title = (
        f"Over-optimisation: gold = {gold_name}, "
        f"proxy = {Path(config.proxy_backbone).name} BRME, policy = {Path(config.policy_model).name}"
    )
    rows: list[dict] = []
    curves = out / "curves.csv"
    if "bon" in config.methods:
        print(f"[trl-robust] 2/3 best-of-n: a pool of {config.bon_pool_size} answers per evaluation prompt")
        set_seed(config.proxy_seed)
        pools = sample_pool(reference, tokenizer, eval_prompts, config.bon_pool_size, config)  # generate once...
        gold_pool = torch.tensor([gold_scorer([p] * len(t), t) for p, t in zip(eval_prompts, pools, strict=True)])
        scored = [proxy.score([p] * len(t), t) for p, t in zip(eval_prompts, pools, strict=True)]  # ...score many
        means = torch.stack([s.means for s in scored]).cpu()
        stds = torch.stack([s.stds for s in scored]).cpu()
        rows += best_of_n_rows(gold_pool, means, stds, config.settings, config.seeds)
        write_report(rows, out, title)
        timings["best_of_n_s"] = time.perf_counter() - started - timings["proxy_s"]

    runs = [(m, s, seed) for m in config.methods if m != "bon" for s in config.settings for seed in config.seeds]
    reference_scores, noise = None, {}
    if runs:
        print(f"[trl-robust] 3/3 {len(runs)} RL runs of {config.rl_steps} updates")
        noise = evaluation_noise(judge, reference, config.settings[0])
        print(
            f"[trl-robust] evaluation noise (the initial policy measured {EVALUATION_NOISE_DRAWS} times): "
            f"std gold {noise['gold']:.3f}, proxy {noise['proxy']:.3f}"
        )
        if config.monitor_window:
            reference_scores = monitor_reference(
                reference, tokenizer, train_prompts[:MONITOR_REFERENCE_ANSWERS], proxy, config
            )
    for method, setting, seed in tqdm(runs, desc="RL runs", unit="run"):
        run_started = time.perf_counter()
        rows += run_rl(
            method, setting, seed, config, policy_path, proxy_dir, train_prompts, judge, out,
            monitor_reference=reference_scores,
        )  # fmt: skip
        timings[f"{method}-{setting}-seed{seed}_s"] = time.perf_counter() - run_started
        write_report(rows, out, title, noise.get("gold"))  # a stopped sweep keeps it

    summary, table, plot = write_report(rows, out, title, noise.get("gold"))
    info = {
        "config": asdict(config),
        "pairs": pair_stats,
        "proxy_gold_agreement": proxy_metrics,
        "evaluation_noise": noise,
        "dropped_prompts": dropped,
        "timings": timings,
        "device": str(device),
    }
    (out / "run_info.json").write_text(json.dumps(info, indent=2, default=str))
    print("\n" + table)
    print(f"Curves: {curves}\nSummary: {out / 'summary.md'}\nPlot: {plot}")
    if runs:
        print(f"Gold by update, with the monitor's alarms: {out / 'gold_by_update.png'}")
    return {"summary": summary, "curves": str(curves), "plot": str(plot), **info}
