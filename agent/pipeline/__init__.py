"""Pipeline: frames from the capture slots through the engine to results.

Public face: `inference.InferenceWorker` (batches across cameras, hands results to a sink) and
`metrics.PipelineMetrics` (per-camera stage latencies, fps, detections: the one place they are recorded).
"""
