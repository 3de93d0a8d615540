"""Device: facts about the machine the agent runs on.

Public face: `identity.resolve_device_id` (the id kept in the data dir) and `gpu_probe.open_gpu_probe`
(GPU utilisation and memory from NVML, where there is one).
"""
