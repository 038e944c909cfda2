"""What the throughput benchmarks of this folder share: the command-line options of the driver and of an arm's process,
memory and machine figures, the tiny backbone config, and the driver itself, which runs every arm in a fresh
subprocess of the benchmark script, `--repeats` times in alternating order (ABBA...), and prints the table last.

The benchmarks are run as `python benchmarks/<name>.py`, so this folder is first on `sys.path` and they import this
module as `harness`.
"""

import argparse
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ASSET_CANDIDATES = [REPO / "tests" / "assets" / "smollm2-135m", REPO / ".gpu" / "assets" / "smollm2-135m"]
FIRST_TOKEN_ID = 20  # random tokens avoid the special tokens at the start of the vocabulary


# --------------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------------


def add_run_options(p: argparse.ArgumentParser, arms: list[str], threads_help: str) -> None:
    """The options every benchmark ends with: threads, seed, tokenizer, JSON file, and the two hidden ones the driver
    passes to an arm's process."""
    p.add_argument("--threads", type=int, default=None, help=threads_help)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--asset", default=None, help="tokenizer folder (default: tests/assets/smollm2-135m)")
    p.add_argument("--json-out", default=None, help="write every run and the summary to this JSON file")
    p.add_argument("--arm", choices=arms, default=None, help=argparse.SUPPRESS)
    p.add_argument("--result-file", default=None, help=argparse.SUPPRESS)


def resolve_device(args) -> bool:
    """`--device auto` becomes cuda where a GPU is visible, else cpu; whether it is cuda."""
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args.device == "cuda"


def resolve_threads_and_asset(p: argparse.ArgumentParser, args) -> None:
    """Every core on a CPU unless `--threads` says otherwise; the first tokenizer folder found unless `--asset`."""
    if args.threads is None and args.device != "cuda":
        args.threads = os.cpu_count()
    if args.asset is None:
        found = [a for a in ASSET_CANDIDATES if (a / "tokenizer.json").exists()]
        if not found:
            p.error(f"no tokenizer found in {[str(a) for a in ASSET_CANDIDATES]}; pass --asset")
        args.asset = str(found[0])


# --------------------------------------------------------------------------------------------------------------------
# One arm, in its own process
# --------------------------------------------------------------------------------------------------------------------


def setup_arm_process(args) -> None:
    """Threads (`--threads`), DeepSpeed's CPU accelerator on a CPU (quiets its probe, imported via accelerate), no
    progress bars, transformers' errors only."""
    if args.threads:
        os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    if args.device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import datasets
    import torch
    import transformers

    if args.threads:
        torch.set_num_threads(args.threads)
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def start_memory(gpu: bool) -> int:
    """Call just before the models are built: resets the GPU peak; the resident set now, in bytes."""
    import torch

    gc.collect()
    rss_before = current_rss_bytes()
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    return rss_before


def add_peak_memory(result: dict, gpu: bool, rss_before: int) -> None:
    """`peak_mem_bytes` into `result` (which holds `peak_rss_bytes`): on a GPU the peak allocated (and the reserved
    peak and the device name), on a CPU the growth of the resident set since `start_memory`."""
    import torch

    if gpu:
        result["peak_mem_bytes"] = torch.cuda.max_memory_allocated()
        result["peak_reserved_bytes"] = torch.cuda.max_memory_reserved()
        result["device_name"] = torch.cuda.get_device_name()
    else:
        result["peak_mem_bytes"] = result["peak_rss_bytes"] - rss_before


def tiny_llama_config(tok):
    """The `tiny` shape: 2 layers of 64 on the tokenizer's vocabulary and special tokens."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        **special_token_ids(tok),
    )


def special_token_ids(tok) -> dict:
    return dict(pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)


# --------------------------------------------------------------------------------------------------------------------
# The driver: every arm in a subprocess, alternating order, table last
# --------------------------------------------------------------------------------------------------------------------


def child_argv(script: str, args, arm: str, result_file: str, values: list[tuple[str, object]]) -> list[str]:
    """The command line of one arm's run: `script` with `--arm`, `--result-file`, every (flag, value) of `values`, and
    `--device`, `--seed`, `--asset`, `--threads`, `--bf16`, `--gradient-checkpointing` as the driver has them."""
    argv = [sys.executable, str(Path(script).resolve()), "--arm", arm, "--result-file", result_file]
    for flag, value in [*values, ("--device", args.device), ("--seed", args.seed), ("--asset", args.asset)]:
        argv += [flag, str(value)]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    argv += ["--bf16"] if args.bf16 else []
    argv += ["--gradient-checkpointing"] if args.gradient_checkpointing else []
    return argv


def child_env(args, first_on_path: str) -> dict:
    """This environment with `first_on_path` first on `PYTHONPATH` and `OMP_NUM_THREADS` from `--threads`."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [first_on_path, os.environ.get("PYTHONPATH")])))
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    return env


