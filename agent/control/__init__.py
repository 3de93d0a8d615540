"""Control: commands and desired config from the fleet, checked, applied, answered.

Public face: `command_channel.CommandChannel` (the MQTT side), `commands.Commands` (the command
catalogue), `config_service.ConfigService` (validate, apply, persist, report).
"""
