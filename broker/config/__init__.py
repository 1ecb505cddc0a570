"""Configuration: the settings model (one declaration per key), where values come from
(TOML, environment, secret files), and the checks that turn them into typed settings."""

from broker.config.checks import Checker
from broker.config.listen import Address, CannotListen
from broker.config.model import (
    CacheSettings,
    ConfigError,
    CorsSettings,
    IpNetwork,
    JwtAuthSettings,
    SessionSettings,
    Settings,
    UpstreamSettings,
    load_settings,
    redacted_values,
    unknown_environment,
)

__all__ = [
    "Address",
    "CacheSettings",
    "CannotListen",
    "Checker",
    "ConfigError",
    "CorsSettings",
    "IpNetwork",
    "JwtAuthSettings",
    "SessionSettings",
    "Settings",
    "UpstreamSettings",
    "load_settings",
    "redacted_values",
    "unknown_environment",
]
