"""Shared building blocks: Transformer++ backbone, attention masks, output heads."""
from ebt_forecast.nn.doubled import DoubledContext, DoubledSequenceEBT
from ebt_forecast.nn.heads import EnergyHead, LinearHead
from ebt_forecast.nn.masks import (
    bidirectional_mask,
    causal_mask,
    context_candidate_mask,
    doubled_sequence_mask,
    doubled_sequence_positions,
)
from ebt_forecast.nn.transformer import KVCache, RMSNorm, SwiGLU, TransformerConfig, TransformerPP

__all__ = [
    "DoubledContext", "DoubledSequenceEBT", "EnergyHead", "LinearHead", "KVCache", "RMSNorm", "SwiGLU",
    "TransformerConfig", "TransformerPP",
    "bidirectional_mask", "causal_mask", "context_candidate_mask", "doubled_sequence_mask",
    "doubled_sequence_positions",
]
