"""kubenetmon: meter data transfer of Kubernetes workloads into ClickHouse.

The public API for plugin authors is re-exported here; everything else is
internal and may change.
"""

# First: the allocators' settings, before numpy and pyarrow load (kubenetmon/_process.py).
from kubenetmon import _process  # noqa: F401
from kubenetmon.component import (
    BaseComponent,
    ComponentConfig,
    ComponentID,
    Consumer,
    CreateSettings,
    ExporterFactory,
    ExtensionFactory,
    Host,
    Kind,
    ProcessorFactory,
    ReceiverFactory,
    Stability,
)
from kubenetmon.errors import BackpressureError, ConfigError, PermanentError, RetryableError
from kubenetmon.flows import ConnectionClass, ConntrackRecord, Direction, Endpoint, Flow, FlowBatch
from kubenetmon.hookspecs import hookimpl
from kubenetmon.identity import Identity

__version__ = "0.1.0"

__all__ = [
    "BackpressureError",
    "BaseComponent",
    "ComponentConfig",
    "ComponentID",
    "ConfigError",
    "ConnectionClass",
    "ConntrackRecord",
    "Consumer",
    "CreateSettings",
    "Direction",
    "Endpoint",
    "ExporterFactory",
    "ExtensionFactory",
    "Flow",
    "FlowBatch",
    "Host",
    "Identity",
    "Kind",
    "PermanentError",
    "ProcessorFactory",
    "ReceiverFactory",
    "RetryableError",
    "Stability",
    "__version__",
    "hookimpl",
]
