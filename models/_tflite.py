"""A minimal, dependency-free reader for TensorFlow Lite model files (``.tflite``).

Only what the weight converters need: the operator list of the main subgraph (op name, input and
output tensor indices, a few builtin options) and the tensors (name, shape, dtype, constant data,
with float16 and int8/uint8 affine-quantized constants dequantized to float32).

A ``.tflite`` file is a FlatBuffer whose schema is published in the TensorFlow repository as
``tensorflow/compiler/mlir/lite/schema/schema.fbs``; the field numbers used below come from that
schema (``Model``, ``SubGraph``, ``Tensor``, ``Operator``, ``OperatorCode``, ``Buffer``,
``QuantizationParameters`` and the ``*Options`` tables). FlatBuffer binary layout: see
https://flatbuffers.dev/internals/ .
"""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path
from typing import Any

import numpy as np

# BuiltinOperator enum values (schema.fbs) of the operators our models use.
_OP_NAMES = {
    0: "ADD", 1: "AVERAGE_POOL_2D", 2: "CONCATENATION", 3: "CONV_2D", 4: "DEPTHWISE_CONV_2D",
    6: "DEQUANTIZE", 9: "FULLY_CONNECTED", 14: "LOGISTIC", 17: "MAX_POOL_2D", 18: "MUL",
    19: "RELU", 21: "RELU6", 22: "RESHAPE", 23: "RESIZE_BILINEAR", 25: "SOFTMAX", 34: "PAD",
    40: "MEAN", 54: "PRELU", 114: "QUANTIZE",
}

# TensorType enum values -> numpy dtypes.
_DTYPES = {
    0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 6: np.bool_,
    7: np.int16, 9: np.int8, 10: np.float64,
}

