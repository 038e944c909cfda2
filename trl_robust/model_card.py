"""
Model cards for the trl-robust trainers.

TRL's trainers write a model card (`README.md`) with `create_model_card` when they save a checkpoint and when they
push to the Hub: base model, tags, the trainer's name and paper, framework versions, citations. This module extends
that card rather than replacing it: a "Reward-robust training" section (method, base model, the reward model and,
for a Bayesian Reward Model Ensemble, its K, member type, lambda and the aggregation the run optimised) and the
citation of arXiv 2409.15360 are inserted into the text TRL generated.

- `RobustModelCardMixin` goes before TRL's trainer in a trainer's bases: its `create_model_card` (what TRL's
  checkpoints and `push_to_hub` call) writes TRL's card and extends it, and its `save_model` writes the card into the
  folder the model was saved to.
- `write_model_card(trainer, output_dir)` is what `save_model` calls; a trainer with its own `save_model` (such as
  `RobustPPOTrainer`) calls it at the end of it.
"""

import os
import shutil
import textwrap
from pathlib import Path
from typing import Any

from accelerate.utils import is_peft_model
from trl.trainer.utils import get_config_model_id

from .aggregation import Aggregation
from .modeling_brme import BRMERewardModel

CARD_NAME = "README.md"
MARKER = "<!-- trl-robust -->"  # marks an extended card, so that extending it twice changes nothing

BRME_PAPER = {
    "title": "Reward-Robust RLHF in LLMs",
    "id": "2409.15360",
    "citation": textwrap.dedent("""\
        @article{yan2024reward,
            title   = {{Reward-Robust RLHF in LLMs}},
            author  = {Yuzi Yan and Xingzhou Lou and Jialian Li and Yiping Zhang and Jian Xie and Chao Yu and Yu Wang
                       and Dong Yan and Yuan Shen},
            year    = 2024,
            eprint  = {arXiv:2409.15360}
        }"""),
}

AGGREGATION_FORMULAS = {
    "robust": "lambda * nominal + (1 - lambda) * worst, nominal = the mean of the most confident head, "
    "worst = min_k mu_k",
    "nominal": "the mean of the most confident head (smallest std)",
    "worst": "min_k mu_k",
    "mean": "mean_k mu_k",
    "uwo": "mean_k mu_k - c * Var_k mu_k",
    "kl_dro": "-beta * log mean_k exp(-mu_k / beta)",
}


def _unwrap(trainer, model: Any) -> Any:
    """The plain module behind an accelerate / DeepSpeed / FSDP wrapper and a PEFT adapter."""
    model = trainer.accelerator.unwrap_model(model)
    model = getattr(model, "module", model)  # a DeepSpeed engine prepared outside accelerate (TRL's reward models)
    return model.get_base_model() if is_peft_model(model) else model


def _brmes(trainer) -> list[BRMERewardModel]:
    """The BRMEs the trainer trains (BRMERewardTrainer) or optimises (the robust RL trainers)."""
    if isinstance(getattr(trainer, "_brme", None), BRMERewardModel):
        return [trainer._brme]
    if hasattr(trainer, "_brme_indices"):
        return [_unwrap(trainer, trainer.reward_funcs[i]) for i in trainer._brme_indices]
    if getattr(trainer, "reward_is_brme", False):
        return [_unwrap(trainer, trainer.reward_model)]
    return []


def _base_model(trainer) -> str | None:
    """The model the run started from, as TRL records it (`config._name_or_path`); for a BRME, its backbone's."""
    model = _unwrap(trainer, trainer.model)
    policy = getattr(model, "policy", None)  # RobustPPOTrainer trains a policy + value wrapper
    config = (policy if policy is not None else model).config
    name = get_config_model_id(config)
    if not name and hasattr(config, "text_config"):
        name = get_config_model_id(config.text_config)
    return name or None


def _aggregations(trainer) -> list[Aggregation]:
    """What the robust RL trainer optimises, per BRME (robust_lambda resolved: the config's, else the BRME's own)."""
    if hasattr(trainer, "brme_scorers"):
        return [trainer.brme_scorers[i].aggregation for i in trainer._brme_indices]
    aggregation = getattr(trainer, "aggregation", None)
    return [aggregation] if isinstance(aggregation, Aggregation) else []


def member_type(cfg) -> str:
    """One line on what each BRME member is (`head_type`, priors)."""
    backbone = f"one shared `{cfg.text_config.model_type}` backbone, `{cfg.pooling}`-token pooling"
    if cfg.head_type == "mlp":
        text = f"a per-member MLP Gaussian head (mean mu_k and std sigma_k) on {backbone}"
    elif cfg.head_type == "lora":
        text = (
            f"per-member LoRA adapters (rank {cfg.member_lora_rank}) on the top {cfg.member_layers} layer(s) of "
            f"{backbone}, each member then its own linear Gaussian head (mean mu_k and std sigma_k)"
        )
    else:
        text = f"a linear Gaussian head (mean mu_k and std sigma_k) on {backbone}"
    if cfg.prior_scale > 0:
        text += f"; randomised prior functions (frozen random heads, scale {cfg.prior_scale:g})"
    return text