def machine_info(args) -> dict:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "python": platform.python_version(), "device": args.device}


def fmt_mem(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.0f} MiB"


def runs_by_arm(results: list[dict]) -> dict[str, list[dict]]:
    by_arm = {}
    for r in results:
        by_arm.setdefault(r["arm"], []).append(r)
    return by_arm


def main(
    args,
    run_arm: Callable[..., dict],
    arms: list[str],
    argv_for: Callable[[str, str], list[str]],
    env_for: Callable[[str], dict],
    rate: Callable[[dict], str],
    checksum: tuple[str, str],
    summarize: Callable[..., dict],
    print_table: Callable[..., None],
) -> int:
    """In an arm's process (`--arm`): `run_arm(args)`, written to `--result-file` as JSON. In the driver: every arm of
    `arms`, `args.repeats` times in alternating order, each in a fresh subprocess (`argv_for(arm, result_file)`,
    `env_for(arm)`), a line per run (`rate(result)`: its throughput), warnings where the runs' weights (`checksum`:
    result key, what it sums) or attention implementations differ, `--json-out`, then `print_table(args,
    summarize(args, results), device_name)`. Exit code 0, or 1 when an arm crashed."""
    if args.arm is not None:
        result = run_arm(args)
        with open(args.result_file, "w") as f:
            json.dump(result, f)
        return 0

    schedule = [(r, arm) for r in range(args.repeats) for arm in (arms if r % 2 == 0 else arms[::-1])]
    print(f"command: {' '.join([Path(sys.executable).name] + sys.argv)}")
    print(f"machine: {machine_info(args)}; torch threads per arm: {args.threads or 'default'}")
    print(f"schedule ({len(schedule)} runs, each in a fresh subprocess): {', '.join(a for _, a in schedule)}")
    results, failures = [], []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for i, (rep, arm) in enumerate(schedule):
            print(f"[{i + 1}/{len(schedule)}] arm={arm} repeat={rep + 1}/{args.repeats} ...", flush=True)
            t0 = time.perf_counter()
            path = os.path.join(tmp, f"{i}.json")
            proc = subprocess.run(argv_for(arm, path), env=env_for(arm))
            if proc.returncode != 0 or not os.path.exists(path):
                failures.append(arm)
                print(f"[{i + 1}/{len(schedule)}] arm={arm} FAILED (exit code {proc.returncode})", flush=True)
                continue
            with open(path) as f:
                r = json.load(f)
            r["repeat"] = rep
            results.append(r)
            print(
                f"[{i + 1}/{len(schedule)}] arm={arm}: {rate(r)}, peak {fmt_mem(r['peak_mem_bytes'])} "
                f"({time.perf_counter() - t0:.0f} s wall)",
                flush=True,
            )
    key, weights = checksum
    checksums = {r[key] for r in results}
    if len(checksums) > 1:
        print(f"WARNING: the arms' {weights} differ (checksums {sorted(checksums)})")
    if len({r["attn_implementation"] for r in results}) > 1:
        print("WARNING: the arms run different attention implementations; the comparison is not like for like")
    summary = summarize(args, results)
    device_name = results[0].get("device_name", machine_info(args)["cpu"]) if results else args.device
    print(f"total wall time: {time.perf_counter() - start:.0f} s")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(
                {"args": vars(args), "machine": machine_info(args), "runs": results, "summary": summary}, f, indent=2
            )
        print(f"wrote {args.json_out}")
    if failures:
        print(f"arms that crashed: {failures}")
    print_table(args, summary, device_name)
    return 1 if failures else 0
