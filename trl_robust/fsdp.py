"""
What FSDP2 needs beyond accelerate's own handling, kept apart from the trainers.

Under FSDP2 (`torch.distributed.fsdp.fully_shard`, accelerate's `fsdp_version: 2`) accelerate shards every transformer
layer as its own unit and puts the remaining parameters (embeddings, final norm, LM / value / reward heads) in the
root module's unit. Those are gathered by the root module's forward only. `RobustPPOTrainer` trains a
policy + value wrapper but calls its parts directly (`policy.generate`, the rollout's no-grad policy and value
forwards, the LoRA reference): there `root_unsharded` gathers the root unit around the calls, as ZeRO-3's
`GatheredParameters` does for DeepSpeed. The layers keep gathering themselves in their own forwards.
"""

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

_DEPTH = "_trl_robust_root_unsharded"  # set on the module while gathered, so nested uses do not reshard early


def is_fsdp2_module(module: nn.Module) -> bool:
    """True for a module `fully_shard` was applied to (its class is then a subclass of `FSDPModule`)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch without FSDP2
        return False
    return isinstance(module, FSDPModule)


def layer_classes_to_wrap(*models: nn.Module) -> list[str]:
    """The union of the models' `_no_split_modules` (their transformer layer classes), in order: what FSDP's
    TRANSFORMER_BASED_WRAP shards as separate units. A wrapper of several models (RobustPPOTrainer's policy + value)
    returns it as its own `_no_split_modules`; without it the wrapper would be one unit, gathered whole."""
    names: list[str] = []
    for model in models:
        for name in getattr(model, "_no_split_modules", None) or []:
            if name not in names:
                names.append(name)
    return names


@contextmanager
def root_unsharded(module: nn.Module) -> Iterator[None]:
    """
    With `module` an FSDP2 root, its own (not per-layer) parameters gathered for the duration; a no-op for any other
    module. Collective: every rank must enter it. Code inside must not run `module`'s own forward (that reshards the
    root on the way out); calling its submodules is what it is for.
    """
    if not is_fsdp2_module(module) or getattr(module, _DEPTH, 0) > 0:  # nested: the outer one gathered already
        yield
        return
    # FSDP2 picks its root as the first FSDP module to run forward; a submodule called directly before the root has
    # ever run would claim that role. Initialising the root's state first keeps the layers as non-root units.
    module._get_fsdp_state()._lazy_init()
    # transformers' `generate` keeps the ranks stepping together (`synced_gpus`, needed when one rank's sequences
    # stop early: every step all-gathers the layers) only for modules it knows to be FSDP-managed.
    for sub in module.modules():
        sub._is_fsdp_managed_module = True
    module.unshard()
    setattr(module, _DEPTH, 1)
    try:
        yield
    finally:
        setattr(module, _DEPTH, 0)
        module.reshard()


__all__ = ["is_fsdp2_module", "layer_classes_to_wrap", "root_unsharded"]
