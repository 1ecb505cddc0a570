"""Configuration: the settings model (one declaration per key), where values come from
(TOML, environment, secret files), and the checks that turn them into typed settings."""
