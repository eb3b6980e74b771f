"""Rules of the connection_flags processor: matching, precedence, unmatched flows, validation, lifecycle."""

from __future__ import annotations

import fnmatch
import ipaddress
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from kubenetmon.component import Kind
from kubenetmon.flows import Endpoint, Flow, FlowBatch, flows_from_columns
from kubenetmon.processors.connection_flags import ConnectionFlagsConfig, ConnectionFlagsProcessor, factory
from kubenetmon.processors.connection_flags.config import parse_port_range
from kubenetmon.testing import SinkConsumer, check_lifecycle, create_component, create_settings


def _processor(rules: list[dict[str, Any]], **extra: Any) -> tuple[ConnectionFlagsProcessor, SinkConsumer]:
    sink = SinkConsumer()
    config = ConnectionFlagsConfig.model_validate({"rules": rules, **extra})
    proc = create_component(factory, config, consumer=sink,
                            settings=create_settings(Kind.PROCESSOR, "connection_flags"))
    return proc, sink


def _flow(
    local: str = "10.0.0.5", remote: str = "52.1.2.3", *, lport: int = 40000, rport: int = 443,
    direction: str = "out", transport: str = "tcp", cls: str = "PUBLIC_INTERNET", **fields: str,
) -> Flow:
    local_ep = Endpoint(local, lport, pod=fields.get("pod", ""), namespace=fields.get("namespace", ""),
                        app=fields.get("app", ""))
    remote_ep = Endpoint(remote, rport, pod=fields.get("rpod", ""), namespace=fields.get("rnamespace", ""),
                         app=fields.get("rapp", ""))
    return Flow(direction, transport, "ipv6" if ":" in local else "ipv4", local_ep, remote_ep, connection_class=cls)


def _flags(rules: list[dict[str, Any]], *flows: Flow, **extra: Any) -> list[dict[str, bool]]:
    proc, sink = _processor(rules, **extra)
    proc.consume(FlowBatch(flows=list(flows)))
    return [f.connection_flags for f in sink.flows]


def test_remote_cidr_rule_flags_matching_flows_only_v4_and_v6() -> None:
    rules = [{"flag": "NAT_GATEWAY", "remote_cidrs": ["52.1.0.0/16", "2600:1f18::/32"]}]
    got = _flags(rules, _flow(remote="52.1.2.3"), _flow(remote="52.2.0.1"),
                 _flow("fd00::5", "2600:1f18::7"), _flow("fd00::5", "2600:1f19::7"))
    assert got == [{"NAT_GATEWAY": True}, {}, {"NAT_GATEWAY": True}, {}]


def test_ipv4_address_does_not_match_an_ipv6_cidr_with_the_same_leading_bits() -> None:
    assert _flags([{"flag": "X", "remote_cidrs": ["2600:1f00::/24"]}], _flow(remote="38.0.31.5")) == [{}]


def test_every_condition_of_a_rule_must_hold() -> None:
    rules = [{"flag": "NLB", "local_cidrs": ["10.0.0.0/8"], "local_ports": [443, "8000-8999"], "value": True,
              "directions": ["in"], "transports": ["tcp"], "local_namespaces": ["ingress-*"]}]
    ok = {"namespace": "ingress-nginx"}
    got = _flags(
        rules,
        _flow(lport=443, direction="in", **ok),
        _flow(lport=8500, direction="in", **ok),
        _flow(lport=9000, direction="in", **ok),  # port outside
        _flow(lport=443, direction="out", **ok),  # direction
        _flow(lport=443, direction="in", transport="udp", **ok),  # transport
        _flow(lport=443, direction="in", namespace="default"),  # namespace glob
        _flow("192.168.0.1", lport=443, direction="in", **ok),  # local cidr
    )
    assert got == [{"NLB": True}, {"NLB": True}, {}, {}, {}, {}, {}]


