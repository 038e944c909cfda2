"""PPO throughput: RobustPPOTrainer against TRL 1.12's PPOTrainer, side by side at one configuration.

Three arms train the same shapes from the same seed weights on the same fixed-length random prompts:

- `trl112`: TRL 1.12's `trl.experimental.ppo.PPOTrainer` (TRL removed it after 1.12), imported in its own subprocess
  from a separate install (`--trl112-path`, default `/tmp/trl112`, put first on `PYTHONPATH`; e.g.
  `pip install --target /tmp/trl112 --no-deps trl==1.12.0`). The reward model is a single-head
  `LlamaForSequenceClassification`.
- `single`: `RobustPPOTrainer` with the same single-head reward model.
- `brme`: `RobustPPOTrainer` with a `BRMERewardModel` of `--num-heads` heads (K=5) on the same backbone weights.

Equal settings on every side: policy, reference (a copy of the policy), value model and reward model of the
`--shape` (`smol`: the SmolLM2-135M config of `tests/assets/smollm2-135m`, random init; `tiny`: 2 layers of 64),
`--prompt-len` prompt tokens, `--response-len` sampled tokens with no stop token (every response is full length),
`--episodes-per-update` episodes per PPO update (`per_device_train_batch_size * gradient_accumulation_steps`),
`--ppo-epochs` epochs of `--mini-batches` minibatches, `local_rollout_forward_batch_size = --rollout-batch`,
`num_sample_generations=0`, `logging_steps=1` (TRL 1.12 logs every update), the same gradient checkpointing
(`--gradient-checkpointing` enables it on the policy and value model of every arm: TRL 1.12's PPOTrainer does not
do it itself), bf16 weights with `--bf16` (as TRL's GPU reference figure), fp32 otherwise.

How it measures (house style of `reward_trainer_throughput.py`):

- Every arm runs in a fresh subprocess of this script (`--arm`), `--repeats` times, in alternating order
  (trl112, single, brme, brme, single, trl112, ...) so that drift of a shared machine falls on every arm alike.
- Episodes/s over the updates after `--warmup-updates`, timed at `on_step_end` (once per PPO update, after a CUDA
  sync), and on a CPU episodes per second of process CPU time (all threads), which other jobs on a shared machine
  move far less than wall time.
- Peak memory: on a GPU `torch.cuda.max_memory_allocated()`; on a CPU the growth of the resident set from just
  before the models are built to the end of training (the absolute peak RSS is reported too).
- Phase breakdown (seconds per timed update), by wrapping the trainers' methods in the arm's process (with a CUDA
  sync around each wrapped call on a GPU, in every arm alike): generation, policy / reference / value / reward
  forwards of the rollout, the rest of the rollout (rewards, GAE), the PPO update (all epochs) and the rest of the
  update (metrics, logging, cache emptying). TRL 1.12 takes the rollout's policy log-probabilities from the
  generation scores (no policy forward); its `gc.collect()` calls are timed separately; its PPO update is the
  remainder of the step. With one micro-batch per update, RobustPPOTrainer runs the first PPO epoch's policy + value
  forward (with gradients) in the rollout instead of separate no-grad policy and value forwards: "policy+value fwd"
  (its backward is in the PPO update).

The table printed last gives episodes/s, episodes/CPU-s, peak memory, ratios against TRL 1.12 and PASS/FAIL
against the targets (>= 2x TRL 1.12's episodes/s, <= 1x its peak memory; a K=5 BRME costs within 3% of the single-head
RM). The exit code is 0 whatever the ratios are; it is 1 only when an arm crashed.

    python benchmarks/ppo_throughput.py --shape tiny                                       # CPU smoke run
    python benchmarks/ppo_throughput.py --shape smol --prompt-len 16 --response-len 16 --episodes-per-update 4 \\
        --threads 1
    python benchmarks/ppo_throughput.py --shape smol --prompt-len 64 --response-len 64 --episodes-per-update 64 \\
        --ppo-epochs 4 --bf16 --device cuda --trl112-path /tmp/trl112
"""

import argparse
import copy
import gc
import os
import statistics
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path