def robust_card_facts(trainer) -> list[tuple[str, str]]:
    """(label, value) rows of the card's section: method, base model, reward model, and what the run optimised."""
    brmes = _brmes(trainer)
    rows = [("Method", f"{trainer._name} (trl-robust, reward-robust RLHF, arXiv {BRME_PAPER['id']})")]
    base = _base_model(trainer)
    rows.append(("Base model", f"`{base}`" if base else "not recorded (built in memory)"))
    for i, brme in enumerate(brmes):
        cfg = brme.config
        label = "Reward model" if len(brmes) == 1 else f"Reward model {i + 1}"
        rows.append(
            (
                label,
                f"Bayesian Reward Model Ensemble (BRME), K = {cfg.num_heads} members (`head_type="
                f"{cfg.head_type}`): {member_type(cfg)}",
            )
        )
    args = trainer.args
    if hasattr(args, "reward_aggregation"):
        if brmes:
            for aggregation in dict.fromkeys(_aggregations(trainer)):
                formula = AGGREGATION_FORMULAS.get(aggregation.name, "")
                rows.append(("Aggregation", f"`{aggregation.describe()}`: {formula}"))
                rows.append(("Lambda", f"{aggregation.robust_lambda:g} (weight of the nominal term in `robust`)"))
        else:
            rows.append(("Reward model", "a single reward model (no ensemble: `reward_aggregation` does not apply)"))
    elif brmes:  # BRMERewardTrainer: the BRME's own logits are its robust reward
        cfg = brmes[0].config
        rows.append(("Aggregation", f"`robust` (the BRME's logits): {AGGREGATION_FORMULAS['robust']}"))
        rows.append(("Lambda", f"{cfg.robust_lambda:g}"))
        if hasattr(args, "brme_loss"):
            rows.append(("Training loss", f"`{args.brme_loss}` per head, `{args.bootstrap}` bootstrap weights"))
    return rows


def robust_card_section(trainer) -> str:
    """The markdown the card gains: the facts as a table, and how to load the model back."""
    lines = [MARKER, "## Reward-robust training (trl-robust)", "", "| | |", "| --- | --- |"]
    lines += [f"| {label} | {value} |" for label, value in robust_card_facts(trainer)]
    if isinstance(getattr(trainer, "_brme", None), BRMERewardModel):
        lines += [
            "",
            "Load it with `import trl_robust` first (it registers the `brme` model type): "
            "`BRMERewardModel.from_pretrained(path)`; its `logits` are the robust reward, `means` and `stds` the "
            "members' predictions.",
        ]
    return "\n".join(lines) + "\n\n"


def extend_model_card(trainer, card_path: str) -> None:
    """Insert the trl-robust section (before TRL's "Framework versions") and the BRME citation (first under
    "Citations") into the card TRL wrote at `card_path`; a card already extended is left as it is."""
    text = Path(card_path).read_text(encoding="utf-8")
    if MARKER in text:
        return
    section = robust_card_section(trainer)
    anchor = "### Framework versions"
    text = text.replace(anchor, section + anchor, 1) if anchor in text else text.rstrip("\n") + "\n\n" + section
    citation = f"Cite reward-robust RLHF (BRME) as:\n\n```bibtex\n{BRME_PAPER['citation']}\n```\n\n"
    heading = "## Citations\n\n"
    if heading in text:
        text = text.replace(heading, heading + citation, 1)
    else:
        text = text.rstrip("\n") + "\n\n" + heading + citation
    Path(card_path).write_text(text, encoding="utf-8")


def card_model_name(trainer) -> str:
    """The model name TRL puts on its cards: the Hub repo's name, else the output folder's."""
    hub_id = trainer.args.hub_model_id
    return hub_id.split("/")[-1] if hub_id else Path(trainer.args.output_dir).name


def write_model_card(trainer, output_dir: str | None = None) -> None:
    """
    TRL's card for `trainer`, extended, in `output_dir` (default `args.output_dir`) as `README.md`. TRL's
    `create_model_card` writes into `args.output_dir` (as it does on every checkpoint); the card is copied from there
    when the model went elsewhere. Only the main process writes; the others return at once (no collective inside).
    """
    if not trainer.is_world_process_zero():
        return
    run_dir = trainer.args.output_dir
    source = os.path.join(run_dir, CARD_NAME)
    made_dir, had_card = not os.path.isdir(run_dir), os.path.exists(source)
    os.makedirs(run_dir, exist_ok=True)
    trainer.create_model_card(model_name=card_model_name(trainer))
    extend_model_card(trainer, source)  # a no-op where create_model_card extended it already (the mixin)
    if output_dir is not None and os.path.abspath(output_dir) != os.path.abspath(run_dir):
        os.makedirs(output_dir, exist_ok=True)
        shutil.copyfile(source, os.path.join(output_dir, CARD_NAME))
        # The card was only passing through the run folder: leave that folder as it was (e.g. no README.md in a
        # checkpoint folder that save_strategy "no" leaves empty, and no empty folder).
        if not had_card:
            os.remove(source)
        if made_dir and not os.listdir(run_dir):
            os.rmdir(run_dir)


class RobustModelCardMixin:
    """Put before TRL's trainer in the bases: every card it writes (checkpoints, `push_to_hub`) is extended, and
    `save_model` writes one next to the saved model."""

    def create_model_card(self, model_name=None, dataset_name=None, tags=None, **kwargs) -> None:
        super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags, **kwargs)
        if self.is_world_process_zero():
            extend_model_card(self, os.path.join(self.args.output_dir, CARD_NAME))

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        write_model_card(self, output_dir)


__all__ = [
    "BRME_PAPER",
    "RobustModelCardMixin",
    "extend_model_card",
    "robust_card_facts",
    "robust_card_section",
    "write_model_card",
]
