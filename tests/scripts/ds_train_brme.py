"""
Train a tiny BRME with BRMERewardTrainer under DeepSpeed (run by tests/test_deepspeed.py through `accelerate launch`).

    DS_ACCELERATOR=cpu accelerate launch --config_file trl_robust/accelerate_configs/cpu_zero3.yaml \
        tests/scripts/ds_train_brme.py --output_dir OUT [--model DIR]

Without `--model` a tiny Llama-backed BRME is built in memory; with `--model DIR` (a plain causal LM saved with
`save_pretrained`) the trainer gets the path as a string and builds the BRME itself (`from_backbone`), so under ZeRO-3
the backbone is loaded inside DeepSpeed's `zero.Init`. Rank 0 writes the heads as they were before training to
`OUT/initial_score.pt`, each rank its prior buffer (with `--prior_scale`) to `OUT/prior-rank{r}.pt`, and rank 0
to `OUT/run_info.json` whether DeepSpeed ran (and which ZeRO stage), whether the backbone
and heads were already partitioned before `deepspeed.initialize` (i.e. built under `zero.Init`) and the log history;
`trainer.save_model(OUT)` writes the consolidated model.
"""

import argparse
import json
import os

import torch
from datasets import Dataset
from tiny_setup import TOKENIZER_DIR, finish_distributed, tiny_llama_config
from transformers import AutoTokenizer

from trl_robust import BRMEConfig, BRMERewardConfig, BRMERewardModel, BRMERewardTrainer


def preference_data(num_pairs: int) -> Dataset:
    """Chosen answers say "good", rejected ones "bad": a signal a tiny model picks up in a few steps."""
    topics = ["tea", "rain", "maps", "bread", "music", "boats", "chess", "trees"]
    rows = []
    for i in range(num_pairs):
        topic = topics[i % len(topics)]
        rows.append(
            {
                "prompt": f"Question {i}: what about {topic}?",
                "chosen": f" A good answer about {topic}, good and kind.",
                "rejected": f" A bad answer about {topic}, bad and rude.",
            }
        )
    return Dataset.from_list(rows)


def gathered_score(model) -> dict[str, torch.Tensor]:
    """The members' full weights (heads, and per-member adapters if any), also when ZeRO-3 has partitioned them (a
    no-op gather otherwise)."""
    params = {f"score.{n}": p for n, p in model.score.named_parameters()}
    if hasattr(model, "member_adapters"):
        params.update({f"member_adapters.{n}": p for n, p in model.member_adapters.named_parameters()})
    partitioned = [p for p in params.values() if hasattr(p, "ds_id")]
    if partitioned:
        import deepspeed

        with deepspeed.zero.GatheredParameters(partitioned):
            return {name: p.detach().clone().cpu() for name, p in params.items()}
    return {name: p.detach().clone().cpu() for name, p in params.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--model", default=None, help="a saved plain causal LM; omit to build a tiny BRME in memory")
    parser.add_argument(
        "--build",
        choices=("init", "from_config"),
        default="init",
        help="without --model: BRMERewardModel(config) or BRMERewardModel._from_config(config) (zero.Init on ZeRO-3)",
    )
    parser.add_argument("--num_heads", type=int, default=3)
    parser.add_argument("--head_type", default="linear", help="BRMEConfig.head_type of the in-memory BRME")
    parser.add_argument("--prior_scale", type=float, default=0.0, help="BRMEConfig.prior_scale of the in-memory BRME")
    parser.add_argument("--max_steps", type=int, default=4)
    parser.add_argument("--num_pairs", type=int, default=16)
    parser.add_argument("--no_gradient_checkpointing", action="store_true")
    cli = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    args = BRMERewardConfig(
        output_dir=cli.output_dir,
        num_heads=cli.num_heads,
        max_steps=cli.max_steps,
        per_device_train_batch_size=2,
        learning_rate=5e-3,
        max_length=64,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        ddp_backend="gloo",
        gradient_checkpointing=not cli.no_gradient_checkpointing,
        seed=0,
        dataloader_num_workers=0,
    )
    # After the config exists: under ZeRO-3 the DeepSpeed config is now live, as it is in a user's script.
    torch.manual_seed(0)
    if cli.model is None:
        config = BRMEConfig(
            text_config=tiny_llama_config(tokenizer).to_dict(),
            num_heads=cli.num_heads,
            head_type=cli.head_type,
            prior_scale=cli.prior_scale,
        )
        model = BRMERewardModel(config) if cli.build == "init" else BRMERewardModel._from_config(config)
    else:
        model = cli.model

    trainer = BRMERewardTrainer(
        model=model, args=args, train_dataset=preference_data(cli.num_pairs), processing_class=tokenizer
    )
    initial = gathered_score(trainer.model)
    # Before training, so before deepspeed.initialize: only zero.Init can have partitioned parameters by now.
    build_info = {
        "backbone_partitioned": all(hasattr(p, "ds_id") for p in trainer.model.backbone.parameters()),
        "heads_partitioned": all(hasattr(p, "ds_id") for p in trainer.model.score.parameters()),
        "world_size": trainer.accelerator.num_processes,
    }
    if trainer.accelerator.is_main_process:
        os.makedirs(cli.output_dir, exist_ok=True)
        torch.save(initial, os.path.join(cli.output_dir, "initial_score.pt"))
    if hasattr(trainer.model.score, "prior_weight"):  # a buffer: every rank's own copy (ZeRO-3 partitions parameters)
        trainer.accelerator.wait_for_everyone()  # the folder exists
        rank = trainer.accelerator.process_index
        torch.save(trainer.model.score.prior_weight.clone(), os.path.join(cli.output_dir, f"prior-rank{rank}.pt"))

    trainer.train()
    trainer.save_model(cli.output_dir)

    if trainer.accelerator.is_main_process:
        stage = trainer.accelerator.state.deepspeed_plugin.zero_stage if trainer.is_deepspeed_enabled else None
        build_info.update(deepspeed=trainer.is_deepspeed_enabled, zero_stage=stage)
        with open(os.path.join(cli.output_dir, "run_info.json"), "w") as f:
            json.dump({**build_info, "log_history": trainer.state.log_history}, f, indent=1)
        print(f"ds_train_brme: done, {build_info}", flush=True)


if __name__ == "__main__":
    main()
    finish_distributed()
