"""
Shared pieces of the RobustGRPOTrainer / RobustRLOOTrainer tests: a tiny policy saved with the SmolLM2 tokenizer (so
TRL can reload it as the reference model), and a tiny BRME that prefers " great" to " awful", trained with
BRMERewardTrainer in about a second. The policy samples only those two words (every other token is suppressed at
generation), so "say great more often" is a reward a tiny policy learns in a few steps.
"""

import itertools
import json
from pathlib import Path

import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM

from tests.conftest import REPO, deepspeed_launcher, run_launch
from tests.scripts import tiny_setup
from trl_robust import BRMEConfig, BRMERewardConfig, BRMERewardModel, BRMERewardTrainer

GOOD, BAD = " great", " awful"
PROMPTS = ["Review:", "My review:", "Verdict:", "Opinion:"]
COMPLETION_TOKENS = 3


def tiny_llama_config(tokenizer) -> LlamaConfig:
    """The scripts' tiny Llama (tests/scripts/tiny_setup.py) with 64 positions: prompts and completions are short."""
    return tiny_setup.tiny_llama_config(tokenizer, max_position_embeddings=64)


def tiny_policy(tokenizer, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(tokenizer))


def save_policy(path: Path, tokenizer) -> Path:
    """The policy as users have it: a folder with weights and tokenizer (TRL reloads the reference from it)."""
    tiny_policy(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def word_ids(tokenizer) -> list[int]:
    return [tokenizer(word, add_special_tokens=False)["input_ids"][0] for word in (GOOD, BAD)]


def generation_kwargs(tokenizer) -> dict:
    """Sampling restricted to the two words (the policy's log-probs still use the full vocabulary)."""
    keep = set(word_ids(tokenizer))
    return {"suppress_tokens": [i for i in range(len(tokenizer)) if i not in keep]}


def prompt_dataset(n: int = 16) -> Dataset:
    return Dataset.from_list([{"prompt": PROMPTS[i % len(PROMPTS)]} for i in range(n)])


def great_pairs() -> Dataset:
    """Every pair of 3-word answers where the chosen one says " great" more often."""
    answers = ["".join(words) for words in itertools.product((GOOD, BAD), repeat=COMPLETION_TOKENS)]
    rows = []
    for prompt in PROMPTS:
        for chosen, rejected in itertools.permutations(answers, 2):
            if chosen.count(GOOD) > rejected.count(GOOD):
                rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return Dataset.from_list(rows)


def train_great_brme(path: Path, tokenizer, num_heads: int = 3) -> Path:
    """A BRME checkpoint (weights and tokenizer) whose heads rank answers by how often they say " great"."""
    torch.manual_seed(0)
    model = BRMERewardModel(BRMEConfig(text_config=tiny_llama_config(tokenizer).to_dict(), num_heads=num_heads))
    args = BRMERewardConfig(
        output_dir=str(path),
        per_device_train_batch_size=16,
        learning_rate=1e-2,
        num_train_epochs=3,
        gradient_checkpointing=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        seed=0,
    )
    trainer = BRMERewardTrainer(model, args, train_dataset=great_pairs(), processing_class=tokenizer)
    trainer.train()
    trainer.save_model(str(path))
    return path


def rl_args(path: Path, tokenizer, **overrides) -> dict:
    """Arguments shared by the GRPO and RLOO configs of the tests: tiny batches, 3-token completions."""
    values = dict(
        output_dir=str(path),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=COMPLETION_TOKENS,
        learning_rate=1e-2,
        max_steps=3,
        logging_steps=1,
        gradient_checkpointing=False,
        generation_kwargs=generation_kwargs(tokenizer),
        report_to="none",
        save_strategy="no",
        seed=0,
    )
    values.update(overrides)
    return values


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: param.detach().clone() for name, param in model.named_parameters()}


def capture_scores(trainer) -> list:
    """Record every `BRMEScores` the trainer's scorers return (one per BRME per generation batch)."""
    calls = []
    for scorer in trainer.brme_scorers.values():

        def score(*args, _score=scorer.score, **kwargs):
            calls.append(_score(*args, **kwargs))
            return calls[-1]

        scorer.score = score
    return calls


def capture_rewards(trainer) -> list:
    """Record (prompts, completions, rewards_per_func) of every `_calculate_rewards` call."""
    calls = []
    calculate = trainer._calculate_rewards

    def wrapped(inputs, prompts, completions, completion_ids_list):
        out = calculate(inputs, prompts, completions, completion_ids_list)
        calls.append((list(prompts), list(completions), out.detach().clone()))
        return out

    trainer._calculate_rewards = wrapped
    return calls


def step_logs(trainer, key: str = "brme/robust") -> list[dict]:
    return [entry for entry in trainer.state.log_history if key in entry]


def run_deepspeed_script(trainer: str, tmp_path, brme_dir, policy_dir, stage: int = 3) -> None:
    """Two CPU processes under DeepSpeed ZeRO-2 or ZeRO-3 (tests/scripts/ds_robust_rl.py): the BRME is a DeepSpeed
    engine (with partitioned weights under ZeRO-3), the run logs the robust reward it optimised, and the saved policy is
    one consolidated safetensors file holding trained weights."""
    from trl_robust.accelerate_configs import config_path

    out = tmp_path / "out"
    script = REPO / "tests" / "scripts" / "ds_robust_rl.py"
    args = ["--trainer", trainer, "--policy", str(policy_dir), "--brme", str(brme_dir), "--output_dir", str(out)]
    run_launch([*deepspeed_launcher(config_path(f"cpu_zero{stage}")), str(script), *args])
    info = json.loads((out / "run_info.json").read_text())
    assert info["zero_stage"] == stage and info["world_size"] == 2
    assert info["brme_is_engine"] and info["brme_partitioned"] == (stage == 3)
    logs = [entry for entry in info["log_history"] if "brme/robust" in entry]
    key = f"rewards/{brme_dir.name}/mean"
    assert logs and all(abs(entry[key] - entry["brme/robust"]) < 1e-5 for entry in logs)
    from safetensors.torch import load_file

    saved = load_file(out / "policy" / "model.safetensors")
    initial = load_file(Path(policy_dir) / "model.safetensors")
    assert set(saved) == set(initial) and all(saved[k].numel() == initial[k].numel() for k in initial)
    assert any(not torch.equal(saved[k].float(), initial[k].float()) for k in initial)  # trained, not re-saved
