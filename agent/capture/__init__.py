"""Capture: one thread per camera, reading its source into a bounded frame slot.

Public face: `camera.Camera` (reconnects with backoff, counts drops), `frames.FrameSlot` and
`frames.Frame` (the hand-off to the pipeline), `sources.parse_source` (what a `source` string means).
"""
