"""ONNX Runtime: the backend and the execution providers it is given.

Public face: `backend.OnnxRuntimeBackend`; `providers` plans the CUDA and TensorRT EP options inside
the GPU budget. The `onnxruntime` package itself is imported absolutely, never as this one.
"""
