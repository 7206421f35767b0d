"""Loading published head layouts (Medusa, EAGLE-1/2, EAGLE-3) from random tensors written in exactly those layouts:
the loaded heads compute what the raw tensors say, and a head that does not fit its target is refused."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from head_layouts import LLAMA_31_8B, SMALL, TargetShape, write_eagle1, write_eagle3, write_medusa
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

from specdec.errors import IncompatibleModelsError
from specdec.heads import Eagle3Head, EagleHead, MedusaHeads, TargetParts, eagle3_layers
from specdec.heads.checkpoints import load_head_folder


def small_target(shape: TargetShape = SMALL, seed: int = 1, dtype: torch.dtype = torch.float32) -> TargetParts:
    g = torch.Generator().manual_seed(seed)
    embedding = torch.randn(shape.vocab, shape.hidden, generator=g).to(dtype)
    lm_head = torch.randn(shape.vocab, shape.hidden, generator=g).to(dtype) * 0.1
    return TargetParts(embedding, lm_head, shape.layers)


@pytest.mark.parametrize(
    ("file", "prefix"),
    [("medusa_lm_head.pt", ""), ("medusa_lm_head.safetensors", ""), ("model.safetensors", "medusa_head.")],
)
def test_medusa_layout_computes_what_its_tensors_say(tmp_path, file, prefix):
    raw = write_medusa(tmp_path, SMALL, num_heads=3, num_layers=2, file=file, dtype=torch.float32, prefix=prefix)
    heads = load_head_folder(tmp_path, small_target(), dtype=torch.float32)
    assert isinstance(heads, MedusaHeads) and heads.config.num_heads == 3 and not heads.config.shared_lm_head
    x = torch.randn(2, 5, SMALL.hidden)
    logits = heads(x)  # [3, 2, 5, V]
    for i in range(3):
        h = x
        for j in range(2):
            h = h + F.silu(h @ raw[f"{prefix}{i}.{j}.linear.weight"].T + raw[f"{prefix}{i}.{j}.linear.bias"])
        torch.testing.assert_close(logits[i], h @ raw[f"{prefix}{i}.2.weight"].T)


def test_medusa_that_does_not_fit_is_refused_naming_both_shapes_and_the_file(tmp_path):
    write_medusa(tmp_path, TargetShape(96, 320, 4, 2, 96, 6))
    with pytest.raises(IncompatibleModelsError) as error:
        load_head_folder(tmp_path, small_target())
    message = str(error.value)
    assert "medusa_lm_head.pt" in message and "96" in message and "64" in message and "320" in message


def _hf_eagle1_reference(raw: dict, shape: TargetShape, target: TargetParts, tokens, features) -> torch.Tensor:
    """EAGLE-1's layer is a Llama decoder layer without input_layernorm: run transformers' own layer that way."""
    config = LlamaConfig(
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        max_position_embeddings=2048,
        attn_implementation="eager",
    )
    layer = LlamaDecoderLayer(config, 0)
    missing, unexpected = layer.load_state_dict(
        {k[len("layers.0.") :]: v.float() for k, v in raw.items() if k.startswith("layers.0.")}, strict=False
    )
    assert missing == ["input_layernorm.weight"] and not unexpected
    layer.input_layernorm = torch.nn.Identity()
    fused = torch.cat([F.embedding(tokens, target.embedding), features], -1) @ raw["fc.weight"].float().T
    fused = fused + raw["fc.bias"].float()
    s = tokens.shape[1]
    positions = torch.arange(s)[None]
    mask = torch.full((s, s), float("-inf")).triu(1)[None, None]
    return layer(
        fused,
        attention_mask=mask,
        position_ids=positions,
        position_embeddings=LlamaRotaryEmbedding(config)(fused, positions),
    )


@pytest.mark.parametrize("file", ["pytorch_model.bin", "model.safetensors"])
def test_eagle1_layout_matches_transformers_llama_layer_without_input_norm(tmp_path, file):
    raw = write_eagle1(tmp_path, SMALL, file=file, dtype=torch.float32, with_embedding=True)
    target = small_target()
    head = load_head_folder(tmp_path, target, dtype=torch.float32)
    assert isinstance(head, EagleHead) and head.config.fc_bias and head.layers[0].input_layernorm is None
    tokens, features = torch.randint(0, SMALL.vocab, (1, 7)), torch.randn(1, 7, SMALL.hidden)
    out, _ = head(tokens, features, torch.arange(7)[None])
    torch.testing.assert_close(out, _hf_eagle1_reference(raw, SMALL, target, tokens, features))
    torch.testing.assert_close(head.logits(out), out @ target.lm_head.T)


def test_eagle1_without_bias_and_wrong_width_refused(tmp_path):
    write_eagle1(tmp_path / "nobias", SMALL, bias=False)
    assert load_head_folder(tmp_path / "nobias", small_target()).fc.bias is None
    write_eagle1(tmp_path / "wide", TargetShape(128, 320, 4, 2, 96, 6))
    with pytest.raises(IncompatibleModelsError) as error:
        load_head_folder(tmp_path / "wide", small_target())
    assert "pytorch_model.bin" in str(error.value) and "256" in str(error.value) and "128" in str(error.value)


def _eagle3_reference(raw: dict, shape: TargetShape, target: TargetParts, tokens, features) -> torch.Tensor:
    """EAGLE-3's midlayer written out from the raw tensors: plain math, rotary with theta 500000."""
    w = {k: v.float() for k, v in raw.items() if v.is_floating_point()}
    d, h, hkv = shape.hidden, shape.heads, shape.kv_heads
    hd = d // h

    def rms(x, weight):
        return weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)

    hidden = features @ w["fc.weight"].T  # [1, S, D]
    attn_in = torch.cat(
        [
            rms(F.embedding(tokens, target.embedding), w["midlayer.input_layernorm.weight"]),
            rms(hidden, w["midlayer.hidden_norm.weight"]),
        ],
        -1,
    )
    s = tokens.shape[1]
    inv = 1.0 / (500000.0 ** (torch.arange(0, hd, 2).float() / hd))
    angles = torch.arange(s).float()[:, None] * inv[None]  # [S, hd/2]
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()

    def rope(x):  # [1, H, S, hd]
        rotated = torch.cat([-x[..., hd // 2 :], x[..., : hd // 2]], -1)
        return x * cos + rotated * sin

    q = rope((attn_in @ w["midlayer.self_attn.q_proj.weight"].T).view(1, s, h, hd).transpose(1, 2))
    k = rope((attn_in @ w["midlayer.self_attn.k_proj.weight"].T).view(1, s, hkv, hd).transpose(1, 2))
    v = (attn_in @ w["midlayer.self_attn.v_proj.weight"].T).view(1, s, hkv, hd).transpose(1, 2)
    k, v = k.repeat_interleave(h // hkv, 1), v.repeat_interleave(h // hkv, 1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd) + torch.full((s, s), float("-inf")).triu(1)
    attn = (scores.softmax(-1) @ v).transpose(1, 2).reshape(1, s, d) @ w["midlayer.self_attn.o_proj.weight"].T
    hidden = hidden + attn
    mlp_in = rms(hidden, w["midlayer.post_attention_layernorm.weight"])
    mlp = F.silu(mlp_in @ w["midlayer.mlp.gate_proj.weight"].T) * (mlp_in @ w["midlayer.mlp.up_proj.weight"].T)
    return hidden + mlp @ w["midlayer.mlp.down_proj.weight"].T


def test_eagle3_layout_computes_what_its_tensors_say_and_maps_draft_ids(tmp_path):
    raw = write_eagle3(tmp_path, SMALL, draft_vocab=100, dtype=torch.float32)
    target = small_target()
    head = load_head_folder(tmp_path, target, dtype=torch.float32)
    assert isinstance(head, Eagle3Head)
    assert head.config.feature_layers == eagle3_layers(SMALL.layers) == (1, 2, 2)
    tokens, features = torch.randint(0, SMALL.vocab, (1, 6)), torch.randn(1, 6, 3 * SMALL.hidden)
    out, _ = head(tokens, features, torch.arange(6)[None])
    torch.testing.assert_close(out, _eagle3_reference(raw, SMALL, target, tokens, features), rtol=1e-4, atol=1e-4)
    draft = head.draft_logits(out)  # [1, 6, 100]
    full = head.logits(out)  # [1, 6, V]
    target_ids = torch.arange(100) + raw["d2t"]
    torch.testing.assert_close(full[..., target_ids], draft)
    assert torch.isinf(full).sum() == 6 * (SMALL.vocab - 100)
    assert raw["t2d"][head.to_target_ids(draft.argmax(-1))].all()


def test_eagle3_for_another_target_is_refused(tmp_path):
    write_eagle3(tmp_path, SMALL, draft_vocab=100)
    other = small_target(TargetShape(64, 512, 4, 2, 96, 6))
    with pytest.raises(IncompatibleModelsError) as error:
        load_head_folder(tmp_path, other)
    assert "512" in str(error.value) and "320" in str(error.value) and "pytorch_model.bin" in str(error.value)


def _big_target(shape: TargetShape) -> TargetParts:
    """A Llama-3.1-8B-shaped embedding/output layer without 2 GB of memory: one random row, broadcast."""
    row = torch.randn(1, shape.hidden, dtype=torch.bfloat16)
    wide = row.expand(shape.vocab, shape.hidden)
    return TargetParts(wide, wide, shape.layers)


@pytest.mark.slow
def test_real_shape_eagle3_for_llama_31_8b_loads_and_drafts_one_step(tmp_path):
    raw = write_eagle3(tmp_path, LLAMA_31_8B, draft_vocab=32000, dtype=torch.bfloat16)
    target = _big_target(LLAMA_31_8B)
    head = load_head_folder(tmp_path, target)
    assert head.config.feature_layers == (1, 15, 28)
    assert head.fc.weight.shape == (4096, 12288) and head.midlayer.self_attn.k_proj.weight.shape == (1024, 8192)
    assert torch.equal(head.lm_head.weight, raw["lm_head.weight"])
    del raw
    out, (keys, _) = head(
        torch.tensor([[128000, 791]]), torch.randn(1, 2, 12288, dtype=torch.bfloat16), torch.arange(2)[None]
    )
    assert out.shape == (1, 2, 4096) and keys.shape == (1, 8, 2, 128) and torch.isfinite(out).all()
    assert head.logits(out[:, -1]).argmax(-1).item() in set((torch.arange(32000) + head.d2t).tolist())


@pytest.mark.slow
def test_real_shape_eagle1_and_medusa_for_llama_31_8b_load_and_step(tmp_path):
    write_eagle1(tmp_path / "eagle", LLAMA_31_8B, file="pytorch_model.bin", bias=True, dtype=torch.float16)
    target = _big_target(LLAMA_31_8B)
    head = load_head_folder(tmp_path / "eagle", target)
    assert head.fc.weight.shape == (4096, 8192) and head.fc.weight.dtype == torch.bfloat16
    out, _ = head(torch.tensor([[128000]]), torch.randn(1, 1, 4096, dtype=torch.bfloat16), torch.zeros(1, 1).long())
    assert out.shape == (1, 1, 4096) and torch.isfinite(out).all()
    del head
    write_medusa(tmp_path / "medusa", LLAMA_31_8B, num_heads=1, num_layers=1)
    heads = load_head_folder(tmp_path / "medusa", target)
    logits = heads(torch.randn(1, 1, 4096, dtype=torch.bfloat16))
    assert logits.shape == (1, 1, 1, 128256) and torch.isfinite(logits).all()
