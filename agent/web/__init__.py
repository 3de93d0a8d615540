"""The local health page, its JSON API, camera frames and Prometheus metrics, served by the agent itself."""