def test_pod_app_and_class_conditions_use_globs_and_sets() -> None:
    rules = [{"flag": "EGRESS_PROXY", "local_pods": ["proxy-*"], "remote_apps": ["s3*", "dynamo"],
              "connection_classes": ["INTRA_REGION", "INTER_REGION"], "remote_namespaces": ["*"],
              "remote_pods": ["*"], "local_apps": ["?roxy"], "remote_ports": [443]}]
    base = {"pod": "proxy-7f9", "app": "proxy", "rnamespace": "x", "rpod": "y"}
    got = _flags(
        rules,
        _flow(cls="INTRA_REGION", rapp="s3-gw", **base),
        _flow(cls="INTER_REGION", rapp="dynamo", **base),
        _flow(cls="PUBLIC_INTERNET", rapp="s3-gw", **base),
        _flow(cls="INTRA_REGION", rapp="dynamodb", **base),
        _flow(cls="INTRA_REGION", rapp="s3", **{**base, "pod": "web-1"}),
    )
    assert got == [{"EGRESS_PROXY": True}, {"EGRESS_PROXY": True}, {}, {}, {}]


def test_first_matching_rule_of_a_flag_wins_and_flags_are_independent() -> None:
    rules = [
        {"flag": "NAT_GATEWAY", "remote_cidrs": ["52.1.2.0/24"], "value": False},
        {"flag": "NAT_GATEWAY", "remote_cidrs": ["52.0.0.0/8"]},
        {"flag": "HTTPS", "remote_ports": [443]},
    ]
    got = _flags(rules, _flow(remote="52.1.2.3"), _flow(remote="52.9.9.9", rport=80), _flow(remote="1.1.1.1"))
    assert got == [{"NAT_GATEWAY": False, "HTTPS": True}, {"NAT_GATEWAY": True}, {"HTTPS": True}]


def test_unmatched_flows_get_nothing_or_false_when_configured() -> None:
    rules = [{"flag": "NAT_GATEWAY", "remote_cidrs": ["52.0.0.0/8"]}]
    assert _flags(rules, _flow(remote="1.1.1.1")) == [{}]
    assert _flags(rules, _flow(remote="1.1.1.1"), _flow(), set_false_when_unmatched=True) == [
        {"NAT_GATEWAY": False}, {"NAT_GATEWAY": True}]


def test_flags_shorthand_is_a_remote_cidr_rule_tried_after_the_rules() -> None:
    rules = [{"flag": "NAT_GATEWAY", "remote_cidrs": ["52.1.2.0/24"], "value": False}]
    got = _flags(rules, _flow(remote="52.1.2.3"), _flow(remote="52.9.9.9"), _flow(remote="1.1.1.1"),
                 flags={"NAT_GATEWAY": ["52.0.0.0/8"], "EGRESS": ["1.1.1.0/24"]})
    assert got == [{"NAT_GATEWAY": False}, {"NAT_GATEWAY": True}, {"EGRESS": True}]
    with pytest.raises(ValidationError, match=r"flags.NAT_GATEWAY\[0\]: '52.0.0.1/8' is not a CIDR"):
        ConnectionFlagsConfig.model_validate({"flags": {"NAT_GATEWAY": ["52.0.0.1/8"]}})


def test_flags_already_set_by_others_are_kept() -> None:
    flow = _flow(remote="1.1.1.1")
    flow.connection_flags["OTHER"] = True
    assert _flags([{"flag": "X", "remote_ports": [443]}], flow) == [{"OTHER": True, "X": True}]


