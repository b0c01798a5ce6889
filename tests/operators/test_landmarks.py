"""FaceMeshLandmarker on real faces; five-point, similarity alignment and square crops."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from affectstream.operators.detection import FaceDetector
from affectstream.operators.landmarks import (ARCFACE_TEMPLATE_112, FaceMeshLandmarker, aligned_crop,
                                 five_point, similarity_transform, square_crop)


def rgb(media, name: str) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(media(name))), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def det() -> FaceDetector:
    return FaceDetector("full")


@pytest.fixture(scope="module")
def lmk() -> FaceMeshLandmarker:
    return FaceMeshLandmarker(max_batch_size=8)


@pytest.fixture(scope="module")
def scenes(media, det):
    """Frames and their detections: t1 (6 faces), multi_face (5), single_face (1), surprise (1)."""
    frames = [rgb(media, n) for n in ("t1.jpg", "multi_face.jpg", "single_face.jpg",
                                      "0-f1-su-ph.jpg")]
    return frames, det.detect(frames)


def test_landmarks_fall_inside_face_boxes(scenes, lmk):
    frames, dets = scenes
    out = lmk(frames, [d.bbox_xyxy for d in dets], [d.keypoints for d in dets])
    assert [len(o) for o in out] == [6, 5, 1, 1]
    for d, o in zip(dets, out, strict=True):
        assert o.landmarks.shape == (len(d), 468, 2) and o.landmarks.dtype == np.float32
        assert (o.presence > 0.9).all()
        b = d.bbox_xyxy
        lm = o.landmarks
        inside = ((lm >= b[:, None, :2]) & (lm <= b[:, None, 2:])).all(-1).mean(1)
        assert (inside > 0.85).all(), inside  # FaceMesh reaches a bit past BlazeFace's box
        margin = 0.25 * (b[:, 2:] - b[:, :2])[:, None, :]
        assert ((lm >= b[:, None, :2] - margin) & (lm <= b[:, None, 2:] + margin)).all()


def test_five_point_order_on_frontal_faces(scenes, lmk):
    frames, dets = scenes
    out = lmk(frames[1:], [d.bbox_xyxy for d in dets[1:]], [d.keypoints for d in dets[1:]])
    for d, o in zip(dets[1:], out, strict=True):
        p = five_point(o.landmarks)
        assert p.shape == (len(d), 5, 2) and p.dtype == np.float32
        le, re, nose, lm, rm = (p[:, i] for i in range(5))
        assert (le[:, 0] < re[:, 0]).all() and (lm[:, 0] < rm[:, 0]).all()
        assert (le[:, 0] < nose[:, 0]).all() and (nose[:, 0] < re[:, 0]).all()
        eye_y = (le[:, 1] + re[:, 1]) / 2
        assert (eye_y < nose[:, 1]).all() and (nose[:, 1] < (lm[:, 1] + rm[:, 1]) / 2).all()
        # agrees with the detector's own eye keypoints (0: subject's right = image-left)
        iod = np.linalg.norm(re - le, axis=1)
        assert (np.linalg.norm(le - d.keypoints[:, 0], axis=1) < 0.25 * iod).all()
        assert (np.linalg.norm(re - d.keypoints[:, 1], axis=1) < 0.25 * iod).all()


def test_rotated_face_uses_eye_keypoints(media, det, lmk):
    """A face rotated by 30 degrees: the rotated ROI recovers landmarks that follow the rotation."""
    img = rgb(media, "single_face.jpg")
    (d0,) = det.detect([img])
    base = lmk([img], [d0.bbox_xyxy], [d0.keypoints])[0].landmarks[0]
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), -30, 1.0)  # clockwise 30 deg in image coords
    rot = cv2.warpAffine(img, m, (w, h))
    (d1,) = det.detect([rot])
    assert len(d1) == 1
    got = lmk([rot], [d1.bbox_xyxy], [d1.keypoints])[0].landmarks[0]
    # continuous coords: shift by half a pixel around OpenCV's pixel-centre transform
    expected = (base - 0.5) @ m[:, :2].T + m[:, 2] + 0.5
    iod = np.linalg.norm(base[263] - base[33])
    assert np.median(np.linalg.norm(got - expected, axis=1)) < 0.05 * iod
    p = five_point(got)
    angle = np.degrees(np.arctan2(p[1, 1] - p[0, 1], p[1, 0] - p[0, 0]))
    angle0 = np.degrees(np.arctan2(*(five_point(base)[1] - five_point(base)[0])[::-1]))
    assert angle - angle0 == pytest.approx(30, abs=4)


def test_no_faces_and_mismatched_lengths(lmk):
    frame = np.zeros((100, 100, 3), np.uint8)
    (o,) = lmk([frame], [np.zeros((0, 4), np.float32)])
    assert len(o) == 0 and o.landmarks.shape == (0, 468, 2)
    with pytest.raises(ValueError, match="same length"):
        lmk([frame, frame], [np.zeros((0, 4), np.float32)])


def test_five_point_shapes():
    lm = np.zeros((468, 3), np.float32)
    lm[[33, 133, 159, 145], 0] = [10, 20, 15, 15]
    assert five_point(lm).shape == (5, 2) and five_point(lm)[0, 0] == pytest.approx(15)
    with pytest.raises(ValueError, match="468"):
        five_point(np.zeros((2, 68, 2)))


@pytest.mark.parametrize("angle,scale,tx,ty", [(0, 1, 0, 0), (30, 2.0, 5, -3), (-75, 0.5, 100, 7)])
def test_similarity_transform_recovers_known_transform(angle, scale, tx, ty):
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    a = np.radians(angle)
    r = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    dst = src @ r.T + [tx, ty]
    m = similarity_transform(src, dst)
    np.testing.assert_allclose(m, np.hstack([r, [[tx], [ty]]]), atol=1e-9)


def test_aligned_crop_puts_points_on_template():
    """Bright dots at five points of a synthetic frame land on the template after warping."""
    frame = np.zeros((300, 400), np.uint8)
    a = np.radians(20)
    r = 1.7 * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    pts = ARCFACE_TEMPLATE_112 @ r.T + [150, 60]
    for x, y in pts:
        cv2.circle(frame, (int(x), int(y)), 3, 255, -1)
    crop = aligned_crop(frame, pts + 0.5, size=112)  # +0.5: pixel-centre -> continuous coords
    assert crop.shape == (112, 112)
    for x, y in ARCFACE_TEMPLATE_112:
        assert crop[int(round(y)), int(round(x))] > 150
    crops = aligned_crop(np.dstack([frame] * 3), np.stack([pts, pts]), size=224)
    assert crops.shape == (2, 224, 224, 3)


def test_square_crop_exact_copy_and_padding():
    frame = np.arange(100 * 120 * 3, dtype=np.uint32).reshape(100, 120, 3).astype(np.uint8)
    c = square_crop(frame, np.array([[20, 30, 60, 70]], np.float32), size=40, scale=1.0)
    assert c.shape == (1, 40, 40, 3)
    np.testing.assert_array_equal(c[0], frame[30:70, 20:60])
    # a box at the corner: the outside part is zero
    c = square_crop(frame, np.array([[-10, -10, 10, 10], [0, 0, 20, 10]], np.float32), 20)
    assert c.shape == (2, 20, 20, 3)
    assert c[0, :10, :10].max() == 0 and (c[0, 10:, 10:] == frame[:10, :10]).all()
    assert square_crop(frame[..., 0], np.zeros((0, 4)), 64).shape == (0, 64, 64)
    with pytest.raises(ValueError):
        square_crop(frame, np.zeros((1, 4)), 64, scale=0)
