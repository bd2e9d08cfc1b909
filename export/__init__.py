"""Export InternVL2 to ONNX / TensorRT engines (``python export/build_engines.py``)."""