def test_set_flags_are_counted() -> None:
    proc, _ = _processor([{"flag": "NAT_GATEWAY", "remote_cidrs": ["52.0.0.0/8"]}], set_false_when_unmatched=True)
    proc.consume(FlowBatch(flows=[_flow(), _flow(), _flow(remote="1.1.1.1")]))
    assert proc._m_set.value(flag="NAT_GATEWAY", value="true") == 2
    assert proc._m_set.value(flag="NAT_GATEWAY", value="false") == 1


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ([{"flag": "A", "remote_cidrs": ["10.0.0.0/8"]}, {"flag": "B", "remote_cidrs": ["10.0.0.0/33"]}],
         "rules[1] (flag 'B'): remote_cidrs[0] '10.0.0.0/33' is not a CIDR"),
        ([{"flag": "A", "local_cidrs": ["10.0.0.1/8"]}],
         "rules[0] (flag 'A'): local_cidrs[0] '10.0.0.1/8' is not a CIDR"),
        ([{"flag": "A", "remote_ports": ["9000-8000"]}], "rules[0] (flag 'A'): remote_ports[0] '9000-8000'"),
        ([{"flag": "A", "local_ports": [70000]}], "local_ports[0] 70000 is not a port"),
        ([{"flag": "A", "local_ports": ["https"]}], "'https' is not a port or a range like 8000-8999"),
        ([{"flag": "A"}], "rules[0] (flag 'A') has no condition"),
        ([{"flag": "bad flag", "remote_ports": [1]}], "rules[0].flag: 'bad flag' must be a name"),
        ([{"flag": "A", "directions": ["sideways"]}], "directions"),
        ([{"flag": "A", "remote_cidr": ["10.0.0.0/8"]}], "remote_cidr"),
    ],
)
def test_invalid_rules_are_rejected_with_a_message_naming_the_rule(rules: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        ConnectionFlagsConfig.model_validate({"rules": rules})
    assert message in str(info.value)


def test_all_rule_problems_are_reported_at_once() -> None:
    with pytest.raises(ValidationError) as info:
        ConnectionFlagsConfig.model_validate({"rules": [
            {"flag": "A", "remote_cidrs": ["nope"]}, {"flag": "B", "local_ports": [-1]}]})
    assert "rules[0]" in str(info.value) and "rules[1]" in str(info.value)


def test_lifecycle_contract() -> None:
    proc, _ = _processor([{"flag": "NAT_GATEWAY", "remote_cidrs": ["52.0.0.0/8"]}])
    check_lifecycle(proc)
    default = create_component(factory)
    check_lifecycle(default)


# --- columnar --------------------------------------------------------------------------------


def test_a_columnar_batch_stays_columnar_and_a_rule_replaces_an_earlier_flag_of_the_same_key() -> None:
    table = flows_from_columns({
        "direction": ["out", "in", "out"],
        "remote_address": ["52.1.2.3", "52.1.2.3", "1.1.1.1"],
        "connection_flags": [[("X", False), ("A", True)], [], [("X", False)]],
    })
    proc, sink = _processor([{"flag": "X", "remote_cidrs": ["52.0.0.0/8"]}])
    proc.consume(FlowBatch(flows=table.slice(0, 3), batch_id="b"))
    (out,) = sink.batches
    assert out._flows.peek_table() is not None and out.batch_id == "b"  # no row objects were made
    got = out.flow_table().column("connection_flags").to_pylist()
    assert got == [[("A", True), ("X", True)], [("X", True)], [("X", False)]]


def test_a_sliced_batch_keeps_its_own_rows_flags() -> None:
    table = flows_from_columns({
        "remote_address": ["1.1.1.1", "52.1.2.3", "52.1.2.4"],
        "connection_flags": [[("OLD", True)], [("OLD", False)], []],
    })
    proc, sink = _processor([{"flag": "X", "remote_cidrs": ["52.0.0.0/8"]}])
    proc.consume(FlowBatch(flows=table.slice(1, 2)))
    assert sink.batches[0].flow_table().column("connection_flags").to_pylist() == [
        [("OLD", False), ("X", True)], [("X", True)]]


def _reference_flags(rules: list[dict[str, Any]], flow: Flow, false_when_unmatched: bool) -> dict[str, bool]:
    """The rules evaluated row by row with ipaddress and fnmatch: the documented semantics, independently."""
    def holds(rule: dict[str, Any]) -> bool:
        for side in ("local", "remote"):
            endpoint = getattr(flow, side)
            if rule.get(f"{side}_cidrs") and not (endpoint.address and any(
                    ipaddress.ip_address(endpoint.address) in ipaddress.ip_network(c)
                    for c in rule[f"{side}_cidrs"] if ipaddress.ip_network(c).version
                    == ipaddress.ip_address(endpoint.address).version)):
                return False
            if rule.get(f"{side}_ports") and not any(
                    low <= endpoint.port <= high for low, high in map(parse_port_range, rule[f"{side}_ports"])):
                return False
            for key, field in (("namespaces", "namespace"), ("pods", "pod"), ("apps", "app")):
                patterns = rule.get(f"{side}_{key}")
                if patterns and not any(fnmatch.fnmatchcase(getattr(endpoint, field), p) for p in patterns):
                    return False
        return all(not rule.get(key) or getattr(flow, attr) in rule[key] for key, attr in (
            ("connection_classes", "connection_class"), ("directions", "direction"), ("transports", "transport")))

    flags = dict(flow.connection_flags)
    for flag in dict.fromkeys(r["flag"] for r in rules):
        for rule in (r for r in rules if r["flag"] == flag):
            if holds(rule):
                flags[flag] = rule.get("value", True)
                break
        else:
            if false_when_unmatched:
                flags[flag] = False
    return flags


_ADDRESSES = ["10.0.0.5", "10.1.2.3", "52.1.2.3", "52.9.0.1", "1.1.1.1", "fd00::5", "2600:1f18::7", "2600:1f19::1"]
_CIDRS = ["10.0.0.0/8", "10.0.0.0/24", "52.0.0.0/8", "52.1.0.0/16", "2600:1f18::/32", "fd00::/8", "0.0.0.0/0"]
_NAMES = ["", "web-1", "proxy-7", "ingress-nginx", "default", "s3-gw"]
_GLOBS = ["*", "web-*", "proxy-?", "ingress-*", "s3*", "default", "[dp]*"]


@st.composite
def _rule(draw: st.DrawFn) -> dict[str, Any]:
    conditions = {
        "local_cidrs": st.lists(st.sampled_from(_CIDRS), min_size=1, max_size=2),
        "remote_cidrs": st.lists(st.sampled_from(_CIDRS), min_size=1, max_size=2),
        "local_ports": st.lists(st.sampled_from([443, 80, "8000-8999", "0-1024", 65535]), min_size=1, max_size=2),
        "remote_ports": st.lists(st.sampled_from([443, 80, "8000-8999", "0-1024", 65535]), min_size=1, max_size=2),
        "local_pods": st.lists(st.sampled_from(_GLOBS), min_size=1, max_size=2),
        "remote_namespaces": st.lists(st.sampled_from(_GLOBS), min_size=1, max_size=2),
        "remote_apps": st.lists(st.sampled_from(_GLOBS), min_size=1, max_size=2),
        "connection_classes": st.lists(st.sampled_from(["INTRA_VPC", "PUBLIC_INTERNET", "UNKNOWN"]), min_size=1),
        "directions": st.lists(st.sampled_from(["out", "in"]), min_size=1),
        "transports": st.lists(st.sampled_from(["tcp", "udp"]), min_size=1),
    }
    chosen = draw(st.lists(st.sampled_from(sorted(conditions)), min_size=1, max_size=3, unique=True))
    rule: dict[str, Any] = {"flag": draw(st.sampled_from(["A", "B", "NAT_GATEWAY"])), "value": draw(st.booleans())}
    rule.update({key: draw(conditions[key]) for key in chosen})
    return rule


@st.composite
def _any_flow(draw: st.DrawFn) -> Flow:
    local = draw(st.sampled_from(_ADDRESSES))
    remote = draw(st.sampled_from([a for a in _ADDRESSES if (":" in a) == (":" in local)] + [""]))
    flow = _flow(local, remote, lport=draw(st.sampled_from([443, 80, 8080, 40000, 0])),
                 rport=draw(st.sampled_from([443, 80, 8999, 9000, 65535])),
                 direction=draw(st.sampled_from(["out", "in"])), transport=draw(st.sampled_from(["tcp", "udp"])),
                 cls=draw(st.sampled_from(["INTRA_VPC", "PUBLIC_INTERNET", "UNKNOWN", ""])),
                 pod=draw(st.sampled_from(_NAMES)), rnamespace=draw(st.sampled_from(_NAMES)),
                 rapp=draw(st.sampled_from(_NAMES)))
    flow.connection_flags.update(draw(st.dictionaries(st.sampled_from(["A", "OTHER"]), st.booleans(), max_size=2)))
    return flow


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.lists(_rule(), min_size=1, max_size=4), st.lists(_any_flow(), min_size=1, max_size=30), st.booleans())
def test_columnar_rules_equal_a_row_by_row_evaluation(
    rules: list[dict[str, Any]], flows: list[Flow], false_when_unmatched: bool
) -> None:
    expected = [_reference_flags(rules, f, false_when_unmatched) for f in flows]
    got = _flags(rules, *flows, set_false_when_unmatched=false_when_unmatched)
    assert got == expected
