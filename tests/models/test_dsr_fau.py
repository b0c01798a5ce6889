"""DSR-FAU: heatmap renderer/decoder round trip, AU points, student vs teacher cost."""

from __future__ import annotations

import pytest
import torch

from affectstream.models import create_model, get_card
from affectstream.models._labels import DISFA_AUS
from affectstream.models.dsr_fau import (AU_POINT_RULES, au_points_from_landmarks, decode_heatmaps,
                            render_au_heatmaps)
from affectstream.models.profile import count_flops, count_params, example_inputs



def _separated_points(b: int, a: int, g: torch.Generator) -> torch.Tensor:
    """Two sub-pixel points per AU, inside [4, 59] and at least 8 px apart."""
    p1 = torch.rand(b, a, 2, generator=g) * 24 + 4          # left half
    p2 = torch.rand(b, a, 2, generator=g) * 23 + 36         # right/bottom part
    return torch.stack([p1, p2], dim=2)


def test_decoder_recovers_rendered_intensities():
    g = torch.Generator().manual_seed(0)
    pts = _separated_points(6, 12, g)
    intensity = torch.rand(6, 12, generator=g) * 5
    intensity[0, :4] = 0.0                                   # absent AUs
    intensity[1, :3] = torch.tensor([5.0, 1.0, 0.01])
    heat = render_au_heatmaps(pts, intensity, (64, 64), 2.0)
    assert heat.shape == (6, 12, 64, 64)
    decoded = decode_heatmaps(heat, sigma=2.0)
    torch.testing.assert_close(decoded, intensity, atol=1e-3, rtol=0)
    # The plain maximum is biased low for off-grid peaks; the refinement is what makes it exact.
    assert (heat.flatten(2).amax(-1) - intensity).abs().max() > 0.01


def test_renderer_peak_equals_intensity_and_combines_by_max():
    pts = torch.tensor([[[[10.0, 20.0], [12.0, 20.0]]]])     # 2 px apart: overlapping Gaussians
    heat = render_au_heatmaps(pts, torch.tensor([[3.0]]))
    assert heat.max().item() == pytest.approx(3.0, abs=1e-6)
    assert heat[0, 0, 20, 10].item() == pytest.approx(3.0, abs=1e-6)
    assert heat[0, 0, 20, 12].item() == pytest.approx(3.0, abs=1e-6)


def test_decoder_clamps_to_facs_range():
    heat = torch.zeros(1, 2, 64, 64)
    heat[0, 0, 30, 30] = 9.0
    heat[0, 1] = -1.0
    out = decode_heatmaps(heat)
    assert out[0, 0].item() == 5.0 and out[0, 1].item() == 0.0


def test_au_points_from_68_landmarks():
    g = torch.Generator().manual_seed(1)
    lm = torch.rand(2, 68, 2, generator=g) * 255
    pts = au_points_from_landmarks(lm, input_size=256, heatmap_size=64)
    assert pts.shape == (2, 12, 2, 2)
    assert set(AU_POINT_RULES) == set(DISFA_AUS)
    i12 = DISFA_AUS.index("AU12")                             # mouth corners 48 and 54
    expected = (lm[:, [48, 54]] + 0.5) / 4 - 0.5
    torch.testing.assert_close(pts[:, i12], expected)
    with pytest.raises(ValueError, match=r"\(B, 68, 2\)"):
        au_points_from_landmarks(torch.zeros(1, 66, 2))


def test_model_intensity_output_is_the_decoded_heatmaps():
    model = create_model("dsr_fau_student", weights=None)
    (x,) = example_inputs(get_card("dsr_fau_student"), 2)
    with torch.inference_mode():
        out = model(x)
    assert out["heatmaps"].shape == (2, 12, 64, 64)
    assert out["features"].shape == (2, model.feature_channels, 64, 64)
    torch.testing.assert_close(out["au_intensity"], decode_heatmaps(out["heatmaps"]))


def test_student_is_a_fraction_of_the_teacher():
    card = get_card("dsr_fau_teacher")
    teacher = create_model("dsr_fau_teacher", weights=None)
    student = create_model("dsr_fau_student", weights=None)
    x = example_inputs(card, 1)
    t_flops, s_flops = count_flops(teacher, x), count_flops(student, x)
    t_params, s_params = count_params(teacher), count_params(student)
    assert s_flops < t_flops / 4
    assert s_params < t_params / 4
    assert (t_params, s_params) == (33_998_412, 3_193_260)
