"""
Train a tiny policy with RobustPPOTrainer under DeepSpeed (run by tests/test_robust_ppo_deepspeed.py through
`accelerate launch`).

    DS_ACCELERATOR=cpu accelerate launch --config_file trl_robust/accelerate_configs/cpu_zero3.yaml \
        tests/scripts/ds_train_ppo.py --output_dir OUT [--reward brme] [--lora]

Also runs without DeepSpeed under DDP: `ACCELERATE_USE_CPU=true python -m torch.distributed.run --nproc_per_node 2
tests/scripts/ds_train_ppo.py --output_dir OUT` on CPU. Rank 0 writes the policy's `lm_head.weight` before training to
`OUT/initial_lm_head.pt` and, to `OUT/run_info.json`, the distributed type (and ZeRO stage), the world size, every
rank's checksum of the trained weights (under ZeRO-3: of the partitions that rank holds) and the log history;
`trainer.save_model(OUT)` writes the policy (with --lora: its adapter, and rank 0 also writes the base weights of
`lm_head` and a LoRA-wrapped projection before and after training to `OUT/base_weights.pt`).
"""

import argparse
import json
import os
from pathlib import Path

import torch
from datasets import Dataset
from tiny_setup import TOKENIZER_DIR, build_models, finish_distributed
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from trl_robust import RobustPPOConfig, RobustPPOTrainer

# With --lora: weights of the base policy that must not change (q_proj is wrapped by LoRA, lm_head is not), by their
# names in the bare model and in the PeftModel.
BASE_WEIGHTS = {
    "lm_head.weight": "base_model.model.lm_head.weight",
    "model.layers.0.self_attn.q_proj.weight": "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight",
}


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
    parser.add_argument(
        "--lora", action="store_true", help="train a LoRA adapter on the policy; the reference is the policy without it"
    )
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
    peft_config = None
    if cli.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
        ref_policy = None  # the trainer uses the policy with its adapter disabled
        initial_base = {name: policy.state_dict()[name].clone() for name in BASE_WEIGHTS}
    trainer = RobustPPOTrainer(
        args=args,
        processing_class=tokenizer,
        model=policy,
        ref_model=ref_policy,
        reward_model=reward_model,
        train_dataset=prompts,
        value_model=value_model,
        peft_config=peft_config,
    )
    if trainer.accelerator.is_main_process:
        os.makedirs(cli.output_dir, exist_ok=True)
        torch.save(initial, os.path.join(cli.output_dir, "initial_lm_head.pt"))
    trainer.train(resume_from_checkpoint=cli.resume_from)
    trainer.save_model(cli.output_dir)
    # Replicas must agree after training (gradients synchronised). ZeRO-3 gives each rank its own partition of every
    # parameter (`ds_tensor`), so there each rank sums its partitions: not comparable across ranks, but across runs with
    # the same world size, which partition identically (the resume test).
    trained = trainer.accelerator.unwrap_model(trainer.model_wrapped)
    local = [p.ds_tensor if hasattr(p, "ds_tensor") else p for p in trained.parameters()]
    checksum = torch.tensor([float(sum(t.detach().double().sum() for t in local))])
    checksums = trainer.accelerator.gather(checksum).tolist()
    lora = [p for name, p in trained.named_parameters() if "lora_" in name]
    # False under ZeRO-3 too when DeepSpeed keeps them whole on every rank (`ds_persist`: small parameters).
    lora_partitioned = bool(lora) and all(hasattr(p, "ds_id") and not p.ds_persist for p in lora)
    if cli.lora:
        # Collective under DeepSpeed (ZeRO-3 gathers every partition); the full state dict lands on rank 0.
        full = trainer.accelerator.get_state_dict(trainer.deepspeed if trainer.is_deepspeed_enabled else trained)
        if trainer.accelerator.is_main_process:
            final_base = {name: full[f"policy.{key}"].clone() for name, key in BASE_WEIGHTS.items()}
            torch.save({"initial": initial_base, "final": final_base}, os.path.join(cli.output_dir, "base_weights.pt"))

    if trainer.accelerator.is_main_process:
        stage = trainer.accelerator.state.deepspeed_plugin.zero_stage if trainer.is_deepspeed_enabled else None
        info = {
            "distributed_type": str(trainer.accelerator.distributed_type),
            "deepspeed": trainer.is_deepspeed_enabled,
            "zero_stage": stage,
            "world_size": trainer.accelerator.num_processes,
            "batch_size": trainer.batch_sizes.batch_size,
            "param_checksums": checksums,
            "partitioned_at_load": partitioned_at_load,
            "peft": trainer.is_peft_model,
            "ref_model_is_none": trainer.ref_model is None,
            "lora_partitioned": lora_partitioned,
            "log_history": trainer.state.log_history,
        }
        with open(os.path.join(cli.output_dir, "run_info.json"), "w") as f:
            json.dump(info, f, indent=1)
        print("ds_train_ppo: done", flush=True)


if __name__ == "__main__":
    main()
    finish_distributed()
