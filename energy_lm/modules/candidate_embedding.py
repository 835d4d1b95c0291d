"""The embedding prologue of the candidate stream, for both model families.

A candidate must enter its layers exactly as a data token at its position enters them
in fairseq's own forward, but fairseq computes position embeddings from the token
sequence itself, which a candidate does not have; so this function takes the position
embeddings as an argument and applies the rest of the prologue in the trunk's order:
  encoder (TransformerEncoder.forward_embedding):
      scale * embed, + positions, layernorm_embedding, dropout, quant noise
  decoder (TransformerDecoder.extract_features_scriptable):
      scale * embed, quant noise, project_in_dim, + positions, layernorm_embedding, dropout
"""

from typing import Optional

from torch import Tensor, nn


def embed_candidates(trunk: nn.Module, tokens: Tensor, positions: Optional[Tensor]) -> Tensor:
    """tokens (B, M), positions (B, M, C) or None -> the first layer's input (B, M, C)."""
    decoder = hasattr(trunk, "project_in_dim")  # fairseq's decoders project; encoders do not
    x = trunk.embed_scale * trunk.embed_tokens(tokens)
    if decoder and trunk.quant_noise is not None:
        x = trunk.quant_noise(x)
    if decoder and trunk.project_in_dim is not None:
        x = trunk.project_in_dim(x)
    if positions is not None:
        x = x + positions
    if trunk.layernorm_embedding is not None:
        x = trunk.layernorm_embedding(x)
    x = trunk.dropout_module(x)
    if not decoder and trunk.quant_noise is not None:
        x = trunk.quant_noise(x)
    return x
