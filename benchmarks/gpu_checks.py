"""Every owed GPU check in one run: one JSON and a short table (run through `benchmarks/gpu_checks.sh`).

Checks, each comparison side by side in this run on this card:

- `reward`: BRMERewardTrainer (K=5) against TRL's RewardTrainer (`reward_trainer_throughput.py`; SmolLM2-135M
  shape, 512 tokens, 16 pairs/step, bf16). Targets: >= 0.97x pairs/s, <= 1.03x peak memory.
- `ppo`: RobustPPOTrainer (1-head RM and BRME K=5) against TRL 1.12's PPOTrainer (`ppo_throughput.py`; SmolLM2-135M
  shapes, 64 + 64 tokens, 64 episodes/update, 4 epochs, bf16), with its phase breakdown (generation, rollout
  forwards, PPO update). Targets: >= 2x episodes/s, <= 1x memory, BRME within 3% of the 1-head RM.
- `zero3`: BRMERewardTrainer and RobustPPOTrainer with a LoRA policy under DeepSpeed ZeRO-3 on one GPU
  (`trl_robust/accelerate_configs/zero3.yaml`, `--num_processes 1`), each saving a consolidated model that is loaded
  back and checked (full shapes, trained weights).
- `fp16`: BRMERewardTrainer and RobustPPOTrainer in fp16 mixed precision: the loss scaler is active (a GPU) and the
  losses stay finite.

A check that runs past its cap (`CHECK_CAPS_S`) or the run's `--deadline` is stopped (exit code 124 in the JSON; 125:
not started, the deadline was spent), so the run stays within its budget.

`--profile` runs only the PPO phase breakdown of the two RobustPPOTrainer arms (no baseline): where the GPU time goes.
`--dry-run` runs the same code paths at tiny shapes on CPU (ZeRO-3 with `cpu_zero3.yaml` on one process; the TRL 1.12
arm only where `--trl112-path` holds TRL 1.12); the test suite runs it (tests/test_gpu_checks.py).

    python benchmarks/gpu_checks.py --out gpu_results            # on the GPU, after .gpu/setup.sh
    python benchmarks/gpu_checks.py --dry-run --out /tmp/dry     # CPU, ~1 min
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness
from harness import FIRST_TOKEN_ID, REPO

HERE = Path(__file__).resolve().parent
CHECKS = ["reward", "ppo", "zero3", "fp16"]
# Seconds each step may take on a GPU (about twice what the reference speeds of ../shared/gpu/README.md predict), so a
# hung step cannot eat the others' time; the dry run on a shared CPU gets four times as long.
CHECK_CAPS_S = {"reward": 150, "ppo": 240, "zero3-brme": 120, "zero3-ppo-lora": 150, "fp16": 120}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="tiny shapes on CPU: the same code paths, no figures")
    p.add_argument("--profile", action="store_true", help="only the PPO phase breakdown of the RobustPPO arms")
    p.add_argument("--out", default="gpu_checks_out", help="folder for gpu_checks.json, the table and the logs")
    p.add_argument("--only", default=",".join(CHECKS), help=f"comma-separated subset of {CHECKS}")
    p.add_argument("--trl112-path", default="/tmp/trl112", help="where TRL 1.12 is installed (pip --target)")
    p.add_argument(
        "--deadline",
        type=int,
        default=None,
        help="seconds the whole run may take (default: 540 on a GPU, the 9-minute budget; 1200 for --dry-run); "
        "each check also has its own cap (CHECK_CAPS_S) and is stopped at whichever comes first",
    )
    p.add_argument("--worker", choices=["zero3-brme", "zero3-ppo-lora", "fp16"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--asset", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.deadline = args.deadline or (1200 if args.dry_run else 540)
    args.deadline_at = time.monotonic() + args.deadline
    args.checks = ["ppo"] if args.profile else [c.strip() for c in args.only.split(",") if c.strip()]
    if any(c not in CHECKS for c in args.checks):
        p.error(f"--only must be a subset of {CHECKS}, got {args.only!r}")
    if args.asset is None:
        found = [a for a in harness.ASSET_CANDIDATES if (a / "tokenizer.json").exists()]
        if not found:
            p.error(f"no tokenizer found in {[str(a) for a in harness.ASSET_CANDIDATES]}")
        args.asset = str(found[0])
    return args


# --------------------------------------------------------------------------------------------------------------------
# Workers (run in their own process, under `accelerate launch` for ZeRO-3)
# --------------------------------------------------------------------------------------------------------------------


def _shape_setup(dry: bool, asset: str):
    """Tokenizer (with its own pad token) and the backbone config: SmolLM2-135M on a GPU, tiny in a dry run."""
    import ppo_throughput

    tok = ppo_throughput.load_tokenizer(asset)
    return tok, ppo_throughput.text_config("tiny" if dry else "smol", tok, asset)


def _pairs(tok, n: int, length: int):
    import datasets
    import torch

    g = torch.Generator().manual_seed(0)
    ids = lambda: torch.randint(FIRST_TOKEN_ID, len(tok) - 1, (n, length), generator=g).tolist()  # noqa: E731
    return datasets.Dataset.from_dict({"chosen_ids": ids(), "rejected_ids": ids()})


def _prompts(tok, n: int, length: int):
    import datasets
    import torch

    g = torch.Generator().manual_seed(1)
    return datasets.Dataset.from_dict(
        {"input_ids": torch.randint(FIRST_TOKEN_ID, len(tok) - 1, (n, length), generator=g).tolist()}
    )


def _common(out: str, gpu: bool, precision: str) -> dict:
    return dict(
        output_dir=out,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        seed=0,
        bf16=gpu and precision == "bf16",
        fp16=precision == "fp16",
        # gloo for DeepSpeed's CPU processes (the dry run); the plain fp16 worker runs without a process group
        ddp_backend="gloo" if not gpu and os.environ.get("WORLD_SIZE") else None,
        use_cpu=not gpu,
    )


def _brme_trainer(tok, cfg, out: str, gpu: bool, precision: str, steps: int):
    import copy

    from trl_robust import BRMEConfig, BRMERewardConfig, BRMERewardModel, BRMERewardTrainer

    args = BRMERewardConfig(
        num_heads=5,
        max_steps=steps,
        per_device_train_batch_size=4,
        max_length=72,
        learning_rate=1e-4,
        gradient_checkpointing=False,
        **_common(out, gpu, precision),
    )
    # After the config: under ZeRO-3 (zero3_init_flag) the BRME is built already partitioned.
    model = BRMERewardModel(BRMEConfig(text_config=copy.deepcopy(cfg), num_heads=5))
    return BRMERewardTrainer(model, args, train_dataset=_pairs(tok, 4 * steps, 64), processing_class=tok)


def _ppo_trainer(tok, cfg, out: str, gpu: bool, precision: str, updates: int, lora: bool):
    import copy

    import torch
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification

    from trl_robust import BRMEConfig, BRMERewardModel, RobustPPOConfig, RobustPPOTrainer

    torch.manual_seed(0)
    policy = LlamaForCausalLM(copy.deepcopy(cfg))
    ref = None if lora else copy.deepcopy(policy)
    value = LlamaForSequenceClassification(copy.deepcopy(cfg))
    reward = BRMERewardModel(BRMEConfig(text_config=copy.deepcopy(cfg), num_heads=5))
    args = RobustPPOConfig(
        per_device_train_batch_size=8,
        num_ppo_epochs=2,
        num_mini_batches=1,
        total_episodes=8 * updates,
        response_length=16,
        stop_token=None,
        missing_eos_penalty=None,
        num_sample_generations=0,
        learning_rate=1e-4,
        gradient_checkpointing=False,
        **_common(out, gpu, precision),
    )
    peft_config = None
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    return RobustPPOTrainer(
        args=args,
        processing_class=tok,
        model=policy,
        ref_model=ref,
        reward_model=reward,
        train_dataset=_prompts(tok, 8 * updates, 16),
        value_model=value,
        peft_config=peft_config,
    )


def _finite_losses(trainer, key: str) -> list[float]:
    import math

    values = [entry[key] for entry in trainer.state.log_history if key in entry]
    if not values or not all(math.isfinite(v) for v in values):
        raise RuntimeError(f"{key} not finite or not logged: {values}")
    return values


def worker_zero3(kind: str, args, result_file: str) -> None:
    """Train under ZeRO-3, save (every rank: the save gathers), load the saved model back and check it."""
    import torch
    from safetensors.torch import load_file

    gpu = torch.cuda.is_available() and not args.dry_run
    tok, cfg = _shape_setup(args.dry_run, args.asset)
    out = tempfile.mkdtemp(prefix=f"{kind}_model_", dir=args.out)  # kept with the logs
    t0 = time.perf_counter()
    if kind == "zero3-brme":
        from trl_robust import BRMERewardModel

        trainer = _brme_trainer(tok, cfg, out, gpu, "bf16", steps=4)
        trainer.train()
        trainer.save_model(out)
        if trainer.accelerator.is_main_process:
            from transformers.integrations.deepspeed import unset_hf_deepspeed_config

            state = load_file(os.path.join(out, "model.safetensors"))
            unset_hf_deepspeed_config()  # load it back as a user would, whole (not partitioned by zero.Init)
            model = BRMERewardModel.from_pretrained(out)
            if model.score.weight.shape != (10, cfg.hidden_size) or any(v.numel() == 0 for v in state.values()):
                raise RuntimeError("the saved BRME is not consolidated (empty or partial tensors)")
            with torch.no_grad():
                scores = model(input_ids=torch.tensor([[FIRST_TOKEN_ID, FIRST_TOKEN_ID + 1]])).logits
            if not torch.isfinite(scores).all():
                raise RuntimeError("the reloaded BRME scores are not finite")
        losses = _finite_losses(trainer, "loss")
    else:
        from peft import PeftModel
        from transformers import LlamaForCausalLM

        trainer = _ppo_trainer(tok, cfg, out, gpu, "bf16", updates=2, lora=True)
        trainer.train()
        trainer.save_model(out)
        if trainer.accelerator.is_main_process:
            adapter = load_file(os.path.join(out, "adapter_model.safetensors"))
            lora_b = [v for k, v in adapter.items() if "lora_B" in k]
            if not lora_b or any(v.numel() == 0 for v in adapter.values()):
                raise RuntimeError("the saved adapter is not consolidated (empty or partial tensors)")
            if all(torch.count_nonzero(v) == 0 for v in lora_b):
                raise RuntimeError("the saved adapter did not train (every lora_B is still zero)")
            PeftModel.from_pretrained(LlamaForCausalLM(cfg), out)  # loads back onto a fresh base
        losses = _finite_losses(trainer, "loss/policy_avg")
    if trainer.accelerator.is_main_process:
        stage = trainer.accelerator.state.deepspeed_plugin.zero_stage if trainer.is_deepspeed_enabled else None
        result = {"zero_stage": stage, "world_size": trainer.accelerator.num_processes, "losses": losses}
        result.update(saved_files=sorted(os.listdir(out)), wall_s=time.perf_counter() - t0, ok=stage == 3)
        Path(result_file).write_text(json.dumps(result))


def worker_fp16(args, result_file: str) -> None:
    """A few steps of BRME and PPO training in fp16 mixed precision; on a GPU the loss scaler must be active."""
    import torch

    gpu = torch.cuda.is_available() and not args.dry_run
    tok, cfg = _shape_setup(args.dry_run, args.asset)
    result = {"device": "cuda" if gpu else "cpu"}
    for name, build, key in (
        ("brme", lambda out: _brme_trainer(tok, cfg, out, gpu, "fp16", steps=6), "loss"),
        ("ppo", lambda out: _ppo_trainer(tok, cfg, out, gpu, "fp16", updates=3, lora=False), "loss/policy_avg"),
    ):
        trainer = build(tempfile.mkdtemp(prefix=f"fp16_{name}_", dir=args.out))
        trainer.train()
        scaler = trainer.accelerator.scaler
        result[name] = {
            "mixed_precision": trainer.accelerator.mixed_precision,
            "loss_scaler": scaler is not None,
            "loss_scale": float(scaler.get_scale()) if scaler is not None else None,
            "losses": _finite_losses(trainer, key),
        }
        # fp16 autocast on a CPU has no loss scaler (accelerate); on a GPU it must be there.
        result[name]["ok"] = trainer.accelerator.mixed_precision == "fp16" and (scaler is not None or not gpu)
    result["ok"] = all(result[n]["ok"] for n in ("brme", "ppo"))
    Path(result_file).write_text(json.dumps(result))


# --------------------------------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------------------------------


def _env(dry: bool) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if dry:
        env.update(DS_ACCELERATOR="cpu", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    return env


def _run(name: str, cmd: list[str], args, log: Path) -> tuple[int, float]:
    t0 = time.perf_counter()
    print(f"[{name}] {' '.join(cmd)}", flush=True)
    cap = CHECK_CAPS_S[name] * (4 if args.dry_run else 1)
    timeout = min(cap, args.deadline_at - time.monotonic())
    if timeout <= 0:
        print(f"[{name}] skipped: the run's --deadline of {args.deadline} s is spent", flush=True)
        return 125, 0.0
    with open(log, "w") as f:
        # Its own process group, so that a stopped `accelerate launch` takes its workers (and their GPU memory) along.
        proc = subprocess.Popen(cmd, env=_env(args.dry_run), stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = 124
            print(f"[{name}] stopped after {timeout:.0f} s (its cap or the run's deadline)", flush=True)
    dt = time.perf_counter() - t0
    print(f"[{name}] exit {rc} in {dt:.0f} s (log: {log})", flush=True)
    return rc, dt


def trl112_available(path: str) -> bool:
    return (Path(path) / "trl" / "experimental" / "ppo").is_dir()


def check_reward(args, out: Path) -> dict:
    shape = ["--shape", "tiny", "--seq-len", "32", "--pairs-per-step", "4", "--steps", "3", "--device", "cpu"]
    if not args.dry_run:
        shape = ["--shape", "smol", "--seq-len", "512", "--pairs-per-step", "16", "--steps", "40", "--bf16"]
        shape += ["--device", "cuda"]
    cmd = [sys.executable, str(HERE / "reward_trainer_throughput.py"), *shape, "--repeats", "1", "--separate", "skip"]
    cmd += ["--threads", "1"] if args.dry_run else []
    cmd += ["--asset", args.asset, "--json-out", str(out / "reward.json")]
    rc, dt = _run("reward", cmd, args, out / "reward.log")
    res = {"exit_code": rc, "wall_s": dt}
    if rc == 0:
        b = json.loads((out / "reward.json").read_text())["summary"]["brme"]
        res.update(
            pairs_per_s_ratio=b["pairs_per_s_ratio"],
            memory_ratio=b["memory_ratio"],
            throughput_pass=b["throughput_pass"],
            memory_pass=b["memory_pass"],
        )
    res["ok"] = rc == 0
    return res


def check_ppo(args, out: Path) -> dict:
    arms = ["single", "brme"]
    if not args.profile and trl112_available(args.trl112_path):
        arms = ["trl112", *arms]
    if args.dry_run:
        shape = ["--shape", "tiny", "--prompt-len", "8", "--response-len", "8", "--episodes-per-update", "4"]
        shape += ["--ppo-epochs", "2", "--updates", "3", "--warmup-updates", "1", "--device", "cpu", "--threads", "1"]
    else:
        shape = ["--shape", "smol", "--prompt-len", "64", "--response-len", "64", "--episodes-per-update", "64"]
        shape += ["--ppo-epochs", "4", "--updates", "8", "--warmup-updates", "2", "--bf16", "--device", "cuda"]
    cmd = [sys.executable, str(HERE / "ppo_throughput.py"), *shape, "--arms", ",".join(arms)]
    cmd += ["--trl112-path", args.trl112_path, "--asset", args.asset, "--json-out", str(out / "ppo.json")]
    rc, dt = _run("ppo", cmd, args, out / "ppo.log")
    res = {"exit_code": rc, "wall_s": dt, "arms": arms}
    if "trl112" not in arms and not args.profile:
        res["note"] = f"TRL 1.12 not found at {args.trl112_path}: no baseline arm"
    if rc == 0:
        summary = json.loads((out / "ppo.json").read_text())["summary"]
        res["phases_s_per_update"] = {arm: summary[arm]["phases"]["wall"] for arm in summary}
        res["episodes_per_s"] = {arm: summary[arm]["episodes_per_s"] for arm in summary}
        for arm in ("single", "brme"):
            for key in ("episodes_per_s_ratio", "memory_ratio", "throughput_pass", "memory_pass"):
                if key in summary.get(arm, {}):
                    res[f"{arm}_{key}"] = summary[arm][key]
        if "brme_cost" in summary.get("brme", {}):
            res.update(brme_cost=summary["brme"]["brme_cost"], brme_pass=summary["brme"]["brme_pass"])
    res["ok"] = rc == 0
    return res


def check_worker(args, out: Path, name: str, workers: list[str], launch: bool) -> dict:
    res = {"ok": True}
    for worker in workers:
        result_file = out / f"{worker}.json"
        cmd = [str(Path(__file__).resolve()), "--worker", worker, "--asset", args.asset, "--out", str(out.resolve())]
        cmd += ["--dry-run"] if args.dry_run else []
        if launch:
            from trl_robust.accelerate_configs import config_path

            config = config_path("cpu_zero3" if args.dry_run else "zero3")
            launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config]
            launcher += ["--num_processes", "1", "--main_process_port", str(29500 + os.getpid() % 1000)]
            full = [*launcher, *cmd]
        else:
            full = [sys.executable, *cmd]
        os.environ["GPU_CHECKS_RESULT"] = str(result_file)  # where the worker writes its result (via _env)
        rc, dt = _run(worker, full, args, out / f"{worker}.log")
        r = json.loads(result_file.read_text()) if rc == 0 and result_file.exists() else {"ok": False}
        r.update(exit_code=rc, wall_s=dt)
        res[worker] = r
        res["ok"] = res["ok"] and bool(r.get("ok"))
    return res


def print_table(results: dict, args) -> list[str]:
    lines = [f"== gpu_checks ({'dry run, CPU, tiny shapes: no figures' if args.dry_run else 'GPU'}) =="]
    r = results.get("reward")
    if r:
        fig = (
            f"BRME vs TRL RewardTrainer: {r['pairs_per_s_ratio']:.3f}x pairs/s "
            f"({'PASS' if r['throughput_pass'] else 'FAIL'} >= 0.97x), {r['memory_ratio']:.3f}x memory "
            f"({'PASS' if r['memory_pass'] else 'FAIL'} <= 1.03x)"
            if "pairs_per_s_ratio" in r
            else "no figures"
        )
        lines.append(f"reward  {'ok ' if r['ok'] else 'ERR'}  {fig}")
    p = results.get("ppo")
    if p:
        parts = []
        for arm in ("single", "brme"):
            if f"{arm}_episodes_per_s_ratio" in p:
                parts.append(
                    f"{arm} {p[f'{arm}_episodes_per_s_ratio']:.2f}x episodes/s "
                    f"({'PASS' if p[f'{arm}_throughput_pass'] else 'FAIL'} >= 2x), "
                    f"{p[f'{arm}_memory_ratio']:.2f}x memory ({'PASS' if p[f'{arm}_memory_pass'] else 'FAIL'} <= 1x)"
                )
        if "brme_cost" in p:
            parts.append(f"BRME cost {p['brme_cost']:.3f}x ({'PASS' if p['brme_pass'] else 'FAIL'} <= 1.03x)")
        lines.append(f"ppo     {'ok ' if p['ok'] else 'ERR'}  {'; '.join(parts) or p.get('note', 'no figures')}")
        for arm, phases in p.get("phases_s_per_update", {}).items():
            top = ", ".join(f"{k} {v:.3f}" for k, v in phases.items() if v > 0)
            lines.append(f"        phases {arm} (s/update): {top}")
    for name in ("zero3", "fp16"):
        c = results.get(name)
        if c:
            detail = ", ".join(f"{k}: {'ok' if v.get('ok') else 'FAILED'}" for k, v in c.items() if isinstance(v, dict))
            lines.append(f"{name:<7} {'ok ' if c['ok'] else 'ERR'}  {detail}")
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        result_file = os.environ["GPU_CHECKS_RESULT"]
        if args.dry_run:
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        if args.worker == "fp16":
            worker_fp16(args, result_file)
        else:
            worker_zero3(args.worker, args, result_file)
        return 0

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results = {}
    for name in args.checks:
        if name == "reward":
            results[name] = check_reward(args, out)
        elif name == "ppo":
            results[name] = check_ppo(args, out)
        elif name == "zero3":
            results[name] = check_worker(args, out, name, ["zero3-brme", "zero3-ppo-lora"], launch=True)
        else:
            results[name] = check_worker(args, out, name, ["fp16"], launch=False)
    device = "cpu"
    if not args.dry_run:
        import torch

        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (no GPU visible)"
    report = {
        "mode": "profile" if args.profile else "dry-run" if args.dry_run else "full",
        "device": device,
        "total_wall_s": time.perf_counter() - start,
        "checks": results,
        "ok": all(r["ok"] for r in results.values()),
    }
    (out / "gpu_checks.json").write_text(json.dumps(report, indent=1))
    table = print_table(results, args) + [f"device: {device}; total {report['total_wall_s']:.0f} s; ok={report['ok']}"]
    (out / "gpu_checks_table.txt").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
