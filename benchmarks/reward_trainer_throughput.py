"""Reward-model training throughput: BRMERewardTrainer (K heads) against TRL's RewardTrainer, side by side.

Three arms train on the same backbone shape, the same seed backbone weights and the same fixed-length random token
pairs (every sequence is exactly `--seq-len` tokens, so no arm pays for more padding than another):

- `trl`: TRL's `RewardTrainer` on a `LlamaForSequenceClassification` / `Qwen2ForSequenceClassification` with
  `num_labels=1` (one linear head).
- `brme`: `BRMERewardTrainer` on `BRMERewardModel(BRMEConfig(text_config=..., num_heads=K))`.
- `separate`: K independent single-head reward models trained one after the other, the classic deep ensemble.
  With `--separate derived` (default) its time is K times the `trl` arm's measured time (one single-head run *is* the
  `trl` arm; the K runs are independent) and its peak memory is the `trl` arm's, since the models train one at a
  time. With `--separate measured` a subprocess really trains the K models in sequence.

Every arm runs in a fresh subprocess of this script (`--arm`), so each has its own peak memory: on a GPU
`torch.cuda.max_memory_allocated`, on a CPU the growth of the resident set from just before the model is built to
the end of training (`ru_maxrss` minus the RSS before the model; the absolute peak RSS is reported too). The arms
run `--repeats` times in alternating order (ABBA...) so that drift of a shared machine falls on every arm alike.
Throughput is pairs per second over the steps after `--warmup-steps`, timed at `on_step_end` (after a CUDA sync).
Two steadier companions are printed beside it: pairs/s from the median step time, and on a CPU pairs per second of
process CPU time, which other jobs on a shared machine move far less than wall time (most of all with `--threads 1`).

The table printed last gives pairs/s, peak memory, ratios against TRL and PASS/FAIL against the targets
(BRME >= 0.97x TRL's throughput, <= 1.03x TRL's memory). The exit code is 0 whatever the ratios are (this is a
benchmark, not a test); it is 1 only when an arm crashed.

    python benchmarks/reward_trainer_throughput.py --shape tiny                     # CPU smoke run, ~1 min
    python benchmarks/reward_trainer_throughput.py --shape smol --seq-len 128 --pairs-per-step 4 --threads 1
    python benchmarks/reward_trainer_throughput.py --shape smol --seq-len 512 --pairs-per-step 16 --bf16 --device cuda
"""

import argparse
import copy
import gc
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import harness
from harness import FIRST_TOKEN_ID, REPO, fmt_mem

