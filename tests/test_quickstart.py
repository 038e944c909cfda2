import json

import torch
from transformers import LlamaForCausalLM

from tests.conftest import tiny_text_config
from trl_robust.scripts import quickstart


def test_quickstart_pipeline_runs_in_short_mode(tmp_path, smol_tokenizer):
    torch.manual_seed(0)
    backbone = tmp_path / "tiny"
    LlamaForCausalLM(tiny_text_config("llama", len(smol_tokenizer))).save_pretrained(backbone)
    smol_tokenizer.save_pretrained(backbone)
    out = tmp_path / "out"
    summary = quickstart.main(
        [
            "--backbone",
            str(backbone),
            "--output-dir",
            str(out),
            "--max-train-pairs",
            "48",
            "--num-heads",
            "3",
            "--batch-size",
            "8",
            "--max-length",
            "96",
        ]
    )
    assert (out / "brme_training.png").stat().st_size > 10_000
    saved = json.loads((out / "summary.json").read_text())
    assert saved["end"]["eval_loss"] == summary["end"]["eval_loss"]
    assert saved["end"]["eval_loss"] != saved["start"]["eval_loss"]  # it trained
    assert (out / "brme" / "model.safetensors").exists()
