"""What caching each prompt's forward pass saves when sampling a best-of-n pool (issue 15).

The harness's best-of-n pool (`overoptimization.sample_pool`) runs each prompt once and copies its key/value cache into
every batch of answers. Arms, each sampling `--pool` answers of `--response-length` tokens to each of `--prompts`
evaluation prompts from SmolLM2-135M-Instruct at the harness's settings:

- `uncached`: batches of `--batch-size` copies of the prompt through `sample_answers` (every answer runs its prompt);
- `cached`: `sample_pool` at the same batch size (only the cache differs);
- `cached_4x`: `sample_pool` at 4x the batch size (only decoding runs, so larger batches pay on a CPU).

ABBA order for the first two (`--repeats` blocks), `cached_4x` once per block; one process, `--threads` torch
threads. Printed per arm: answers per second of wall time and of CPU time, and each arm's ratio to `uncached`.

    PYTHONPATH=. HF_HUB_OFFLINE=1 python benchmarks/bon_pool.py --prompts 2 --pool 128 --threads 1
"""

import argparse
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

from trl_robust import overoptimization as oo
from trl_robust.overoptimization_config import OverOptimizationConfig
from trl_robust.script_args import resolve_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=2, help="evaluation prompts")
    parser.add_argument("--pool", type=int, default=128, help="answers per prompt")
    parser.add_argument("--batch-size", type=int, default=32, help="answers per generate() call")
    parser.add_argument("--response-length", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1, help="ABBA blocks")
    parser.add_argument("--threads", type=int, default=1)
    cli = parser.parse_args()
    torch.set_num_threads(cli.threads)

    policy_path = resolve_model("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(policy_path)
    policy = AutoModelForCausalLM.from_pretrained(policy_path).eval()
    config = OverOptimizationConfig(response_length=cli.response_length, generation_batch_size=cli.batch_size)
    wide = OverOptimizationConfig(response_length=cli.response_length, generation_batch_size=4 * cli.batch_size)
    _, prompts, _ = oo.load_prompts(tokenizer, config.max_prompt_length)
    prompts = prompts[: cli.prompts]

    def uncached() -> None:
        for prompt in prompts:
            for start in range(0, cli.pool, cli.batch_size):
                n = min(cli.batch_size, cli.pool - start)
                oo.sample_answers(policy, tokenizer, [prompt] * n, cli.response_length, config.temperature)

    arms = {
        "uncached": uncached,
        "cached": lambda: oo.sample_pool(policy, tokenizer, prompts, cli.pool, config),
        "cached_4x": lambda: oo.sample_pool(policy, tokenizer, prompts, cli.pool, wide),
    }
    wall: dict[str, list[float]] = {name: [] for name in arms}
    cpu: dict[str, list[float]] = {name: [] for name in arms}
    order = ["uncached", "cached", "cached", "uncached", "cached_4x"] * cli.repeats  # ABBA, then the wide batch
    answers = cli.prompts * cli.pool
    for name in order:
        set_seed(0)
        started, started_cpu = time.perf_counter(), time.process_time()
        arms[name]()
        wall[name].append(answers / (time.perf_counter() - started))
        cpu[name].append(answers / (time.process_time() - started_cpu))
        print(f"{name}: {wall[name][-1]:.2f} answers/s wall, {cpu[name][-1]:.2f} per CPU-s", flush=True)
    print(
        f"\n{cli.prompts} prompts x {cli.pool} answers of {cli.response_length} tokens, batch {cli.batch_size}, "
        f"{cli.threads} thread(s); mean over runs, and the ratio to uncached:"
    )
    base = statistics.mean(cpu["uncached"])
    for name in arms:
        per_cpu = statistics.mean(cpu[name])
        per_wall = statistics.mean(wall[name])
        print(f"  {name}: {per_wall:.2f} answers/s wall, {per_cpu:.2f} per CPU-s ({per_cpu / base:.2f}x)")


if __name__ == "__main__":
    main()
