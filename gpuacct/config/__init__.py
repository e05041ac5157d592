"""The one YAML config file: a validated section per service, one module per section.

`load_settings()` reads `--config FILE`, else `$GPUACCT_CONFIG`, else runs on defaults. Any
problem raises `ConfigError`, whose message has one line per problem naming the key path, the
bad value and what was expected, so a service can print it and exit before doing anything.
"""

from gpuacct.config.auth import AuthSettings
from gpuacct.config.base import (
    AccountName,
    ConfigError,
    ListenAddress,
    ModelPattern,
    Money,
    Port,
    Price,
    Section,
    StoreTarget,
    describe_error,
    split_listen_address,
)
from gpuacct.config.billing import (
    UNASSIGNED_ACCOUNT,
    AccountSettings,
    BillingSettings,
    GpuPrice,
    JobSettings,
    PriceVersion,
    ThresholdOverride,
    Thresholds,
    UsageLimits,
)
from gpuacct.config.client import ClientSettings, TlsClientSettings
from gpuacct.config.devices import VENDORS, AmdSmiSettings, DcmiSettings, NvmlSettings, Vendor
from gpuacct.config.enforcer import (
    AllocationLimits,
    AllocatorSettings,
    EnforcerSettings,
    PrioritySettings,
)
from gpuacct.config.exporter import (
    ActuatorSettings,
    ContainerSettings,
    ExporterSettings,
    IdleSettings,
    UnattributedSettings,
)
from gpuacct.config.influxdb import InfluxSettings, InfluxV1Settings, InfluxV2Settings
from gpuacct.config.loading import CONFIG_ENV, Settings, load_settings, settings_from_mapping
from gpuacct.config.notifications import NoticeChannel, NotificationSettings
from gpuacct.config.stack import StackSettings
from gpuacct.config.web import (
    LdapSettings,
    PamSettings,
    WebAdministrator,
    WebAuthSettings,
    WebSettings,
)

__all__ = [
    "CONFIG_ENV",
    "UNASSIGNED_ACCOUNT",
    "VENDORS",
    "AccountName",
    "AccountSettings",
    "ActuatorSettings",
    "AllocationLimits",
    "AllocatorSettings",
    "AmdSmiSettings",
    "AuthSettings",
    "BillingSettings",
    "ClientSettings",
    "ConfigError",
    "ContainerSettings",
    "DcmiSettings",
    "EnforcerSettings",
    "ExporterSettings",
    "GpuPrice",
    "IdleSettings",
    "InfluxSettings",
    "InfluxV1Settings",
    "InfluxV2Settings",
    "JobSettings",
    "LdapSettings",
    "ListenAddress",
    "ModelPattern",
    "Money",
    "NoticeChannel",
    "NotificationSettings",
    "NvmlSettings",
    "PamSettings",
    "Port",
    "Price",
    "PriceVersion",
    "PrioritySettings",
    "Section",
    "Settings",
    "StackSettings",
    "StoreTarget",
    "ThresholdOverride",
    "Thresholds",
    "TlsClientSettings",
    "UnattributedSettings",
    "UsageLimits",
    "Vendor",
    "WebAdministrator",
    "WebAuthSettings",
    "WebSettings",
    "describe_error",
    "load_settings",
    "settings_from_mapping",
    "split_listen_address",
]
