"""The tied embedding's sparse lookup gradient (GPT.embed_tokens): the same gradients as the dense lookup, dense in
the end, and no (vocab × width) zero fill."""

from __future__ import annotations

import pytest
import torch

from gptlab.model import GPT
from gptlab.train.losses import lm_loss
from tests.conftest import tiny_config


def model_grads(model: GPT, x: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    lm_loss(model(x), x).backward()
    return {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize("tied", [True, False])
def test_the_gradients_are_the_dense_lookups(monkeypatch, tied):
    cfg = tiny_config("model.vocab_size=40", f"model.tie_embeddings={str(tied).lower()}")
    torch.manual_seed(0)
    model = GPT(cfg.model)
    x = torch.randint(0, 40, (3, 16), generator=torch.Generator().manual_seed(1))
    ours = model_grads(model, x)
    assert all(g.layout == torch.strided for g in ours.values())
    monkeypatch.setattr(GPT, "embed_tokens", lambda self, idx: self.wte(idx))  # the dense lookup gradient
    for name, expected in model_grads(model, x).items():
        assert torch.allclose(ours[name], expected, rtol=1e-6, atol=1e-8), name


def test_accumulated_micro_batches_stay_dense():
    model = GPT(tiny_config("model.vocab_size=40").model)
    for seed in (0, 1):
        x = torch.randint(0, 40, (2, 8), generator=torch.Generator().manual_seed(seed))
        lm_loss(model(x), x).backward()
    assert model.wte.weight.grad.layout == torch.strided


def test_no_dense_lookup_gradient_is_built():
    cfg = tiny_config("model.vocab_size=997")
    model = GPT(cfg.model)
    x = torch.randint(0, 997, (2, 16))
    loss = lm_loss(model(x), x)
    big = [997, cfg.model.n_embd]
    with torch.profiler.profile(record_shapes=True) as prof:
        loss.backward()
    big_ops = {e.name for e in prof.events() if e.input_shapes and e.input_shapes[0] == big}
    assert not big_ops & {"aten::fill_", "aten::zero_", "aten::embedding_dense_backward"}, big_ops


def test_untied_frozen_and_gradient_free_lookups_stay_dense():
    untied = GPT(tiny_config("model.vocab_size=40", "model.tie_embeddings=false").model)
    x = torch.randint(0, 40, (2, 8))
    lm_loss(untied(x), x).backward()
    assert untied.wte.weight.grad.layout == torch.strided  # AdamW's fused step takes no sparse gradient
    tied = GPT(tiny_config("model.vocab_size=40").model)
    with torch.no_grad():
        assert torch.equal(tied.embed_tokens(x), tied.wte(x))
