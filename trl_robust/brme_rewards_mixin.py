"""What `RobustGRPOTrainer` and `RobustRLOOTrainer` add to TRL's trainers: BRME rewards, scored as they were trained."""

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from accelerate.utils import is_peft_model
from torch import nn
from transformers import AutoConfig, PreTrainedModel, TrainingArguments
from trl.trainer.utils import get_config_model_id

from .aggregation import Aggregation
from .configuration_brme import BRMEConfig
from .modeling_brme import BRMERewardModel
from .monitor import distinct_bigram_ratio, monitor_metrics, watched
from .scoring import BRMEScorer, BRMEScores
from .validation import check_finite_scores

if TYPE_CHECKING:
    from peft import PeftConfig

logger = logging.getLogger(__name__)

# As TRL types it: a checkpoint path, a model, or a function (prompts, completions, **kwargs) -> list[float]
RewardFunc = str | PreTrainedModel | Callable[..., list[float | None]]

REFERENCE_DIR = "reference_model"


def is_brme(reward_func: object, args: TrainingArguments) -> bool:
    """True for a `BRMERewardModel` (or a PEFT model around one), or a path or Hub id of a BRME checkpoint."""
    if isinstance(reward_func, str):
        init_kwargs = args.model_init_kwargs or {}
        config = AutoConfig.from_pretrained(
            reward_func,
            trust_remote_code=init_kwargs.get("trust_remote_code", args.trust_remote_code),
            revision=init_kwargs.get("revision"),
        )
        return isinstance(config, BRMEConfig)
    if isinstance(reward_func, nn.Module) and is_peft_model(reward_func):
        reward_func = reward_func.get_base_model()
    return isinstance(reward_func, BRMERewardModel)


