"""Native TensorRT: engines built on the device, cached, run inside the GPU budget.

The hardware calls sit behind two thin seams: the `tensorrt` module (passed in,
so tests use a fake) and `CudaRuntime` (cuda-python). Everything else here —
version gating, cache keys, budget accounting, the shared activation arena, I/O
binding — is plain logic tested without a GPU.
"""
