"""Writers of tiny datasets in the public on-disk formats, from real faces of the test media.

Face boxes below were found by the pipeline's BlazeFace (full-range) on the pinned test images
and are fixed here, so these writers do not depend on the detector. Labels are assigned by the
tests (the media carry none); each writer returns what it wrote, for read-back checks.
"""

from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np
import scipy.io

from affectstream.models.weights import artifact_path

FACE_BOXES: dict[str, list[tuple[int, int, int, int]]] = {
    "single_face.jpg": [(163, 178, 378, 393)],
    "0-f1-su-ph.jpg": [(92, 142, 438, 487)],
    "0-f15-hao-ph.jpg": [(93, 150, 413, 470)],
    "15-f13-anc-ph.jpg": [(63, 156, 378, 471)],
    "45-m7-di-ph.jpg": [(0, 185, 265, 468)],
    "multi_face.jpg": [(518, 320, 632, 434), (676, 303, 787, 414), (435, 222, 520, 307),
                       (208, 70, 321, 183), (309, 243, 421, 356)],
    "t1.jpg": [(456, 289, 571, 404), (51, 274, 168, 391), (730, 362, 825, 457),
               (866, 69, 1003, 206), (265, 166, 373, 273), (1126, 294, 1222, 389)],
}
"""(x1, y1, x2, y2) of each face in the pinned media (16 faces)."""

VIDEO_BOX = (198, 104, 387, 293)
"""Face box in single_face.mp4 (640x360, 72 frames; the face moves a few pixels)."""

# ArcFace 5-point template in a 112x112 tight crop; approximate landmarks inside a face box
_TMPL = np.array([[38.29, 51.70], [73.53, 51.50], [56.03, 71.74], [41.55, 92.37], [70.73, 92.20]],
                 np.float32) / 112.0


def _rgb(name: str) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(artifact_path(name))), cv2.COLOR_BGR2RGB)


@functools.lru_cache(maxsize=None)
def _faces() -> tuple[tuple[str, np.ndarray, np.ndarray], ...]:
    out = []
    for name, boxes in FACE_BOXES.items():
        img = _rgb(name)
        for b in boxes:
            out.append((name, img, np.array(b, np.float32)))
    return tuple(out)


