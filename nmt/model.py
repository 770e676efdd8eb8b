"""The encoder-decoder: build it from a ModelConfig, run it for training or one search step."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from nmt.attention import build_attention
from nmt.batching import Batch
from nmt.decoder import Decoder, DecoderState, Memory
from nmt.embeddings import Embeddings
from nmt.encoder import Encoder
from nmt.errors import RecipeError
from nmt.quantize import int8_rows
from nmt.recipe import ModelConfig
from nmt.tokenizer import PAD_ID


@dataclass(frozen=True)
class OutputSubset:
    """The rows of the output layer that decoding scores (a shortlist); the rest get -inf."""

    ids: torch.Tensor  # (C,) target ids
    weight: torch.Tensor | None  # (C, A) their fp32 output-layer rows; None with int8
    # The same rows as an int8 dynamic Linear, for an int8 model: 3-5x faster than the fp32
    # product at (beam x batch, A) x (A, C) on AVX-512 (benchmarks/run.py, int8_shortlist).
    int8: nn.Module | None = None

    @classmethod
    def of(cls, model: Seq2Seq, ids: torch.Tensor) -> OutputSubset:
        """The rows `ids` of the model's output layer, int8 where the model is int8."""
        output = model.decoder.output
        if model.int8_output:
            return cls(ids, None, int8_rows(output, ids))
        return cls(ids, output.weight.detach().index_select(0, ids))

    def logits(self, attentional: torch.Tensor) -> torch.Tensor:
        """(B, A) -> (B, C) scores of the subset's tokens."""
        if self.int8 is not None:
            return self.int8(attentional)
        assert self.weight is not None
        return attentional @ self.weight.t()


class Seq2Seq(nn.Module):
    def __init__(self, encoder: Encoder, decoder: Decoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor) -> tuple[Memory, DecoderState]:
        encoded = self.encoder(src, src_lengths)
        return self.decoder.prepare_memory(encoded), self.decoder.init_state(encoded)

    def decode_step_logits(
        self,
        tokens: torch.Tensor,
        state: DecoderState,
        memory: Memory,
        subset: OutputSubset | None = None,
    ) -> tuple[torch.Tensor, DecoderState]:
        """Unnormalised fp32 scores of the next token after `tokens` (B,), and the new state.

        (B, V) over the vocabulary, or (B, C) over `subset.ids`: with a shortlist, search works in
        candidate space and maps only the ids it picks back to the vocabulary.
        """
        features, state = self.decode_step_features(tokens, state, memory)
        return self.step_scores(features, subset), state

    @property
    def int8_output(self) -> bool:
        """Whether the output layer is int8 (nmt.quantize), which search scores in slices."""
        return callable(self.decoder.output.weight)  # dynamic quantization: weight is a call

    def decode_step_features(
        self, tokens: torch.Tensor, state: DecoderState, memory: Memory
    ) -> tuple[torch.Tensor, DecoderState]:
        """The step short of the output layer: the attentional vectors (B, A), the new state.

        Search scores them in slices of rows (nmt.search), so that the (B, V) blocks of the
        output layer stay small however many hypotheses a batch holds.
        """
        attentional, state, _ = self.decoder.step_attentional(tokens.unsqueeze(1), state, memory)
        return attentional, state

    def step_scores(
        self, features: torch.Tensor, subset: OutputSubset | None = None
    ) -> torch.Tensor:
        """Unnormalised fp32 scores (B, V), or (B, C) over `subset.ids`, of features (B, A)."""
        if subset is None:
            return self.decoder.output(features).float()
        return subset.logits(features).float()

    def decode_step(
        self,
        tokens: torch.Tensor,
        state: DecoderState,
        memory: Memory,
        subset: OutputSubset | None = None,
    ) -> tuple[torch.Tensor, DecoderState]:
        """Log-probabilities (B, V) of the next token after `tokens` (B,), and the new state.

        With `subset`, only its rows are scored and normalised; the other tokens get -inf.
        """
        logits, state = self.decode_step_logits(tokens, state, memory, subset)
        scored = torch.log_softmax(logits, dim=-1)
        if subset is None:
            return scored, state
        log_probs = scored.new_full((scored.size(0), self.decoder.output.out_features), -math.inf)
        return log_probs.index_copy_(1, subset.ids, scored), state

    def forward(self, batch: Batch) -> torch.Tensor:
        """Teacher-forced logits (B, T, V) for batch.tgt_in."""
        assert batch.tgt_in is not None
        memory, state = self.encode(batch.src, batch.src_lengths)
        return self.decoder(batch.tgt_in, state, memory)

    def attentional(self, batch: Batch) -> torch.Tensor:
        """Teacher-forced attentional vectors (B, T, A): forward() short of the output layer."""
        assert batch.tgt_in is not None
        memory, state = self.encode(batch.src, batch.src_lengths)
        return self.decoder.attentional(batch.tgt_in, state, memory)


def build_model(config: ModelConfig, source_vocab_size: int, target_vocab_size: int) -> Seq2Seq:
    if config.tie_embeddings and source_vocab_size != target_vocab_size:
        raise RecipeError("model.tie_embeddings", "needs one vocabulary for both languages")
    memory_size = 2 * config.encoder_hidden_size
    if (
        config.attention == "luong"
        and config.luong_score == "dot"
        and memory_size != config.decoder_hidden_size
    ):
        raise RecipeError(
            "model.luong_score",
            f"'dot' needs decoder_hidden_size ({config.decoder_hidden_size}) = 2 x "
            f"encoder_hidden_size ({memory_size}); use 'general'",
        )
    src_emb = Embeddings(
        source_vocab_size, config.embedding_size, config.embedding_dropout, config.word_dropout
    )
    tgt_emb = Embeddings(
        target_vocab_size, config.embedding_size, config.embedding_dropout, config.word_dropout
    )
    if config.tie_embeddings:
        tgt_emb.table = src_emb.table
    encoder = Encoder(
        src_emb, config.cell, config.encoder_hidden_size, config.encoder_layers, config.dropout
    )
    attention = build_attention(
        config.attention, config.decoder_hidden_size, memory_size, config.luong_score
    )
    # With a tied output layer the attentional vector lives in embedding space.
    attentional_size = config.embedding_size if config.tie_output else config.decoder_hidden_size
    decoder = Decoder(
        tgt_emb,
        attention,
        config.cell,
        config.decoder_hidden_size,
        config.decoder_layers,
        memory_size,
        attentional_size,
        target_vocab_size,
        config.dropout,
        config.input_feeding,
    )
    model = Seq2Seq(encoder, decoder)
    # Uniform(-0.1, 0.1) as in Luong et al. (2015) and OpenNMT-py, but embeddings N(0, 1):
    # small embeddings (and so a small tied output layer) made the model learn several times slower.
    embedding_tables = {id(src_emb.table.weight), id(tgt_emb.table.weight)}
    for param in model.parameters():
        if id(param) in embedding_tables:
            nn.init.normal_(param, 0.0, 1.0)
        else:
            nn.init.uniform_(param, -0.1, 0.1)
    with torch.no_grad():
        src_emb.table.weight[PAD_ID].zero_()
        tgt_emb.table.weight[PAD_ID].zero_()
    if config.tie_output:
        decoder.output.weight = tgt_emb.table.weight
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
