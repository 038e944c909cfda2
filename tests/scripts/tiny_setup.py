"""
What the scripts in this folder share: the SmolLM2 tokenizer kept under tests/assets, the tiny Llama built on it, the
PPO models of ds_train_ppo.py, and the command line and kill points of the kill-and-resume scripts (resume_*.py).

A script run by path (`python tests/scripts/x.py`, `accelerate launch`, `torch.distributed.run`) has this folder first
on `sys.path`, so it imports this module as `tiny_setup`; the tests, with the repository on `sys.path`, import it as
`tests.scripts.tiny_setup`.
"""

import argparse
import os
import signal
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification, TrainerCallback

from trl_robust import BRMEConfig, BRMERewardModel

TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "assets" / "smollm2-135m"


def tiny_llama_config(tokenizer, **kwargs) -> LlamaConfig:
    """Hidden size 32, 2 layers, 2 heads, 128 positions, the tokenizer's vocabulary and special tokens; `kwargs`
    override or add config values."""
    values = dict(
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
    )
    return LlamaConfig(**{**values, **kwargs})


def build_models(tokenizer, reward: str) -> tuple:
    """ds_train_ppo.py's (policy, reference, value model, reward model), the same on every call (seeded); `reward` is
    "brme" (3 heads) or "seqcls"."""
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


def resume_parser() -> argparse.ArgumentParser:
    """The options both resume scripts take (each adds its own `--resume`): `--output_dir OUT`,
    `--pause_after_save FLAG` (see `pause_after_first_save`) and `--die_in_save STEP` (see `dies_in_save`)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--pause_after_save")
    parser.add_argument("--die_in_save", type=int)
    return parser


class PauseAfterFirstSave(TrainerCallback):
    """Writes the step to `flag` once the first checkpoint is complete, then sleeps: the test SIGKILLs the process."""

    def __init__(self, flag: Path):
        self.flag = flag

    def on_save(self, args, state, control, **kwargs):
        if not self.flag.exists():
            # Written beside, then renamed: the test polls for the flag and kills at once, and a flag it saw created
            # by write_text could still be empty (CI read '' once).
            staging = self.flag.with_name(self.flag.name + ".tmp")
            staging.write_text(str(state.global_step))
            os.replace(staging, self.flag)
            time.sleep(120)  # killed here


def pause_after_first_save(flag: str | None) -> list | None:
    """The trainer's callbacks: a `PauseAfterFirstSave` writing `flag`, or none without a flag."""
    return [PauseAfterFirstSave(Path(flag))] if flag else None


def dies_in_save(trainer_class: type, die_at: int | None) -> type:
    """`trainer_class`, killed (SIGKILL, no cleanup) half-way through writing the checkpoint of step (update) `die_at`:
    after the weights and the optimizer are written, before the RNG and trainer states are. `None`: never killed."""

    class DiesInSave(trainer_class):
        def _save_rng_state(self, output_dir):
            if self.state.global_step == die_at:
                os.kill(os.getpid(), signal.SIGKILL)
            super()._save_rng_state(output_dir)

    return DiesInSave


def finish_distributed() -> None:
    """Leave the process group cleanly before the interpreter exits. Without it the communication threads are torn
    down at exit, and under load a rank that finished its work could abort ("terminate called without an active
    exception", exit -6), failing the launch."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
