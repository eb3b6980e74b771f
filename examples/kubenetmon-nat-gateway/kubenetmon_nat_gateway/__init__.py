"""Example plugin: a processor that sets ``connectionFlags['NAT_GATEWAY']``.

Flows whose remote address lies in one of ``remote_cidrs`` and whose
connection class is public (the traffic a NAT gateway bills for) get
``NAT_GATEWAY = true``; the other flows get ``NAT_GATEWAY = false`` so that
queries can tell "checked, not NATed" from "not checked".

The whole plugin is this module plus the entry point in ``pyproject.toml``.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from pydantic import Field, field_validator

from kubenetmon import (
    BaseComponent,
    ComponentConfig,
    Consumer,
    CreateSettings,
    FlowBatch,
    ProcessorFactory,
    Stability,
    hookimpl,
)

FLAG = "NAT_GATEWAY"


class NatGatewayConfig(ComponentConfig):
    remote_cidrs: list[str] = Field(
        default_factory=lambda: ["0.0.0.0/0", "::/0"],
        description="Remote networks reached through the NAT gateway.",
    )
    classes: list[str] = Field(
        default_factory=lambda: ["PUBLIC_INTERNET", "INTER_REGION"],
        description="Connection classes that go through the NAT gateway.",
    )

    @field_validator("remote_cidrs")
    @classmethod
    def _valid_cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            ipaddress.ip_network(cidr, strict=False)  # raises ValueError with the bad text
        return value


class NatGatewayProcessor(BaseComponent):
    """Sets the NAT_GATEWAY flag on every attributed flow, then passes the batch on."""

    def __init__(self, settings: CreateSettings, config: NatGatewayConfig, next_consumer: Consumer) -> None:
        self._next = next_consumer
        self._networks = [ipaddress.ip_network(c, strict=False) for c in config.remote_cidrs]
        self._classes = frozenset(config.classes)
        self._flagged = settings.metrics.counter("nat_gateway_flagged_flows_total", "Flows flagged NAT_GATEWAY.")

    def _through_nat(self, address: str, connection_class: str) -> bool:
        if connection_class not in self._classes or not address:
            return False
        ip = ipaddress.ip_address(address)
        return any(ip in net for net in self._networks)

    def consume(self, batch: FlowBatch) -> None:
        flagged = 0
        for flow in batch.flows:
            value = self._through_nat(flow.remote.address, flow.connection_class)
            flow.connection_flags[FLAG] = value
            flagged += value
        self._flagged.inc(flagged)
        self._next.consume(batch)


factory: ProcessorFactory[NatGatewayConfig] = ProcessorFactory(
    type="nat_gateway",
    config_model=NatGatewayConfig,
    description="Example plugin: flags flows leaving through a NAT gateway (connectionFlags NAT_GATEWAY).",
    stability=Stability.DEVELOPMENT,
    create=NatGatewayProcessor,
)


@hookimpl
def kubenetmon_register_processors() -> list[ProcessorFactory[Any]]:
    return [factory]