def _square(img: np.ndarray, box: np.ndarray, scale: float, size: int) -> tuple[np.ndarray,
                                                                                np.ndarray]:
    """Square crop of side scale*max(w,h) around the box, resized to size; and its (2,3) map."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    side = max(box[2] - box[0], box[3] - box[1]) * scale
    s = size / side
    m = np.array([[s, 0, size / 2 - s * cx], [0, s, size / 2 - s * cy]])
    crop = cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
    return crop, m


def face_photo(i: int, size: int = 256, scale: float = 2.0) -> tuple[np.ndarray, np.ndarray,
                                                                       np.ndarray]:
    """Face ``i`` (0..15) with context: (size, size, 3) RGB photo, its face box and 5 approximate
    landmarks, both in photo pixels. Faces 16..31 are the mirror images of 0..15."""
    name, img, box = _faces()[i % 16]
    crop, m = _square(img, box, scale, size)
    b = np.concatenate([m[:, :2] @ box[:2] + m[:, 2], m[:, :2] @ box[2:] + m[:, 2]])
    lm = b[:2] + _TMPL * (b[2:] - b[:2])
    if i >= 16:
        crop = crop[:, ::-1].copy()
        b = np.array([size - b[2], b[1], size - b[0], b[3]], np.float32)
        lm = np.stack([size - lm[:, 0], lm[:, 1]], 1)[[1, 0, 2, 4, 3]]
    return crop, b.astype(np.float32), lm.astype(np.float32)


def face_crop(i: int, size: int) -> np.ndarray:
    """Tight (aligned-style) face crop ``i`` of ``size`` x ``size`` RGB."""
    name, img, box = _faces()[i % 16]
    crop, _ = _square(img, box, 1.15, size)
    return crop[:, ::-1].copy() if i >= 16 else crop


def _as_written(a: np.ndarray) -> np.ndarray:
    """The float32 values a reader parses back from ``f"{v:.2f}"``."""
    return np.vectorize(lambda v: float(f"{v:.2f}"))(np.asarray(a, np.float64)).astype(np.float32)


def _write_jpg(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])


def video_frames(n: int = 72) -> list[np.ndarray]:
    """The first ``n`` RGB frames of single_face.mp4."""
    cap = cv2.VideoCapture(str(artifact_path("single_face.mp4")))
    out = []
    while len(out) < n:
        ok, f = cap.read()
        if not ok:
            break
        out.append(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
    cap.release()
    return out


# ------------------------------------------------------------------------------------ RAF-DB


def write_rafdb(root: Path, n_train: int = 16, n_test: int = 8, photo_size: int = 256) -> dict:
    """RAF-DB basic layout. Labels: code = i % 7 + 1; attributes from i."""
    entries, written = [], {}
    for split, n, off in (("train", n_train, 0), ("test", n_test, n_train)):
        for k in range(n):
            i = off + k
            stem = f"{split}_{k + 1:05d}" if split == "train" else f"{split}_{k + 1:04d}"
            code = i % 7 + 1
            photo, box, lm = face_photo(i % 32, photo_size)
            _write_jpg(root / "Image" / "original" / f"{stem}.jpg", photo)
            _write_jpg(root / "Image" / "aligned" / f"{stem}_aligned.jpg", face_crop(i % 32, 100))
            attrs = {"gender": i % 3, "race": (i // 3) % 3, "age": i % 5}
            man = root / "Annotation" / "manual" / f"{stem}_manu_attri.txt"
            man.parent.mkdir(parents=True, exist_ok=True)
            man.write_text("".join(f"{x:.2f}\t{y:.2f}\n" for x, y in lm)
                           + f"{attrs['gender']}\n{attrs['race']}\n{attrs['age']}\n")
            bb = root / "Annotation" / "boundingbox" / f"{stem}_boundingbox.txt"
            bb.parent.mkdir(parents=True, exist_ok=True)
            bb.write_text(" ".join(f"{v:.2f}" for v in box) + "\n")
            entries.append(f"{stem}.jpg {code}")
            written[stem] = {"label": code - 1, "landmarks": _as_written(lm), "attributes": attrs,
                             "bbox": _as_written(box)}
    lab = root / "EmoLabel" / "list_patition_label.txt"
    lab.parent.mkdir(parents=True, exist_ok=True)
    lab.write_text("\n".join(entries) + "\n")
    return written


# --------------------------------------------------------------------------------- AffectNet


def write_affectnet(root: Path, n_train: int = 16, n_val: int = 8) -> dict:
    """AffectNet layout; expression codes cycle 0..10 (8-10 are dropped by the reader)."""
    written = {}
    header = ("subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,"
              "expression,valence,arousal\n")
    for fname, n, off in (("training.csv", n_train, 0), ("validation.csv", n_val, 100)):
        rows = []
        for k in range(n):
            i = off + k
            photo, box, lm5 = face_photo(i % 32, 224)
            rel = f"{i % 3 + 1}/img{i:04d}.jpg"
            _write_jpg(root / "Manually_Annotated_Images" / rel, photo)
            # 68 points: put every group on the matching 5-point landmark (enough to check that
            # the reader maps 68 -> 5 and keeps image coordinates)
            lm68 = np.zeros((68, 2), np.float32)
            lm68[:] = lm5[2]
            lm68[36:42], lm68[42:48], lm68[30] = lm5[0], lm5[1], lm5[2]
            lm68[48], lm68[54] = lm5[3], lm5[4]
            code = i % 11
            val, aro = (round(-1 + 2 * (i % 5) / 4, 3), -2) if i % 4 == 0 else \
                (round((i % 7) / 7 - 0.5, 3), round(0.25 - (i % 3) / 4, 3))
            x, y, w, h = box[0], box[1], box[2] - box[0], box[3] - box[1]
            lms = ";".join(f"{v:.2f}" for v in lm68.ravel())
            rows.append(f"{rel},{x:.0f},{y:.0f},{w:.0f},{h:.0f},{lms},{code},{val},{aro}\n")
            written[rel] = {"code": code, "bbox": np.array([round(x), round(y), round(x) + round(w),
                                                            round(y) + round(h)], np.float32),
                            "valence": val, "arousal": aro, "lm68": _as_written(lm68)}
        p = root / "Manually_Annotated_file_lists" / fname
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(header + "".join(rows))
    return written


# ------------------------------------------------------------------------------ FER2013(+)


def write_fer2013(root: Path, n_train: int = 16, n_val: int = 4, n_test: int = 8,
                  ferplus: bool = True) -> dict:
    """fer2013.csv (48x48 grey real faces) and the matching fer2013new.csv vote table."""
    root.mkdir(parents=True, exist_ok=True)
    rows, votes, written = [], [], []
    usage = ["Training"] * n_train + ["PublicTest"] * n_val + ["PrivateTest"] * n_test
    for i, use in enumerate(usage):
        grey = cv2.cvtColor(face_crop(i % 32, 48), cv2.COLOR_RGB2GRAY)
        code = i % 7
        rows.append(f"{code},{' '.join(str(int(v)) for v in grey.ravel())},{use}\n")
        v = np.zeros(10, int)
        v[i % 8] = 6
        v[(i + 1) % 8] = 3
        v[8 + i % 2] = 1  # unknown or NF
        name = "" if i % 9 == 5 else f"fer{i:07d}.png"
        votes.append(f"{use},{name}," + ",".join(str(x) for x in v) + "\n")
        written.append({"pixels": grey, "code": code, "usage": use, "votes": v, "name": name})
    (root / "fer2013.csv").write_text("emotion,pixels,Usage\n" + "".join(rows))
    if ferplus:
        (root / "fer2013new.csv").write_text(
            "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,"
            "unknown,NF\n" + "".join(votes))
    return {"rows": written}


# ---------------------------------------------------------------------------------------- CK+


def write_ckplus(root: Path, n_subjects: int = 6, frames: int = 4) -> dict:
    """CK+ layout: one sequence per subject, frames = the face photo slightly zoomed over time."""
    written = {}
    for s in range(n_subjects):
        subj, seq = f"S{s + 5:03d}", "001"
        for f in range(frames):
            photo, _, lm = face_photo(s, 240, scale=2.2 - 0.1 * f)
            grey = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
            p = root / "cohn-kanade-images" / subj / seq / f"{subj}_{seq}_{f + 1:08d}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(p), grey)
        last = f"{subj}_{seq}_{frames:08d}"
        code = s % 7 + 1
        e = root / "Emotion" / subj / seq / f"{last}_emotion.txt"
        e.parent.mkdir(parents=True, exist_ok=True)
        e.write_text(f"   {code:.7e}\n")
        facs = {1: 2.0, 12: 3.0, 25: 0.0} if s % 2 else {4: 1.0, 17: 4.0}
        fp = root / "FACS" / subj / seq / f"{last}_facs.txt"
        fp.parent.mkdir(parents=True, exist_ok=True)
        fp.write_text("".join(f"   {a:.7e}   {v:.7e}\n" for a, v in facs.items()))
        written[subj] = {"code": code, "facs": facs}
    return written


# -------------------------------------------------------------------------------------- DISFA

DISFA_AU_NUMBERS = (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26)


def disfa_intensity(subject_index: int, frame: int, au_index: int) -> int:
    """The intensity the test assigns (0..5) to (subject, 1-based frame, AU)."""
    return int((frame // 3 + au_index + 2 * subject_index) % 6)


def write_disfa(root: Path, subjects: tuple[str, ...] = ("SN003", "SN001"), n_frames: int = 24
                ) -> dict:
    """DISFA layout: an MJPEG AVI per subject cut from single_face.mp4, label files per AU."""
    frames = video_frames(n_frames * len(subjects))
    written = {}
    for si, subj in enumerate(subjects):
        sub = frames[si * n_frames:(si + 1) * n_frames]
        if si % 2:
            sub = [f[:, ::-1].copy() for f in sub]
        vp = root / "Videos_LeftCamera" / f"LeftVideo{subj}_comp.avi"
        vp.parent.mkdir(parents=True, exist_ok=True)
        h, w = sub[0].shape[:2]
        vw = cv2.VideoWriter(str(vp), cv2.VideoWriter_fourcc(*"MJPG"), 20, (w, h))
        for f in sub:
            vw.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
        vw.release()
        lab = root / "ActionUnit_Labels" / subj
        lab.mkdir(parents=True, exist_ok=True)
        for ai, au in enumerate(DISFA_AU_NUMBERS):
            (lab / f"{subj}_au{au}.txt").write_text("".join(
                f"{fr},{disfa_intensity(si, fr, ai)}\n" for fr in range(1, n_frames + 1)))
        written[subj] = {"frames": sub}
    return written


# --------------------------------------------------------------------------------------- BP4D

BP4D_AUS = ("AU06", "AU10", "AU12", "AU14", "AU17")


def write_bp4d(root: Path, train: tuple[str, ...] = ("F001", "M001"),
               dev: tuple[str, ...] = ("F002",), n_frames: int = 8, first_frame: int = 2440
               ) -> dict:
    """FERA 2015 layout: BP4D-training/ and BP4D-development/ frames named by frame number and
    AUCoding/AU_INT/AUxx/<subj>_T1_AUxx.csv; frame first_frame+1 is uncoded (9) for AU10."""
    written: dict = {}
    k = 0
    for part, subjects in (("BP4D-training", train), ("BP4D-development", dev)):
        for subj in subjects:
            codes = {}
            for f in range(n_frames):
                photo, _, _ = face_photo(k % 32, 200, scale=1.8 + 0.05 * (f % 3))
                fr = first_frame + f
                _write_jpg(root / part / subj / "T1" / f"{fr}.jpg", photo)
                codes[fr] = [int((f + a + k) % 6) for a in range(5)]
                if f == 1:
                    codes[fr][1] = 9
            for a, au in enumerate(BP4D_AUS):
                p = root / "AUCoding" / "AU_INT" / au / f"{subj}_T1_{au}.csv"
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text("".join(f"{fr},{c[a]}\n" for fr, c in codes.items()))
            written[subj] = codes
            k += 1
    return written


# ------------------------------------------------------------------------------------ CAT2000


def write_cat2000(root: Path, per_category: int = 6, categories: tuple[str, ...] = (
        "Social", "Action", "Affective"), size: tuple[int, int] = (108, 192)) -> dict:
    """CAT2000 trainSet layout: scenes from the group photos and portraits, fixations on faces
    (the test's labels: people look at faces), blurred into the continuous fixation maps."""
    h, w = size
    scenes = [("multi_face.jpg", 0), ("t1.jpg", 0), ("single_face.jpg", 0),
              ("0-f1-su-ph.jpg", 0), ("multi_face.jpg", 1), ("t1.jpg", 1)]
    written = {}
    n = 0
    for cat in categories:
        for j in range(per_category):
            name, flip = scenes[(n + j) % len(scenes)]
            img = _rgb(name)
            ih, iw = img.shape[:2]
            stim = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
            fix = np.zeros((h, w), np.uint8)
            for b in FACE_BOXES[name]:
                cx, cy = (b[0] + b[2]) / 2 * w / iw, (b[1] + b[3]) / 2 * h / ih
                r = max((b[2] - b[0]) * w / iw / 4, 1)
                for dx, dy in ((0, 0), (-r, -r / 2), (r, -r / 2), (0, r)):
                    x, y = int(round(cx + dx)), int(round(cy + dy))
                    if 0 <= x < w and 0 <= y < h:
                        fix[y, x] = 1
            if flip:
                stim, fix = stim[:, ::-1].copy(), fix[:, ::-1].copy()
            fmap = cv2.GaussianBlur(fix.astype(np.float32), (0, 0), sigmaX=w / 40)
            fmap = (fmap / fmap.max() * 255).astype(np.uint8)
            stem = f"{j + 1:03d}"
            _write_jpg(root / "trainSet" / "Stimuli" / cat / f"{stem}.jpg", stim)
            p = root / "trainSet" / "FIXATIONMAPS" / cat / f"{stem}.jpg"
            p.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(p), fmap, [cv2.IMWRITE_JPEG_QUALITY, 100])
            m = root / "trainSet" / "FIXATIONLOCS" / cat / f"{stem}.mat"
            m.parent.mkdir(parents=True, exist_ok=True)
            scipy.io.savemat(str(m), {"fixLocs": fix.astype(np.float64)})
            written[f"{cat}/{stem}"] = {"fixations": fix, "map": fmap}
        n += per_category
    return written
