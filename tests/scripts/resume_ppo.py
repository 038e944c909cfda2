"""
Train tiny RobustPPOTrainer models on CPU with a checkpoint every 2 updates (run by tests/test_kill_resume.py in a
subprocess): a Llama policy, a Llama value model and a 3-head BRME reward, all built from a config.

    python tests/scripts/resume_ppo.py --output_dir OUT [--pause_after_save FLAG] [--die_in_save STEP] [--resume]

`--pause_after_save FLAG` writes FLAG once the first checkpoint is complete and then sleeps, so the test can SIGKILL
the process at a known point. `--die_in_save STEP` SIGKILLs the process itself inside the save of update STEP, after
the policy weights and the optimizer are written and before the RNG and trainer states are. `--resume` continues from
the last checkpoint in OUT. At the end the policy and value weights go to OUT/final.safetensors and the log history to
OUT/log_history.json.
"""

import json
from pathlib import Path

import torch
from datasets import Dataset
from safetensors.torch import save_file
from tiny_setup import TOKENIZER_DIR, dies_in_save, pause_after_first_save, resume_parser, tiny_llama_config
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from trl_robust import BRMEConfig, BRMERewardModel, RobustPPOConfig, RobustPPOTrainer

UPDATES, SAVE_STEPS = 6, 2


def main() -> None:
    parser = resume_parser()
    parser.add_argument("--resume", action="store_true")
    cli = parser.parse_args()
    torch.set_num_threads(1)

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    config = tiny_llama_config(tokenizer, max_position_embeddings=64)
    torch.manual_seed(0)
    policy = LlamaForCausalLM(config)
    reward = BRMERewardModel(BRMEConfig(text_config=config.to_dict(), num_heads=3))
    value = LlamaForSequenceClassification(LlamaConfig(**{**config.to_dict(), "num_labels": 1}))
    prompts = Dataset.from_dict({"input_ids": [tokenizer(f"Review {i}:")["input_ids"] for i in range(16)]})
    args = RobustPPOConfig(
        output_dir=cli.output_dir,
        per_device_train_batch_size=4,
        num_ppo_epochs=2,
        response_length=4,
        learning_rate=1e-2,
        max_steps=UPDATES,
        save_strategy="steps",
        save_steps=SAVE_STEPS,
        logging_steps=1,
        num_sample_generations=0,
        gradient_checkpointing=False,
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
    )
    callbacks = pause_after_first_save(cli.pause_after_save)
    trainer = dies_in_save(RobustPPOTrainer, cli.die_in_save)(
        args, tokenizer, policy, None, reward, prompts, value, callbacks=callbacks
    )
    trainer.train(resume_from_checkpoint=True if cli.resume else None)
    weights = {k: v.detach().contiguous() for k, v in trainer.model.state_dict().items()}  # policy and value
    save_file(weights, str(Path(cli.output_dir) / "final.safetensors"))
    (Path(cli.output_dir) / "log_history.json").write_text(json.dumps(trainer.state.log_history))


if __name__ == "__main__":
    main()
