"""FaceDetector on real photos and video, plus the anchor / NMS / letterbox building blocks."""

from __future__ import annotations

import av
import cv2
import numpy as np
import pytest
import torch

from affectstream.operators.detection import (FaceDetections, FaceDetector, decode_boxes, letterbox,
                                 ssd_anchors, weighted_nms)


def rgb(media, name: str) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(media(name))), cv2.COLOR_BGR2RGB)


def video_frame(media, name: str, index: int = 0) -> np.ndarray:
    with av.open(str(media(name))) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i == index:
                return f.to_ndarray(format="rgb24")
    raise AssertionError("frame not found")


@pytest.fixture(scope="module")
def detectors() -> dict[str, FaceDetector]:
    return {m: FaceDetector(m) for m in ("short", "full")}


# ------------------------------------------------------------------ faces found in real media

@pytest.mark.parametrize("image,kind,expected", [
    ("t1.jpg", "full", 6),           # six people round a card table, faces ~100 px
    ("multi_face.jpg", "full", 5),   # five young people, faces ~90-115 px
    ("single_face.jpg", "full", 1),
    ("single_face.jpg", "short", 1),
    ("0-f1-su-ph.jpg", "short", 1),
])
def test_face_count_on_real_photos(detectors, media, image, kind, expected):
    (faces,) = detectors[kind].detect([rgb(media, image)])
    assert len(faces) == expected
    assert (faces.det_score >= 0.5).all() and (faces.det_score <= 1).all()


@pytest.mark.parametrize("image", ["t1.jpg", "multi_face.jpg"])
def test_full_range_finds_small_faces_short_range_misses(detectors, media, image):
    img = rgb(media, image)
    assert len(detectors["short"].detect([img])[0]) < len(detectors["full"].detect([img])[0])


@pytest.mark.parametrize("kind", ["short", "full"])
def test_no_face_video_frame(detectors, media, kind):
    frames = [video_frame(media, "no_face.mp4", i) for i in (0, 50)]
    assert [len(f) for f in detectors[kind].detect(frames)] == [0, 0]


@pytest.mark.parametrize("kind", ["short", "full"])
def test_single_face_video_640x360(detectors, media, kind):
    frame = video_frame(media, "single_face.mp4", 10)
    assert frame.shape == (360, 640, 3)
    (faces,) = detectors[kind].detect([frame])
    assert len(faces) == 1
    x1, y1, x2, y2 = faces.bbox_xyxy[0]
    assert 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 360 and 60 < x2 - x1 < 300


def test_boxes_and_keypoints_geometry_t1(detectors, media):
    (faces,) = detectors["full"].detect([rgb(media, "t1.jpg")])
    b, k = faces.bbox_xyxy, faces.keypoints
    w = b[:, 2] - b[:, 0]
    assert (w > 60).all() and (w < 200).all()
    assert np.allclose(w, b[:, 3] - b[:, 1], rtol=0.1)  # BlazeFace boxes are ~square
    eyes_nose_mouth = k[:, :4]
    assert ((eyes_nose_mouth >= b[:, None, :2]) & (eyes_nose_mouth <= b[:, None, 2:])).all()
    assert (k[:, 0, 0] < k[:, 1, 0]).all()  # subject's right eye is image-left
    assert (np.diff(faces.det_score) <= 0).all()  # sorted by score


def test_batch_equals_one_by_one(detectors, media):
    imgs = [rgb(media, "multi_face.jpg"), video_frame(media, "single_face.mp4", 0),
            rgb(media, "single_face.jpg")]
    det = detectors["full"]
    batch = det.detect(imgs)
    for img, got in zip(imgs, batch, strict=True):
        (one,) = det.detect([img])
        assert len(one) == len(got)
        np.testing.assert_allclose(one.bbox_xyxy, got.bbox_xyxy, atol=1e-2)


def test_max_faces_and_thresholds(media):
    img = rgb(media, "t1.jpg")
    assert len(FaceDetector("full", max_faces=2).detect([img])[0]) == 2
    assert len(FaceDetector("full", score_thresh=0.99).detect([img])[0]) == 0


def test_bad_input_errors(detectors):
    with pytest.raises(ValueError, match="unknown detector model"):
        FaceDetector("medium")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must lie in"):
        FaceDetector("short", score_thresh=1.5)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        detectors["short"].detect([np.zeros((10, 10), np.uint8)])
    assert detectors["short"].detect([]) == []


def test_records_conversion(detectors, media):
    faces = detectors["full"].detect([rgb(media, "single_face.jpg")])[0].to_faces()
    assert len(faces) == 1 and faces.track_id.tolist() == [0] and faces.landmarks.shape == (1, 6, 2)
    with pytest.raises(ValueError, match=r"keypoints must be float32 of shape \(1, 6, 2\)"):
        FaceDetections(np.zeros((1, 4), np.float32), np.zeros(1, np.float32),
                       np.zeros((1, 5, 2), np.float32))


# ------------------------------------------------------------------------- building blocks

