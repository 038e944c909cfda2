import pytest
import torch
from huggingface_hub.errors import StrictDataclassFieldValidationError
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoConfig, AutoModelForSequenceClassification, LlamaForCausalLM

from tests.conftest import tiny_text_config
from trl_robust import BRMEConfig, BRMERewardModel
from trl_robust import aggregation as agg


def make_model(kind="llama", vocab=128, **kwargs):
    torch.manual_seed(0)
    return BRMERewardModel(BRMEConfig(text_config=tiny_text_config(kind, vocab), **kwargs)).eval()


@pytest.mark.parametrize("kind", ["llama", "qwen2", "bert"])
def test_forward_shapes_and_formulas(kind):
    model = make_model(kind, num_heads=4, robust_lambda=0.3)
    ids = torch.randint(1, 128, (3, 9))
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    assert out.means.shape == (3, 4) and out.stds.shape == (3, 4)
    assert out.logits.shape == (3, 1) and out.nominal.shape == (3,) and out.worst.shape == (3,)
    assert (out.stds >= model.config.std_floor).all()
    best = out.stds.argmin(-1)
    assert torch.equal(out.nominal, out.means[torch.arange(3), best])
    assert torch.equal(out.worst, out.means.min(-1).values)
    torch.testing.assert_close(out.logits[:, 0], 0.3 * out.nominal + 0.7 * out.worst)


def test_backbone_kinds_and_default_pooling():
    assert type(make_model("llama").backbone).__name__ == "LlamaModel"
    assert type(make_model("qwen2").backbone).__name__ == "Qwen2Model"
    assert make_model("llama").config.pooling == "last"
    bert = make_model("bert")
    assert type(bert.backbone).__name__ == "BertModel" and bert.config.pooling == "first"


def test_heads_start_distinct_with_the_configured_std():
    model = make_model(num_heads=5, init_std=0.7)
    ids = torch.randint(1, 128, (2, 6))
    out = model(input_ids=ids)
    assert out.means.std(-1).min() > 0  # heads disagree from the start
    assert torch.allclose(out.stds, torch.full_like(out.stds, 0.7), atol=0.2)


def test_last_token_pooling_ignores_padding_on_either_side():
    model = make_model()
    ids = torch.randint(1, 128, (1, 5))
    alone = model(input_ids=ids, attention_mask=torch.ones_like(ids)).means
    pad = torch.zeros(1, 3, dtype=torch.long)
    right = model(input_ids=torch.cat([ids, pad], 1), attention_mask=torch.cat([torch.ones_like(ids), pad], 1)).means
    torch.testing.assert_close(right, alone)
    # Left padding shifts positions for rotary models; pass position ids as generation does.
    mask = torch.cat([pad, torch.ones_like(ids)], 1)
    left = model(
        input_ids=torch.cat([pad, ids], 1), attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)
    )
    torch.testing.assert_close(left.means, alone, atol=1e-5, rtol=1e-4)


def test_save_load_round_trip_and_auto_class(tmp_path):
    model = make_model(num_heads=3, robust_lambda=0.6)
    ids = torch.randint(1, 128, (2, 7))
    before = model(input_ids=ids)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert isinstance(AutoConfig.from_pretrained(tmp_path), BRMEConfig)
    for loader in (BRMERewardModel, AutoModelForSequenceClassification):
        loaded = loader.from_pretrained(tmp_path).eval()
        assert isinstance(loaded, BRMERewardModel)
        assert loaded.config.num_heads == 3 and loaded.config.robust_lambda == 0.6
        after = loaded(input_ids=ids)
        for field in ("means", "stds", "logits"):
            assert torch.equal(getattr(before, field), getattr(after, field))


def test_from_backbone_keeps_pretrained_weights(tmp_path):
    torch.manual_seed(1)
    lm = LlamaForCausalLM(tiny_text_config("llama", 128))
    lm.save_pretrained(tmp_path)
    model = BRMERewardModel.from_backbone(str(tmp_path), num_heads=2)
    assert model.config.num_heads == 2 and model.config.num_labels == 1
    for name, param in lm.model.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[name], param), name
    with pytest.raises(ValueError, match="already a BRME"):
        model.save_pretrained(tmp_path / "brme")
        BRMERewardModel.from_backbone(str(tmp_path / "brme"))


def test_gradient_checkpointing_gives_the_same_gradients():
    ids = torch.randint(1, 128, (2, 6))
    grads = []
    for checkpointing in (False, True):
        model = make_model().train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        model(input_ids=ids).means.sum().backward()
        grads.append(model.backbone.layers[0].mlp.up_proj.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_bf16_forward():
    model = make_model().to(torch.bfloat16)
    out = model(input_ids=torch.randint(1, 128, (2, 5)))
    assert out.means.dtype == torch.float32 and torch.isfinite(out.means).all()


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("num_heads", 0, "num_heads"),
        ("robust_lambda", 1.5, "robust_lambda"),
        ("std_floor", 0.0, "std_floor"),
        ("pooling", "mean", "pooling"),
        ("num_labels", 5, "num_labels"),
    ],
)
def test_config_rejects_bad_values(field, value, match):
    with pytest.raises((ValueError, TypeError, StrictDataclassFieldValidationError), match=match):
        BRMEConfig(**{field: value})


finite = st.floats(-50.0, 50.0, allow_nan=False, width=32)
positive = st.floats(0.125, 20.0, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 4).flatmap(
        lambda k: st.tuples(st.lists(finite, min_size=k, max_size=k), st.lists(positive, min_size=k, max_size=k))
    ),
    st.floats(0, 1),
)
def test_robust_reward_properties(heads, lam):
    means, stds = torch.tensor([heads[0]]), torch.tensor([heads[1]])
    worst, nominal = agg.worst(means), agg.nominal(means, stds)
    mixed = agg.robust(means, stds, lam)
    assert worst <= nominal  # the worst case never exceeds any head
    assert worst - 1e-4 <= mixed <= nominal + 1e-4  # the mix lies between its two terms
    torch.testing.assert_close(agg.robust(means, stds, 1.0), nominal)
    torch.testing.assert_close(agg.robust(means, stds, 0.0), worst)
    assert nominal == means[0, int(torch.tensor(heads[1]).argmin())]


def test_from_backbone_keeps_the_attention_implementation(tmp_path):
    LlamaForCausalLM(tiny_text_config("llama", 128)).save_pretrained(tmp_path)
    assert BRMERewardModel.from_backbone(str(tmp_path)).config.text_config._attn_implementation == "sdpa"
    eager = BRMERewardModel.from_backbone(str(tmp_path), attn_implementation="eager")
    assert eager.config.text_config._attn_implementation == "eager"


def test_no_mask_means_no_padding_even_when_pad_is_eos():
    model = make_model()
    model.config.text_config.pad_token_id = 7
    ids = torch.tensor([[3, 4, 5, 7]])  # ends with EOS == pad, as SmolLM2's tokenizer sets it
    torch.testing.assert_close(
        model(input_ids=ids).means, model(input_ids=ids, attention_mask=torch.ones_like(ids)).means
    )


def test_wrapping_a_live_backbone_keeps_its_attention():
    from transformers import LlamaModel

    backbone = LlamaModel(tiny_text_config("llama", 128))
    assert backbone.config._attn_implementation == "sdpa"
    model = BRMERewardModel(BRMEConfig(text_config=backbone.config), backbone=backbone)
    assert backbone.config._attn_implementation == "sdpa" == model.config.text_config._attn_implementation
