"""Recurrent classifiers and regressors: a vanilla RNN, an LSTM or a GRU (torch's), then a readout.

What counts as a step: a sequence (T, F) as given; a signal (C, L) as L steps of C features; a
feature vector (F,) as F steps of one feature; an image (C, H, W) row by row, H steps of C*W.
A bidirectional net merges its two directions at every step (the notes: concat, sum or mul),
then the readout takes the last step, or the mean or max over the steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dlrun.errors import UserError

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


def steps_and_features(input_shape: Sequence[int], layout: str) -> tuple[int, int]:
    if layout == "sequence":
        return input_shape[0], input_shape[1]
    if layout == "signal":
        return input_shape[1], input_shape[0]
    if layout == "features":
        return input_shape[0], 1
    if layout == "image":
        channels, height, width = input_shape
        return height, channels * width
    raise UserError(f"a recurrent model cannot read {layout!r} data")


class Recurrent(nn.Module):
    def __init__(self, input_shape: Sequence[int], num_outputs: int, layout: str = "sequence", cell: str = "lstm",
                 hidden_size: int = 128, num_layers: int = 1, bidirectional: bool = False, merge: str = "concat",
                 dropout: float = 0.0, readout: str = "last", nonlinearity: str = "tanh", forget_bias: float = 1.0):
        super().__init__()
        if cell not in CELLS:
            raise UserError(f"model.cell={cell!r} must be one of {', '.join(CELLS)}")
        if merge not in ("concat", "sum", "mul"):
            raise UserError(f"model.merge={merge!r} must be concat, sum or mul")
        if readout not in ("last", "mean", "max"):
            raise UserError(f"model.readout={readout!r} must be last, mean or max")
        if not 0.0 <= dropout < 1.0:
            raise UserError(f"model.dropout={dropout} must be in [0, 1)")
        self.layout = layout
        _, features = steps_and_features(input_shape, layout)
        options = {"nonlinearity": nonlinearity} if cell == "rnn" else {}
        if cell == "rnn" and nonlinearity not in ("tanh", "relu"):
            raise UserError(f"model.nonlinearity={nonlinearity!r} must be tanh or relu")
        # torch applies dropout between stacked layers only; it warns (and does nothing) for one layer.
        self.recurrent = CELLS[cell](features, hidden_size, num_layers=num_layers, batch_first=True,
                                     bidirectional=bidirectional, dropout=dropout if num_layers > 1 else 0.0,
                                     **options)
        if cell == "lstm" and forget_bias:
            # Gers et al. 2000, Jozefowicz et al. 2015: a forget-gate bias of 1 lets the cell keep its
            # state from the start. torch's gate order is input, forget, cell, output; b_ih and b_hh
            # add up, so the whole bias goes on b_ih's forget quarter.
            with torch.no_grad():
                for name, bias in self.recurrent.named_parameters():
                    if name.startswith("bias_ih"):
                        bias[hidden_size:2 * hidden_size].fill_(forget_bias)
                    elif name.startswith("bias_hh"):
                        bias[hidden_size:2 * hidden_size].zero_()
        self.bidirectional, self.merge, self.readout = bidirectional, merge, readout
        width = hidden_size * (2 if bidirectional and merge == "concat" else 1)
        self.head = nn.Linear(width, num_outputs)
        self.activation = "tanh" if cell != "rnn" else nonlinearity

    def to_steps(self, x: torch.Tensor) -> torch.Tensor:
        """(N, ...) in the data's layout -> (N, T, F)."""
        if self.layout == "signal":
            return x.transpose(1, 2)
        if self.layout == "features":
            return x.unsqueeze(-1)
        if self.layout == "image":
            return x.permute(0, 2, 1, 3).flatten(2)  # (N, C, H, W) -> (N, H, C*W): one row a step
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.recurrent(self.to_steps(x))  # (N, T, directions * hidden)
        if self.bidirectional and self.merge != "concat":
            forward, backward = out.chunk(2, dim=-1)
            out = forward + backward if self.merge == "sum" else forward * backward
        if self.readout == "last":
            # The last step of the forward direction has seen the whole sequence; so has the
            # first step of the backward one. Concat keeps each direction's full-sequence state.
            if self.bidirectional and self.merge == "concat":
                half = out.shape[-1] // 2
                out = torch.cat([out[:, -1, :half], out[:, 0, half:]], dim=-1)
            else:
                out = out[:, -1]
        elif self.readout == "mean":
            out = out.mean(dim=1)
        else:
            out = out.amax(dim=1)
        return self.head(out)
