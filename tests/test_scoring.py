import pytest
import torch
from datasets import Dataset

from tests.conftest import preference_rows, tiny_text_config
from trl_robust import BRMEConfig, BRMERewardConfig, BRMERewardModel, BRMERewardTrainer, BRMEScorer
from trl_robust import aggregation as agg

pytestmark = pytest.mark.usefixtures("one_thread")


def pair_rows(n: int = 8, conversational: bool = False) -> list[dict]:
    rows = []
    for i, row in enumerate(preference_rows(n)):
        prompt, chosen, rejected = f"Review {i}:", " " + row["chosen"], " " + row["rejected"]
        if conversational:
            prompt = [{"role": "user", "content": prompt}]
            chosen = [{"role": "assistant", "content": chosen.strip()}]
            rejected = [{"role": "assistant", "content": rejected.strip()}]
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


def train_brme(tmp_path, tokenizer, rows) -> BRMERewardTrainer:
    torch.manual_seed(0)
    model = BRMERewardModel(BRMEConfig(text_config=tiny_text_config("llama", len(tokenizer)), num_heads=3))
    args = BRMERewardConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        max_steps=2,
        report_to="none",
        save_strategy="no",
        seed=0,
    )
    trainer = BRMERewardTrainer(model, args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    trainer.train()
    return trainer


@pytest.fixture(scope="module", params=["standard", "conversational"])
def trained(request, tmp_path_factory, smol_tokenizer):
    rows = pair_rows(8, conversational=request.param == "conversational")
    return train_brme(tmp_path_factory.mktemp(request.param), smol_tokenizer, rows), rows


def test_same_text_same_score_as_reward_training(trained, smol_tokenizer):
    trainer, rows = trained
    model = trainer.model
    scorer = BRMEScorer(model, smol_tokenizer, aggregation="robust", robust_lambda=model.config.robust_lambda)
    prompts, chosen = [r["prompt"] for r in rows], [r["chosen"] for r in rows]
    trained_ids = trainer.train_dataset["chosen_ids"]

    # The scorer tokenises each pair exactly as the trainer tokenised its chosen side ...
    assert scorer.tokenize(prompts, chosen) == trained_ids
    # ... and scores it exactly as the model scores the trainer's own ids.
    one_by_one = BRMEScorer(model, smol_tokenizer, batch_size=1).score(prompts, chosen)
    batched = scorer.score(prompts, chosen)
    with torch.no_grad():
        for i, ids in enumerate(trained_ids):
            # The trainer's collator always sends a mask (pad == EOS here, so the mask is what finds the last token)
            out = model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long))
            assert torch.equal(one_by_one.means[i], out.means[0]) and torch.equal(one_by_one.stds[i], out.stds[0])
            assert torch.equal(one_by_one.rewards[i], out.logits[0, 0])
    # Right padding in a batch leaves every score as it was (up to float summation order).
    torch.testing.assert_close(batched.means, one_by_one.means, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched.rewards, one_by_one.rewards, atol=1e-5, rtol=1e-5)


def test_trl_rl_tokenisation_differs_from_training(trained, smol_tokenizer):
    """Why the scorer exists: TRL's GRPO/RLOO reward-model path re-tokenises `prompt + completion` without EOS."""
    trainer, rows = trained
    if isinstance(rows[0]["prompt"], list):
        pytest.skip("conversational text goes through the chat template in both paths")
    trl_ids = [smol_tokenizer(text=r["prompt"] + r["chosen"], add_special_tokens=False)["input_ids"] for r in rows]
    trained_ids = trainer.train_dataset["chosen_ids"]
    assert all(ids[-1] == smol_tokenizer.eos_token_id for ids in trained_ids)
    assert all(t + [smol_tokenizer.eos_token_id] == ids for t, ids in zip(trl_ids, trained_ids, strict=True))
    scorer = BRMEScorer(trainer.model, smol_tokenizer)
    assert not torch.allclose(scorer.score_ids(trl_ids).rewards, scorer.score_ids(trained_ids).rewards)


@pytest.mark.parametrize(
    "name, params",
    [("nominal", {}), ("worst", {}), ("mean", {}), ("uwo", {"uwo_coef": 2.0}), ("kl_dro", {"kl_dro_beta": 0.3})],
)
def test_aggregation_and_batching(trained, smol_tokenizer, name, params):
    trainer, rows = trained
    scorer = BRMEScorer(trainer.model, smol_tokenizer, aggregation=name, batch_size=3, **params)
    scores = scorer.score([r["prompt"] for r in rows], [r["rejected"] for r in rows])
    k = trainer.model.config.num_heads
    assert scores.means.shape == scores.stds.shape == (len(rows), k) and scores.rewards.shape == (len(rows),)
    assert bool((scores.stds > 0).all())
    torch.testing.assert_close(scores.rewards, agg.aggregate(name, scores.means, scores.stds, **params))
    assert scores.rewards.device == scorer.device == next(trainer.model.parameters()).device


def test_bad_arguments(smol_tokenizer):
    model = BRMERewardModel(BRMEConfig(text_config=tiny_text_config("llama", len(smol_tokenizer)), num_heads=2))
    with pytest.raises(ValueError, match="allowed"):
        BRMEScorer(model, smol_tokenizer, aggregation="median")
    with pytest.raises(ValueError, match="kl_dro_beta"):
        BRMEScorer(model, smol_tokenizer, aggregation="kl_dro", kl_dro_beta=0.0)
    with pytest.raises(ValueError, match="batch_size"):
        BRMEScorer(model, smol_tokenizer, batch_size=0)
    with pytest.raises(ValueError, match="one of each per pair"):
        BRMEScorer(model, smol_tokenizer).tokenize(["a", "b"], ["c"])
    assert not model.training  # the scorer turns dropout off
