"""How a BRME's K Gaussian heads become one reward per sample: the aggregation functions and [`Aggregation`], the
one object that names an aggregation with its parameters, checks them, and applies them.

Every function takes `means` (and where needed `stds`) of shape `[batch, K]` (head k's `mu_k`, `sigma_k`) and returns
`[batch]`. Their parameters are named as the robust RL configs' fields are (`robust_lambda`, `uwo_coef`, `kl_dro_beta`).

| name      | reward                                           | source                                       |
|-----------|--------------------------------------------------|----------------------------------------------|
| `nominal` | `mu_{argmin_k sigma_k}`                          | arXiv 2409.15360                             |
| `worst`   | `min_k mu_k`                                     | arXiv 2409.15360; WCO in Coste et al. 2023   |
| `robust`  | `lambda * nominal + (1 - lambda) * worst`        | arXiv 2409.15360                             |
| `mean`    | `(1/K) sum_k mu_k`                               | Coste et al. 2023                            |
| `uwo`     | `mean - c * (1/K) sum_k (mu_k - mean)^2`         | UWO in Coste et al. 2023 (arXiv 2310.02743)  |
| `kl_dro`  | `-beta * log (1/K) sum_k exp(-mu_k / beta)`      | arXiv 2606.09073                             |
"""

from dataclasses import dataclass, replace
from typing import Any

import torch

from .recipe_checks import check_range, check_ranges, value_range

AGGREGATIONS = ("nominal", "worst", "robust", "mean", "uwo", "kl_dro")
DEFAULT_ROBUST_LAMBDA = 0.4  # the public re-implementation's weight on the nominal term (DESIGN.md section 1)
# The one place the aggregation parameters' ranges are written; the configs' fields of these names declare them as
# their `metadata["range"]`, so the command line checks them before the imports.
PARAMETER_RANGES = {
    "robust_lambda": value_range(0, 1),
    "uwo_coef": value_range(0, finite=True),
    "kl_dro_beta": value_range(0, low_inclusive=False, finite=True),
}


def check_heads(means: torch.Tensor, stds: torch.Tensor | None = None) -> None:
    """Raise a `ValueError` unless `means` (and `stds`, when given) are `[batch, K]` tensors of one shape, K >= 1."""
    if not isinstance(means, torch.Tensor) or means.dim() != 2 or means.shape[-1] < 1:
        shape = tuple(means.shape) if isinstance(means, torch.Tensor) else type(means).__name__
        raise ValueError(f"means must be a [batch, K] tensor with K >= 1 heads, got {shape}.")
    if stds is not None and (not isinstance(stds, torch.Tensor) or stds.shape != means.shape):
        shape = tuple(stds.shape) if isinstance(stds, torch.Tensor) else type(stds).__name__
        raise ValueError(f"stds must have the shape of means {tuple(means.shape)}, got {shape}.")


def check_robust_lambda(robust_lambda: float, owner: str = "robust_lambda") -> None:
    """Raise a `ValueError` naming `owner` (e.g. `"BRMEConfig.robust_lambda"`) unless `robust_lambda` is in [0, 1]."""
    check_range(owner, robust_lambda, PARAMETER_RANGES["robust_lambda"])


def check_params(
    robust_lambda: float = 0.4, uwo_coef: float = 0.0, kl_dro_beta: float = 1.0, owner: str | None = None
) -> None:
    """Raise a `ValueError` naming the parameter (as `owner.field` when `owner` is given, e.g. a config class name)
    when an aggregation parameter is outside its range of `PARAMETER_RANGES`."""
    values = {"robust_lambda": robust_lambda, "uwo_coef": uwo_coef, "kl_dro_beta": kl_dro_beta}
    check_ranges(owner, values, PARAMETER_RANGES)


def nominal(means: torch.Tensor, stds: torch.Tensor) -> torch.Tensor:
    """Mean of the most confident head (smallest std) for each sample, `mu_{argmin_k sigma_k}` (arXiv 2409.15360).
    Ties go to the lowest head index."""
    check_heads(means, stds)
    most_confident = stds.argmin(dim=-1, keepdim=True)
    return means.gather(-1, most_confident).squeeze(-1)


def worst(means: torch.Tensor) -> torch.Tensor:
    """Worst case over the heads, `min_k mu_k`, for each sample (arXiv 2409.15360; WCO in Coste et al. 2023)."""
    check_heads(means)
    return means.min(dim=-1).values


def robust(means: torch.Tensor, stds: torch.Tensor, robust_lambda: float = 0.4) -> torch.Tensor:
    """`robust_lambda * nominal + (1 - robust_lambda) * worst` (arXiv 2409.15360); lambda weighs the nominal term, so
    1 is standard RLHF on the most confident head and 0 is pure worst case."""
    check_robust_lambda(robust_lambda)
    low = worst(means)
    # worst + lambda * (nominal - worst): the same mix, exactly `worst` wherever the two terms agree (e.g. K = 1)
    return low + robust_lambda * (nominal(means, stds) - low)


