"""
Gold scorers for the over-optimisation harness: the stand-in for human judgement that a proxy reward model is
trained to imitate and that a policy optimised against the proxy is finally judged by (Gao et al. 2022).

A gold scorer is any callable `(prompts, completions) -> list[float]`. Three kinds plug in by name:

- `"vader"` (the offline default): VADER sentiment of the completion (Hutto & Gilbert 2014, the `vadersentiment`
  package, MIT): the compound score in [-1, 1], so the task is "answer in a positive, friendly tone";
- a folder holding a reward model (a BRME, scored by its ensemble mean, or a plain TRL reward model), tokenised as
  `BRMERewardTrainer` tokenised its training pairs;
- `"package.module:function"`: a Python function with the signature above.
"""

import importlib
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from .scoring import reward_model_outputs
from .tokenization import padding_id, tokenize_for_reward

GoldScorer = Callable[[list[str], list[str]], list[float]]


class VaderGold:
    """Positive sentiment of the completion alone: VADER's compound score in [-1, 1] (the prompt is not scored)."""

    def __init__(self):
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError as error:
            raise ImportError(
                "The 'vader' gold scorer needs the vadersentiment package: pip install vadersentiment"
            ) from error
        self.analyzer = SentimentIntensityAnalyzer()

    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        return [float(self.analyzer.polarity_scores(text)["compound"]) for text in completions]


class RewardModelGold:
    """
    A reward model checkpoint as gold: a BRME is scored by the mean of its heads, a plain sequence-classification
    reward model by its single logit. Texts are tokenised as `BRMERewardTrainer` tokenises a training pair.
    """

    def __init__(
        self,
        path: str,
        batch_size: int = 16,
        device: torch.device | str | None = None,
        trust_remote_code: bool = False,
    ):
        self.model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=trust_remote_code)
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        if self.model.config.num_labels != 1:
            raise ValueError(f"Gold reward model {path!r} has {self.model.config.num_labels} labels; a reward has 1.")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device).eval()
        self.batch_size = batch_size
        self.pad_token_id = padding_id(self.tokenizer)

    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        ids = [tokenize_for_reward(self.tokenizer, c, p) for p, c in zip(prompts, completions, strict=True)]
        means, _ = reward_model_outputs(self.model, ids, self.pad_token_id, self.batch_size, self.device)
        return means.mean(-1).tolist()  # a BRME's ensemble mean; a plain reward model's one logit


def load_gold_scorer(spec: str | GoldScorer, trust_remote_code: bool = False) -> GoldScorer:
    """A gold scorer from `"vader"`, a reward model folder, `"package.module:function"`, or a callable (returned)."""
    if callable(spec):
        return spec
    if spec == "vader":
        return VaderGold()
    if Path(spec).is_dir():
        return RewardModelGold(spec, trust_remote_code=trust_remote_code)
    if ":" in spec:
        module_name, _, function_name = spec.partition(":")
        try:
            function = getattr(importlib.import_module(module_name), function_name)
        except (ImportError, AttributeError) as error:
            raise ValueError(
                f"Gold scorer {spec!r}: cannot import {function_name!r} from {module_name!r}: {error}"
            ) from error
        if not callable(function):
            raise ValueError(f"Gold scorer {spec!r} is not callable.")
        return function
    raise ValueError(
        f"Unknown gold scorer {spec!r}; allowed: 'vader', a reward model folder, or 'package.module:function'."
    )