@pytest.mark.parametrize("size,strides,per_layer,n,first,last", [
    (128, (8, 16, 16, 16), 2, 896, (0.5 / 16, 0.5 / 16), (7.5 / 8, 7.5 / 8)),
    (192, (4,), 1, 2304, (0.5 / 48, 0.5 / 48), (47.5 / 48, 47.5 / 48)),
])
def test_ssd_anchors(size, strides, per_layer, n, first, last):
    a = ssd_anchors(size, strides, per_layer)
    assert a.shape == (n, 2) and a.dtype == np.float32
    np.testing.assert_allclose(a[0], first)
    np.testing.assert_allclose(a[-1], last)
    if per_layer == 2:  # stride 8: 2 per cell, then stride 16 (3 layers merged): 6 per cell
        assert (a[0] == a[1]).all() and (a[1] != a[2]).any()
        assert (a[512:518] == a[512]).all() and (a[518] != a[512]).any()


def test_decode_boxes_offsets_scaled_by_input_size():
    anchors = torch.tensor([[0.25, 0.5]])
    reg = torch.zeros(1, 1, 16)
    reg[0, 0, :4] = torch.tensor([12.8, -12.8, 64.0, 32.0])  # input 128 px
    reg[0, 0, 4:6] = torch.tensor([6.4, 0.0])
    boxes, kps, scores = decode_boxes(reg, torch.tensor([[[200.0]]]), anchors, 128)
    np.testing.assert_allclose(boxes[0, 0].numpy(), [0.35 - 0.25, 0.4 - 0.125, 0.35 + 0.25,
                                                     0.4 + 0.125], atol=1e-6)
    np.testing.assert_allclose(kps[0, 0, 0].numpy(), [0.3, 0.5], atol=1e-6)
    np.testing.assert_allclose(kps[0, 0, 1].numpy(), [0.25, 0.5], atol=1e-6)
    assert scores.shape == (1, 1) and float(scores) == pytest.approx(1.0)  # clipped, finite


@pytest.mark.parametrize("boxes,scores,expected_boxes,expected_scores", [
    # two overlapping boxes blend, weighted by score; the score is the top one
    ([[0, 0, 10, 10], [1, 0, 11, 10]], [0.9, 0.3], [[0.25, 0, 10.25, 10]], [0.9]),
    # disjoint boxes are both kept, highest score first
    ([[0, 0, 10, 10], [20, 20, 30, 30]], [0.6, 0.8], [[20, 20, 30, 30], [0, 0, 10, 10]],
     [0.8, 0.6]),
    # IoU 1/3 > 0.3 -> merged
    ([[0, 0, 10, 10], [5, 0, 15, 10]], [0.5, 0.5], [[2.5, 0, 12.5, 10]], [0.5]),
    # IoU 0.25 < 0.3 -> kept apart
    ([[0, 0, 10, 10], [6, 0, 16, 10]], [0.5, 0.4], [[0, 0, 10, 10], [6, 0, 16, 10]], [0.5, 0.4]),
])
def test_weighted_nms_table(boxes, scores, expected_boxes, expected_scores):
    b = np.asarray(boxes, np.float32)
    kp = np.repeat(b[:, None, :2], 6, axis=1)
    ob, os_, ok = weighted_nms(b, np.asarray(scores, np.float32), kp, iou_thresh=0.3)
    np.testing.assert_allclose(ob, expected_boxes, atol=1e-5)
    np.testing.assert_allclose(os_, expected_scores, atol=1e-6)
    np.testing.assert_allclose(ok[:, 0], np.asarray(expected_boxes)[:, :2], atol=1e-5)


def test_weighted_nms_max_out_and_empty():
    b = np.array([[0, 0, 1, 1], [5, 5, 6, 6], [9, 9, 10, 10]], np.float32)
    ob, os_, _ = weighted_nms(b, np.array([0.7, 0.9, 0.8], np.float32),
                              np.zeros((3, 6, 2), np.float32), max_out=2)
    assert os_.tolist() == pytest.approx([0.9, 0.8]) and len(ob) == 2
    ob, os_, ok = weighted_nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                               np.zeros((0, 6, 2), np.float32))
    assert ob.shape == (0, 4) and ok.shape == (0, 6, 2)


@pytest.mark.parametrize("h,w", [(360, 640), (886, 1280), (500, 200), (128, 128)])
def test_letterbox_geometry(h, w):
    frame = np.full((h, w, 3), 255, np.uint8)
    sq, sx, sy, px, py = letterbox(frame, 128)
    assert sq.shape == (128, 128, 3)
    # content covers exactly [pad, pad + size*scale) and the bars are black
    assert round(w * sx) + 2 * px in (128, 127) and round(h * sy) + 2 * py in (128, 127)
    assert sq[py + 1:py + round(h * sy) - 1, px + 1:px + round(w * sx) - 1].min() == 255
    if py > 0:
        assert sq[:py].max() == 0
    if px > 0:
        assert sq[:, :px].max() == 0
