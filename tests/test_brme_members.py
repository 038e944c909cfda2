"""The BRME member types (`head_type` linear / mlp / lora) and randomised priors: forward shapes, that each member
really is its own function, save/load, priors frozen, members that differ after training."""

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from tests.conftest import tiny_text_config
from trl_robust import BRMEConfig, BRMERewardModel
from trl_robust.modeling_brme import MemberLoRA

MEMBER_TYPES = [
    dict(head_type="linear"),
    dict(head_type="linear", prior_scale=1.0),
    dict(head_type="mlp", head_hidden_size=8),
    dict(head_type="mlp", prior_scale=0.5),
    dict(head_type="lora", member_layers=1, member_lora_rank=2),
    dict(head_type="lora", member_layers=2, prior_scale=1.0),
]
IDS = pytest.mark.parametrize("settings", MEMBER_TYPES, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))


def make(kind="llama", seed=0, **settings):
    torch.manual_seed(seed)
    return BRMERewardModel(BRMEConfig(text_config=tiny_text_config(kind, 128), num_heads=3, **settings))


def batch(n=4, width=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 128, (n, width), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0  # some right padding
    return ids, mask


@IDS
@pytest.mark.parametrize("kind", ["llama", "bert"])
def test_forward_shapes_and_uncertainties(kind, settings):
    model = make(kind, **settings).eval()
    ids, mask = batch()
    out = model(input_ids=ids, attention_mask=mask)
    assert out.means.shape == out.stds.shape == (4, 3) and out.logits.shape == (4, 1)
    assert (out.stds > 0).all() and torch.isfinite(out.means).all()
    torch.testing.assert_close(out.epistemic, out.means.std(-1, unbiased=False))
    torch.testing.assert_close(out.aleatoric, out.stds.mean(-1))
    # each sample's score does not depend on the rest of the batch (the member-major batch keeps rows apart)
    alone = model(input_ids=ids[1:2], attention_mask=mask[1:2])
    torch.testing.assert_close(alone.means, out.means[1:2], atol=1e-5, rtol=1e-5)


@IDS
def test_save_and_reload_give_identical_scores(tmp_path, settings):
    model = make(**settings).eval()
    with torch.no_grad():  # move the LoRA B factors off zero so that a reload that dropped them would show
        for module in model.modules():
            if isinstance(module, MemberLoRA):
                module.lora_B.normal_(std=0.5)
    ids, mask = batch()
    before = model(input_ids=ids, attention_mask=mask)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    for loader in (BRMERewardModel, AutoModelForSequenceClassification):
        loaded = loader.from_pretrained(tmp_path).eval()
        assert loaded.config.head_type == settings["head_type"]
        after = loaded(input_ids=ids, attention_mask=mask)
        torch.testing.assert_close(after.means, before.means)
        torch.testing.assert_close(after.stds, before.stds)


def test_lora_members_read_their_own_features():
    model = make(head_type="lora", member_layers=1, member_lora_rank=2).eval()
    ids, mask = batch()
    shared = model(input_ids=ids, attention_mask=mask).means
    with torch.no_grad():
        adapter = next(m for m in model.modules() if isinstance(m, MemberLoRA))
        adapter.lora_B[1].normal_(std=1.0)  # change member 1's adapter only
    changed = model(input_ids=ids, attention_mask=mask).means
    assert not torch.allclose(changed[:, 1], shared[:, 1])
    torch.testing.assert_close(changed[:, [0, 2]], shared[:, [0, 2]])  # the other members are untouched


def test_members_start_as_the_pretrained_layer_and_are_trained():
    model = make(head_type="lora")
    adapters = [m for m in model.modules() if isinstance(m, MemberLoRA)]
    assert adapters and all(torch.equal(m.lora_B, torch.zeros_like(m.lora_B)) for m in adapters)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("member_adapters.") and n.endswith("lora_B") for n in names)