def mean(means: torch.Tensor) -> torch.Tensor:
    """Ensemble mean `(1/K) sum_k mu_k` (mean optimisation in Coste et al. 2023)."""
    check_heads(means)
    return means.mean(dim=-1)


def uwo(means: torch.Tensor, uwo_coef: float = 1.0) -> torch.Tensor:
    """
    Uncertainty-weighted optimisation, `mean_k mu_k - c * Var_k mu_k` with `c = uwo_coef` (Coste et al. 2023,
    arXiv 2310.02743): the ensemble mean penalised by the heads' disagreement. The variance is the population one
    (divide by K), so a single head has none; the heads' own stds do not enter, as in the paper's ensemble of point
    estimates.
    """
    check_heads(means)
    check_params(uwo_coef=uwo_coef)
    return means.mean(dim=-1) - uwo_coef * means.var(dim=-1, unbiased=False)


def kl_dro(means: torch.Tensor, kl_dro_beta: float = 1.0) -> torch.Tensor:
    """
    KL-DRO effective reward `-beta * log (1/K) sum_k exp(-mu_k / beta)` with `beta = kl_dro_beta` (arXiv 2606.09073,
    pessimistic branch, with the heads' means as the reward distribution). `min_k mu_k <= kl_dro <= mean_k mu_k`;
    it tends to the minimum as beta -> 0 and to the mean as beta -> inf.

    Computed as a logsumexp shifted by the minimum, `min - beta * log1p((1/K) sum_k expm1(-(mu_k - min) / beta))`: the
    shift keeps the exponentials in [0, 1] for any beta, and log1p/expm1 keep the small differences that a large beta
    leaves (a plain float32 logsumexp loses them to cancellation against log K), on every device and dtype.
    """
    check_heads(means)
    check_params(kl_dro_beta=kl_dro_beta)
    beta = kl_dro_beta
    values = means if means.dtype in (torch.float32, torch.float64) else means.float()
    low = values.min(dim=-1, keepdim=True).values
    shifted = torch.expm1(-(values - low) / beta).mean(dim=-1)
    return (low.squeeze(-1) - beta * torch.log1p(shifted)).to(means.dtype)


def check_aggregation(
    name: str, robust_lambda: float = 0.4, uwo_coef: float = 1.0, kl_dro_beta: float = 1.0, owner: str | None = None
) -> None:
    """Raise a `ValueError` naming the field (as `owner.field` when given) when an aggregation name or parameter is
    out of range."""
    if name not in AGGREGATIONS:
        field_name = f"{owner}.reward_aggregation" if owner else "reward aggregation"
        raise ValueError(f"{field_name} must be one of {', '.join(AGGREGATIONS)}; got {name!r}.")
    check_params(robust_lambda, uwo_coef, kl_dro_beta, owner=owner)


# The parameter each aggregation takes, named as the robust RL configs' fields are; the others take none.
PARAMETER_OF = {"robust": "robust_lambda", "uwo": "uwo_coef", "kl_dro": "kl_dro_beta"}


def aggregate(name: str, means: torch.Tensor, stds: torch.Tensor | None = None, **params: float) -> torch.Tensor:
    """
    The reward `name` (one of `AGGREGATIONS`) of every sample, shape `[batch]`. Parameters by name: `robust`
    takes `robust_lambda`, `uwo` takes `uwo_coef`, `kl_dro` takes `kl_dro_beta`; the others take none. `stds` is
    needed by `nominal` and `robust` only.

    Example: `aggregate("kl_dro", out.means, out.stds, kl_dro_beta=0.5)` on a [`BRMERewardModel`] output.
    """
    if name not in AGGREGATIONS:
        raise ValueError(f"Unknown reward aggregation {name!r}; allowed: {', '.join(AGGREGATIONS)}.")
    accepted = {PARAMETER_OF[name]} if name in PARAMETER_OF else set()
    unknown = set(params) - accepted
    if unknown:
        allowed = ", ".join(sorted(accepted)) or "none"
        raise ValueError(f"Aggregation {name!r} got unexpected parameters {sorted(unknown)}; it accepts: {allowed}.")
    check_heads(means, stds)
    if name in ("nominal", "robust") and stds is None:
        raise ValueError(f"Aggregation {name!r} needs the heads' stds.")
    if name == "nominal":
        return nominal(means, stds)
    if name == "worst":
        return worst(means)
    if name == "robust":
        return robust(means, stds, **params)
    if name == "mean":
        return mean(means)
    if name == "uwo":
        return uwo(means, **params)
    return kl_dro(means, **params)


