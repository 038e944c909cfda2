"""
Run RobustGRPOTrainer or RobustRLOOTrainer under DeepSpeed (run by the slow tests of tests/test_robust_*_trainer.py
through `accelerate launch` with `cpu_zero2.yaml` or `cpu_zero3.yaml`), then save the policy (consolidated).

    DS_ACCELERATOR=cpu accelerate launch --config_file trl_robust/accelerate_configs/cpu_zero3.yaml \
        tests/scripts/ds_robust_rl.py --trainer grpo --policy POLICY_DIR --brme BRME_DIR --output_dir OUT

Rank 0 writes to `OUT/run_info.json` the ZeRO stage, the world size, whether the BRME reward function is a DeepSpeed
engine whose weights are partitioned (ZeRO-3 sharding, as TRL does for any reward model) and the log history.
"""

import argparse
import json
import os
import sys
from pathlib import Path

from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.robust_rl_helpers import prompt_dataset, rl_args  # noqa: E402
from tests.scripts.tiny_setup import finish_distributed  # noqa: E402
from trl_robust import RobustGRPOConfig, RobustGRPOTrainer, RobustRLOOConfig, RobustRLOOTrainer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trainer", choices=("grpo", "rloo"), required=True)
    parser.add_argument("--policy", required=True)
    parser.add_argument("--brme", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--max_steps", type=int, default=2)
    cli = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(cli.policy)
    config_class, trainer_class = {
        "grpo": (RobustGRPOConfig, RobustGRPOTrainer),
        "rloo": (RobustRLOOConfig, RobustRLOOTrainer),
    }[cli.trainer]
    # 2 processes x 4 completions = 2 prompts x 4 generations per step
    args = config_class(
        **rl_args(cli.output_dir, tokenizer, max_steps=cli.max_steps, per_device_train_batch_size=4, ddp_backend="gloo")
    )
    trainer = trainer_class(
        model=cli.policy,
        reward_funcs=cli.brme,
        args=args,
        train_dataset=prompt_dataset(),
        processing_class=tokenizer,
    )
    engine = trainer.reward_funcs[0]
    info = {
        "zero_stage": trainer.accelerator.state.deepspeed_plugin.zero_stage if trainer.is_deepspeed_enabled else None,
        "world_size": trainer.accelerator.num_processes,
        "brme_is_engine": type(engine).__name__ == "DeepSpeedEngine",
        "brme_partitioned": all(hasattr(p, "ds_id") for p in engine.module.score.parameters())
        if hasattr(engine, "module")
        else False,
    }
    trainer.train()
    trainer.save_model(os.path.join(cli.output_dir, "policy"))  # every rank: ZeRO-3 gathers the shards
    if trainer.accelerator.is_main_process:
        os.makedirs(cli.output_dir, exist_ok=True)
        with open(os.path.join(cli.output_dir, "run_info.json"), "w") as f:
            json.dump({**info, "log_history": trainer.state.log_history}, f, indent=1)
        print(f"ds_robust_rl: done, {info}", flush=True)


if __name__ == "__main__":
    main()
    finish_distributed()