import harness
from harness import FIRST_TOKEN_ID, REPO, fmt_mem

ARMS = ["trl112", "single", "brme"]
ARM_TITLES = {
    "trl112": "TRL 1.12 PPOTrainer (1-head RM)",
    "single": "RobustPPOTrainer, 1-head RM",
    "brme": "RobustPPOTrainer, BRME K={k}",
}
PHASES = [
    "generation",
    "policy+value fwd",
    "policy fwd",
    "ref fwd",
    "value fwd",
    "reward fwd",
    "rollout rest",
    "gc.collect",
    "PPO update",
    "update rest",
]
TARGET_THROUGHPUT = 2.0  # our episodes/s >= 2 x TRL 1.12's
TARGET_MEMORY = 1.0  # our peak memory <= TRL 1.12's
TARGET_BRME_COST = 1.03  # BRME K=5 time per episode <= 1.03 x the single-head RM's


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shape", choices=["tiny", "smol"], default="tiny", help="policy/value/RM shape (random init)")
    p.add_argument("--prompt-len", type=int, default=None, help="prompt tokens (default: 64 on cuda, 16 on cpu)")
    p.add_argument("--response-len", type=int, default=None, help="sampled tokens (default: 64 / 16)")
    p.add_argument("--episodes-per-update", type=int, default=None, help="episodes per PPO update (default: 64 / 8)")
    p.add_argument("--grad-accum", type=int, default=1, help="gradient_accumulation_steps (divides the episodes)")
    p.add_argument("--mini-batches", type=int, default=1, help="num_mini_batches")
    p.add_argument("--ppo-epochs", type=int, default=4, help="num_ppo_epochs")
    p.add_argument("--rollout-batch", type=int, default=None, help="local_rollout_forward_batch_size (default: all)")
    p.add_argument("--updates", type=int, default=None, help="PPO updates per arm run (default: 8 / 4)")
    p.add_argument("--warmup-updates", type=int, default=None, help="untimed first updates (default: 2 / 1)")
    p.add_argument("--num-heads", type=int, default=5, help="K, heads of the BRME reward model")
    p.add_argument("--repeats", type=int, default=1, help="runs per arm, in alternating order (ABBA...)")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {ARMS}")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--bf16", action="store_true", help="bf16 weights (as TRL's GPU reference figure)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="on the policy and value model of every arm")
    p.add_argument("--trl112-path", default="/tmp/trl112", help="folder where TRL 1.12 is installed (pip --target)")
    harness.add_run_options(p, ARMS, threads_help="torch CPU threads (default: all cores on cpu)")
    args = p.parse_args(argv)

    gpu = harness.resolve_device(args)
    args.prompt_len = args.prompt_len or (64 if gpu else 16)
    args.response_len = args.response_len or (64 if gpu else 16)
    args.episodes_per_update = args.episodes_per_update or (64 if gpu else 8)
    args.updates = args.updates or (8 if gpu else 4)
    if args.warmup_updates is None:
        args.warmup_updates = 2 if gpu else 1
    if not 1 <= args.warmup_updates < args.updates:
        p.error(f"--warmup-updates must be in [1, updates), got {args.warmup_updates} with --updates {args.updates}")
    if args.episodes_per_update % args.grad_accum:
        p.error("--episodes-per-update must be divisible by --grad-accum")
    args.per_device_batch = args.episodes_per_update // args.grad_accum
    if args.episodes_per_update % args.mini_batches:
        p.error("--episodes-per-update must be divisible by --mini-batches")
    args.rollout_batch = args.rollout_batch or args.episodes_per_update
    args.arm_list = [a.strip() for a in args.arms.split(",") if a.strip()]
    if not args.arm_list or any(a not in ARMS for a in args.arm_list):
        p.error(f"--arms must be a subset of {ARMS}")
    if args.num_heads < 1 or args.repeats < 1:
        p.error("--num-heads and --repeats must be >= 1")
    harness.resolve_threads_and_asset(p, args)
    return args


# --------------------------------------------------------------------------------------------------------------------
# One arm, in its own process
# --------------------------------------------------------------------------------------------------------------------


