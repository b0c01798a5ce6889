"""Face geometry for training, found by the pipeline's own operators (identical crops in serving).

The serving face-track stage (:mod:`operators.facetrack`) finds a face with
:class:`operators.detection.FaceDetector` (BlazeFace), refines it with
:class:`operators.landmarks.FaceMeshLandmarker` (468 points, ROI rotated by the detector's eye
keypoints), reduces the mesh with :func:`operators.landmarks.five_point`, and cuts the model crop
with :func:`operators.crops.five_point_affines` (card alignment ``5pt``) or
:func:`operators.crops.bbox_affines` (``bbox``). :class:`PipelineFaceFinder` runs exactly these
steps on a dataset image, so a training crop (:mod:`training.augment`) is cut from the same box /
points with the same warp as at serving time.

Results are cached per dataset (:class:`GeometryCache`, an ``.npz`` under the cache dir), so the
detector and FaceMesh run once per image, not once per epoch.

AU points for heatmap regression (DSR-FAU) come from the mesh too: :data:`AU_POINTS_MESH` gives
two points per AU (image-left first for bilateral AUs; :data:`MIDLINE_AUS` have two points on the
face's midline). The table is our own, placed on each AU's visible effect (FACS manual, Ekman,
Friesen & Hager 2002) and checked visually on a real face; it plays the role of the 68-point
table of :data:`models.dsr_fau.AU_POINT_RULES`, which FaceMesh does not provide.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from affectstream.training.datasets.base import FaceDataset, Sample

log = logging.getLogger(__name__)

AU_POINTS_MESH: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "AU01": ((107, 55), (336, 285)),       # inner brow raiser: inner brow ends
    "AU02": ((70, 63, 46), (300, 293, 276)),  # outer brow raiser: outer brow ends
    "AU04": ((105, 52), (334, 282)),       # brow lowerer: brow centres
    "AU05": ((159,), (386,)),              # upper lid raiser: upper lids
    "AU06": ((118, 50), (347, 280)),       # cheek raiser: cheeks below the eyes
    "AU09": ((49,), (279,)),               # nose wrinkler: upper sides of the nose
    "AU10": ((98, 0), (327, 0)),           # upper lip raiser: between alae and upper lip
    "AU12": ((61,), (291,)),               # lip corner puller: mouth corners
    "AU14": ((57,), (287,)),               # dimpler: just lateral of the corners
    "AU15": ((61, 150), (291, 379)),       # lip corner depressor: below the corners
    "AU17": ((208,), (428,)),              # chin raiser: chin boss
    "AU20": ((61, 172), (291, 397)),       # lip stretcher: lateral-below the corners
    "AU25": ((13,), (14,)),                # lips part: inner lip midpoints (midline)
    "AU26": ((17,), (152,)),               # jaw drop: lower lip and chin (midline)
}
"""Two FaceMesh-468 point groups per AU; each point is the mean of its indices."""

MIDLINE_AUS: frozenset[str] = frozenset({"AU25", "AU26"})
"""AUs whose two points lie on the midline (a horizontal flip keeps their order)."""

ALL_AUS: tuple[str, ...] = tuple(AU_POINTS_MESH)


def au_points_from_mesh(mesh: np.ndarray, au_names: Iterable[str] = ALL_AUS) -> np.ndarray:
    """AU points from FaceMesh landmarks.

    Args:
        mesh: (468, 2) or (N, 468, 2) landmarks (pixels).
        au_names: AUs in output order (keys of :data:`AU_POINTS_MESH`).

    Returns:
        (A, 2, 2) or (N, A, 2, 2) float32 points (x, y), same units as ``mesh``.

    Raises:
        KeyError: an AU without a rule (the message lists the known ones).
    """
    m = np.asarray(mesh, np.float32)
    single = m.ndim == 2
    if single:
        m = m[None]
    if m.ndim != 3 or m.shape[1] != 468:
        raise ValueError(f"mesh must be (N, 468, 2), got {m.shape}")
    out = []
    for a in au_names:
        if a not in AU_POINTS_MESH:
            raise KeyError(f"no AU point rule for {a!r}; known: {', '.join(AU_POINTS_MESH)}")
        out.append(np.stack([m[:, list(ix), :2].mean(1) for ix in AU_POINTS_MESH[a]], 1))
    pts = np.stack(out, 1).astype(np.float32)
    return pts[0] if single else pts


@dataclasses.dataclass(frozen=True)
class FaceGeometry:
    """Where the face of one image is, as the serving pipeline sees it.

    Attributes:
        bbox_xyxy: (4,) float32 BlazeFace box, pixels.
        five: (5, 2) float32 five points (:func:`operators.landmarks.five_point` order).
        au_points: (len(ALL_AUS), 2, 2) float32 AU points (:data:`ALL_AUS` order), pixels.
        det_score: detector score in [0, 1].
    """

    bbox_xyxy: np.ndarray
    five: np.ndarray
    au_points: np.ndarray
    det_score: float

    def pack(self) -> np.ndarray:
        """Flat float32 vector (for the cache)."""
        return np.concatenate([self.bbox_xyxy.ravel(), self.five.ravel(),
                               self.au_points.ravel(), [self.det_score]]).astype(np.float32)

    @staticmethod
    def unpack(v: np.ndarray) -> FaceGeometry:
        """Inverse of :meth:`pack`."""
        a = len(ALL_AUS)
        return FaceGeometry(v[:4].copy(), v[4:14].reshape(5, 2).copy(),
                            v[14:14 + a * 4].reshape(a, 2, 2).copy(), float(v[14 + a * 4]))

    @staticmethod
    def packed_size() -> int:
        """Length of :meth:`pack`'s vector."""
        return 4 + 10 + len(ALL_AUS) * 4 + 1


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x1, y1 = np.maximum(a[0], b[:, 0]), np.maximum(a[1], b[:, 1])
    x2, y2 = np.minimum(a[2], b[:, 2]), np.minimum(a[3], b[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda r: (r[..., 2] - r[..., 0]) * (r[..., 3] - r[..., 1])  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-9)


class PipelineFaceFinder:
    """The serving face-track steps (detect -> FaceMesh -> five points) on single images.

    Args:
        detector_model: BlazeFace ``"short"`` or ``"full"`` (as ``detect.model`` in the pipeline
            config; ``"short"`` is its default).
        score_thresh: detector threshold (pipeline default 0.5).
        min_presence: FaceMesh presence below this means "no face" (pipeline default 0.5).
        device: torch device.

    Raises:
        ImportError: the pipeline operators are not available.
    """

    def __init__(self, detector_model: str = "short", score_thresh: float = 0.5,
                 min_presence: float = 0.5, device: str = "cpu") -> None:
        from affectstream.operators.detection import FaceDetector
        from affectstream.operators.landmarks import FaceMeshLandmarker

        self.detector = FaceDetector(detector_model, score_thresh,  # type: ignore[arg-type]
                                     device=device)
        self.landmarker = FaceMeshLandmarker(device=device)
        self.min_presence = min_presence
        self.key = f"blazeface-{detector_model}-{score_thresh}-facemesh-{min_presence}"

    def find(self, image: np.ndarray, hint_bbox: np.ndarray | None = None) -> FaceGeometry | None:
        """The face of ``image``: the detection overlapping ``hint_bbox`` most, else the largest.

        Args:
            image: (H, W, 3) uint8 RGB.
            hint_bbox: optional (4,) box from the dataset's annotation (e.g. AffectNet's); with
                it, only a detection overlapping it (IoU > 0.1) counts.

        Returns:
            Its :class:`FaceGeometry`, or ``None`` when no (matching) face is found.
        """
        from affectstream.operators.landmarks import five_point

        det = self.detector.detect([image])[0]
        if len(det) == 0:
            return None
        if hint_bbox is not None:
            ious = _iou(np.asarray(hint_bbox, np.float32), det.bbox_xyxy)
            if ious.max() <= 0.1:
                return None  # the annotated face was not found; never label another face
            i = int(np.argmax(ious))
        else:
            wh = det.bbox_xyxy[:, 2:] - det.bbox_xyxy[:, :2]
            i = int(np.argmax(wh[:, 0] * wh[:, 1]))
        lm = self.landmarker([image], [det.bbox_xyxy[i:i + 1]], [det.keypoints[i:i + 1]])[0]
        if lm.presence[0] < self.min_presence:
            return None
        mesh = lm.landmarks[0]
        return FaceGeometry(det.bbox_xyxy[i].astype(np.float32), five_point(mesh),
                            au_points_from_mesh(mesh), float(det.det_score[i]))


class GeometryCache:
    """Per-dataset cache of :class:`FaceGeometry` rows keyed by sample id (``.npz``).

    Missing faces are stored as NaN rows, so a failed image is not retried every run.

    Args:
        path: the ``.npz`` file (created on :meth:`save`).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.rows: dict[str, np.ndarray] = {}
        if self.path.is_file():
            with np.load(self.path, allow_pickle=False) as z:
                ids, data = z["ids"], z["data"]
            if data.ndim == 2 and data.shape[1] == FaceGeometry.packed_size():
                self.rows = {str(k): v for k, v in zip(ids, data)}

    def get(self, sample_id: str) -> FaceGeometry | None | bool:
        """Cached geometry, ``None`` for a cached "no face", ``False`` when not cached."""
        v = self.rows.get(sample_id)
        if v is None:
            return False
        return None if np.isnan(v).all() else FaceGeometry.unpack(v)

    def put(self, sample_id: str, geom: FaceGeometry | None) -> None:
        """Store a result (``None``: no face)."""
        self.rows[sample_id] = (geom.pack() if geom is not None
                                else np.full(FaceGeometry.packed_size(), np.nan, np.float32))

    def save(self) -> None:
        """Write atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        ids = np.array(list(self.rows), dtype=str)
        data = (np.stack(list(self.rows.values())) if self.rows
                else np.zeros((0, FaceGeometry.packed_size()), np.float32))
        tmp = self.path.with_name(self.path.name + ".part.npz")
        np.savez(tmp, ids=ids, data=data)
        os.replace(tmp, self.path)


def cache_path_for(dataset: FaceDataset, finder_key: str, cache_dir: str | Path | None = None
                   ) -> Path:
    """Cache file of a dataset: keyed by reader class, root, image variant and finder.

    The folder is ``cache_dir``, else ``$AFFECTSTREAM_GEOMETRY_CACHE``, else the artifact cache's
    ``geometry/`` (see :func:`models.weights.cache_dir`).
    """
    if cache_dir is None:
        env = os.environ.get("AFFECTSTREAM_GEOMETRY_CACHE")
        if env:
            cache_dir = Path(env)
        else:
            from affectstream.models.weights import cache_dir as _cd

            cache_dir = _cd() / "geometry"
    root = str(Path(getattr(dataset, "root", "")).resolve())
    variant = f"{type(dataset).__name__}|{root}|{getattr(dataset, 'image', '')}|{finder_key}"
    digest = hashlib.sha1(variant.encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{type(dataset).__name__.lower()}-{digest}.npz"


class WithGeometry(FaceDataset):
    """A reader whose samples carry the pipeline's face geometry.

    Adds ``bbox_xyxy`` (BlazeFace box), ``landmarks`` ((5, 2) FaceMesh five points) and
    ``au_points`` ((A, 2, 2) for ``au_names``) to every raw sample, computed once by
    :class:`PipelineFaceFinder` and cached. A dataset box (``bbox_xyxy`` in the raw sample, e.g.
    AffectNet's) is used as the hint to pick the right face. Samples where no face is found are
    dropped (``dropped`` counts them) unless ``fallback="dataset"``, which keeps the dataset's own
    box/landmarks when it has them.

    Args:
        base: the reader.
        finder: a :class:`PipelineFaceFinder` (or anything with ``find`` and ``key``).
        au_names: AUs of ``au_points``.
        cache_dir: where the cache lives (default: the artifact cache's ``geometry/``).
        fallback: ``"drop"`` or ``"dataset"``.
        progress: called as ``progress(done, total)`` while computing.
    """

    def __init__(self, base: FaceDataset, finder: PipelineFaceFinder,
                 au_names: tuple[str, ...] = (), cache_dir: str | Path | None = None,
                 fallback: str = "drop",
                 progress: Callable[[int, int], None] | None = None) -> None:
        super().__init__()
        self.base = base
        self.label_names = base.label_names
        self.au_idx = [ALL_AUS.index(a) for a in au_names]
        cache = GeometryCache(cache_path_for(base, finder.key, cache_dir))
        self.geometry: list[FaceGeometry | None] = []
        keep: list[int] = []
        base_tf, base.transform = base.transform, None
        dirty = 0
        try:
            for i in range(len(base)):
                rec_id = base.sample_id(i)
                g = cache.get(rec_id)
                if g is False:
                    s = base.load(i)
                    g = finder.find(s["image"], s.get("bbox_xyxy"))
                    cache.put(rec_id, g)
                    dirty += 1
                    if dirty % 500 == 0:
                        cache.save()
                if g is None and fallback != "dataset":
                    continue
                keep.append(i)
                self.geometry.append(g)
                if progress is not None:
                    progress(i + 1, len(base))
        finally:
            base.transform = base_tf
            if dirty:
                cache.save()
        self.dropped = len(base) - len(keep)
        if self.dropped:
            log.warning("%s: no face found by the pipeline detector in %d of %d images (dropped)",
                        type(base).__name__, self.dropped, len(base))
        self.records = keep

    def sample_id(self, index: int) -> str:
        return self.base.sample_id(self.records[index])

    def subset(self, indices) -> None:
        self.records = [self.records[i] for i in indices]
        self.geometry = [self.geometry[i] for i in indices]

    def labels(self) -> np.ndarray:
        return self.base.labels()[np.asarray(self.records, np.int64)]

    def load(self, index: int) -> Sample:
        s = self.base.load(self.records[index])
        g = self.geometry[index]
        if g is not None:
            s["bbox_xyxy"] = g.bbox_xyxy.copy()
            s["landmarks"] = g.five.copy()
            if self.au_idx:
                s["au_points"] = g.au_points[self.au_idx].copy()
        return s
