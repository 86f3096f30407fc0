"""The admin HTTP server: health, readiness, metrics, the JSON API."""
