"""The dependency-free .tflite reader agrees with the reference runtime on every constant."""

from __future__ import annotations

import numpy as np
import pytest

from affectstream.models._tflite import read_tflite

litert = pytest.importorskip("ai_edge_litert.interpreter")


@pytest.mark.parametrize("name", ["face_detection_short_range.tflite",
                                  "face_detection_full_range.tflite", "face_landmark.tflite",
                                  "emotion_model_quantized.tflite"])
def test_constants_and_ops_match_interpreter(name, media):
    path = str(media(name))
    graph = read_tflite(path)
    it = litert.Interpreter(model_path=path)
    it.allocate_tensors()
    details = it.get_tensor_details()
    assert len(details) >= len(graph.tensors)  # the runtime may append its own tensors
    n_const = 0
    for t in graph.tensors:
        d = details[t.index]
        assert d["name"] == t.name and tuple(d["shape"]) == t.shape
        if t.data is None:
            continue
        ref = it.get_tensor(t.index)
        assert ref.dtype == t.dtype
        np.testing.assert_array_equal(ref, t.data.reshape(t.shape))
        np.testing.assert_allclose(d["quantization_parameters"]["scales"], t.scale)
        n_const += 1
    assert n_const > 40
    ops = [o["op_name"] for o in it._get_ops_details()][:len(graph.ops)]
    assert ops == [op.name for op in graph.ops]
    assert [graph.tensors[i].name for i in graph.outputs] == [
        d["name"] for d in it.get_output_details()]


def test_fp16_and_int8_constants_dequantize(media):
    full = read_tflite(media("face_detection_full_range.tflite"))
    assert any(t.dtype == np.float16 for t in full.tensors if t.data is not None)
    conv = next(op for op in full.ops if op.name == "CONV_2D")
    w = full.const(conv.inputs[1])  # follows the DEQUANTIZE op to the fp16 constant
    assert w.dtype == np.float32 and w.shape == (32, 3, 3, 3) and np.abs(w).max() > 0
    q = read_tflite(media("emotion_model_quantized.tflite"))
    t8 = next(t for t in q.tensors if t.data is not None and t.dtype == np.int8)
    v = t8.value()
    assert v.dtype == np.float32 and np.abs(v).max() > 0


def test_rejects_non_tflite(tmp_path):
    p = tmp_path / "x.tflite"
    p.write_bytes(b"\0" * 64)
    with pytest.raises(ValueError, match="not a TFLite model"):
        read_tflite(p)
