"""Decoder FLOPs: hand values, GQA, and agreement with torch's FlopCounterMode on a real Llama."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaConfig, LlamaForCausalLM

from vla_autoprune.pruning.flops import (
    FlopsError,
    decoder_flops,
    decoder_flops_from_config,
    decoder_flops_per_layer,
)

LAYER_KEY = "LlamaForCausalLM.model.layers.{}"  # FlopCounterMode's per-module key of layer i


def _tiny_llama(num_kv_heads: int, layers: int = 3) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=num_kv_heads,
        num_hidden_layers=layers,
        max_position_embeddings=64,
    )
    # eager: CPU SDPA dispatches to a kernel FlopCounterMode has no formula for (counts 0)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def _counted_layer_flops(model: LlamaForCausalLM, batch: int, seq: int) -> list[int]:
    """FlopCounterMode's FLOPs of each decoder layer (lm_head excluded) for one forward."""
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(1))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(input_ids=ids)
    counts = counter.get_flop_counts()
    return [sum(counts[LAYER_KEY.format(i)].values()) for i in range(model.config.num_hidden_layers)]


def test_reference_formula_by_hand():
    # n=2, d=4, m=8: 4*2*16 + 2*4*4 + 3*2*4*8 = 128 + 32 + 192
    tokens = torch.tensor([2])
    assert decoder_flops(tokens, 4, 8, 2, 2).item() == 352
    assert decoder_flops(tokens, 4, 8, 2, 2, gated_mlp=False).item() == 352 - 2 * 4 * 8
    # gqa with 1 of 2 kv heads: 2*2*16 + 2*2*4*2 + 2*4*4 + 3*2*4*8 = 64 + 32 + 32 + 192
    assert decoder_flops(tokens, 4, 8, 2, 1, formula="gqa").item() == 320


def test_gqa_equals_reference_without_grouping_and_batches():
    tokens = torch.tensor([[700, 650, 600], [700, 300, 100]])
    ref = decoder_flops(tokens, 4096, 11008, 32, 32)
    assert torch.equal(ref, decoder_flops(tokens, 4096, 11008, 32, 32, formula="gqa"))
    assert ref.shape == (2,) and ref.dtype == torch.int64
    per_layer = decoder_flops_per_layer(tokens, 4096, 11008, 32, 32)
    assert torch.equal(per_layer.sum(dim=-1), ref)
    assert bool((decoder_flops(tokens, 4096, 11008, 32, 8, formula="gqa") < ref).all())
    assert decoder_flops(tokens.double(), 4096, 11008, 32, 32).dtype == torch.float64


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_matches_flop_counter_on_llama(kv_heads):
    model = _tiny_llama(kv_heads)
    batch, seq = 2, 11
    counted = _counted_layer_flops(model, batch, seq)
    tokens = torch.full((model.config.num_hidden_layers,), seq)
    # FlopCounterMode counts 2 FLOPs per multiply-accumulate; the formulas count MACs per sample
    expected = 2 * batch * decoder_flops_per_layer(tokens, 64, 96, 4, kv_heads, formula="gqa")
    assert counted == expected.tolist()
    assert 2 * batch * decoder_flops_from_config(tokens, model.config).item() == sum(counted)
    reference = 2 * batch * decoder_flops(tokens, 64, 96, 4, kv_heads)
    if kv_heads == 4:
        assert reference.item() == sum(counted)  # the authors' count is exact without GQA
    else:
        assert reference.item() > sum(counted)  # it overcounts the k/v projections


def test_config_errors_name_the_field():
    with pytest.raises(FlopsError, match="hidden_size"):
        decoder_flops_from_config(torch.tensor([3]), object())
    with pytest.raises(FlopsError, match="head_dim"):
        decoder_flops(torch.tensor([3]), 10, 8, 3, 3)
    with pytest.raises(FlopsError, match="formula"):
        decoder_flops(torch.tensor([3]), 8, 8, 2, 2, formula="exact")  # type: ignore[arg-type]
