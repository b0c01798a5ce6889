"""AMP-Net: landmark-guided patch extraction against hand-computed crops, batch independence."""

from __future__ import annotations

import torch

from affectstream.models import create_model, get_card
from affectstream.models.ampnet import TEMPLATE_5PT_224, crop_patches, landmark_boxes



def _px(c: float) -> float:
    """Input pixel (224 px, pixel centres at integers) whose feature edge coordinate is ``c``
    on the 28-px map (stride 8): ``(x + 0.5) / 8 = c``."""
    return 8 * c - 0.5


# A known landmark set, in feature edge coordinates: left eye (9, 11), right eye (19, 11),
# nose (14, 15), left mouth corner (10, 21), right mouth corner (18, 21).
KNOWN = torch.tensor([[[_px(9), _px(11)], [_px(19), _px(11)], [_px(14), _px(15)],
                       [_px(10), _px(21)], [_px(18), _px(21)]]])


def test_crop_patches_equals_slicing_for_integer_boxes():
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(2, 5, 28, 28, generator=g)
    boxes = torch.tensor([[[0, 0, 10, 10], [18, 3, 28, 13]],
                          [[7, 12, 17, 22], [4, 18, 14, 28]]], dtype=torch.float32)
    out = crop_patches(feat, boxes, (10, 10))
    assert out.shape == (2, 2, 5, 10, 10)
    for b in range(2):
        for k in range(2):
            x1, y1, x2, y2 = boxes[b, k].int().tolist()
            torch.testing.assert_close(out[b, k], feat[b, :, y1:y2, x1:x2], atol=1e-4, rtol=0)


def test_salient_patches_match_hand_computed_crops():
    model = create_model("ampnet", weights=None)
    g = torch.Generator().manual_seed(1)
    feat = torch.randn(1, 128, 28, 28, generator=g)
    # Feature edge coords: left eye (9, 11), right eye (25, 11), nose (14, 15), left mouth
    # (10, 21), right mouth (18, 26).
    lm = torch.tensor([[[_px(9), _px(11)], [_px(25), _px(11)], [_px(14), _px(15)],
                        [_px(10), _px(21)], [_px(18), _px(26)]]])
    _, sal = model.patches(feat, lm, (224, 224))
    assert sal.shape == (1, 5, 128, 10, 10)
    # Hand-computed 10x10 windows (x1, y1) = centre - 5, centres clamped to [5, 23]:
    # left eye (9,11); right eye (25->23, 11); eye midpoint (17, 11); left mouth (10, 21);
    # right mouth (18, 26->23).
    expected_windows = [(4, 6), (18, 6), (12, 6), (5, 16), (13, 18)]
    for k, (x1, y1) in enumerate(expected_windows):
        torch.testing.assert_close(sal[0, k], feat[0, :, y1:y1 + 10, x1:x1 + 10], atol=1e-4, rtol=0)


def test_quadrant_boxes_split_at_eye_nose_mouth_lines():
    quads, sal = landmark_boxes(KNOWN, (224, 224), (28, 28))
    # eye-centre x = 14, nose y = 15, mouth-centre x = 14
    expected = torch.tensor([[[0, 0, 14, 15], [14, 0, 28, 15], [0, 15, 14, 28], [14, 15, 28, 28]]],
                            dtype=torch.float32)
    torch.testing.assert_close(quads, expected, atol=1e-4, rtol=0)
    assert sal.shape == (1, 5, 4)


def test_quadrant_patches_resample_the_right_region():
    # On a linear ramp f(x, y) = x + 100 y (edge coords of pixel centres), any bilinear resample
    # is exact, so each bin must equal the ramp at the bin centre of its quadrant.
    model = create_model("ampnet", weights=None)
    ys, xs = torch.meshgrid(torch.arange(28.0) + 0.5, torch.arange(28.0) + 0.5, indexing="ij")
    ramp = (xs + 100 * ys).expand(1, 3, 28, 28)
    lm = KNOWN.clone()
    lm[0, :2, 0] += 8 * 2  # move both eyes right by 2 feature px -> upper split at x = 16
    q, _ = model.patches(ramp, lm, (224, 224))
    p = model.local_patch
    boxes = [(0, 0, 16, 15), (16, 0, 28, 15), (0, 15, 14, 28), (14, 15, 28, 28)]
    for k, (x1, y1, x2, y2) in enumerate(boxes):
        cx = x1 + (torch.arange(p) + 0.5) * (x2 - x1) / p
        cy = y1 + (torch.arange(p) + 0.5) * (y2 - y1) / p
        expected = cx.view(1, -1) + 100 * cy.view(-1, 1)
        # interior bins only: border samples of quadrants touching the map edge read padding
        torch.testing.assert_close(q[0, k, 0, 1:-1, 1:-1], expected[1:-1, 1:-1], atol=1e-3, rtol=0)


def test_splits_and_salient_boxes_stay_inside_the_map():
    lm = torch.tensor([[[-50.0, -50.0], [300.0, -50.0], [112.0, 400.0], [-10.0, 500.0],
                        [500.0, 500.0]]])
    quads, sal = landmark_boxes(lm, (224, 224), (28, 28))
    assert (quads >= 0).all() and (quads <= 28).all()
    assert ((quads[..., 2] - quads[..., 0]) >= 4).all() and ((quads[..., 3] - quads[..., 1]) >= 4).all()
    assert (sal >= 0).all() and (sal <= 28).all()
    torch.testing.assert_close(sal[..., 2] - sal[..., 0], torch.full((1, 5), 10.0))


def test_batched_forward_equals_per_sample_and_landmarks_matter():
    model = create_model("ampnet", weights=None)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 3, 224, 224, generator=g)
    base = torch.tensor(TEMPLATE_5PT_224)
    lm = base + torch.randn(3, 5, 2, generator=g) * 6
    with torch.inference_mode():
        batched = model(x, lm)
        single = [model(x[i:i + 1], lm[i:i + 1]) for i in range(3)]
        moved = model(x, lm + torch.tensor([24.0, 16.0]))
    for i in range(3):
        for key in batched:
            torch.testing.assert_close(batched[key][i], single[i][key][0], atol=1e-4, rtol=1e-4)
    # The local head depends on the landmarks, the global head does not.
    assert (moved["logits_local"] - batched["logits_local"]).abs().max() > 1e-4
    torch.testing.assert_close(moved["logits_global"], batched["logits_global"])
    torch.testing.assert_close(batched["logits"],
                               0.5 * batched["logits_local"] + 0.5 * batched["logits_global"])


def test_card_preprocessing_and_parameter_count():
    card = get_card("ampnet")
    assert card.input_size == (224, 224) and card.alignment == "5pt"
    assert card.extra["landmarks_in"] == (5, 2)
    assert card.label_names == ("surprise", "fear", "disgust", "happiness", "sadness", "anger",
                                "neutral")
    model = create_model("ampnet", weights=None)
    assert not any(len(list(m.buffers(recurse=False))) and not isinstance(
        m, torch.nn.BatchNorm2d) for m in model.modules()), "AMP-Net must not keep state buffers"
    assert sum(p.numel() for p in model.parameters()) == 8_692_032
