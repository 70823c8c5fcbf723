"""Inference runtime: preprocessing, backends (ONNX Runtime, TensorRT, PyTorch), the infer node.

Nothing here imports ``edgefuse.model`` or torch at import time, so an edge device runs it
without PyTorch.
"""