@dataclass(frozen=True)
class Aggregation:
    """
    One reward aggregation with its parameters: what the robust RL trainers optimise, the scorers return, and the
    over-optimisation harness compares. Only the parameter of `name` matters (see `PARAMETER_OF`); the others keep
    their defaults. Built once per run (from a config with [`from_config`], from a harness setting such as
    `"robust:0.4"` with [`from_setting`]) and checked on construction.

    Example:

    ```python
    agg = Aggregation("robust", robust_lambda=0.4)
    rewards = agg(out.means, out.stds)  # [batch]
    ```
    """

    name: str = "robust"
    robust_lambda: float = DEFAULT_ROBUST_LAMBDA
    uwo_coef: float = 1.0
    kl_dro_beta: float = 1.0

    def __post_init__(self):
        self.validate()

    def validate(self, owner: str | None = None) -> None:
        """Raise a `ValueError` naming the field (as `owner.field` when given) when a setting is out of range."""
        check_aggregation(self.name, self.robust_lambda, self.uwo_coef, self.kl_dro_beta, owner=owner)

    @property
    def params(self) -> dict[str, float]:
        """The keyword parameters of [`aggregate`] for this aggregation (`{}` for those without one)."""
        return {PARAMETER_OF[self.name]: getattr(self, PARAMETER_OF[self.name])} if self.name in PARAMETER_OF else {}

    def __call__(self, means: torch.Tensor, stds: torch.Tensor | None = None) -> torch.Tensor:
        return aggregate(self.name, means, stds, **self.params)

    def with_name(self, name: str) -> "Aggregation":
        """The same parameters under another aggregation (e.g. to log every aggregation of one run)."""
        return replace(self, name=name)

    def head_metrics(
        self, means: torch.Tensor, stds: torch.Tensor, names: tuple[str, ...] = AGGREGATIONS
    ) -> dict[str, float]:
        """
        Batch means of the heads' view of N samples (`means`, `stds` `[N, K]`): each aggregation of `names` with
        these parameters (keyed by name), `mean_std` (mean predicted std), `head_disagreement` (std over heads of their
        means, averaged over samples) and `head_{k}_mean`. The RL trainers log these under `robust/` or `brme/`.
        """
        metrics = {name: self.with_name(name)(means, stds).float().mean().item() for name in dict.fromkeys(names)}
        metrics["mean_std"] = stds.float().mean(-1).mean().item()
        metrics["head_disagreement"] = means.float().std(dim=-1, unbiased=False).mean().item()
        for k in range(means.shape[-1]):
            metrics[f"head_{k}_mean"] = means[:, k].float().mean().item()
        return metrics

    def describe(self) -> str:
        """`"robust (robust_lambda=0.4)"`, `"mean"`: for logs, plots and model cards."""
        return f"{self.name} ({', '.join(f'{k}={v:g}' for k, v in self.params.items())})" if self.params else self.name

    @classmethod
    def from_config(cls, config: Any, brme_robust_lambda: float | None = None) -> "Aggregation":
        """
        The aggregation a robust RL config (`reward_aggregation`, `robust_lambda`, `uwo_coef`, `kl_dro_beta`) asks
        for. `config.robust_lambda = None` means the BRME's own (`brme_robust_lambda`, the lambda its logits use);
        an explicit value wins. Errors name the config class and field.
        """
        robust_lambda = config.robust_lambda
        if robust_lambda is None:
            robust_lambda = brme_robust_lambda if brme_robust_lambda is not None else DEFAULT_ROBUST_LAMBDA
        values = dict(
            name=config.reward_aggregation,
            robust_lambda=robust_lambda,
            uwo_coef=config.uwo_coef,
            kl_dro_beta=config.kl_dro_beta,
        )
        check_aggregation(**values, owner=type(config).__name__)  # first, so errors name the config's field
        return cls(**values)

    @classmethod
    def from_setting(cls, setting: str, defaults: "Aggregation | None" = None) -> "Aggregation":
        """`"robust:0.4"` -> `Aggregation("robust", robust_lambda=0.4)`; a bare name keeps `defaults`' parameters
        (the RL configs' defaults when None). Errors name the setting."""
        name, sep, value = setting.partition(":")
        if name not in AGGREGATIONS:
            raise ValueError(f"Setting {setting!r}: unknown aggregation {name!r}; allowed: {', '.join(AGGREGATIONS)}.")
        base = replace(defaults or cls(), name=name)
        if not sep:
            return base
        if name not in PARAMETER_OF:
            raise ValueError(f"Setting {setting!r}: {name!r} takes no parameter (only {', '.join(PARAMETER_OF)} do).")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"Setting {setting!r}: {value!r} is not a number.") from None
        try:
            return replace(base, **{PARAMETER_OF[name]: number})
        except ValueError as error:
            raise ValueError(f"Setting {setting!r}: {error}") from None