_PADDING = {0: "SAME", 1: "VALID"}
_ACTIVATION = {0: None, 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH"}


class _Table:
    """A FlatBuffer table at absolute position ``pos`` of ``buf``."""

    __slots__ = ("buf", "pos", "_vt", "_vt_len")

    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf = buf
        self.pos = pos
        self._vt = pos - struct.unpack_from("<i", buf, pos)[0]
        self._vt_len = struct.unpack_from("<H", buf, self._vt)[0]

    def _field(self, i: int) -> int:
        """Absolute position of field ``i``, or 0 when absent."""
        o = 4 + 2 * i
        if o >= self._vt_len:
            return 0
        off = struct.unpack_from("<H", self.buf, self._vt + o)[0]
        return self.pos + off if off else 0

    def scalar(self, i: int, fmt: str, default: Any = 0) -> Any:
        p = self._field(i)
        return struct.unpack_from("<" + fmt, self.buf, p)[0] if p else default

    def _target(self, i: int) -> int:
        p = self._field(i)
        return p + struct.unpack_from("<I", self.buf, p)[0] if p else 0

    def table(self, i: int) -> _Table | None:
        t = self._target(i)
        return _Table(self.buf, t) if t else None

    def string(self, i: int) -> str:
        t = self._target(i)
        if not t:
            return ""
        n = struct.unpack_from("<I", self.buf, t)[0]
        return self.buf[t + 4:t + 4 + n].decode("utf-8", "replace")

    def vector(self, i: int, dtype: Any) -> np.ndarray:
        t = self._target(i)
        if not t:
            return np.zeros(0, dtype)
        n = struct.unpack_from("<I", self.buf, t)[0]
        return np.frombuffer(self.buf, dtype=np.dtype(dtype).newbyteorder("<"), count=n,
                             offset=t + 4)

    def tables(self, i: int) -> list[_Table]:
        t = self._target(i)
        if not t:
            return []
        n = struct.unpack_from("<I", self.buf, t)[0]
        out = []
        for k in range(n):
            e = t + 4 + 4 * k
            out.append(_Table(self.buf, e + struct.unpack_from("<I", self.buf, e)[0]))
        return out


@dataclasses.dataclass
class TfliteTensor:
    """One tensor of the graph.

    Attributes:
        index: tensor index in the subgraph.
        name: tensor name.
        shape: static shape (TFLite layout, e.g. NHWC activations, OHWI conv kernels).
        dtype: numpy dtype of the stored data.
        data: constant contents as stored (``None`` for activations).
        scale, zero_point: affine quantization parameters (empty when not quantized).
        quantized_dimension: axis of per-channel quantization.
        sparse: whether the tensor carries sparsity parameters (unsupported for constants).
    """

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: Any
    data: np.ndarray | None
    scale: np.ndarray
    zero_point: np.ndarray
    quantized_dimension: int
    sparse: bool

    def value(self) -> np.ndarray:
        """The constant as float32 (float16 upcast, int8/uint8 dequantized per channel).

        Raises:
            ValueError: not a constant, or a sparse constant (not supported).
        """
        if self.data is None:
            raise ValueError(f"tensor {self.name!r} has no constant data")
        if self.sparse:
            raise ValueError(f"tensor {self.name!r} is sparse; sparse constants are not supported")
        arr = self.data.reshape(self.shape)
        if self.dtype in (np.int8, np.uint8, np.int16) and self.scale.size:
            shp = [1] * arr.ndim
            if self.scale.size > 1:
                shp[self.quantized_dimension] = -1
            s = self.scale.reshape(shp).astype(np.float32)
            z = self.zero_point.reshape(shp).astype(np.float32)
            return ((arr.astype(np.float32) - z) * s).astype(np.float32)
        return arr.astype(np.float32)


@dataclasses.dataclass
class TfliteOp:
    """One operator: ``name`` (e.g. ``CONV_2D``), tensor indices, and decoded ``options``."""

    index: int
    name: str
    inputs: list[int]
    outputs: list[int]
    options: dict[str, Any]


@dataclasses.dataclass
class TfliteGraph:
    """The main subgraph of a ``.tflite`` file."""

    tensors: list[TfliteTensor]
    ops: list[TfliteOp]
    inputs: list[int]
    outputs: list[int]

    def producer(self) -> dict[int, TfliteOp]:
        """Tensor index -> the op writing it."""
        return {o: op for op in self.ops for o in op.outputs}

    def const(self, idx: int) -> np.ndarray:
        """float32 value of constant tensor ``idx``, following a DEQUANTIZE op if present."""
        t = self.tensors[idx]
        if t.data is not None:
            return t.value()
        op = self.producer().get(idx)
        if op is not None and op.name == "DEQUANTIZE":
            return self.tensors[op.inputs[0]].value()
        raise ValueError(f"tensor {t.name!r} ({idx}) is not a constant")

    def compute_ops(self) -> list[TfliteOp]:
        """Operators in execution order, without DEQUANTIZE ops of constants."""
        return [op for op in self.ops if op.name != "DEQUANTIZE"
                or self.tensors[op.inputs[0]].data is None]


def _options(name: str, t: _Table | None) -> dict[str, Any]:
    if t is None:
        return {}
    if name == "CONV_2D":
        return {"padding": _PADDING[t.scalar(0, "b")], "stride": (t.scalar(2, "i", 1),
                t.scalar(1, "i", 1)), "activation": _ACTIVATION.get(t.scalar(3, "b")),
                "dilation": (t.scalar(5, "i", 1), t.scalar(4, "i", 1))}
    if name == "DEPTHWISE_CONV_2D":
        return {"padding": _PADDING[t.scalar(0, "b")], "stride": (t.scalar(2, "i", 1),
                t.scalar(1, "i", 1)), "depth_multiplier": t.scalar(3, "i", 1),
                "activation": _ACTIVATION.get(t.scalar(4, "b")),
                "dilation": (t.scalar(6, "i", 1), t.scalar(5, "i", 1))}
    if name in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
        return {"padding": _PADDING[t.scalar(0, "b")], "stride": (t.scalar(2, "i", 1),
                t.scalar(1, "i", 1)), "kernel": (t.scalar(4, "i", 1), t.scalar(3, "i", 1)),
                "activation": _ACTIVATION.get(t.scalar(5, "b"))}
    if name in ("ADD", "MUL"):
        return {"activation": _ACTIVATION.get(t.scalar(0, "b"))}
    if name == "CONCATENATION":
        return {"axis": t.scalar(0, "i"), "activation": _ACTIVATION.get(t.scalar(1, "b"))}
    if name == "RESIZE_BILINEAR":
        return {"align_corners": bool(t.scalar(2, "b")),
                "half_pixel_centers": bool(t.scalar(3, "b"))}
    return {}


def read_tflite(path: str | Path) -> TfliteGraph:
    """Parse the first subgraph of a ``.tflite`` file.

    Args:
        path: the model file.

    Returns:
        The graph: tensors (with constant data) and operators in execution order.

    Raises:
        ValueError: not a TFLite FlatBuffer (missing ``TFL3`` identifier) or unsupported layout
            (weights stored outside the FlatBuffer via buffer offsets are supported; none else).
    """
    buf = Path(path).read_bytes()
    if buf[4:8] != b"TFL3":
        raise ValueError(f"{path}: not a TFLite model (file identifier {buf[4:8]!r})")
    model = _Table(buf, struct.unpack_from("<I", buf, 0)[0])
    codes = []
    for oc in model.tables(1):
        code = max(oc.scalar(0, "b"), oc.scalar(3, "i"))
        codes.append(_OP_NAMES.get(code, oc.string(1) or f"OP_{code}"))
    buffers = []
    for b in model.tables(4):
        data = b.vector(0, np.uint8)
        off, size = b.scalar(1, "Q"), b.scalar(2, "Q")
        if data.size == 0 and off > 1 and size:
            data = np.frombuffer(buf, np.uint8, count=size, offset=off)
        buffers.append(data)
    sg = model.tables(2)[0]
    tensors = []
    for i, t in enumerate(sg.tables(0)):
        dtype = _DTYPES.get(t.scalar(1, "b"), np.uint8)
        raw = buffers[t.scalar(2, "I")] if t.scalar(2, "I") < len(buffers) else None
        data = raw.view(np.dtype(dtype).newbyteorder("<")) if raw is not None and raw.size else None
        q = t.table(4)
        scale = q.vector(2, np.float32) if q else np.zeros(0, np.float32)
        zp = q.vector(3, np.int64) if q else np.zeros(0, np.int64)
        qdim = q.scalar(6, "i") if q else 0
        tensors.append(TfliteTensor(i, t.string(3), tuple(int(s) for s in t.vector(0, np.int32)),
                                    dtype, data, scale, zp, qdim, t.table(6) is not None))
    ops = []
    for i, o in enumerate(sg.tables(3)):
        name = codes[o.scalar(0, "I")]
        ops.append(TfliteOp(i, name, [int(x) for x in o.vector(1, np.int32)],
                            [int(x) for x in o.vector(2, np.int32)], _options(name, o.table(4))))
    return TfliteGraph(tensors, ops, [int(x) for x in sg.vector(1, np.int32)],
                       [int(x) for x in sg.vector(2, np.int32)])
