"""Registry-driven checks: every registered model builds from its card, runs batched, has no NaNs,
back-propagates, exports to TorchScript with matching outputs, and (with CUDA) runs in fp16.

Models with pretrained weights are built with ``weights=None`` here (random init, cheap): their
numerical parity with the reference runtimes is tested in their own files.
"""

from __future__ import annotations

import io

import pytest
import torch

from affectstream.models import create_model, get_card, list_models
from affectstream.models.profile import example_inputs, output_tensors

EMOTIONS = {"anger", "contempt", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"}
ALL = list_models()
# The paper models are fully convolutional (AMP-Net's crops scale with the map), so the backward
# pass runs at half their card size to keep the suite fast; forward and export use the card size.
GRAD_SIZE = {"ampnet": (112, 112), "dsan": (112, 112), "saliency_fer": (112, 112),
             "saliency_cnn": (120, 160), "dsr_fau_teacher": (128, 128),
             "dsr_fau_student": (128, 128)}


def _build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name, weights=None)


def _inputs(name: str, batch: int, size: tuple[int, int] | None = None, seed: int = 0):
    card = get_card(name)
    if size is not None:
        import dataclasses

        card = dataclasses.replace(card, input_size=size)
    return example_inputs(card, batch, seed=seed)


def test_registry_lists_the_paper_models():
    for name in ("ampnet", "dsan", "dsr_fau_teacher", "dsr_fau_student", "saliency_cnn",
                 "saliency_fer"):
        assert name in ALL
    assert {"dsr_fau_student", "dsr_fau_teacher"} <= set(list_models("au"))
    assert "saliency_cnn" in list_models("saliency")


@pytest.mark.parametrize("name", ALL)
def test_card_is_consistent(name):
    card = get_card(name)
    assert card.name == name
    channels = 1 if card.color == "gray" else 3
    assert len(card.mean) == len(card.std) == channels
    assert all(isinstance(v, int) and v > 0 for v in card.input_size)
    if card.task == "expression":
        assert set(card.label_names) <= EMOTIONS and len(set(card.label_names)) == len(card.label_names)
    if card.task == "au":
        assert all(n.startswith("AU") and len(n) == 4 for n in card.label_names)
    if "landmarks_in" in card.extra:
        assert card.alignment == "5pt"
        k, d = card.extra["landmarks_in"]
        assert torch.tensor(card.extra["landmark_template"]).shape == (k, d)


@pytest.mark.parametrize("name", ALL)
def test_forward_batched_shapes_and_finite(name):
    model = _build(name)
    card = get_card(name)
    with torch.inference_mode():
        outs = output_tensors(model(*_inputs(name, 2)))
    assert outs
    for key, t in outs.items():
        assert t.shape[0] == 2, f"{name}.{key}: batch dim {tuple(t.shape)}"
        assert torch.isfinite(t).all(), f"{name}.{key} has NaN/inf"
    primary = card.extra.get("output")
    if primary is not None:
        t = outs[primary]
        if card.task in ("expression", "au"):
            assert t.shape == (2, len(card.label_names))
        if card.task == "au":
            assert (t >= 0).all() and (t <= 5).all()
        if card.task == "saliency":
            assert t.shape == (2, 1, *card.input_size)
            assert (t >= 0).all() and (t <= 1).all()


@pytest.mark.parametrize("name", [n for n in ALL if get_card(n).weights is None])
def test_gradients_reach_every_parameter(name):
    model = _build(name).train()
    inputs = _inputs(name, 2, GRAD_SIZE.get(name))
    outs = output_tensors(model(*inputs))
    loss = sum(t.float().mean() for t in outs.values() if t.is_floating_point())
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
@pytest.mark.parametrize("name", ALL)
def test_torchscript_export_matches_eager_on_another_batch_size(name):
    model = _build(name)
    with torch.no_grad():
        traced = torch.jit.trace(model, _inputs(name, 1), strict=False, check_trace=False)
        buf = io.BytesIO()
        torch.jit.save(traced, buf)
        buf.seek(0)
        loaded = torch.jit.load(buf)
        x = _inputs(name, 2, seed=1)
        ref = output_tensors(model(*x))
        got = output_tensors(loaded(*x))
    assert ref.keys() == got.keys()
    for k in ref:
        assert got[k].shape == ref[k].shape, k
        tol = 1e-4 * max(1.0, ref[k].abs().max().item())
        assert (got[k] - ref[k]).abs().max().item() <= tol, f"{name}.{k} differs after export"


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in ALL if get_card(n).weights is None])
def test_torch_export_with_dynamic_batch(name):
    # torch.export is the successor of TorchScript (deprecated in torch 2.13); ~2-6 s per model.
    model = _build(name)
    x = _inputs(name, 2)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(model, x, dynamic_shapes=tuple({0: batch} for _ in x))
    buf = io.BytesIO()
    torch.export.save(program, buf)
    buf.seek(0)
    loaded = torch.export.load(buf).module()
    x3 = _inputs(name, 3, seed=1)
    with torch.no_grad():
        ref, got = output_tensors(model(*x3)), output_tensors(loaded(*x3))
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ALL)
def test_half_precision_on_cuda(name):
    model = _build(name).cuda()
    x32 = tuple(t.cuda() for t in _inputs(name, 4))
    with torch.inference_mode():
        ref = output_tensors(model(*x32))
        half = model.half()
        got = output_tensors(half(*(t.half() for t in x32)))
    for k, r in ref.items():
        g = got[k]
        assert g.dtype == torch.float16 or not g.is_floating_point(), k
        assert torch.isfinite(g).all(), f"{name}.{k} not finite in fp16"
        scale = max(1.0, r.abs().max().item())
        assert (g.float() - r.float()).abs().max().item() <= 0.05 * scale, f"{name}.{k} fp16 drift"
