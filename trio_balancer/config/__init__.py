"""The configuration: a frozen schema and the TOML parser that fills it, strictly.

``schema`` holds the classes (each key and default written once; a provider's capabilities
and their presets in ``capabilities``), ``spec`` the vocabulary
their field metadata uses, ``parse`` the reader derived from both. May import the base
modules and protocol (price rates; the feature, document and schema-dialect names the
capabilities speak of); nothing that does I/O at run time.
"""

from trio_balancer.config.capabilities import Capabilities
from trio_balancer.config.parse import ConfigError, load_config, parse_config
from trio_balancer.config.schema import (
    DEFAULT_MODELS,
    PASSTHROUGH,
    AlertsConfig,
    ClientKey,
    ClusterConfig,
    Config,
    DedupConfig,
    HealthPolicy,
    LedgerConfig,
    PriceRow,
    ProviderConfig,
    Route,
    RoutingConfig,
    ServerConfig,
    Target,
    Timeouts,
    TokenBudget,
    UsdBudget,
    When,
    default_config,
)

__all__ = [
    "DEFAULT_MODELS",
    "PASSTHROUGH",
    "AlertsConfig",
    "Capabilities",
    "ClientKey",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "DedupConfig",
    "HealthPolicy",
    "LedgerConfig",
    "PriceRow",
    "ProviderConfig",
    "Route",
    "RoutingConfig",
    "ServerConfig",
    "Target",
    "Timeouts",
    "TokenBudget",
    "UsdBudget",
    "When",
    "default_config",
    "load_config",
    "parse_config",
]
