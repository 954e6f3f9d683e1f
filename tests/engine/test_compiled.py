"""The compiled back-gradient pass (``compile=True``): the same gradients as the eager pass (float64
to 1e-10, float32 to 1e-5) for populations, learned labels and momenta, Adam, a victim plan and the
checkpointed tape; ``compile=False`` never touches it; where it cannot serve, eager with one
warning. Compiling a tiny model on CPU takes seconds to tens of seconds (less from inductor's
on-disk cache)."""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

import ddsec.engine.metagrad as metagrad
from ddsec.engine import Adam, CompileFallback, SyntheticSet, meta_grads, stack_params, use_compile


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Every test compiles for itself (and stays under dynamo's recompile limit); counters start at 0."""
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def relative_error(got, want) -> float:
    """The largest ``max|a − b| / max|b|`` over the fields of two :class:`MetaGradient`."""
    worst = 0.0
    assert got.fields().keys() == want.fields().keys()
    for name, a in got.fields().items():
        b = want.fields()[name]
        worst = max(worst, float((a - b).abs().max() / b.abs().max()))
    return worst


def compiled_graphs() -> int:
    return counters["stats"]["unique_graphs"]


@contextmanager
def no_fallback():
    """A :class:`CompileFallback` warning inside fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallback)
        yield


@pytest.mark.slow
@pytest.mark.parametrize("case", ["population-momentum", "labels-adam-victim-checkpointed"])
def test_compiled_equals_eager_in_float64(case, tiny_cnn, make_cnn, tiny_synthetic, real_batch, victim_plan):
    if case == "population-momentum":  # two models, a learned momentum per step
        params, synthetic, kwargs = stack_params([tiny_cnn, make_cnn(seed=5)]), \
            tiny_synthetic.with_learned("momentum", 0.5), {}
    else:  # Adam with weight decay, learned labels, clean steps, mixed and shifted batches, every 2nd θ_t with G_t kept
        params, synthetic = dict(tiny_cnn.named_parameters()), tiny_synthetic.with_learnable_labels(3, confidence=0.8)
        kwargs = {"optimizer": Adam(weight_decay=1e-2), "plan": victim_plan, "theta_every": 2, "keep_graphs": True}
    eager = meta_grads(tiny_cnn, params, synthetic, *real_batch, **kwargs)
    with no_fallback():
        compiled = meta_grads(tiny_cnn, params, synthetic, *real_batch, compile=True, **kwargs)
    assert compiled_graphs() >= 3  # the outer gradient, G_t and its VJP ran compiled
    assert compiled.images.abs().max() > 0 and compiled.learned["lr"].abs().max() > 0
    assert relative_error(compiled, eager) < 1e-10


def test_compiled_equals_eager_in_float32(make_cnn, tiny_synthetic, real_batch):
    model = make_cnn(dtype=torch.float32)
    params = stack_params([model, make_cnn(dtype=torch.float32, seed=3)])
    synthetic = SyntheticSet(tiny_synthetic.images.float(), tiny_synthetic.labels, {"lr": tiny_synthetic.learned["lr"].float()},
                             tiny_synthetic.epochs)
    x, y = real_batch[0].float(), real_batch[1]
    eager = meta_grads(model, params, synthetic, x, y)
    with no_fallback():
        compiled = meta_grads(model, params, synthetic, x, y, compile=True)
        again = meta_grads(model, params, synthetic, x, y, compile=True)
    assert compiled_graphs() == 3  # compiled once: the second call reuses the graphs
    assert relative_error(compiled, eager) < 1e-5
    assert all(torch.equal(a, again.fields()[name]) for name, a in compiled.fields().items())


def test_compile_off_is_the_eager_pass(monkeypatch, tiny_cnn, tiny_synthetic, real_batch):
    params = dict(tiny_cnn.named_parameters())
    default = meta_grads(tiny_cnn, params, tiny_synthetic, *real_batch, theta_every=2)

    def refuse(model):
        raise AssertionError("compile=False built a compiled step")

    monkeypatch.setattr(metagrad, "compiled_step", refuse)
    off = meta_grads(tiny_cnn, params, tiny_synthetic, *real_batch, theta_every=2, compile=False)
    assert all(torch.equal(a, off.fields()[name]) for name, a in default.fields().items())
    assert compiled_graphs() == 0


def test_use_compile():
    assert use_compile("on", "cpu") and use_compile("auto", "cuda:0") and use_compile("auto", torch.device("cuda"))
    assert not use_compile("auto", "cpu") and not use_compile("off", "cuda")
    with pytest.raises(ValueError, match="compile must be one of auto, on, off"):
        use_compile("yes", "cpu")


class Printing(nn.Module):
    """A tiny MLP whose forward breaks dynamo's graph: the compiled path cannot take it."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden, self.out = nn.Linear(36, 5, dtype=torch.float64), nn.Linear(5, 3, dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch._dynamo.graph_break()
        return self.out(torch.tanh(self.hidden(x.flatten(1))))


def fallbacks(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, CompileFallback)]


@pytest.mark.parametrize("case", ["loop", "autograd", "graph-break"])
def test_uncovered_cases_run_eager_with_one_warning(case, tiny_cnn, tiny_synthetic, real_batch):
    model = Printing().eval() if case == "graph-break" else tiny_cnn
    params = dict(model.named_parameters())
    kwargs = {"loop": {"batching": "loop"}, "autograd": {"mode": "autograd"}, "graph-break": {}}[case]
    eager = meta_grads(model, params, tiny_synthetic, *real_batch, **kwargs)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        got = meta_grads(model, params, tiny_synthetic, *real_batch, compile=True, **kwargs)
    said = fallbacks(record)
    assert len(said) == 1, said
    assert {"loop": "batched with vmap", "autograd": "mode='hvp'", "graph-break": "compile failed"}[case] in said[0]
    assert all(torch.equal(a, eager.fields()[name]) for name, a in got.fields().items())
    if case == "graph-break":  # remembered: the next call goes eager without compiling again
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            meta_grads(model, params, tiny_synthetic, *real_batch, compile=True)
        assert len(fallbacks(record)) == 1 and "before" in fallbacks(record)[0]
        assert compiled_graphs() == 0
