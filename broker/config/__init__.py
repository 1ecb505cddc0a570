"""Configuration: the settings model (one declaration per key), where values come from
(TOML, environment, secret files), and the checks that turn them into typed settings."""

from broker.config.checks import Checker, key_algorithms
from broker.config.listen import Address, CannotListen
from broker.config.model import (
    DEFAULT_PARTNER,
    CacheSettings,
    ConfigError,
    CorsSettings,
    Credential,
    IpNetwork,
    JwtAuthSettings,
    PartnerSettings,
    SessionSettings,
    Settings,
    UpstreamSettings,
    load_settings,
    redacted_values,
    unknown_environment,
)

__all__ = [
    "DEFAULT_PARTNER",
    "Address",
    "CacheSettings",
    "CannotListen",
    "Checker",
    "ConfigError",
    "CorsSettings",
    "Credential",
    "IpNetwork",
    "JwtAuthSettings",
    "PartnerSettings",
    "SessionSettings",
    "Settings",
    "UpstreamSettings",
    "key_algorithms",
    "load_settings",
    "redacted_values",
    "unknown_environment",
]
