"""Forms of a forward that real models use and the capture must read exactly: a region under
``torch.autocast`` or ``.float()`` (EfficientViT), a write into a slice of a tensor (MViTv2's
relative positions), a product with a constant table by ``einsum``, a fused ``addcmul``
(ConvNeXt-V2's response norm), a named piece of a tuple (``.max(dim).values``, Hiera), an
LSTM written out step by step (Sequencer). Each model is small and seeded; each is checked for Σ R = score
in float64 by ``rap`` and ``rap-stable``, and against the model's own logits."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import relprop
from relprop.graph import needs_example


class SizeBranch(nn.Module):
    """A forward that branches on a size, as Hugging Face's and timm's do: torch.fx cannot
    trace it, so relprop captures with torch.export."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 16, 5)

    def head(self, h):
        return self.fc(F.avg_pool2d(h, 2).flatten(1))

    def forward(self, x):
        h = torch.relu(self.conv(x))
        if h.shape[-1] > 4:  # a size decision
            h = self.body(h)
        return self.head(h)

    def body(self, h):
        return h


class UnderAutocast(SizeBranch):
    """EfficientViT's attention: a region kept out of autocast, computed in float32."""

    def body(self, h):
        with torch.autocast(device_type="cpu", enabled=False):
            g = h.float() * torch.sigmoid(h.float().mean(dim=1, keepdim=True))
        return h + g.to(h.dtype)


class WritesIntoASlice(SizeBranch):
    """MViTv2's relative positions: ``a[:, :, 1:] = a[:, :, 1:] + b`` on a view."""

    def body(self, h):
        h = h.clone()
        h[:, :, 1:] = h[:, :, 1:] + torch.relu(h[:, :, :-1])
        return h


class EinsumWithATable(nn.Module):
    """A product with a constant table on the signal's side, either operand order."""

    def __init__(self, signal_first: bool):
        super().__init__()
        torch.manual_seed(1)
        self.signal_first = signal_first
        self.proj = nn.Linear(6, 6)
        self.table = nn.Parameter(torch.randn(4, 6))
        self.fc = nn.Linear(4 * 10, 3)

    def forward(self, x):
        h = F.gelu(self.proj(x))
        h = torch.einsum("bnc,kc->bnk", h, self.table) if self.signal_first else \
            torch.einsum("kc,bnc->bnk", self.table, h)
        return self.fc(h.flatten(1))


class FusedResponseNorm(nn.Module):
    """ConvNeXt-V2's global response norm as timm writes it, with ``torch.addcmul``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.weight = nn.Parameter(torch.randn(1, 8, 1, 1))
        self.bias = nn.Parameter(torch.randn(1, 8, 1, 1))
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        h = F.gelu(self.conv(x))
        g = h.norm(p=2, dim=(2, 3), keepdim=True)
        n = g / (g.mean(dim=1, keepdim=True) + 1e-6)
        h = h + torch.addcmul(self.bias, self.weight, h * n)
        return self.fc(h.mean(dim=(2, 3)))


class MaxByName(nn.Module):
    """Hiera's mask-unit pooling: ``x.max(dim).values``, the piece taken by its name."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.proj = nn.Linear(6, 8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.proj(x)).max(dim=1).values)


class Recurrent(nn.Module):
    """Sequencer's token mixing: a two-layer bidirectional LSTM over the tokens."""

    def __init__(self, batch_first: bool):
        super().__init__()
        torch.manual_seed(4)
        self.batch_first = batch_first
        self.rnn = nn.LSTM(6, 5, num_layers=2, batch_first=batch_first, bidirectional=True)
        self.fc = nn.Linear(10, 3)

    def forward(self, x):
        y, _ = self.rnn(x if self.batch_first else x.transpose(0, 1))
        return self.fc((y if self.batch_first else y.transpose(0, 1)).mean(1))


