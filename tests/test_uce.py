"""UCE on tiny SD 1.x, 2.x and SDXL pipelines: where the keys/values go, and what stays."""

import pytest
import torch

import erasure
from erasure.adapters import adapter_for
from erasure.methods.uce import token_spans


def _outputs(weights, tokens):
    """Key/value outputs of every projection for ``tokens`` (n, dim), in float64."""
    return {name: tokens.double() @ w.double().T for name, w in weights.items()}


def _adapter_and_weights(pipe):
    """The pipeline's adapter and a copy of its cross-attention key/value weights."""
    adapter = adapter_for(pipe)
    return adapter, {k: v.detach().clone() for k, v in adapter.cross_attention_weights().items()}


def _erased_and_target_tokens(adapter, concept, guide, token_choice):
    source, target = adapter.encode([concept]), adapter.encode([guide])
    length = source.hidden.shape[1]
    source_span, target_span = token_spans(
        int(source.token_counts[0]), int(target.token_counts[0]), length, token_choice
    )
    return source.hidden[0, source_span], target.hidden[0, target_span]


def _relative_residual(edited, original, keys, targets):
    """max over projections of ||W e - W0 e_t|| / ||W0 e - W0 e_t||: 0 = mapped exactly, 1 = unmoved."""
    worst = 0.0
    for name, w0 in original.items():
        w0, w = w0.double(), edited.tensors[name].double()
        goal = targets.double() @ w0.T
        before = (keys.double() @ w0.T - goal).norm()
        after = (keys.double() @ w.T - goal).norm()
        worst = max(worst, (after / before).item())
    return worst


def _relative_change(edited, original, tokens):
    worst = 0.0
    for name, w0 in original.items():
        before, after = tokens.double() @ w0.double().T, tokens.double() @ edited.tensors[name].double().T
        worst = max(worst, ((after - before).norm() / before.norm()).item())
    return worst


def test_last_subject_token_maps_onto_the_guide(tiny_pipe):
    adapter, original = _adapter_and_weights(tiny_pipe)
    # The 2025 code's pairing: last subject tokens, preserved prompts at the same position.
    edited = erasure.erase(tiny_pipe, "uce", "airplane", token_choice="last_subject", preserve_tokens="erased_span")
    keys, targets = _erased_and_target_tokens(adapter, "airplane", "", "last_subject")
    # lam = 0.5 against |e|^2 ~ dim: the erased token lands within a few percent of the guide's output.
    assert _relative_residual(edited, original, keys, targets) < 0.1
    # The always-preserved empty prompt (its start token here) barely moves.
    empty = adapter.encode([""]).hidden[0, :1]
    assert _relative_change(edited, original, empty) < 0.05


def test_default_token_choice_moves_the_erased_span_and_keeps_preserved_prompts(tiny_pipe):
    adapter, original = _adapter_and_weights(tiny_pipe)
    preserve = ["a photo of a dog", "a red car"]
    edited = erasure.erase(tiny_pipe, "uce", "airplane", preserve=preserve)
    keys, targets = _erased_and_target_tokens(adapter, "airplane", "", "from_last_subject")
    # 76 erased positions against 32-d text vectors and preserved padding: a compromise, measured ~0.62-0.66.
    assert _relative_residual(edited, original, keys, targets) < 0.75
    kept = adapter.encode(preserve + [""]).hidden.reshape(-1, adapter.text_dim)
    assert _relative_change(edited, original, kept) < 0.15  # measured 0.05-0.10


def test_mapping_to_a_chosen_target(sd1_pipe):
    adapter, original = _adapter_and_weights(sd1_pipe)
    edited = erasure.erase(sd1_pipe, "uce", "airplane->bird", token_choice="last_subject", preserve_tokens="erased_span")
    keys, targets = _erased_and_target_tokens(adapter, "airplane", "bird", "last_subject")
    assert _relative_residual(edited, original, keys, targets) < 0.1
    assert edited.concepts == ["airplane->bird"]


def test_only_cross_attention_keys_and_values_change_and_pipe_is_untouched(tiny_pipe):
    before = {k: v.clone() for k, v in tiny_pipe.unet.state_dict().items()}
    edited = erasure.erase(tiny_pipe, "uce", "airplane, car")
    assert set(edited.tensors) == set(adapter_for(tiny_pipe).cross_attention_weights())
    assert all(".attn2.to_k." in k or ".attn2.to_v." in k for k in edited.tensors)
    assert all(torch.equal(before[k], v) for k, v in tiny_pipe.unet.state_dict().items())
    edited.apply(tiny_pipe)
    changed = {k for k, v in tiny_pipe.unet.state_dict().items() if not torch.equal(before[k], v)}
    assert changed == set(edited.tensors)


def test_preserve_scale_none_uses_the_2023_code_rule(sd1_pipe):
    _, original = _adapter_and_weights(sd1_pipe)
    preserve = [f"a photo of object {i}" for i in range(20)]
    explicit = erasure.erase(sd1_pipe, "uce", "airplane", preserve=preserve, preserve_scale=0.1)
    rule = erasure.erase(sd1_pipe, "uce", "airplane", preserve=preserve, preserve_scale=None)
    for name in original:
        assert torch.allclose(explicit.tensors[name], rule.tensors[name])


def test_style_preset_guides_artists_to_art(sd1_pipe):
    config = erasure.resolve_config("uce", "style")
    assert config.guide == "art"
    assert erasure.resolve_config("uce", "object").guide == ""


def test_erasing_is_deterministic(sd1_pipe):
    first = erasure.erase(sd1_pipe, "uce", "airplane")
    second = erasure.erase(sd1_pipe, "uce", "airplane")
    assert all(torch.equal(first.tensors[k], second.tensors[k]) for k in first.tensors)


@pytest.mark.parametrize("bad", [{"lam": "big"}, {"token_choice": "first"}, {"no_such_key": 1}])
def test_bad_config_values_are_clear_errors(sd1_pipe, bad):
    with pytest.raises(erasure.ErasureError, match="UCEConfig"):
        erasure.erase(sd1_pipe, "uce", "airplane", **bad)
