"""The otlp receiver over real gRPC on loopback: partial success, garbage, backpressure, dedup, auth, TLS."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

from kubenetmon.otlp import decode_records, encode_records
from kubenetmon.otlp.status import retry_after_of
from kubenetmon.receivers.otlp import OtlpReceiver, factory
from kubenetmon.testing import SinkConsumer, check_lifecycle, create_component
from tests.otlp.otlp_testkit import TLSFiles, by_identity, make_records, make_tls

METHOD = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
Start = Callable[..., OtlpReceiver]


class Client:
    """A bare OTLP/gRPC client: sends whatever bytes and metadata a test wants."""

    def __init__(self, port: int, credentials: grpc.ChannelCredentials | None = None) -> None:
        target = f"127.0.0.1:{port}"
        self.channel = (grpc.secure_channel(target, credentials) if credentials
                        else grpc.insecure_channel(target))
        self.call = self.channel.unary_unary(
            METHOD, request_serializer=None, response_deserializer=ExportMetricsServiceResponse.FromString
        )

    def export(self, data: bytes | ExportMetricsServiceRequest, batch_id: str | None = None,
               **metadata: str) -> ExportMetricsServiceResponse:
        if isinstance(data, ExportMetricsServiceRequest):
            data = data.SerializeToString()
        md = list(metadata.items())
        if batch_id is not None:
            md.append(("kubenetmon-batch-id", batch_id))
        return self.call(data, timeout=5, metadata=md, compression=grpc.Compression.Gzip)  # type: ignore[no-any-return]


@pytest.fixture
def clients() -> Iterator[Callable[..., Client]]:
    made: list[Client] = []

    def make(port: int, credentials: grpc.ChannelCredentials | None = None) -> Client:
        c = Client(port, credentials)
        made.append(c)
        return c

    yield make
    for c in made:
        c.channel.close()


def request_for(n: int = 8, node: str = "node-a", seed: int = 0) -> ExportMetricsServiceRequest:
    return encode_records(make_records(n, node=node, seed=seed), {})[0]


def metric(receiver: OtlpReceiver, name: str, **labels: str) -> float:
    return float(getattr(receiver, name).value(**labels))


def test_lifecycle_contract_holds() -> None:
    cfg = factory.config_model.model_validate({"grpc": {"endpoint": "127.0.0.1:0"}})
    check_lifecycle(create_component(factory, cfg))
    create_component(factory, cfg).shutdown()  # without start


def test_valid_request_reaches_the_consumer(receivers: Start, clients: Callable[..., Client]) -> None:
    sink = SinkConsumer()
    r = receivers(sink)
    request = request_for(20)
    response = clients(r.port).export(request, batch_id="b1")
    assert response.partial_success.rejected_data_points == 0
    assert by_identity(sink.records) == by_identity(decode_records(request).records)
    assert metric(r, "m_accepted") == decode_records(request).accepted_points
    assert metric(r, "m_requests", outcome="ok") == 1


def test_bad_points_are_rejected_with_partial_success_and_valid_data_still_flows(
    receivers: Start, clients: Callable[..., Client]
) -> None:
    sink = SinkConsumer()
    r = receivers(sink)
    request = request_for(6, node="node-a")
    good = decode_records(request_for(6, node="node-a")).records
    # one point with a string port, a metric with cumulative temporality, an unknown metric,
    # and a resource without k8s.node.name
    dp = request.resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points[0]
    removed_bytes = dp.as_int
    for kv in dp.attributes:
        if kv.key == "source.port":
            kv.value.string_value = "x"
    cumulative = request.resource_metrics[0].scope_metrics[0].metrics.add()
    cumulative.CopyFrom(request.resource_metrics[0].scope_metrics[0].metrics[1])
    cumulative.sum.aggregation_temporality = 2
    unknown = request.resource_metrics[0].scope_metrics[0].metrics.add()
    unknown.CopyFrom(request.resource_metrics[0].scope_metrics[0].metrics[1])
    unknown.name = "something.else"
    nodeless = request.resource_metrics.add()
    nodeless.CopyFrom(request_for(3, node="node-x", seed=5).resource_metrics[0])
    del nodeless.resource.attributes[:]
    n_packets = len(cumulative.sum.data_points)
    n_nodeless = sum(len(m.sum.data_points) for m in nodeless.scope_metrics[0].metrics)

    response = clients(r.port).export(request)
    ps = response.partial_success
    assert ps.rejected_data_points == 1 + 2 * n_packets + n_nodeless
    for reason in ("wrong_attribute_type", "not_delta", "unknown_metric", "missing_node"):
        assert reason in ps.error_message
    assert metric(r, "m_rejected", reason="not_delta") == n_packets
    assert metric(r, "m_rejected", reason="missing_node") == n_nodeless
    assert metric(r, "m_rejected", reason="wrong_attribute_type") == 1
    got = sink.records
    assert sum(x.original_bytes + x.reply_bytes for x in got) == sum(
        x.original_bytes + x.reply_bytes for x in good) - removed_bytes
    assert sum(x.original_packets + x.reply_packets for x in got) == sum(
        x.original_packets + x.reply_packets for x in good)
    assert {x.node for x in got} == {"node-a"}


def test_garbage_bytes_are_invalid_argument_and_counted(receivers: Start, clients: Callable[..., Client]) -> None:
    sink = SinkConsumer()
    r = receivers(sink)
    client = clients(r.port)
    with pytest.raises(grpc.RpcError) as info:
        client.export(b"\xff\xff\xff\xff not protobuf")
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert metric(r, "m_requests", outcome="invalid") == 1
    # the server is still fine
    client.export(request_for(2))
    assert len(sink.records) == 2


def test_backpressure_is_unavailable_with_retry_info_and_nothing_is_kept(
    receivers: Start, clients: Callable[..., Client]
) -> None:
    sink = SinkConsumer()
    sink.refuse = True
    r = receivers(sink, backpressure_retry_after=2.5)
    client = clients(r.port)
    request = request_for(4)
    with pytest.raises(grpc.RpcError) as info:
        client.export(request, batch_id="b-1")
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert retry_after_of(info.value.trailing_metadata()) == 2.5
    assert metric(r, "m_refused") == decode_records(request).accepted_points
    # the refused id was not remembered: the retry is consumed, once
    sink.refuse = False
    client.export(request, batch_id="b-1")
    client.export(request, batch_id="b-1")
    assert len(sink.batches) == 1
    assert metric(r, "m_duplicates") == decode_records(request).accepted_points


def test_resource_exhausted_can_be_chosen_for_backpressure(
    receivers: Start, clients: Callable[..., Client]
) -> None:
    sink = SinkConsumer()
    sink.refuse = True
    r = receivers(sink, backpressure_status="resource_exhausted")
    with pytest.raises(grpc.RpcError) as info:
        clients(r.port).export(request_for(2))
    assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert retry_after_of(info.value.trailing_metadata()) == 1.0


def test_duplicates_are_per_node_and_bounded(receivers: Start, clients: Callable[..., Client]) -> None:
    sink = SinkConsumer()
    r = receivers(sink, dedup={"max_ids_per_node": 2})
    client = clients(r.port)
    a, b = request_for(3, node="node-a"), request_for(3, node="node-b", seed=1)
    client.export(a, batch_id="same")
    client.export(b, batch_id="same")  # another node may use the same id
    client.export(a, batch_id="same")  # duplicate
    assert len(sink.batches) == 2
    client.export(a, batch_id="2")
    client.export(a, batch_id="3")  # pushes "same" out of node-a's window of 2
    client.export(a, batch_id="same")
    assert len(sink.batches) == 5
    assert metric(r, "m_requests", outcome="duplicate") == 1


def test_requests_without_batch_id_are_always_consumed(receivers: Start, clients: Callable[..., Client]) -> None:
    sink = SinkConsumer()
    r = receivers(sink)
    client = clients(r.port)
    client.export(request_for(2))
    client.export(request_for(2))
    assert len(sink.batches) == 2


def test_bearer_token_is_required_when_configured(receivers: Start, clients: Callable[..., Client]) -> None:
    sink = SinkConsumer()
    r = receivers(sink, auth={"bearer_token": "s3cret"})
    client = clients(r.port)
    for metadata in ({}, {"authorization": "Bearer wrong"}, {"authorization": "s3cret"}):
        with pytest.raises(grpc.RpcError) as info:
            client.export(request_for(2), **metadata)
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert sink.batches == []
    assert metric(r, "m_requests", outcome="unauthenticated") == 3
    client.export(request_for(2), authorization="Bearer s3cret")
    assert len(sink.batches) == 1


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))


def test_tls_server_accepts_clients_trusting_its_ca_only(
    receivers: Start, clients: Callable[..., Client], tls: TLSFiles
) -> None:
    sink = SinkConsumer()
    r = receivers(sink, grpc={"tls": {"cert_file": str(tls.server_cert), "key_file": str(tls.server_key)}})
    good = grpc.ssl_channel_credentials(root_certificates=tls.ca.read_bytes())
    clients(r.port, good).export(request_for(2))
    assert len(sink.batches) == 1
    wrong = grpc.ssl_channel_credentials(root_certificates=tls.other_ca.read_bytes())
    with pytest.raises(grpc.RpcError) as info:
        clients(r.port, wrong).export(request_for(2))
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.RpcError):
        clients(r.port).export(request_for(2))  # plain text to a TLS port
    assert len(sink.batches) == 1


def test_mtls_requires_a_client_certificate_signed_by_the_client_ca(
    receivers: Start, clients: Callable[..., Client], tls: TLSFiles
) -> None:
    sink = SinkConsumer()
    r = receivers(sink, grpc={"tls": {"cert_file": str(tls.server_cert), "key_file": str(tls.server_key),
                                      "client_ca_file": str(tls.ca)}})
    anonymous = grpc.ssl_channel_credentials(root_certificates=tls.ca.read_bytes())
    with pytest.raises(grpc.RpcError):
        clients(r.port, anonymous).export(request_for(2))
    with_cert = grpc.ssl_channel_credentials(
        root_certificates=tls.ca.read_bytes(), private_key=tls.client_key.read_bytes(),
        certificate_chain=tls.client_cert.read_bytes(),
    )
    clients(r.port, with_cert).export(request_for(2))
    assert len(sink.batches) == 1


def test_listening_on_a_taken_port_fails_start_with_a_clear_error(receivers: Start) -> None:
    first = receivers(SinkConsumer())
    with pytest.raises(RuntimeError, match="cannot listen"):
        receivers(SinkConsumer(), port=first.port)


def test_config_rejects_half_tls_and_bad_endpoints() -> None:
    model = factory.config_model
    with pytest.raises(ValueError, match="cert_file and key_file"):
        model.model_validate({"grpc": {"tls": {"cert_file": "a.pem"}}})
    with pytest.raises(ValueError, match="host:port"):
        model.model_validate({"grpc": {"endpoint": "4317"}})


