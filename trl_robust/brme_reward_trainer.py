"""BRMERewardTrainer: TRL's RewardTrainer for a Bayesian Reward Model Ensemble."""

import hashlib
import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.utils import is_peft_model
from datasets import Dataset, IterableDataset
from transformers import AutoConfig, set_seed
from trl import RewardTrainer
from trl.trainer.utils import global_then_local_main_first

from .brme_reward_config import BRMERewardConfig
from .checkpointing import AtomicCheckpointMixin
from .configuration_brme import MEMBER_FIELDS, BRMEConfig
from .metrics import PROBIT_SCALE, expected_calibration_error, fit_temperature, pair_probability
from .model_card import RobustModelCardMixin
from .modeling_brme import BRMERewardModel
from .scoring import reward_model_outputs
from .tokenization import padding_id, tokenize_for_reward
from .validation import check_row, validate_preference_rows


def brme_pair_losses(
    means_c: torch.Tensor,
    stds_c: torch.Tensor,
    means_r: torch.Tensor,
    stds_r: torch.Tensor,
    loss_type: str = "gaussian_bt",
    margin: torch.Tensor | None = None,
    num_samples: int = 8,
) -> torch.Tensor:
    """
    Negative log-likelihood of "chosen beats rejected" for every pair and head, shape `[B, K]`.

    - `gaussian_bt`: -log E[sigmoid(z)], z ~ N(mu_c - mu_r, s_c^2 + s_r^2), probit form; plain BT as s -> 0.
    - `reparam`: mean over samples of -log sigmoid((mu_c + s_c e_1) - (mu_r + s_r e_2)), e ~ N(0, 1).
    - `bt`: -log sigmoid(mu_c - mu_r); the stds receive no gradient.
    A margin (TRL's `margin` column) is subtracted from the difference, as in TRL.
    """
    diff = means_c - means_r
    if margin is not None:
        diff = diff - margin.to(diff.dtype).unsqueeze(-1)
    if loss_type == "bt":
        return F.softplus(-diff)
    if loss_type == "gaussian_bt":
        var = stds_c.pow(2) + stds_r.pow(2)
        return F.softplus(-diff / torch.sqrt(1.0 + PROBIT_SCALE * var))
    if loss_type == "reparam":
        eps = torch.randn((num_samples, 2, *diff.shape), device=diff.device, dtype=diff.dtype)
        z = diff + stds_c * eps[:, 0] - stds_r * eps[:, 1]
        return F.softplus(-z).mean(dim=0)
    raise ValueError(f"Unknown BRME loss {loss_type!r}; expected 'gaussian_bt', 'reparam' or 'bt'.")


