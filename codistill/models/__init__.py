"""Plain nn.Modules. Nothing in here knows about groups, replicas, teachers or process groups."""

from __future__ import annotations

from typing import Any

from torch import nn

from codistill.models.char_lstm import CharLSTM
from codistill.models.cnn import CNN
from codistill.models.mlp import MLP


def build_model(cfg: Any, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Instantiate the model a ModelConfig describes for inputs of `input_shape` (for char_lstm, num_classes is the
    vocabulary size)."""
    if cfg.name == "mlp":
        return MLP(MLP.in_features(input_shape), list(cfg.hidden), num_classes, cfg.dropout, cfg.input_dropout)
    if cfg.name == "cnn":
        if len(input_shape) != 3:
            raise ValueError(f"model=cnn needs image inputs (C, H, W); this dataset's examples have shape {input_shape}")
        return CNN(input_shape[0], list(cfg.channels), num_classes)
    if cfg.name == "char_lstm":
        return CharLSTM(num_classes, cfg.embedding_dim, cfg.rnn_hidden, cfg.rnn_layers)
    raise ValueError(f"unknown model {cfg.name!r}")


__all__ = ["CNN", "CharLSTM", "MLP", "build_model"]
