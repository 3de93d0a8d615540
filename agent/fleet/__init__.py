"""Fleet: the operator-side client that lists devices, reads telemetry, sends commands and config.

Public face: `fleet.FleetClient`.
"""
