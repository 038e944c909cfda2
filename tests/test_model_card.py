"""Model cards: every trainer's `save_model` and `push_to_hub` write TRL's card, extended with the robust-training
facts (method, base model, K, member type, lambda, aggregation) and the citation of arXiv 2409.15360."""

from pathlib import Path

import pytest
import transformers.trainer
from datasets import Dataset

from tests.robust_rl_helpers import prompt_dataset, rl_args
from tests.test_robust_ppo_trainer import _args as ppo_args
from tests.test_robust_ppo_trainer import (
    build_trainer,
    make_constant_brme,
    make_policy,
    make_value_model,
    tokenized_prompts,
)
from trl_robust import (
    BRMEConfig,
    BRMERewardConfig,
    BRMERewardModel,
    BRMERewardTrainer,
    RobustGRPOConfig,
    RobustGRPOTrainer,
    RobustPPOTrainer,
    RobustRLOOConfig,
    RobustRLOOTrainer,
)
from trl_robust.model_card import MARKER, extend_model_card

pytestmark = pytest.mark.usefixtures("one_thread")

CITATION_KEY = "@article{yan2024reward"


def check_trl_card_extended(text: str) -> None:
    """TRL's own card is still all there, with our section before its framework versions and our citation first."""
    for trl_part in ("# Model Card for", "It has been trained using [TRL]", "### Framework versions", "Cite TRL as:"):
        assert trl_part in text, trl_part
    assert text.count(MARKER) == 1
    assert text.index("## Reward-robust training (trl-robust)") < text.index("### Framework versions")
    assert "arXiv:2409.15360" in text and CITATION_KEY in text
    assert text.index("## Citations") < text.index(CITATION_KEY) < text.index("Cite TRL as:")


def test_brme_reward_trainer_card(tmp_path, smol_tokenizer, brme_dir):
    model = BRMERewardModel(
        BRMEConfig(
            text_config=BRMERewardModel.from_pretrained(brme_dir).config.text_config, num_heads=4, robust_lambda=0.25
        )
    )
    model.config.text_config._name_or_path = "HuggingFaceTB/SmolLM2-135M"  # as from_backbone records it
    args = BRMERewardConfig(output_dir=str(tmp_path / "run"), report_to="none", brme_loss="bt", bootstrap="poisson")
    pairs = Dataset.from_list([{"chosen": "a great day", "rejected": "an awful day"}] * 4)
    trainer = BRMERewardTrainer(model, args, train_dataset=pairs, processing_class=smol_tokenizer)
    trainer.save_model(str(tmp_path / "saved"))
    text = (tmp_path / "saved" / "README.md").read_text()
    check_trl_card_extended(text)
    assert "BRME Reward (trl-robust" in text
    assert "`HuggingFaceTB/SmolLM2-135M`" in text
    assert "K = 4 members (`head_type=linear`): a linear Gaussian head" in text and "`llama` backbone" in text
    assert "| Lambda | 0.25 |" in text
    assert "`robust` (the BRME's logits)" in text
    assert "`bt` per head, `poisson` bootstrap" in text
    # saving elsewhere leaves the run folder as it was ...
    assert not (tmp_path / "run" / "README.md").exists()
    # ... and the card TRL writes into output_dir (checkpoints and push_to_hub call this) is the extended one too
    trainer.create_model_card(model_name="run")  # the name TRL gives it: the run folder's
    assert (tmp_path / "run" / "README.md").read_text() == text


@pytest.mark.parametrize(
    ("config_class", "trainer_class", "name"),
    [(RobustGRPOConfig, RobustGRPOTrainer, "Robust GRPO"), (RobustRLOOConfig, RobustRLOOTrainer, "Robust RLOO")],
    ids=["grpo", "rloo"],
)
def test_robust_grpo_and_rloo_cards(tmp_path, smol_tokenizer, policy_dir, brme_dir, config_class, trainer_class, name):
    args = config_class(
        **rl_args(tmp_path / "run", smol_tokenizer, reward_aggregation="kl_dro", kl_dro_beta=0.5, robust_lambda=0.7)
    )
    trainer = trainer_class(
        model=str(policy_dir),
        reward_funcs=str(brme_dir),
        args=args,
        train_dataset=prompt_dataset(),
        processing_class=smol_tokenizer,
    )
    trainer.save_model()  # default: output_dir
    text = (tmp_path / "run" / "README.md").read_text()
    check_trl_card_extended(text)
    assert f"{name} (trl-robust" in text
    assert f"`{policy_dir}`" in text  # base model: the policy the run started from
    assert "K = 3 members" in text
    assert "`kl_dro (kl_dro_beta=0.5)`: -beta * log mean_k exp(-mu_k / beta)" in text
    assert "| Lambda | 0.7 (weight of the nominal term in `robust`) |" in text


