"""Do PPO's critic-free group mode and GRPO push the policy the same way from the same samples? (issue 14)

One generation batch of GRPO (TRL 1.16's `GRPOTrainer`, `num_generations` answers to each of a few prompts, scored
by VADER) is handed to `RobustPPOTrainer`'s own rollout (its sampling and scoring replaced by GRPO's answers and
scores), and the gradient of each trainer's first loss is taken on the same initial weights. Printed per PPO arm:
the cosine between its gradient and GRPO's, the two norms, and the same for a few prompt batches. A cosine near 1
means that a difference in learning lies elsewhere (sampling, the optimiser, the schedule), not in the loss.

    PYTHONPATH=. HF_HUB_OFFLINE=1 python benchmarks/ppo_grpo_gradients.py --batches 4
"""

import argparse
import json
import tempfile
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
from trl import GRPOConfig, GRPOTrainer

from trl_robust import overoptimization as oo
from trl_robust.gold_scorers import load_gold_scorer
from trl_robust.modeling_brme import BRMERewardModel
from trl_robust.ppo_utils import lengths_to_mask
from trl_robust.robust_ppo_config import RobustPPOConfig
from trl_robust.robust_ppo_trainer import RobustPPOTrainer
from trl_robust.script_args import resolve_model

ARMS = {
    "ppo_group": {},
    "ppo_group_std": {"scale_by_prompt_std": True},
}


def flat_grad(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=4, help="generation batches (each a fresh set of prompts)")
    parser.add_argument("--prompts", type=int, default=2, help="prompts per batch")
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--response-length", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="outputs/ppo_grpo_gradients")
    cli = parser.parse_args()
    torch.set_num_threads(cli.threads)
    out = Path(cli.out)
    out.mkdir(parents=True, exist_ok=True)

    policy_path = resolve_model("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(policy_path)
    gold = load_gold_scorer("vader")
    train_prompts, _, _ = oo.load_prompts(tokenizer, 64)
    batch_size = cli.prompts * cli.num_generations
    scores_seen: list[list[float]] = []

    def vader(prompts, completions, **kwargs):
        scores = [float(s) for s in gold(list(prompts), list(completions))]
        scores_seen.append(scores)
        return scores

    common = dict(
        per_device_train_batch_size=batch_size, bf16=False, temperature=0.7, learning_rate=3e-5, report_to="none"
    )
    tmp = Path(tempfile.mkdtemp())
    grpo = GRPOTrainer(
        model=policy_path,
        reward_funcs=vader,
        args=GRPOConfig(
            output_dir=str(tmp / "grpo"),
            num_generations=cli.num_generations,
            top_k=0,
            top_p=1.0,
            beta=0.0,
            max_completion_length=cli.response_length,
            max_steps=1,
            **common,
        ),
        train_dataset=Dataset.from_dict({"prompt": train_prompts[:batch_size]}),
        processing_class=tokenizer,
    )
    # A BRME only to build the PPO trainer: its scoring is replaced by GRPO's scores below.
    minilm = resolve_model("all-minilm-l6-v2")
    BRMERewardModel.from_backbone(minilm, num_heads=2).save_pretrained(tmp / "rm")
    rm_tokenizer = AutoTokenizer.from_pretrained(minilm)
    ppo = {}
    for arm, fields in ARMS.items():
        args = RobustPPOConfig(
            output_dir=str(tmp / arm),
            use_critic=False,
            num_samples_per_prompt=cli.num_generations,
            advantage_baseline="prompt_mean",
            num_ppo_epochs=1,
            kl_coef=0.0,
            response_length=cli.response_length,
            stop_token="eos",
            total_episodes=batch_size,
            local_rollout_forward_batch_size=batch_size,
            num_sample_generations=0,
            **common,
            **fields,
        )
        ppo[arm] = RobustPPOTrainer(
            args=args,
            processing_class=tokenizer,
            model=AutoModelForCausalLM.from_pretrained(policy_path),
            ref_model=AutoModelForCausalLM.from_pretrained(policy_path),
            reward_model=BRMERewardModel.from_pretrained(tmp / "rm"),
            value_model=None,
            reward_processing_class=rm_tokenizer,
            train_dataset=Dataset.from_dict({"prompt": train_prompts[:batch_size]}),
        )

    grpo.current_gradient_accumulation_steps = 1  # set by Trainer's loop, which this script does not run
    rows = []
    for b in range(cli.batches):
        set_seed(b)
        prompts = train_prompts[batch_size + b * cli.prompts : batch_size + (b + 1) * cli.prompts]
        grpo.model.train()
        inputs = grpo._generate_and_score_completions(
            [{"prompt": p} for p in prompts for _ in range(cli.num_generations)]
        )
        scores = torch.tensor(scores_seen[-1])
        grpo.model.zero_grad()
        grpo.compute_loss(grpo.model, inputs).backward()
        g_grpo = flat_grad(grpo.model)
        row = {"batch": b, "scores": [round(s, 3) for s in scores.tolist()], "grpo_norm": g_grpo.norm().item()}
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"].bool()
        for arm, trainer in ppo.items():
            lengths = completion_mask.sum(1)
            width = cli.response_length
            responses = torch.full((batch_size, width), trainer.filler_id, dtype=torch.long)
            responses[:, : completion_ids.shape[1]] = torch.where(completion_mask, completion_ids, trainer.filler_id)
            response_mask = lengths_to_mask(lengths, width)
            has_stop = (responses == trainer.stop_token_id).logical_and(response_mask).any(1)
            queries, query_mask = inputs["prompt_ids"], inputs["prompt_mask"]
            sample = (
                responses,
                lengths,
                has_stop,
                response_mask,
                torch.cat([queries, responses], 1),
                torch.cat([query_mask, response_mask.long()], 1),
            )
            trainer._sample = lambda q, m, sample=sample: sample
            trainer.score = lambda *a, scores=scores, **k: {"scores": scores.clone()}  # one chunk: the whole batch
            trainer.model.eval()
            batch = trainer._rollout(queries, query_mask)
            trainer.optimizer.step = lambda *a, **k: None  # keep the initial weights: only the gradient is wanted
            trainer.optimizer.zero_grad = lambda *a, **k: None
            trainer.accelerator.clip_grad_norm_ = lambda *a, **k: None
            policy = trainer.accelerator.unwrap_model(trainer.model).policy
            policy.zero_grad()
            trainer._ppo_epochs(batch)
            g = flat_grad(policy)
            row[f"{arm}_norm"] = g.norm().item()
            row[f"{arm}_cosine"] = (g.double() @ g_grpo.double() / (g.double().norm() * g_grpo.double().norm())).item()
        rows.append(row)
        print(json.dumps(row), flush=True)
    (out / "gradients.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