def pair_digest(chosen_ids, rejected_ids) -> int:
    """A 64-bit key of one pair's real tokens (int64 arrays or lists), the same in every epoch, on every process and
    after a resume: it seeds the pair's bootstrap weights and indexes its frozen Bradley-Terry target."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(np.asarray(chosen_ids, dtype=np.int64).tobytes())
    digest.update(b"|")
    digest.update(np.asarray(rejected_ids, dtype=np.int64).tobytes())
    return int.from_bytes(digest.digest(), "little")


def batch_pair_digests(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[int]:
    """[`pair_digest`] of each pair of a collated batch: the B chosen rows, then the B rejected rows, as TRL's
    preference collator builds them."""
    batch = input_ids.shape[0] // 2
    ids = input_ids.detach().cpu().numpy()
    mask = attention_mask.detach().cpu().numpy().astype(bool)
    return [pair_digest(ids[i][mask[i]], ids[batch + i][mask[batch + i]]) for i in range(batch)]


def bootstrap_weights(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, num_heads: int, seed: int, kind: str
) -> torch.Tensor:
    """
    Per-pair, per-head loss weights `[B, K]` drawn from the pair's own tokens and the seed, so a pair gets the same
    weights in every epoch, on every process and after a resume. `input_ids` holds the B chosen rows, then the B
    rejected rows, as TRL's preference collator builds them.
    """
    batch = input_ids.shape[0] // 2
    if kind == "none":
        return torch.ones(batch, num_heads, device=input_ids.device)
    weights = np.empty((batch, num_heads), dtype=np.float32)
    for i, key in enumerate(batch_pair_digests(input_ids, attention_mask)):
        rng = np.random.default_rng([key, seed])
        weights[i] = rng.exponential(1.0, num_heads) if kind == "bayesian" else rng.poisson(1.0, num_heads)
    return torch.from_numpy(weights).to(input_ids.device)


def gaussian_regression_losses(
    means_c: torch.Tensor, stds_c: torch.Tensor, means_r: torch.Tensor, stds_r: torch.Tensor, target_c: torch.Tensor
) -> torch.Tensor:
    """
    Stage 2 of the paper's recipe, per pair and head `[B, K]`: the squared error of a reparameterised sample
    r = mu + eps * sigma against the Bradley-Terry target, `t` for the chosen side and `-t` for the rejected side
    (`target_c`: `[B]`). Taken in expectation over eps, in closed form:
    E[(mu + eps sigma - t)^2] = (mu - t)^2 + sigma^2, the same expected loss and gradient as sampling, without its
    noise (so sigma is pushed to its floor: this recipe gives the stds no other signal).
    """
    t = target_c.to(means_c.dtype).unsqueeze(-1)
    return (means_c - t).pow(2) + stds_c.pow(2) + (means_r + t).pow(2) + stds_r.pow(2)


class BRMERewardTrainer(AtomicCheckpointMixin, RobustModelCardMixin, RewardTrainer):
    """
    TRL's [`~trl.RewardTrainer`] for a [`BRMERewardModel`]: the same constructor, data formats and options, training K
    Gaussian heads on one backbone with a per-head loss (`args.brme_loss`) and per-head bootstrap weights.

    `model` may be a string naming a plain checkpoint (a new BRME is built on it with `args.num_heads` heads), a string
    naming a BRME checkpoint (loaded), a `BRMERewardModel`, or a `PeftModel` around one; `peft_config` works as in TRL.

    Example:

    ```python
    from trl_robust import BRMERewardConfig, BRMERewardTrainer, load_hh_rlhf_harmless

    data = load_hh_rlhf_harmless()
    trainer = BRMERewardTrainer(
        model="HuggingFaceTB/SmolLM2-135M-Instruct",
        args=BRMERewardConfig(output_dir="brme", num_heads=5),
        train_dataset=data["train"],
        eval_dataset=data["test"],
    )
    trainer.train()
    ```
    """

    _tag_names = ["trl", "reward-trainer", "trl-robust", "brme"]
    _name = "BRME Reward"

    def __init__(self, model, args: BRMERewardConfig | None = None, *pos_args, peft_config=None, **kwargs):
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path or "model"
            args = BRMERewardConfig(f"{str(name).rstrip('/').split('/')[-1]}-BRME")
        elif not isinstance(args, BRMERewardConfig):
            raise TypeError(
                f"BRMERewardTrainer needs a BRMERewardConfig, got {type(args).__name__}; build one with the same "
                "fields: BRMERewardConfig(**your_config.to_dict()) keeps every RewardConfig setting."
            )
        if isinstance(model, str):
            set_seed(args.seed)  # the new heads' random init is part of the run: same seed, same heads
            model = self._build_model(model, args)
        else:
            inner = model.get_base_model() if is_peft_model(model) else model
            if not isinstance(inner, BRMERewardModel):
                raise TypeError(
                    f"BRMERewardTrainer trains a BRMERewardModel, got {type(inner).__name__}. Pass a checkpoint path "
                    "or name (a BRME is built on it), or BRMERewardModel.from_backbone(path, num_heads=...)."
                )
        if (
            peft_config is not None
            and (model.get_base_model() if is_peft_model(model) else model).config.head_type == "lora"
        ):
            # The members' adapters are applied by hooks bound to their modules; PEFT would freeze them, or train a
            # copy of them (modules_to_save) that the hooks never call, and its adapter file would not hold them.
            raise ValueError(
                "BRMERewardTrainer: a BRME with head_type='lora' already trains per-member low-rank adapters; train "
                "it without peft_config, or use head_type='linear' or 'mlp' with PEFT."
            )
        if peft_config is not None and getattr(peft_config, "target_modules", "unset") is None:
            peft_config.target_modules = self._default_lora_targets(model)
        super().__init__(model, args, *pos_args, peft_config=peft_config, **kwargs)
        self._brme = self.accelerator.unwrap_model(self.model)
        if is_peft_model(self._brme):
            self._brme = self._brme.get_base_model()
        self._calibration = {"train": [], "eval": []}
        self._bt_targets: dict[int, float] | None = None  # pair digest -> frozen BT P(chosen > rejected)
        if args.brme_loss == "bt_then_gaussian" and not isinstance(self.train_dataset, Dataset):
            raise ValueError(
                "BRMERewardConfig.brme_loss='bt_then_gaussian' needs a map-style train dataset (a datasets.Dataset): "
                "at the phase switch every training pair is scored once by the Bradley-Terry model."
            )

    @staticmethod
    def _build_model(name_or_path: str, args: BRMERewardConfig) -> BRMERewardModel:
        """A string loads a BRME checkpoint as it is, or builds a new BRME on any other checkpoint."""
        init_kwargs = dict(args.model_init_kwargs or {})
        init_kwargs.setdefault("trust_remote_code", args.trust_remote_code)
        dtype = init_kwargs.get("dtype", "float32")
        if isinstance(dtype, str) and dtype != "auto":
            init_kwargs["dtype"] = getattr(torch, dtype)
        if args.distributed_state.distributed_type in ("MULTI_GPU", "DEEPSPEED"):
            init_kwargs["device_map"] = None
        # TRL would warn that these kwargs are ignored for an instance; they were used here.
        args.model_init_kwargs = None
        config = AutoConfig.from_pretrained(
            name_or_path, trust_remote_code=init_kwargs["trust_remote_code"], revision=init_kwargs.get("revision")
        )
        if isinstance(config, BRMEConfig):
            return BRMERewardModel.from_pretrained(name_or_path, **init_kwargs)
        # A new BRME: the config's model settings (num_heads, robust_lambda, ..., the member settings)
        settings = {name: getattr(args, name) for name in ("num_heads", "robust_lambda", "std_floor", "init_std")}
        settings.update({name: getattr(args, name) for name in MEMBER_FIELDS})
        return BRMERewardModel.from_backbone(name_or_path, **settings, **init_kwargs)

    @staticmethod
    def _default_lora_targets(model) -> list[str] | str:
        """PEFT does not know the `brme` model type; use the defaults of the backbone architecture."""
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

        backbone_type = model.config.text_config.model_type
        targets = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(backbone_type)
        if targets is None:
            raise ValueError(
                f"PEFT has no default LoRA target modules for backbone type {backbone_type!r}; set "
                "`target_modules` in your LoraConfig."
            )
        return list(targets)

    def _prepare_dataset(self, dataset: Dataset | IterableDataset, processing_class, args, dataset_name: str):
        # Own tokenisation (not TRL's) so that scoring later uses exactly the same text, and encoders without an
        # EOS token work.
        columns = dataset.column_names or list(next(iter(dataset)).keys())
        if "chosen_input_ids" in columns and "chosen_ids" not in columns:
            dataset = dataset.rename_columns({"chosen_input_ids": "chosen_ids", "rejected_input_ids": "rejected_ids"})
            columns = dataset.column_names
        is_tokenized = "chosen_ids" in columns and "rejected_ids" in columns
        if not is_tokenized and not {"chosen", "rejected"} <= set(columns):
            raise ValueError(
                f"The {dataset_name} dataset needs 'chosen' and 'rejected' columns (optionally 'prompt'), or "
                f"tokenized 'chosen_ids' and 'rejected_ids'; it has {sorted(columns)}."
            )
        map_kwargs = {}
        if isinstance(dataset, Dataset):
            map_kwargs = {"num_proc": args.dataset_num_proc, "desc": f"Tokenizing {dataset_name} dataset"}

        lazy = not isinstance(dataset, Dataset)  # an IterableDataset is checked row by row as it is tokenized
        if not is_tokenized and not lazy:
            validate_preference_rows(dataset, dataset_name)  # one cheap pass, before any tokenisation
        text_columns = [c for c in ("prompt", "chosen", "rejected") if c in columns]

        def tokenize(example, index):
            if lazy:
                check_row(example, text_columns, dataset_name, index)
            common = dict(
                prompt=example.get("prompt"),
                tools=example.get("tools"),
                chat_template_kwargs=example.get("chat_template_kwargs"),
            )
            return {
                "chosen_ids": tokenize_for_reward(processing_class, example["chosen"], **common),
                "rejected_ids": tokenize_for_reward(processing_class, example["rejected"], **common),
            }

        with global_then_local_main_first():
            if not is_tokenized:
                dataset = dataset.map(tokenize, with_indices=True, **map_kwargs)
            if args.max_length is not None:
                before = len(dataset) if isinstance(dataset, Dataset) else None
                if isinstance(dataset, Dataset):
                    map_kwargs["desc"] = f"Filtering {dataset_name} >{args.max_length} tokens"
                dataset = dataset.filter(
                    lambda ex: len(ex["chosen_ids"]) <= args.max_length and len(ex["rejected_ids"]) <= args.max_length,
                    **map_kwargs,
                )
                if before is not None and len(dataset) < before:
                    warnings.warn(
                        f"Dropped {before - len(dataset)} of {before} pairs of the {dataset_name} dataset longer than "
                        f"max_length={args.max_length} tokens; raise max_length to keep them.",
                        stacklevel=2,
                    )
                    if len(dataset) == 0:
                        raise ValueError(
                            f"Every pair of the {dataset_name} dataset is longer than max_length={args.max_length}."
                        )
        return dataset

    def train(self, *args, **kwargs):
        """TRL's `train()`, then (with `args.calibrate` and an eval split) [`calibrate`] on the eval split."""
        output = super().train(*args, **kwargs)
        if self.args.calibrate and self.eval_dataset is not None:
            self.calibrate()
        return output

    def _pair_ids(self, dataset) -> tuple[list[list[int]], list[list[int]]]:
        """The tokenised chosen and rejected sides of a prepared dataset (or a dict of them)."""
        datasets = list(dataset.values()) if isinstance(dataset, dict) else [dataset]
        chosen, rejected = [], []
        for part in datasets:
            if isinstance(part, Dataset):  # whole columns: one Arrow read instead of a Python loop over rows
                chosen += part["chosen_ids"]
                rejected += part["rejected_ids"]
            else:
                for row in part:
                    chosen.append(list(row["chosen_ids"]))
                    rejected.append(list(row["rejected_ids"]))
        return chosen, rejected

    @torch.no_grad()
    def _score_pairs(self, model, chosen: list[list[int]], rejected: list[list[int]]):
        """Means and stds `[N, K]` of both sides, scored in eval mode (dropout off) through the package's one
        pad-and-score path; every process scores all pairs, so each gets the same result."""
        was_training = model.training
        model.eval()
        try:
            means, stds = reward_model_outputs(
                model,
                chosen + rejected,
                padding_id(self.processing_class),
                self.args.per_device_eval_batch_size,
                use_cache=False,
            )
        finally:
            model.train(was_training)
        n = len(chosen)
        return means[:n].float().cpu(), means[n:].float().cpu(), stds[:n].float().cpu(), stds[n:].float().cpu()

    def calibrate(self, dataset=None) -> float:
        """
        Fit the temperature T of the ensemble's pair probability
        `P(chosen > rejected) = (1/K) sum_k sigmoid(gap_k / (T * sqrt(1 + pi/8 * var_k)))` (`metrics.pair_probability`:
        the logit of mean_k E[sigmoid(z_k)], z_k ~ N(gap_k, var_k), divided by T; gap_k = mu_k(chosen) -
        mu_k(rejected), var_k = sigma_k(chosen)^2 + sigma_k(rejected)^2)
        by minimising its NLL on `dataset` (default: the eval split; any preference dataset the trainer accepts, which
        is tokenised and length-filtered as the eval split was), store it in
        `model.config.calibration_temperature` and log `eval_calibration_ece` (T = 1), `eval_calibrated_ece` and
        `calibration_temperature`. Returns T.
        """
        if dataset is None:
            dataset = self.eval_dataset
        elif "chosen_ids" not in (dataset.column_names or []):
            dataset = self._prepare_dataset(dataset, self.processing_class, self.args, "calibration")
        chosen, rejected = self._pair_ids(dataset)
        if not chosen:
            raise ValueError("BRMERewardTrainer.calibrate needs at least one pair in the eval split.")
        means_c, means_r, stds_c, stds_r = self._score_pairs(self.model, chosen, rejected)
        gap, var = means_c - means_r, stds_c.pow(2) + stds_r.pow(2)
        temperature = fit_temperature(gap, var)
        self._brme.config.calibration_temperature = temperature
        bins = self.args.calibration_bins
        was_training = self.model.training
        self.model.eval()  # log() reads the mode from the model: these are eval metrics
        self.log(
            {
                "eval_calibration_ece": expected_calibration_error(pair_probability(gap, var).mean(-1), bins),
                "eval_calibrated_ece": expected_calibration_error(
                    pair_probability(gap, var, temperature).mean(-1), bins
                ),
                "calibration_temperature": temperature,
            }
        )
        self.model.train(was_training)
        return temperature

    def _bt_phase(self) -> int:
        """1 for the first `bt_phase_fraction` of the optimiser steps of `bt_then_gaussian`, 2 after."""
        switch = math.ceil(self.args.bt_phase_fraction * max(self.state.max_steps, 1))
        return 1 if self.state.global_step < switch else 2

    def _freeze_bt_targets(self, model) -> None:
        """At the switch, the Bradley-Terry model of phase 1 (the heads' average mean) scores every training pair once;
        its P(chosen > rejected) is kept per pair as the fixed target of phase 2, a frozen teacher without a copy
        of the model."""
        chosen, rejected = self._pair_ids(self.train_dataset)
        means_c, means_r, _, _ = self._score_pairs(model, chosen, rejected)
        prob = torch.sigmoid(means_c.mean(-1) - means_r.mean(-1)).tolist()
        self._bt_targets = {pair_digest(c, r): p for c, r, p in zip(chosen, rejected, prob, strict=True)}

    def _paper_losses(self, mode, model, inputs, means_c, stds_c, means_r, stds_r, margin) -> torch.Tensor:
        """Per-pair, per-head losses `[B, K]` of `bt_then_gaussian`. Phase 1 (and every eval): Bradley-Terry on the
        heads' average mean, one BT model; phase 2: [`gaussian_regression_losses`] onto the frozen BT targets."""
        if mode == "eval" or self._bt_phase() == 1:
            diff = means_c.mean(-1, keepdim=True) - means_r.mean(-1, keepdim=True)
            if margin is not None:
                diff = diff - margin.to(diff.dtype).unsqueeze(-1)
            return F.softplus(-diff).expand_as(means_c)
        if self._bt_targets is None:
            self._freeze_bt_targets(model)
        keys = batch_pair_digests(inputs["input_ids"], inputs["attention_mask"])
        missing = sum(key not in self._bt_targets for key in keys)
        if missing:
            raise RuntimeError(
                f"{missing} training pairs have no frozen Bradley-Terry target; the train dataset changed after the "
                "phase switch of brme_loss='bt_then_gaussian'."
            )
        prob = torch.tensor([self._bt_targets[key] for key in keys], device=means_c.device)
        target_c = self.args.bt_target_scale * (prob - 0.5)
        return gaussian_regression_losses(means_c, stds_c, means_r, stds_r, target_c)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        margin = inputs.pop("margin", None)
        inputs["use_cache"] = False
        outputs = model(**inputs)

        means_c, means_r = outputs.means.chunk(2)
        stds_c, stds_r = outputs.stds.chunk(2)
        if self.args.brme_loss == "bt_then_gaussian":
            pair_losses = self._paper_losses(mode, model, inputs, means_c, stds_c, means_r, stds_r, margin)
            phase_one = mode == "eval" or self._bt_phase() == 1
            self._metrics[mode]["bt_phase"].append(1.0 if self._bt_phase() == 1 else 2.0)
        else:
            pair_losses = brme_pair_losses(
                means_c, stds_c, means_r, stds_r, self.args.brme_loss, margin, self.args.num_reparam_samples
            )
            phase_one = False
        if mode == "train" and not phase_one:  # phase 1 of the paper's recipe is one BT model: no per-head weights
            weights = bootstrap_weights(
                inputs["input_ids"], inputs["attention_mask"], pair_losses.shape[1], self.args.seed, self.args.bootstrap
            )
            pair_losses = pair_losses * weights
        loss = pair_losses.mean()  # mean over heads keeps the scale of one Bradley-Terry loss
        if self.args.center_rewards_coefficient is not None:
            loss = loss + self.args.center_rewards_coefficient * (means_c + means_r).pow(2).mean()

        self._log_step_metrics(mode, inputs, outputs, margin)
        return (loss, outputs) if return_outputs else loss

    @torch.no_grad()
    def _log_step_metrics(self, mode, inputs, outputs, margin):
        gather = self.accelerator.gather_for_metrics
        if mode == "train":
            self._total_train_tokens += gather(inputs["attention_mask"].sum()).sum().item() // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]

        robust = outputs.logits.squeeze(-1).float()
        all_rewards = gather(robust)
        self._metrics[mode]["min_reward"].append(all_rewards.min().item())
        self._metrics[mode]["mean_reward"].append(all_rewards.mean().item())
        self._metrics[mode]["max_reward"].append(all_rewards.max().item())

        robust_c, robust_r = robust.chunk(2)
        means_c, means_r = outputs.means.chunk(2)
        stds_c, stds_r = outputs.stds.chunk(2)
        nominal_c, nominal_r = outputs.nominal.chunk(2)
        worst_c, worst_r = outputs.worst.chunk(2)
        per_pair = {
            "accuracy": (robust_c > robust_r).float(),
            "margin": robust_c - robust_r,
            "accuracy_nominal": (nominal_c > nominal_r).float(),
            "accuracy_worst": (worst_c > worst_r).float(),
            "accuracy_mean": (means_c.mean(-1) > means_r.mean(-1)).float(),
            "mean_std": outputs.stds.mean(-1).view(2, -1).mean(0),
            "head_disagreement": outputs.means.std(-1, unbiased=False).view(2, -1).mean(0),
        }
        head_correct = (means_c > means_r).float()
        for k in range(head_correct.shape[1]):
            per_pair[f"accuracy_head_{k}"] = head_correct[:, k]
        names = list(per_pair)
        stacked = gather(torch.stack([per_pair[n] for n in names], dim=-1))
        for name, value in zip(names, stacked.mean(0).tolist(), strict=True):
            self._metrics[mode][name].append(value)

        # The ensemble's predictive P(chosen > rejected): the average of the heads' probabilities.
        diff, var = means_c - means_r, stds_c.pow(2) + stds_r.pow(2)
        if self.args.brme_loss == "bt":
            var = torch.zeros_like(var)
        self._calibration[mode].append(gather(pair_probability(diff, var).mean(-1)).cpu())

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        if self._calibration[mode]:
            probs = torch.cat(self._calibration[mode])
            self._metrics[mode]["ece"] = [expected_calibration_error(probs, self.args.calibration_bins)]
            self._calibration[mode].clear()
        super().log(logs, start_time)