ARM_TITLES = {
    "trl": "TRL RewardTrainer (1 head)",
    "brme": "BRMERewardTrainer (K={k})",
    "separate": "{k} separate TRL RMs",
}
TARGET_THROUGHPUT = 0.97  # BRME pairs/s >= 0.97 x TRL pairs/s
TARGET_MEMORY = 1.03  # BRME peak memory <= 1.03 x TRL peak memory


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shape", choices=["tiny", "smol", "qwen05"], default="tiny", help="backbone shape (random init)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: 512 on cuda, 128 on cpu)")
    p.add_argument("--pairs-per-step", type=int, default=None, help="pairs per optimizer step (default: 16 / 4)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per arm run (default: 40 / 8)")
    p.add_argument("--warmup-steps", type=int, default=None, help="untimed first steps (default: steps // 4, >= 1)")
    p.add_argument("--num-heads", type=int, default=5, help="K, heads of the BRME and models of the separate arm")
    p.add_argument("--repeats", type=int, default=2, help="runs per arm, in alternating order (ABBA...)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--bf16", action="store_true", help="bf16 weights and autocast (as TRL's GPU reference figures)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="off by default, as TRL's reference figure")
    p.add_argument("--logging-steps", type=int, default=1, help="Trainer logging interval (TRL's reference: 1)")
    p.add_argument("--separate", choices=["derived", "measured", "skip"], default="derived", help="see module doc")
    p.add_argument("--brme-loss", default="gaussian_bt", help="BRMERewardConfig.brme_loss")
    p.add_argument("--bootstrap", default="bayesian", help="BRMERewardConfig.bootstrap")
    harness.add_run_options(
        p,
        ["trl", "brme", "separate"],
        threads_help="torch CPU threads (default: all cores on cpu; 1 is steadier on a shared machine)",
    )
    args = p.parse_args(argv)

    gpu = harness.resolve_device(args)
    args.seq_len = args.seq_len or (512 if gpu else 128)
    args.pairs_per_step = args.pairs_per_step or (16 if gpu else 4)
    args.steps = args.steps or (40 if gpu else 8)
    if args.warmup_steps is None:
        args.warmup_steps = max(1, args.steps // 4)
    if not 1 <= args.warmup_steps < args.steps:
        p.error(f"--warmup-steps must be in [1, steps), got {args.warmup_steps} with --steps {args.steps}")
    if args.num_heads < 1 or args.repeats < 1:
        p.error("--num-heads and --repeats must be >= 1")
    harness.resolve_threads_and_asset(p, args)
    return args


# --------------------------------------------------------------------------------------------------------------------
# One arm, in its own process
# --------------------------------------------------------------------------------------------------------------------


def text_config(shape: str, tok, asset: str):
    from transformers import LlamaConfig, Qwen2Config

    if shape == "tiny":
        cfg = harness.tiny_llama_config(tok)
    elif shape == "smol":  # the real SmolLM2-135M config, random weights
        cfg = LlamaConfig.from_json_file(str(Path(asset) / "config.json"))
        cfg.dtype = None  # the file says bfloat16; --bf16 decides here
    elif shape == "qwen05":  # Qwen2.5-0.5B (the real vocabulary size; token ids come from the SmolLM2 tokenizer)
        cfg = Qwen2Config(
            vocab_size=151936,
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            max_position_embeddings=32768,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            use_sliding_window=False,
            **harness.special_token_ids(tok),
        )
    else:
        raise ValueError(shape)
    cfg.num_labels = 1  # TRL's RewardTrainer requires it; transformers 5 wants it in the config
    return cfg


def build_model(arm: str, cfg, num_heads: int, seed: int, head_seed: int):
    """The arm's model with the backbone weights every arm shares (same seed), a checksum of those weights and the
    attention implementation its backbone layers really run."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification, Qwen2ForSequenceClassification

    from trl_robust import BRMEConfig, BRMERewardModel
    from trl_robust.modeling_brme import backbone_class

    torch.manual_seed(seed)
    weights = backbone_class(cfg)(copy.deepcopy(cfg)).state_dict()
    if arm == "brme":
        # The BRME builds its own backbone from the config, then takes the shared weights. (Passing a ready backbone
        # with `BRMERewardModel(BRMEConfig(text_config=backbone.config), backbone=backbone)` would leave it on eager
        # attention: BRMEConfig resets `_attn_implementation` of the text config it is given.)
        model = BRMERewardModel(BRMEConfig(text_config=copy.deepcopy(cfg), num_heads=num_heads))
        backbone = model.backbone
    else:
        cls = LlamaForSequenceClassification if isinstance(cfg, LlamaConfig) else Qwen2ForSequenceClassification
        model = cls(copy.deepcopy(cfg))
        backbone = model.model
    backbone.load_state_dict(weights)
    del weights
    torch.manual_seed(head_seed)  # the head init is the only thing that differs between separate models
    with torch.no_grad():
        model._init_weights(model.score)
        checksum = sum(p.double().sum().item() for p in backbone.state_dict().values())
    attn = backbone.layers[0].self_attn.config._attn_implementation
    return model, checksum, attn


def train_once(arm, model, tok, dataset, args, seed, out_dir, label):
    import torch
    from transformers import PrinterCallback, TrainerCallback

    gpu = args.device == "cuda"

    class StepClock(TrainerCallback):
        def __init__(self):
            self.times = []
            self.cpu_times = []

        def on_step_end(self, a, state, control, **kwargs):
            if gpu:
                torch.cuda.synchronize()
            self.times.append(time.perf_counter())
            self.cpu_times.append(time.process_time())
            n = len(self.times)
            if n == 1 or n == args.steps or n % max(1, args.steps // 10) == 0:
                dt = self.times[-1] - self.times[-2] if n > 1 else float("nan")
                phase = "warmup" if n <= args.warmup_steps else "timed"
                print(f"    [{label}] step {n:>3}/{args.steps}  {dt:7.3f} s/step  ({phase})", flush=True)

    common = dict(
        output_dir=out_dir,
        report_to="none",
        save_strategy="no",
        logging_steps=args.logging_steps,
        per_device_train_batch_size=args.pairs_per_step,
        max_steps=args.steps,
        max_length=args.seq_len,
        learning_rate=1e-5,
        bf16=args.bf16,
        gradient_checkpointing=args.gradient_checkpointing,
        disable_tqdm=True,
        use_cpu=not gpu,
        seed=seed,
    )
    clock = StepClock()
    if arm == "brme":
        from trl_robust import BRMERewardConfig, BRMERewardTrainer

        config = BRMERewardConfig(
            num_heads=args.num_heads, brme_loss=args.brme_loss, bootstrap=args.bootstrap, **common
        )
        trainer = BRMERewardTrainer(model=model, args=config, processing_class=tok, train_dataset=dataset)
    else:
        from trl import RewardConfig, RewardTrainer

        trainer = RewardTrainer(model=model, args=RewardConfig(**common), processing_class=tok, train_dataset=dataset)
    trainer.remove_callback(PrinterCallback)  # our own progress lines instead of a dict per step
    trainer.add_callback(clock)
    trainer.train()
    if len(clock.times) != args.steps:
        raise RuntimeError(f"expected {args.steps} steps, timed {len(clock.times)}")
    step_s = [clock.times[i] - clock.times[i - 1] for i in range(args.warmup_steps, args.steps)]
    cpu_s = clock.cpu_times[-1] - clock.cpu_times[args.warmup_steps - 1]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    del trainer
    return {"step_s": step_s, "cpu_s": cpu_s, "last_loss": losses[-1] if losses else None}


def run_arm(args) -> dict:
    warnings.filterwarnings("ignore", category=FutureWarning)  # `gradient_checkpointing` renamed in transformers 5
    harness.setup_arm_process(args)
    import datasets
    import torch
    import transformers
    import trl
    from transformers import AutoTokenizer

    import trl_robust

    gpu = args.device == "cuda"

    tok = AutoTokenizer.from_pretrained(args.asset)
    cfg = text_config(args.shape, tok, args.asset)
    n = args.pairs_per_step * args.steps
    g = torch.Generator().manual_seed(args.seed)
    high = min(len(tok), cfg.vocab_size)
    dataset = datasets.Dataset.from_dict(
        {
            "chosen_ids": torch.randint(FIRST_TOKEN_ID, high, (n, args.seq_len), generator=g).tolist(),
            "rejected_ids": torch.randint(FIRST_TOKEN_ID, high, (n, args.seq_len), generator=g).tolist(),
        }
    )
    rss_before = harness.start_memory(gpu)

    runs = []
    checksums = []
    copies = args.num_heads if args.arm == "separate" else 1
    kind = "trl" if args.arm == "separate" else args.arm
    with tempfile.TemporaryDirectory() as out_dir:
        for k in range(copies):
            label = args.arm if copies == 1 else f"{args.arm} {k + 1}/{copies}"
            model, checksum, attn = build_model(kind, cfg, args.num_heads, args.seed, args.seed + 1 + k)
            checksums.append(checksum)
            n_params = sum(p.numel() for p in model.parameters())
            if args.bf16:
                model = model.to(torch.bfloat16)
            runs.append(train_once(kind, model, tok, dataset, args, args.seed + k, out_dir, label))
            del model
            gc.collect()
            if gpu:
                torch.cuda.empty_cache()

    # For `separate`, one "step" trains all K models on the batch: the K models' step times add up.
    step_s = [sum(steps) for steps in zip(*(r["step_s"] for r in runs), strict=True)]
    timed_s = sum(step_s)
    result = {
        "arm": args.arm,
        "pairs_per_s": args.pairs_per_step * len(step_s) / timed_s,
        # The median step is less sensitive to bursts of load from other processes on a shared machine.
        "pairs_per_s_median_step": args.pairs_per_step / statistics.median(step_s),
        # Process CPU time (all threads) per pair: on a CPU shared with other jobs this moves far less than wall
        # time, most of all with --threads 1 (no OpenMP threads spinning while they wait for a core).
        "pairs_per_cpu_s": args.pairs_per_step * len(step_s) / sum(r["cpu_s"] for r in runs),
        "s_per_step": timed_s / len(step_s),
        "step_s": step_s,
        "tokens_per_s": 2 * args.pairs_per_step * args.seq_len * len(step_s) / timed_s,
        "n_params": n_params,
        "backbone_checksum": checksums[0],
        "attn_implementation": attn,
        "last_loss": [r["last_loss"] for r in runs],
        "peak_rss_bytes": harness.peak_rss_bytes(),
        "rss_before_model_bytes": rss_before,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "trl_robust": trl_robust.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    harness.add_peak_memory(result, gpu, rss_before)
    return result


# --------------------------------------------------------------------------------------------------------------------
# The driver: every arm in a subprocess, alternating order, table last
# --------------------------------------------------------------------------------------------------------------------


def child_argv(args, arm: str, result_file: str) -> list[str]:
    values = [
        ("--shape", args.shape),
        ("--seq-len", args.seq_len),
        ("--pairs-per-step", args.pairs_per_step),
        ("--steps", args.steps),
        ("--warmup-steps", args.warmup_steps),
        ("--num-heads", args.num_heads),
        ("--logging-steps", args.logging_steps),
        ("--brme-loss", args.brme_loss),
        ("--bootstrap", args.bootstrap),
    ]
    return harness.child_argv(__file__, args, arm, result_file, values)


THROUGHPUTS = {  # summary key -> (column title, ratio column title)
    "pairs_per_s": ("pairs/s", "thr vs TRL"),
    "pairs_per_s_median_step": ("(median step)", "(median)"),
    "pairs_per_cpu_s": ("pairs/CPU-s", "(CPU)"),
}


def summarize(args, results: list[dict]) -> dict:
    summary = {}
    for arm, rs in harness.runs_by_arm(results).items():
        summary[arm] = {
            "pairs_per_s": statistics.mean(r["pairs_per_s"] for r in rs),
            "pairs_per_s_runs": [r["pairs_per_s"] for r in rs],
            "pairs_per_s_median_step": args.pairs_per_step / statistics.median(x for r in rs for x in r["step_s"]),
            "pairs_per_cpu_s": statistics.mean(r["pairs_per_cpu_s"] for r in rs),
            "peak_mem_bytes": max(r["peak_mem_bytes"] for r in rs),
            "peak_rss_bytes": max(r["peak_rss_bytes"] for r in rs),
            "n_params": rs[0]["n_params"],
            "attn_implementation": rs[0]["attn_implementation"],
        }
    if "trl" in summary and args.separate == "derived":
        trl_arm = summary["trl"]
        summary["separate"] = {key: trl_arm[key] / args.num_heads for key in THROUGHPUTS} | {
            "pairs_per_s_runs": [x / args.num_heads for x in trl_arm["pairs_per_s_runs"]],
            "peak_mem_bytes": trl_arm["peak_mem_bytes"],  # one model at a time
            "peak_rss_bytes": trl_arm["peak_rss_bytes"],
            "n_params": trl_arm["n_params"] * args.num_heads,
            "attn_implementation": trl_arm["attn_implementation"],
            "derived": True,
        }
    if "trl" in summary:
        base = summary["trl"]
        for s in summary.values():
            for key in THROUGHPUTS:
                s[f"{key}_ratio"] = s[key] / base[key]
            s["memory_ratio"] = s["peak_mem_bytes"] / base["peak_mem_bytes"]
        if "brme" in summary:
            b = summary["brme"]
            b["throughput_pass"] = b["pairs_per_s_ratio"] >= TARGET_THROUGHPUT
            b["memory_pass"] = b["memory_ratio"] <= TARGET_MEMORY
            # The paired ratio of each repeat (adjacent runs) shows how much of the spread is machine noise.
            pairs = zip(b["pairs_per_s_runs"], base["pairs_per_s_runs"], strict=False)
            b["pairs_per_s_ratio_runs"] = [x / y for x, y in pairs]
    return summary


def print_table(args, summary: dict, device_name: str) -> None:
    keys = [k for k in THROUGHPUTS if args.device != "cuda" or k != "pairs_per_cpu_s"]
    mem_kind = "peak GPU mem" if args.device == "cuda" else "peak RSS growth"
    print()
    print(
        f"== reward training throughput: shape={args.shape} seq_len={args.seq_len} pairs/step={args.pairs_per_step} "
        f"steps={args.steps} (warmup {args.warmup_steps}) K={args.num_heads} repeats={args.repeats} "
        f"bf16={args.bf16} grad_ckpt={args.gradient_checkpointing} threads={args.threads or 'default'} "
        f"device={device_name} =="
    )
    header = (
        f"{'arm':<34} "
        + " ".join(f"{THROUGHPUTS[k][0]:>13}" for k in keys)
        + f" {mem_kind:>16} "
        + " ".join(f"{THROUGHPUTS[k][1]:>10}" for k in keys)
        + f" {'mem vs TRL':>10}  target"
    )
    print(header)
    print("-" * (len(header) + 60))
    for arm in ("trl", "brme", "separate"):
        if arm not in summary:
            continue
        s = summary[arm]
        title = ARM_TITLES[arm].format(k=args.num_heads)
        if arm == "separate":
            title += " (derived)" if s.get("derived") else " (measured)"
        ratios = [f"{s[f'{k}_ratio']:.3f}x" if f"{k}_ratio" in s else "-" for k in keys]
        mem = f"{s['memory_ratio']:.3f}x" if "memory_ratio" in s else "-"
        if arm == "trl":
            target = "baseline"
        elif arm == "brme" and "throughput_pass" in s:
            target = (
                f"throughput {'PASS' if s['throughput_pass'] else 'FAIL'} (>= {TARGET_THROUGHPUT}x), "
                f"memory {'PASS' if s['memory_pass'] else 'FAIL'} (<= {TARGET_MEMORY}x)"
            )
        elif arm == "separate" and "brme" in summary:
            target = f"BRME is {summary['brme']['pairs_per_s'] / s['pairs_per_s']:.2f}x faster"
        else:
            target = "-"
        print(
            f"{title:<34} "
            + " ".join(f"{s[k]:>13.3f}" for k in keys)
            + f" {fmt_mem(s['peak_mem_bytes']):>16} "
            + " ".join(f"{r:>10}" for r in ratios)
            + f" {mem:>10}  {target}"
        )
    if "brme" in summary and "pairs_per_s_ratio_runs" in summary["brme"]:
        runs = ", ".join(f"{x:.3f}" for x in summary["brme"]["pairs_per_s_ratio_runs"])
        print(f"BRME/TRL pairs/s per repeat: {runs}")
    attn = {a: s["attn_implementation"] for a, s in summary.items()}
    print(f"attention implementation per arm: {attn}")
    if args.device != "cuda":
        rss = ", ".join(f"{a} {fmt_mem(summary[a]['peak_rss_bytes'])}" for a in ("trl", "brme") if a in summary)
        print(f"absolute peak RSS per process: {rss}")
        print("pairs/s and PASS/FAIL use wall time; pairs/CPU-s is the steadier figure on a shared CPU")


def main(argv=None) -> int:
    args = parse_args(argv)
    return harness.main(
        args,
        run_arm,
        arms=["trl", "brme"] + (["separate"] if args.separate == "measured" else []),
        argv_for=lambda arm, result_file: child_argv(args, arm, result_file),
        env_for=lambda arm: harness.child_env(args, str(REPO)),
        rate=lambda r: f"{r['pairs_per_s']:.3f} pairs/s",
        checksum=("backbone_checksum", "backbone weights"),
        summarize=summarize,
        print_table=print_table,
    )


if __name__ == "__main__":
    sys.exit(main())
