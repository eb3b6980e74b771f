"""``otlp`` receiver: OTLP/gRPC metrics server reading the agent → gateway contract (DESIGN §4.1)."""

from __future__ import annotations

from typing import Any

from kubenetmon.component import ReceiverFactory, Stability
from kubenetmon.hookspecs import hookimpl
from kubenetmon.receivers.otlp.config import OtlpReceiverConfig
from kubenetmon.receivers.otlp.dedup import BatchIdWindow
from kubenetmon.receivers.otlp.receiver import OtlpReceiver

__all__ = ["BatchIdWindow", "OtlpReceiver", "OtlpReceiverConfig", "factory"]

factory: ReceiverFactory[OtlpReceiverConfig] = ReceiverFactory(
    type="otlp",
    config_model=OtlpReceiverConfig,
    description="OTLP/gRPC metrics server for conntrack records sent by agents (or anything speaking the "
    "contract): rejects bad points with partial success, pushes back with RetryInfo, de-duplicates retries.",
    stability=Stability.ALPHA,
    create=OtlpReceiver,
)


@hookimpl
def kubenetmon_register_receivers() -> list[ReceiverFactory[Any]]:
    return [factory]
