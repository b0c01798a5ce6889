"""The stream runtime: one session runner for every placement (file/RTSP/webcam streams in
``run``, Kafka sessions in ``serve``, in-process for tests and the Python API)."""