@pytest.mark.parametrize("head_type", ["linear", "mlp"])
def test_priors_are_frozen_buffers_that_shift_each_member(head_type):
    with_prior = make(head_type=head_type, prior_scale=2.0).eval()
    assert "score.prior_weight" in dict(with_prior.named_buffers())
    assert "score.prior_weight" not in dict(with_prior.named_parameters())
    without = make(head_type=head_type).eval()
    without.load_state_dict({k: v for k, v in with_prior.state_dict().items() if k != "score.prior_weight"})
    ids, mask = batch()
    a, b = with_prior(input_ids=ids, attention_mask=mask), without(input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(a.stds, b.stds)  # priors move means only
    features = torch.nn.functional.layer_norm(
        with_prior.pool(with_prior.backbone(input_ids=ids, attention_mask=mask).last_hidden_state, mask), (32,)
    )
    expected = 2.0 * features @ with_prior.score.prior_weight.T
    torch.testing.assert_close(a.means - b.means, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("head_type", ["linear", "mlp"])
def test_the_prior_comes_from_its_own_seed_not_the_global_random_state(head_type):
    """Every process of a distributed run must build the same prior without communicating (under ZeRO-3 a prior drawn
    from the global state inside transformers' init was uninitialised memory on rank 1): two BRMEs built under
    different global seeds share their prior, whose K rows differ, while their trained heads start apart."""
    from trl_robust.modeling_brme import prior_weights

    a, b = make(seed=1, head_type=head_type, prior_scale=1.0), make(seed=2, head_type=head_type, prior_scale=1.0)
    torch.testing.assert_close(a.score.prior_weight, b.score.prior_weight, rtol=0, atol=0)
    torch.testing.assert_close(a.score.prior_weight, prior_weights(3, 32), rtol=0, atol=0)
    assert not torch.equal(a.score.prior_weight[0], a.score.prior_weight[1])  # each member its own prior
    assert 0.1 < a.score.prior_weight.std() < 0.25  # N(0, 1/H), H = 32: std 0.177
    head = "fc2_weight" if head_type == "mlp" else "weight"
    assert not torch.equal(getattr(a.score, head), getattr(b.score, head))
    with torch.no_grad():
        a.score.prior_weight.zero_()
    a._init_weights(a.score)  # what transformers' init calls (inside its rank-0 gather under ZeRO-3): the same prior
    torch.testing.assert_close(a.score.prior_weight, b.score.prior_weight, rtol=0, atol=0)


@pytest.mark.parametrize("settings", [dict(head_type="mlp", prior_scale=1.0), dict(head_type="lora")], ids=str)
def test_training_moves_members_apart_and_keeps_priors(settings):
    model = make(**settings)
    prior = model.score.prior_weight.clone() if settings.get("prior_scale") else None
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids, mask = batch(8)
    target = torch.randn(8)
    for _ in range(20):
        out = model(input_ids=ids, attention_mask=mask)
        weights = torch.rand(8, 3)  # each member its own example weights, as the bootstrap gives them
        loss = (weights * (out.means - target[:, None]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = model.eval()(input_ids=ids, attention_mask=mask)
    assert out.epistemic.min() > 1e-4  # the members are different functions
    if prior is not None:
        assert torch.equal(model.score.prior_weight, prior)
    if settings["head_type"] == "lora":
        assert any(m.lora_B.abs().sum() > 0 for m in model.modules() if isinstance(m, MemberLoRA))


def test_gradient_checkpointing_matches_plain_backward():
    torch.manual_seed(0)
    grads = []
    for checkpointing in (False, True):
        model = make(head_type="lora", member_layers=2).train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        ids, mask = batch()
        model(input_ids=ids, attention_mask=mask).means.sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize(
    "settings, match",
    [
        (dict(head_type="ensemble"), "head_type"),
        (dict(prior_scale=-1.0), "BRMEConfig.prior_scale must be a finite number >= 0"),
        (dict(member_layers=0), "BRMEConfig.member_layers must be >= 1, got 0."),
        (dict(head_type="lora", member_layers=9), "exceeds the backbone's 2 layers"),
        (dict(head_hidden_size=0), "BRMEConfig.head_hidden_size"),
    ],
)
def test_bad_member_settings_name_the_field(settings, match):
    with pytest.raises(Exception, match=match):
        BRMEConfig(text_config=tiny_text_config("llama", 128), **settings)


@IDS
def test_per_token_scores_match_the_pooled_ones(settings):
    """A PPO value model reads the members on every token (`score_hidden`); at the last token of an unpadded row that
    is the model's own score, whatever the member type (a lora BRME's backbone output is member-major)."""
    from trl_robust.robust_ppo_trainer import token_values

    model = make(**settings).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, MemberLoRA):
                module.lora_B.normal_(std=0.5)
    ids = torch.randint(1, 128, (3, 6))
    mask = torch.ones_like(ids)
    out = model(input_ids=ids, attention_mask=mask)
    per_token = token_values(model, ids, mask)
    assert per_token.shape == (3, 6)
    torch.testing.assert_close(per_token[:, -1], out.means.mean(-1), atol=1e-5, rtol=1e-5)