def load_tokenizer(asset: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(asset)
    # SmolLM2's pad token is its EOS: TRL 1.12 finds real tokens by comparing with the pad id, so give it a pad token
    # of its own (as TRL's GPU reference script does); the models' vocabulary covers it.
    if tok.pad_token is None or tok.pad_token_id == tok.eos_token_id:
        tok.add_special_tokens({"pad_token": "[PAD]"})
    tok.padding_side = "left"
    return tok


def text_config(shape: str, tok, asset: str):
    from transformers import LlamaConfig

    if shape == "tiny":
        cfg = harness.tiny_llama_config(tok)
    elif shape == "smol":  # the real SmolLM2-135M config, random weights, vocabulary + the added pad token
        cfg = LlamaConfig.from_json_file(str(Path(asset) / "config.json"))
        cfg.dtype = None  # the file says bfloat16; --bf16 decides here
        cfg.vocab_size = len(tok)
        for key, value in harness.special_token_ids(tok).items():
            setattr(cfg, key, value)
    else:
        raise ValueError(shape)
    cfg.num_labels = 1
    return cfg


def build_models(arm: str, cfg, args):
    """Policy, reference (a copy), value model and reward model, from the same seeds in every arm."""
    import torch
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification

    torch.manual_seed(args.seed + 1)
    policy = LlamaForCausalLM(copy.deepcopy(cfg))
    ref = copy.deepcopy(policy)
    torch.manual_seed(args.seed + 2)
    value = LlamaForSequenceClassification(copy.deepcopy(cfg))
    torch.manual_seed(args.seed + 3)
    reward = LlamaForSequenceClassification(copy.deepcopy(cfg))
    if arm == "brme":
        from trl_robust import BRMEConfig, BRMERewardModel

        # Built from its config (so its backbone gets the same attention implementation), then given the single-head
        # reward model's backbone weights.
        brme = BRMERewardModel(BRMEConfig(text_config=copy.deepcopy(cfg), num_heads=args.num_heads))
        brme.backbone.load_state_dict(reward.model.state_dict())
        reward = brme
    rm_backbone = reward.backbone if arm == "brme" else reward.model
    with torch.no_grad():
        checksum = sum(
            p.double().sum().item()
            for m in (policy, value.model, rm_backbone)
            for p in m.state_dict().values()
            if p.is_floating_point()
        )
    models = [policy, ref, value, reward]
    if args.bf16:
        models = [m.to(torch.bfloat16) for m in models]
    if args.gradient_checkpointing and arm == "trl112":
        # RobustPPOTrainer enables it on the policy and value model from the config; TRL 1.12 does not.
        models[0].gradient_checkpointing_enable()
        models[2].gradient_checkpointing_enable()
    attn = policy.model.layers[0].self_attn.config._attn_implementation
    return models, checksum, attn


class PhaseTimer:
    """Wall and CPU seconds per phase, accumulated only while `active` (the timed updates)."""

    def __init__(self, gpu: bool):
        import torch

        self.sync = torch.cuda.synchronize if gpu else (lambda: None)
        self.active = False
        self.wall = {}
        self.cpu = {}

    def add(self, name, wall, cpu):
        if self.active:
            self.wall[name] = self.wall.get(name, 0.0) + wall
            self.cpu[name] = self.cpu.get(name, 0.0) + cpu

    def wrap(self, fn, name_of):
        """`fn` timed under the phase `name_of(*args, **kwargs)` (None: not timed)."""

        def timed(*a, **kw):
            name = name_of(*a, **kw)
            if name is None:
                return fn(*a, **kw)
            self.sync()
            w0, c0 = time.perf_counter(), time.process_time()
            out = fn(*a, **kw)
            self.sync()
            self.add(name, time.perf_counter() - w0, time.process_time() - c0)
            return out

        return timed


def instrument_robust(trainer, timer: PhaseTimer) -> None:
    import torch

    import trl_robust.robust_ppo_trainer as rpt

    ref_module = trainer._ref_module
    trainer._generate = timer.wrap(trainer._generate, lambda *a, **k: "generation")
    trainer._policy_logprobs = timer.wrap(
        trainer._policy_logprobs, lambda policy, *a, **k: "ref fwd" if policy is ref_module else "policy fwd"
    )
    # token_values also serves the training forward (grad enabled): only the rollout's no-grad calls are timed.
    rpt.token_values = timer.wrap(rpt.token_values, lambda *a, **k: None if torch.is_grad_enabled() else "value fwd")
    trainer.score = timer.wrap(trainer.score, lambda *a, **k: "reward fwd")
    # With one micro-batch per update the rollout runs the policy + value training forward (with gradients) that the
    # first PPO epoch then reuses: timed as a rollout phase, its backward stays in the PPO update.
    in_rollout = [False]
    rollout = trainer._rollout

    def flagged_rollout(*a, **kw):
        in_rollout[0] = True
        try:
            return rollout(*a, **kw)
        finally:
            in_rollout[0] = False

    trainer._rollout = timer.wrap(flagged_rollout, lambda *a, **k: "rollout total")
    trainer._policy_and_value_forward = timer.wrap(
        trainer._policy_and_value_forward, lambda *a, **k: "policy+value fwd" if in_rollout[0] else None
    )
    trainer._ppo_epochs = timer.wrap(trainer._ppo_epochs, lambda *a, **k: "PPO update")


def instrument_trl112(trainer, timer: PhaseTimer) -> None:
    import torch
    import trl.experimental.ppo.ppo_trainer as ppo_mod

    reward_model = trainer.reward_model
    ppo_mod.batch_generation = timer.wrap(ppo_mod.batch_generation, lambda *a, **k: "generation")
    # `forward` with gradients is the PPO update's forward (part of the update, the step's remainder).
    ppo_mod.forward = timer.wrap(ppo_mod.forward, lambda *a, **k: None if torch.is_grad_enabled() else "ref fwd")
    ppo_mod.get_reward = timer.wrap(
        ppo_mod.get_reward, lambda model, *a, **k: "reward fwd" if model is reward_model else "value fwd"
    )
    ppo_mod.gc = types.SimpleNamespace(collect=timer.wrap(gc.collect, lambda *a, **k: "gc.collect"))


def phase_breakdown(arm: str, timer: PhaseTimer, total_wall: float, total_cpu: float, n: int) -> dict:
    """Seconds per timed update by phase; the remainders make the phases add up to the step time."""
    out = {}
    for table, total, key in ((timer.wall, total_wall, "wall"), (timer.cpu, total_cpu, "cpu")):
        t = dict(table)
        fwd = sum(t.get(k, 0.0) for k in PHASES[:6])  # generation and the rollout's forwards
        if arm == "trl112":
            # Rollout = generation + forwards + bookkeeping; TRL's update is what is left of the step.
            t["PPO update"] = total - fwd - t.get("gc.collect", 0.0)
        else:
            t["rollout rest"] = t.pop("rollout total", 0.0) - fwd
            t["update rest"] = total - fwd - t["rollout rest"] - t.get("PPO update", 0.0)
        out[key] = {name: t.get(name, 0.0) / n for name in PHASES if name in t}
    return out


def run_arm(args) -> dict:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    warnings.filterwarnings("ignore")
    harness.setup_arm_process(args)
    import datasets
    import torch
    import transformers
    import trl
    from transformers import PrinterCallback, TrainerCallback

    gpu = args.device == "cuda"
    if args.arm == "trl112" and not trl.__version__.startswith("1.12"):
        raise RuntimeError(f"the trl112 arm imported trl {trl.__version__} from {trl.__file__}; check --trl112-path")

    tok = load_tokenizer(args.asset)
    cfg = text_config(args.shape, tok, args.asset)
    E, U = args.episodes_per_update, args.updates
    g = torch.Generator().manual_seed(args.seed)
    high = min(len(tok), cfg.vocab_size) - 1  # the added pad token is the last id
    prompts = torch.randint(FIRST_TOKEN_ID, high, (E * U, args.prompt_len), generator=g).tolist()
    dataset = datasets.Dataset.from_dict({"input_ids": prompts})
    rss_before = harness.start_memory(gpu)

    (policy, ref, value, reward), checksum, attn = build_models(args.arm, cfg, args)
    timer = PhaseTimer(gpu)

    class UpdateClock(TrainerCallback):
        def __init__(self):
            self.times, self.cpu_times = [], []

        def on_step_end(self, a, state, control, **kwargs):
            timer.sync()
            self.times.append(time.perf_counter())
            self.cpu_times.append(time.process_time())
            n = len(self.times)
            timer.active = args.warmup_updates <= n < U  # phases of updates warmup+1 .. U
            dt = self.times[-1] - self.times[-2] if n > 1 else float("nan")
            phase = "warmup" if n <= args.warmup_updates else "timed"
            print(f"    [{args.arm}] update {n:>3}/{U}  {dt:7.2f} s/update  ({phase})", flush=True)

    clock = UpdateClock()
    common = dict(
        output_dir=tempfile.mkdtemp(prefix="ppo_bench_"),
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        per_device_train_batch_size=args.per_device_batch,
        gradient_accumulation_steps=args.grad_accum,
        num_ppo_epochs=args.ppo_epochs,
        num_mini_batches=args.mini_batches,
        total_episodes=E * U,
        response_length=args.response_len,
        stop_token=None,
        stop_token_id=None,
        missing_eos_penalty=None,
        num_sample_generations=0,
        local_rollout_forward_batch_size=args.rollout_batch,
        learning_rate=3e-6,
        bf16=args.bf16,
        gradient_checkpointing=args.gradient_checkpointing,
        disable_tqdm=True,
        use_cpu=not gpu,
        seed=args.seed,
    )
    if args.arm == "trl112":
        from trl.experimental.ppo import PPOConfig, PPOTrainer

        config_class, trainer_class, instrument = PPOConfig, PPOTrainer, instrument_trl112
    else:
        from trl_robust import RobustPPOConfig, RobustPPOTrainer

        config_class, trainer_class, instrument = RobustPPOConfig, RobustPPOTrainer, instrument_robust
    trainer = trainer_class(
        args=config_class(**common),
        processing_class=tok,
        model=policy,
        ref_model=ref,
        reward_model=reward,
        train_dataset=dataset,
        value_model=value,
    )
    instrument(trainer, timer)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(clock)
    del policy, ref, value, reward
    trainer.train()
    if len(clock.times) != U:
        raise RuntimeError(f"expected {U} updates, timed {len(clock.times)}")
    w = args.warmup_updates
    update_s = [clock.times[i] - clock.times[i - 1] for i in range(w, U)]
    cpu_s = clock.cpu_times[-1] - clock.cpu_times[w - 1]
    n = len(update_s)
    result = {
        "arm": args.arm,
        "episodes_per_s": E * n / sum(update_s),
        "episodes_per_s_median_update": E / statistics.median(update_s),
        "episodes_per_cpu_s": E * n / cpu_s,
        "s_per_update": sum(update_s) / n,
        "update_s": update_s,
        "phases": phase_breakdown(args.arm, timer, sum(update_s), cpu_s, n),
        "n_params_reward": sum(p.numel() for p in trainer.reward_model.parameters()),
        "weights_checksum": checksum,
        "attn_implementation": attn,
        "peak_rss_bytes": harness.peak_rss_bytes(),
        "rss_before_model_bytes": rss_before,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if args.arm != "trl112":
        import trl_robust

        result["trl_robust"] = trl_robust.__version__
    harness.add_peak_memory(result, gpu, rss_before)
    return result


# --------------------------------------------------------------------------------------------------------------------
# The driver: every arm in a subprocess, alternating order, table last
# --------------------------------------------------------------------------------------------------------------------


def child_argv(args, arm: str, result_file: str) -> list[str]:
    values = [
        ("--shape", args.shape),
        ("--prompt-len", args.prompt_len),
        ("--response-len", args.response_len),
        ("--episodes-per-update", args.episodes_per_update),
        ("--grad-accum", args.grad_accum),
        ("--mini-batches", args.mini_batches),
        ("--ppo-epochs", args.ppo_epochs),
        ("--rollout-batch", args.rollout_batch),
        ("--updates", args.updates),
        ("--warmup-updates", args.warmup_updates),
        ("--num-heads", args.num_heads),
    ]
    return harness.child_argv(__file__, args, arm, result_file, values)


THROUGHPUTS = {  # summary key -> (column title, ratio column title)
    "episodes_per_s": ("episodes/s", "thr vs 1.12"),
    "episodes_per_s_median_update": ("(median upd)", "(median)"),
    "episodes_per_cpu_s": ("episodes/CPU-s", "(CPU)"),
}


def summarize(args, results: list[dict]) -> dict:
    summary = {}
    for arm, rs in harness.runs_by_arm(results).items():
        phases = {}
        for key in ("wall", "cpu"):
            names = [n for n in PHASES if any(n in r["phases"][key] for r in rs)]
            phases[key] = {n: statistics.mean(r["phases"][key].get(n, 0.0) for r in rs) for n in names}
        summary[arm] = {
            "episodes_per_s": statistics.mean(r["episodes_per_s"] for r in rs),
            "episodes_per_s_runs": [r["episodes_per_s"] for r in rs],
            "episodes_per_s_median_update": args.episodes_per_update
            / statistics.median(x for r in rs for x in r["update_s"]),
            "episodes_per_cpu_s": statistics.mean(r["episodes_per_cpu_s"] for r in rs),
            "s_per_update": statistics.mean(r["s_per_update"] for r in rs),
            "peak_mem_bytes": max(r["peak_mem_bytes"] for r in rs),
            "peak_rss_bytes": max(r["peak_rss_bytes"] for r in rs),
            "attn_implementation": rs[0]["attn_implementation"],
            "trl": rs[0]["trl"],
            "phases": phases,
        }
    if "trl112" in summary:
        base = summary["trl112"]
        for arm in ("single", "brme"):
            if arm not in summary:
                continue
            s = summary[arm]
            for key in THROUGHPUTS:
                s[f"{key}_ratio"] = s[key] / base[key]
            s["memory_ratio"] = s["peak_mem_bytes"] / base["peak_mem_bytes"]
            s["throughput_pass"] = s["episodes_per_s_ratio"] >= TARGET_THROUGHPUT
            s["memory_pass"] = s["memory_ratio"] <= TARGET_MEMORY
    if "single" in summary and "brme" in summary:
        b, s = summary["brme"], summary["single"]
        # Cost of the BRME: its time per episode over the single-head RM's (wall and CPU).
        b["brme_cost"] = s["episodes_per_s"] / b["episodes_per_s"]
        b["brme_cost_cpu"] = s["episodes_per_cpu_s"] / b["episodes_per_cpu_s"]
        b["brme_cost_median"] = s["episodes_per_s_median_update"] / b["episodes_per_s_median_update"]
        b["brme_pass"] = b["brme_cost"] <= TARGET_BRME_COST
        b["brme_cost_runs"] = [x / y for x, y in zip(s["episodes_per_s_runs"], b["episodes_per_s_runs"], strict=False)]
    return summary


def print_table(args, summary: dict, device_name: str) -> None:
    gpu = args.device == "cuda"
    keys = [k for k in THROUGHPUTS if not gpu or k != "episodes_per_cpu_s"]
    mem_kind = "peak GPU mem" if gpu else "peak RSS growth"
    arms = [a for a in ARMS if a in summary]
    print()
    print(
        f"== PPO throughput: shape={args.shape} prompt={args.prompt_len} response={args.response_len} "
        f"episodes/update={args.episodes_per_update} (batch {args.per_device_batch} x accum {args.grad_accum}) "
        f"ppo_epochs={args.ppo_epochs} mini_batches={args.mini_batches} rollout_batch={args.rollout_batch} "
        f"updates={args.updates} (warmup {args.warmup_updates}) K={args.num_heads} repeats={args.repeats} "
        f"bf16={args.bf16} grad_ckpt={args.gradient_checkpointing} threads={args.threads or 'default'} "
        f"device={device_name} =="
    )
    print("phase breakdown, wall seconds per update (CPU seconds in brackets):")
    header = f"{'arm':<34} " + " ".join(f"{p:>17}" for p in PHASES) + f" {'total':>17}"
    print(header)
    for arm in arms:
        ph = summary[arm]["phases"]
        cells = []
        for p in PHASES:
            cells.append(f"{ph['wall'][p]:>8.3f} ({ph['cpu'][p]:>6.3f})" if p in ph["wall"] else f"{'-':>17}")
        tw, tc = sum(ph["wall"].values()), sum(ph["cpu"].values())
        print(f"{ARM_TITLES[arm].format(k=args.num_heads):<34} " + " ".join(cells) + f" {tw:>8.3f} ({tc:>6.3f})")
    print()
    header = (
        f"{'arm':<34} "
        + " ".join(f"{THROUGHPUTS[k][0]:>14}" for k in keys)
        + f" {mem_kind:>16} "
        + " ".join(f"{THROUGHPUTS[k][1]:>11}" for k in keys)
        + f" {'mem vs 1.12':>11}  target"
    )
    print(header)
    print("-" * (len(header) + 70))
    for arm in arms:
        s = summary[arm]
        ratios = [f"{s[f'{k}_ratio']:.3f}x" if f"{k}_ratio" in s else "-" for k in keys]
        mem = f"{s['memory_ratio']:.3f}x" if "memory_ratio" in s else "-"
        if arm == "trl112":
            target = "baseline"
        elif "throughput_pass" in s:
            target = (
                f"throughput {'PASS' if s['throughput_pass'] else 'FAIL'} (>= {TARGET_THROUGHPUT}x), "
                f"memory {'PASS' if s['memory_pass'] else 'FAIL'} (<= {TARGET_MEMORY}x)"
            )
        else:
            target = "-"
        print(
            f"{ARM_TITLES[arm].format(k=args.num_heads):<34} "
            + " ".join(f"{s[k]:>14.3f}" for k in keys)
            + f" {fmt_mem(s['peak_mem_bytes']):>16} "
            + " ".join(f"{r:>11}" for r in ratios)
            + f" {mem:>11}  {target}"
        )
    if "brme_cost" in summary.get("brme", {}):
        b = summary["brme"]
        runs = ", ".join(f"{x:.3f}" for x in b["brme_cost_runs"])
        cpu = f", CPU time {b['brme_cost_cpu']:.3f}x" if not gpu else ""
        print(
            f"BRME K={args.num_heads} vs single-head RM, time per episode: {b['brme_cost']:.3f}x wall "
            f"(median update {b['brme_cost_median']:.3f}x{cpu}; per repeat {runs}): "
            f"{'PASS' if b['brme_pass'] else 'FAIL'} (<= {TARGET_BRME_COST}x)"
        )
    print(f"attention implementation per arm: { {a: summary[a]['attn_implementation'] for a in arms} }")
    print(f"trl imported per arm: { {a: summary[a]['trl'] for a in arms} }")
    if not gpu:
        rss = ", ".join(f"{a} {fmt_mem(summary[a]['peak_rss_bytes'])}" for a in arms)
        print(f"absolute peak RSS per process: {rss}")
        print("episodes/s and PASS/FAIL use wall time; episodes/CPU-s is the steadier figure on a shared CPU")


def main(argv=None) -> int:
    args = parse_args(argv)
    return harness.main(
        args,
        run_arm,
        arms=args.arm_list,
        argv_for=lambda arm, result_file: child_argv(args, arm, result_file),
        # TRL 1.12 shadows the installed TRL
        env_for=lambda arm: harness.child_env(args, str(REPO) if arm != "trl112" else args.trl112_path),
        rate=lambda r: f"{r['episodes_per_s']:.3f} episodes/s, {r['episodes_per_cpu_s']:.3f} episodes/CPU-s",
        checksum=("weights_checksum", "weights"),
        summarize=summarize,
        print_table=print_table,
    )


if __name__ == "__main__":
    sys.exit(main())