def _cases():
    return {"autocast": (UnderAutocast(), torch.randn(2, 3, 8, 8)),
            "slice write": (WritesIntoASlice(), torch.randn(2, 3, 8, 8)),
            "einsum, signal first": (EinsumWithATable(True), torch.randn(2, 10, 6)),
            "einsum, table first": (EinsumWithATable(False), torch.randn(2, 10, 6)),
            "addcmul": (FusedResponseNorm(), torch.randn(2, 3, 8, 8)),
            "max(dim).values": (MaxByName(), torch.randn(2, 10, 6)),
            "lstm, batch first": (Recurrent(True), torch.randn(2, 7, 6)),
            "lstm, time first": (Recurrent(False), torch.randn(2, 7, 6))}


@pytest.mark.parametrize("case", list(_cases()))
@pytest.mark.parametrize("method", ["rap", "rap-stable"])
def test_captured_forms_conserve_in_float64(case, method):
    model, x = _cases()[case]
    model, x = model.double().eval(), x.double()
    e = relprop.explain(model, x, target=[1, 2], method=method)
    rounding = 1e-6 if case == "autocast" else 1e-12  # the model rounds that region to float32
    assert torch.allclose(e.score, model(x)[[0, 1], [1, 2]], rtol=rounding, atol=rounding)
    assert (e.relevance.flatten(1).sum(1) - e.score).abs().max() <= \
        1e-9 * e.score.abs().clamp(min=1).max()
    assert e.relevance.abs().sum() > 0


def test_size_branches_go_through_export_and_tables_through_fx():
    """The cases above exercise the front end they claim to: the size branch needs an example
    input (torch.export), the einsum and addcmul models trace with fx."""
    cases = _cases()
    for name in ("autocast", "slice write", "lstm, batch first"):
        assert needs_example(cases[name][0]), name
    for name in ("einsum, signal first", "addcmul", "max(dim).values"):
        assert not needs_example(cases[name][0]), name


def test_a_float32_region_is_explained_in_the_users_dtype():
    """``.float()`` inside a float64 model: relprop explains in float64 throughout (the score is
    the model's own to float32 rounding, and Σ R equals it to float64 rounding)."""
    model, x = UnderAutocast().double().eval(), torch.randn(1, 3, 8, 8, dtype=torch.float64)
    e = relprop.explain(model, x, target=0, method="rap")
    assert e.relevance.dtype == torch.float64
    assert torch.allclose(e.score, model(x)[:, 0], rtol=1e-6)
    assert abs(e.relevance.sum() - e.score.sum()) <= 1e-12 * max(1, e.score.abs().item())


def test_an_lstm_is_left_as_it_was():
    """Export reports LSTM's refreshed weight list as assigned during export: the module still
    holds its own parameters, and computes what it did."""
    model, x = Recurrent(True).eval(), torch.randn(2, 7, 6)
    before, weights = model(x), list(model.rnn._flat_weights)
    relprop.explain(model, x, method="rap")
    assert all(a is b for a, b in zip(model.rnn._flat_weights, weights))
    assert all(isinstance(w, nn.Parameter) for w in model.rnn._flat_weights)
    assert torch.equal(model(x), before)


def test_the_writes_leave_the_users_tensors_alone():
    model, x = WritesIntoASlice().double().eval(), torch.randn(1, 3, 8, 8, dtype=torch.float64)
    before = x.clone()
    relprop.explain(model, x, method="rap-stable")
    assert torch.equal(x, before)



def test_recurrent_layers_without_a_rule_are_refused_in_words():
    class Head(nn.Module):
        def __init__(self, rnn, width):
            super().__init__()
            self.rnn, self.fc = rnn, nn.Linear(width, 3)

        def forward(self, x):
            return self.fc(self.rnn(x)[0].mean(1))
    x = torch.randn(1, 4, 6)
    with pytest.raises(relprop.UnsupportedOperation, match="module GRU"):
        relprop.explain(Head(nn.GRU(6, 5, batch_first=True), 5).eval(), x)
    with pytest.raises(relprop.UntraceableModel, match="LSTM with projections"):
        relprop.explain(Head(nn.LSTM(6, 5, batch_first=True, proj_size=3), 3).eval(), x)
