"""
Train a tiny BRME on CPU with checkpoints every 2 steps (run by tests/test_kill_resume.py in a subprocess).

    python tests/scripts/resume_brme.py --output_dir OUT [--pause_after_save FLAG] [--die_in_save STEP]
        [--resume [PATH]]
    accelerate launch --config_file cpu_zero2.yaml --num_processes 2 tests/scripts/resume_brme.py --deepspeed ...

`--pause_after_save FLAG` writes FLAG once the first checkpoint is complete and then sleeps, so the test can SIGKILL
the process at a known point. `--die_in_save STEP` SIGKILLs the process itself inside the save of step STEP, after the
model and the optimizer are written and before the RNG and trainer states are. `--resume` continues from the last
checkpoint in OUT, or from PATH. `--deepspeed`: launched under DeepSpeed on CPU (gloo). At the end the final model is
saved to OUT/final and the log history to OUT/log_history.json.
"""

import json
from pathlib import Path

import torch
from datasets import Dataset
from tiny_setup import TOKENIZER_DIR, dies_in_save, pause_after_first_save, resume_parser, tiny_llama_config
from transformers import AutoTokenizer

from trl_robust import BRMEConfig, BRMERewardConfig, BRMERewardModel, BRMERewardTrainer

MAX_STEPS, SAVE_STEPS = 8, 2


def main() -> None:
    parser = resume_parser()
    parser.add_argument("--resume", nargs="?", const=True, default=None)
    parser.add_argument("--deepspeed", action="store_true")
    cli = parser.parse_args()
    torch.set_num_threads(1)

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    text = tiny_llama_config(tokenizer, max_position_embeddings=2048)  # LlamaConfig's default
    torch.manual_seed(0)
    model = BRMERewardModel(BRMEConfig(text_config=text.to_dict(), num_heads=3))
    subjects = ["the food", "the film", "this book", "the hotel"]
    rows = [
        {"chosen": f"I think {subjects[i % 4]} was great {i}", "rejected": f"I think {subjects[i % 4]} was awful {i}"}
        for i in range(48)
    ]
    args = BRMERewardConfig(
        output_dir=cli.output_dir,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        max_steps=MAX_STEPS,
        save_strategy="steps",
        save_steps=SAVE_STEPS,
        logging_steps=1,
        gradient_checkpointing=False,
        report_to="none",
        disable_tqdm=True,
        use_cpu=not cli.deepspeed,
        ddp_backend="gloo" if cli.deepspeed else None,
        seed=0,
    )
    callbacks = pause_after_first_save(cli.pause_after_save)
    trainer = dies_in_save(BRMERewardTrainer, cli.die_in_save)(
        model, args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer, callbacks=callbacks
    )
    trainer.train(resume_from_checkpoint=cli.resume)
    trainer.save_model(str(Path(cli.output_dir) / "final"))
    if trainer.accelerator.is_main_process:
        (Path(cli.output_dir) / "log_history.json").write_text(json.dumps(trainer.state.log_history))


if __name__ == "__main__":
    main()
