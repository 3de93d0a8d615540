"""Graph work on ONNX models before they are loaded, and INT8 quantization with its accuracy gate.

Public face: `dfl_rewrite.rewrite_dfl` (applied at load), `quantize.quantize_model` (INT8 from frames,
head and stem kept float), `accuracy_gate` (refuse an INT8 model that lost accuracy). `onnx_graph`
holds the graph lookups they share.
"""
