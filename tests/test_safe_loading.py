"""Loading is safe by default: no pickle code runs, no remote code is trusted, recipes are plain YAML."""

import dataclasses
import importlib
import inspect
import os
import pickle
import pkgutil
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, LlamaConfig

import trl_robust
from trl_robust import BRMEConfig, BRMERewardConfig, BRMERewardModel, BRMERewardTrainer
from trl_robust.recipe_parser import RecipeError, RecipeParser


class Payload:
    """Unpickling this object runs `touch <marker>`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def tiny_config() -> BRMEConfig:
    text = LlamaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    return BRMEConfig(text_config=text, num_heads=2)


def booby_trapped_checkpoint(folder: Path, marker: Path, legacy: bool) -> Path:
    """A BRME folder whose only weights are a `pytorch_model.bin` that runs code when unpickled."""
    tiny_config().save_pretrained(folder)
    with open(folder / "pytorch_model.bin", "wb") as f:
        if legacy:
            pickle.dump({"score.weight": Payload(marker)}, f)  # the pre-1.6 (non-zip) torch format
        else:
            torch.save({"score.weight": Payload(marker)}, f)
    return folder


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize(
    "load",
    [
        BRMERewardModel.from_pretrained,
        AutoModelForSequenceClassification.from_pretrained,
        lambda path: BRMERewardTrainer._build_model(str(path), BRMERewardConfig("unused", report_to="none")),
    ],
    ids=["BRMERewardModel", "AutoModelForSequenceClassification", "BRMERewardTrainer"],
)
def test_a_pickle_checkpoint_never_runs_its_code(tmp_path, legacy, load):
    # transformers 5 reads .bin files with torch.load(weights_only=True) (torch >= 2.6 default): the pickle's
    # reference to os.system is refused before anything runs.
    marker = tmp_path / "PWNED"
    folder = booby_trapped_checkpoint(tmp_path / "model", marker, legacy)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load(folder)
    assert not marker.exists()


def test_safetensors_weights_win_over_a_pickle_beside_them(tmp_path):
    torch.manual_seed(0)
    model = BRMERewardModel(tiny_config())
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    assert (folder / "model.safetensors").exists()
    marker = tmp_path / "PWNED"
    torch.save({"score.weight": Payload(marker)}, folder / "pytorch_model.bin")
    loaded = BRMERewardModel.from_pretrained(folder)
    assert torch.equal(loaded.score.weight, model.score.weight)
    assert not marker.exists()


def _package_dataclasses() -> list[type]:
    found = {}
    for info in pkgutil.walk_packages(trl_robust.__path__, "trl_robust."):
        if info.name.endswith(("plotting", "offline_models")):
            continue  # optional dependencies; they define no argument classes
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, dataclasses.is_dataclass):
            if isinstance(obj, type) and obj.__module__.startswith("trl_robust"):
                found[obj.__qualname__] = obj
    return list(found.values())


def test_trust_remote_code_defaults_to_false_everywhere():
    with_field = []
    for cls in _package_dataclasses():
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if "trust_remote_code" in fields:
            with_field.append(cls.__name__)
            assert fields["trust_remote_code"].default is False, cls.__name__
        if "model_init_kwargs" in fields:
            assert fields["model_init_kwargs"].default is None, cls.__name__
    assert {"BRMERewardConfig", "RobustGRPOConfig", "RobustRLOOConfig"} <= set(with_field), with_field
    # from_backbone sets trust_remote_code=False unless told otherwise, and no source file turns it on.
    assert 'setdefault("trust_remote_code", False)' in inspect.getsource(BRMERewardModel.from_backbone)
    for path in Path(trl_robust.__file__).parent.rglob("*.py"):
        assert not re.search(r"trust_remote_code\s*[=:]\s*(bool\s*=\s*)?True", path.read_text()), path


def test_a_recipe_with_a_python_tag_is_refused(tmp_path):
    marker = tmp_path / "PWNED"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f'output_dir: out\nseed: !!python/object/apply:os.system ["touch {marker}"]\n')
    parser = RecipeParser((BRMERewardConfig,))
    with pytest.raises(RecipeError, match=r"recipe.yaml is not plain YAML.*python/object/apply:os.system"):
        parser.parse_recipe_and_args(["--config", str(recipe)])
    assert not marker.exists()