@pytest.mark.parametrize("reward", ["brme", "single"])
def test_robust_ppo_card(tmp_path, smol_tokenizer, reward):
    reward_model = make_constant_brme(smol_tokenizer) if reward == "brme" else make_value_model(smol_tokenizer, 5)
    trainer = RobustPPOTrainer(
        ppo_args(tmp_path, total_episodes=8, reward_aggregation="uwo", uwo_coef=0.5, robust_lambda=0.3),
        smol_tokenizer,
        make_policy(smol_tokenizer),
        None,
        reward_model,
        tokenized_prompts(smol_tokenizer),
        make_value_model(smol_tokenizer),
    )
    trainer.save_model(str(tmp_path / "saved"))
    text = (tmp_path / "saved" / "README.md").read_text()
    check_trl_card_extended(text)
    assert "RobustPPO (trl-robust" in text
    assert "Fine-Tuning Language Models from Human Preferences" in text  # TRL's trainer paper line stays
    if reward == "brme":
        assert "K = 3 members (`head_type=linear`)" in text
        assert "`uwo (uwo_coef=0.5)`: mean_k mu_k - c * Var_k mu_k" in text and "| Lambda | 0.3 (weight" in text
    else:
        assert "a single reward model" in text and "K = " not in text and "| Aggregation |" not in text


def test_push_to_hub_uploads_the_extended_card(tmp_path, smol_tokenizer, monkeypatch):
    """Trainer.push_to_hub saves, writes the card through `create_model_card`, then uploads the folder: the folder it
    uploads holds the extended card (the upload itself is replaced; the tests are offline)."""
    uploaded = {}

    class FakeApi:
        def upload_folder(self, repo_id, folder_path, **kwargs):
            uploaded["repo_id"] = repo_id
            uploaded["card"] = (Path(folder_path) / "README.md").read_text()
            return "https://hub.invalid/commit"

    monkeypatch.setattr(transformers.trainer, "hf_api", FakeApi)
    trainer = build_trainer(
        tmp_path,
        smol_tokenizer,
        reward_model=make_constant_brme(smol_tokenizer),
        total_episodes=8,
        output_dir=str(tmp_path / "run"),
    )
    trainer.hub_model_id = "someone/robust-ppo"  # as init_hf_repo would set it (no network here)
    trainer.push_to_hub()
    assert uploaded["repo_id"] == "someone/robust-ppo"
    check_trl_card_extended(uploaded["card"])
    assert "K = 3 members" in uploaded["card"]


def test_extending_twice_changes_nothing_and_a_custom_card_gets_the_section_appended(tmp_path, smol_tokenizer):
    trainer = build_trainer(tmp_path, smol_tokenizer, reward_model=make_constant_brme(smol_tokenizer), total_episodes=8)
    card = tmp_path / "README.md"
    card.write_text("# My own card\n")
    extend_model_card(trainer, str(card))
    once = card.read_text()
    extend_model_card(trainer, str(card))
    assert card.read_text() == once
    assert once.startswith("# My own card\n") and MARKER in once and CITATION_KEY in once


def test_member_type_line_names_each_member_type():
    from tests.conftest import tiny_text_config
    from trl_robust import BRMEConfig
    from trl_robust.model_card import member_type

    def line(**kw):
        return member_type(BRMEConfig(text_config=tiny_text_config("llama", 64), **kw))

    assert line().startswith("a linear Gaussian head") and "prior" not in line()
    assert line(head_type="mlp").startswith("a per-member MLP Gaussian head")
    lora = line(head_type="lora", member_layers=2, member_lora_rank=4, prior_scale=0.5)
    assert "LoRA adapters (rank 4) on the top 2 layer(s)" in lora and "randomised prior functions" in lora
    assert "scale 0.5" in lora
