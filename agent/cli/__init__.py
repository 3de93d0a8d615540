"""The `edge-agent` command line: `main.main` builds the parser from each command group.

Command groups live in `*_commands.py`; the larger tools they run (bench, selftest, quantization,
calibration, the console status printer) are modules of their own here.
"""