class BRMERewardsMixin:
    """
    Mixed in before TRL's `GRPOTrainer` / `RLOOTrainer`. Every BRME among `reward_funcs` stays a `PreTrainedModel` in
    `self.reward_funcs`, so TRL places it like any reward model (`prepare_deepspeed` shards it under ZeRO-3); only its
    reward column changes: a [`BRMEScorer`] scores it with the reward-training tokenisation and the configured
    aggregation, and the heads' statistics are logged under `brme/`.
    """

    _brme_indices: list[int]
    brme_scorers: dict[int, BRMEScorer]  # reward column -> its scorer (public: score eval data the same way)
    config_class: type  # the trainer's config (RobustGRPOConfig, RobustRLOOConfig)
    # The metrics logged for every BRME column besides the optimised aggregation (kept as they were logged before).
    LOGGED_AGGREGATIONS = ("nominal", "worst", "robust", "mean")

    def __init__(
        self,
        model: str | PreTrainedModel,
        reward_funcs: RewardFunc | list[RewardFunc] | None = None,
        args: TrainingArguments | None = None,
        *pos_args,
        peft_config: "PeftConfig | None" = None,
        **kwargs,
    ):
        """TRL's constructor, the same arguments: the config's class is checked, the BRMEs among `reward_funcs` found,
        an in-memory policy saved for the reference model, then TRL's init, then one scorer per BRME column."""
        name = type(self).__name__
        args = check_args_type(args, self.config_class, name, model)
        self._brme_indices = self._find_brmes(reward_funcs, args, name)
        self._save_policy_for_reference(model, args, peft_config)
        super().__init__(model, reward_funcs, args, *pos_args, peft_config=peft_config, **kwargs)
        self._setup_brme_scorers()

    @staticmethod
    def _find_brmes(reward_funcs, args, trainer_name: str) -> list[int]:
        """Indices of the BRMEs in `reward_funcs`; raises when there is none (the robust config would do nothing)."""
        funcs = reward_funcs if isinstance(reward_funcs, list) else [reward_funcs] if reward_funcs is not None else []
        indices = [i for i, func in enumerate(funcs) if is_brme(func, args)]
        if not indices:
            raise ValueError(
                f"{trainer_name} optimises a BRME's aggregated reward, but none of reward_funcs is a BRMERewardModel "
                "or a BRME checkpoint path. Pass one (e.g. reward_funcs=['path/to/brme', my_func]), or use TRL's own "
                "trainer for plain reward models."
            )
        return indices

    @staticmethod
    def _save_policy_for_reference(model, args, peft_config) -> None:
        """
        With `beta > 0` TRL builds the reference model by reloading `model.config._name_or_path`; a policy built in
        memory from a config has none, so save it (its initial weights are the reference) under
        `output_dir/reference_model` and point `_name_or_path` there.
        """
        if args.beta == 0.0 or not isinstance(model, PreTrainedModel) or get_config_model_id(model.config):
            return
        if peft_config is not None or is_peft_model(model):
            return  # PEFT disables the adapter for the reference: nothing is reloaded
        path = os.path.join(args.output_dir, REFERENCE_DIR)
        state = args.distributed_state
        with state.local_main_process_first():
            if state.is_local_main_process:
                logger.warning(
                    "The policy has no `_name_or_path` and beta=%s needs a reference model: saving the initial policy "
                    "to %s for TRL to reload it.",
                    args.beta,
                    path,
                )
                model.save_pretrained(path)
        model.config._name_or_path = path

    def _setup_brme_scorers(self) -> None:
        """One scorer per BRME column, around the model TRL prepared (a DeepSpeed engine under ZeRO-3)."""
        self.brme_scorers = {}
        for i in self._brme_indices:
            brme = self.accelerator.unwrap_model(self.reward_funcs[i])
            brme = brme.get_base_model() if is_peft_model(brme) else brme
            aggregation = Aggregation.from_config(self.args, brme_robust_lambda=brme.config.robust_lambda)
            if self.args.robust_lambda is not None and self.args.robust_lambda != brme.config.robust_lambda:
                logger.warning(
                    "Reward %r: the BRME's logits use robust_lambda=%s; this run optimises and logs robust_lambda=%s.",
                    self.reward_func_names[i],
                    brme.config.robust_lambda,
                    self.args.robust_lambda,
                )
            self.brme_scorers[i] = BRMEScorer(
                self.reward_funcs[i],
                self.reward_processing_classes[i],
                aggregation=aggregation,
                device=self.accelerator.device,
                chat_template_kwargs=self.chat_template_kwargs or None,
            )

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        # TRL scores an nn.Module reward on its own re-tokenisation (no EOS); for the duration of the call each BRME is
        # swapped for a plain reward function that scores it through its BRMEScorer. TRL then handles everything
        # else as usual: other reward functions, async ones, NaN rows, and the gather across processes.
        scored: dict[int, BRMEScores] = {}

        def brme_reward(index):
            def score(prompts, completions, tools=None, **kwargs):
                scored[index] = result = self.brme_scorers[index].score(prompts, completions, tools)
                where = (
                    f"{type(self).__name__}, reward {self.reward_func_names[index]!r} at step {self.state.global_step} "
                    f"(process {self.accelerator.process_index})"
                )
                check_finite_scores(result.rewards, where, result.means, result.stds)
                return scored[index].rewards.tolist()

            return score

        originals = self.reward_funcs
        self.reward_funcs = [brme_reward(i) if i in self.brme_scorers else f for i, f in enumerate(originals)]
        try:
            rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        finally:
            self.reward_funcs = originals

        mode = "train" if self.model.training else "eval"
        for i in self._brme_indices:  # same order on every process: gather is collective
            means, stds = self.accelerator.gather((scored[i].means, scored[i].stds))
            prefix = "brme" if len(self._brme_indices) == 1 else f"brme/{self.reward_func_names[i]}"
            aggregation = self.brme_scorers[i].aggregation
            names = (*self.LOGGED_AGGREGATIONS, aggregation.name)
            for key, value in aggregation.head_metrics(means, stds, names).items():
                self._metrics[mode][f"{prefix}/{key}"].append(value)
            # a HackingMonitor follows the first BRME column (all ranks have the same callbacks: gather is collective)
            if mode == "train" and i == self._brme_indices[0] and watched(self.callback_handler.callbacks):
                step = self.state.global_step + 1  # the update these samples train
                distinct = self.accelerator.gather(distinct_bigram_ratio(completion_ids_list).to(means.device))
                monitored = monitor_metrics(self.callback_handler.callbacks, means, stds, step, distinct)
                for key, value in monitored.items():
                    self._metrics[mode][key].append(value)
        return rewards_per_func


def check_args_type(
    args: TrainingArguments | None, config_class: type, trainer_name: str, model: str | PreTrainedModel
) -> TrainingArguments:
    """The trainer's config: a default one when `args` is None, else `args` itself once its class is checked."""
    if args is None:
        name = model if isinstance(model, str) else get_config_model_id(model.config) or "model"
        return config_class(f"{str(name).rstrip('/').split('/')[-1]}-{trainer_name.removesuffix('Trainer')}")
    if not isinstance(args, config_class):
        raise TypeError(
            f"{trainer_name} needs a {config_class.__name__}, got {type(args).__name__}: build a "
            f"{config_class.__name__} with the arguments you gave {type(args).__name__} (it takes every one of them)."
        )
    return args
