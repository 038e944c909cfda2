"""
Train a tiny policy with RobustPPOTrainer under DeepSpeed (run by tests/test_robust_ppo_deepspeed.py through
`accelerate launch`).

    DS_ACCELERATOR=cpu accelerate launch --config_file trl_robust/accelerate_configs/cpu_zero3.yaml \
        tests/scripts/ds_train_ppo.py --output_dir OUT [--reward brme]

Also runs without DeepSpeed under DDP: `ACCELERATE_USE_CPU=true python -m torch.distributed.run --nproc_per_node 2
tests/scripts/ds_train_ppo.py --output_dir OUT` on CPU. Rank 0 writes the policy's `lm_head.weight` before training to
`OUT/initial_lm_head.pt` and, to `OUT/run_info.json`, the distributed type (and ZeRO stage), the world size, every
rank's checksum of the trained weights and the log history; `trainer.save_model(OUT)` writes the policy.
"""

import argparse
import json
import os
from pathlib import Path

import torch
from datasets import Dataset
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
)

from trl_robust import BRMEConfig, BRMERewardModel, RobustPPOConfig, RobustPPOTrainer

TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "assets" / "smollm2-135m"


def tiny_llama_config(tokenizer, **kwargs) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **kwargs,
    )


def build_models(tokenizer, reward: str) -> tuple:
    """(policy, reference, value model, reward model), the same on every call (seeded)."""
    torch.manual_seed(0)
    policy = LlamaForCausalLM(tiny_llama_config(tokenizer))
    ref_policy = LlamaForCausalLM(tiny_llama_config(tokenizer))
    ref_policy.load_state_dict(policy.state_dict())
    value_model = LlamaForSequenceClassification(tiny_llama_config(tokenizer, num_labels=1))
    if reward == "brme":
        reward_model = BRMERewardModel(BRMEConfig(text_config=tiny_llama_config(tokenizer).to_dict(), num_heads=3))
    else:
        reward_model = LlamaForSequenceClassification(tiny_llama_config(tokenizer, num_labels=1))
    return policy, ref_policy, value_model, reward_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--reward", choices=("seqcls", "brme"), default="seqcls")
    parser.add_argument("--save_steps", type=int, default=None, help="save a checkpoint every N updates")
    parser.add_argument(
        "--models_dir",
        default=None,
        help="load policy/, value/, reward/ from here after the config exists (ZeRO-3: partitioned at load time)",
    )
    parser.add_argument("--resume_from", default=None, help="a checkpoint of an identical run to resume from")
    parser.add_argument("--no_ds3_gather", action="store_true", help="ZeRO-3: generate from sharded weights")
    cli = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    # Built before the config makes the DeepSpeed config live, so they start whole (same seed: same weights on every
    # rank); deepspeed.initialize / prepare_deepspeed then partition them under ZeRO-3. With --models_dir they are
    # only saved (by the test) and loaded below instead.
    policy, ref_policy, value_model, reward_model = build_models(tokenizer, cli.reward)
    initial = policy.lm_head.weight.detach().clone()
    args = RobustPPOConfig(
        output_dir=cli.output_dir,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        num_mini_batches=2,
        num_ppo_epochs=2,
        total_episodes=16,
        response_length=4,
        local_rollout_forward_batch_size=2,
        stop_token="eos",
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="steps" if cli.save_steps else "no",
        save_steps=cli.save_steps or 500,
        report_to="none",
        num_sample_generations=0,
        ddp_backend="gloo",
        seed=0,
        ds3_gather_for_generation=not cli.no_ds3_gather,
    )
    if cli.models_dir is not None:
        # As users load models: after the config, so under ZeRO-3 `from_pretrained` partitions them (zero.Init).
        models = Path(cli.models_dir)
        policy = AutoModelForCausalLM.from_pretrained(models / "policy")
        ref_policy = AutoModelForCausalLM.from_pretrained(models / "policy")
        value_model = AutoModelForSequenceClassification.from_pretrained(models / "value")
        reward_model = AutoModelForSequenceClassification.from_pretrained(models / "reward")
    prompts = Dataset.from_dict({"input_ids": [tokenizer(f"Question {i}: hello?")["input_ids"] for i in range(16)]})

    partitioned_at_load = all(hasattr(p, "ds_id") for p in policy.parameters())
    trainer = RobustPPOTrainer(
        args=args,
        processing_class=tokenizer,
        model=policy,
        ref_model=ref_policy,
        reward_model=reward_model,
        train_dataset=prompts,
        value_model=value_model,
    )
    if trainer.accelerator.is_main_process:
        os.makedirs(cli.output_dir, exist_ok=True)
        torch.save(initial, os.path.join(cli.output_dir, "initial_lm_head.pt"))
    trainer.train(resume_from_checkpoint=cli.resume_from)
    trainer.save_model(cli.output_dir)
    # Replicas must agree after training (gradients synchronised); ZeRO-3 shards the weights, so skip it there.
    trained = trainer.accelerator.unwrap_model(trainer.model_wrapped)
    zero3 = trainer.is_deepspeed_enabled and trainer.accelerator.state.deepspeed_plugin.zero_stage == 3
    checksum = torch.tensor([0.0 if zero3 else float(sum(p.double().sum() for p in trained.parameters()))])
    checksums = trainer.accelerator.gather(checksum).tolist()

    if trainer.accelerator.is_main_process:
        stage = trainer.accelerator.state.deepspeed_plugin.zero_stage if trainer.is_deepspeed_enabled else None
        info = {
            "distributed_type": str(trainer.accelerator.distributed_type),
            "deepspeed": trainer.is_deepspeed_enabled,
            "zero_stage": stage,
            "world_size": trainer.accelerator.num_processes,
            "batch_size": trainer.args.batch_size,
            "param_checksums": checksums,
            "partitioned_at_load": partitioned_at_load,
            "log_history": trainer.state.log_history,
        }
        with open(os.path.join(cli.output_dir, "run_info.json"), "w") as f:
            json.dump(info, f, indent=1)
        print("ds_train_ppo: done", flush=True)


if __name__ == "__main__":
    main()
