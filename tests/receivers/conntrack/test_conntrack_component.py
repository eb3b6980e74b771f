"""Config, checkpoint file, plugin registration and lifecycle of the conntrack receiver."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from kubenetmon.component import Kind
from kubenetmon.flows import ConntrackRecord, FlowBatch
from kubenetmon.netns import NamespaceRegistry
from kubenetmon.plugins import build_plugin_manager, load_components
from kubenetmon.receivers.conntrack import ConntrackConfig, factory
from kubenetmon.receivers.conntrack._checkpoint import (
    Checkpoint,
    CheckpointError,
    PendingBatch,
    load,
    mark_delivered,
    save,
)
from kubenetmon.receivers.conntrack._entries import KEY_WORDS
from kubenetmon.receivers.conntrack._state import LIVE, VANISHED, EntryState
from kubenetmon.testing import SinkConsumer, StaticHost, check_lifecycle, create_component
from tests.receivers.conntrack.conntrack_topology import V4_SERVER, make_pair, requires_root, udp_exchange


def _record(port: int) -> ConntrackRecord:
    return ConntrackRecord("n", "tcp", "ipv4", "10.0.0.1", port, "10.0.0.2", 80, "10.0.0.2", 80, "10.0.0.1", port,
                           100, 2, 50, 1, 10, 20)


def test_defaults_and_node_name_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_NAME", "node-7")
    config = ConntrackConfig()
    assert (config.interval, config.accounting, config.node_name) == (5.0, "delta", "node-7")
    assert config.configure_sysctls and config.events and not config.skip_sanity_check
    monkeypatch.delenv("NODE_NAME")
    assert ConntrackConfig().node_name  # the hostname


def test_invalid_config_names_the_key_and_value() -> None:
    with pytest.raises(ValidationError, match=r"'10.0.0.0/33' is not a CIDR"):
        ConntrackConfig(exclude_cidrs=["10.0.0.0/33"])
    with pytest.raises(ValidationError, match="accounting"):
        ConntrackConfig(accounting="zero")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="interval"):
        ConntrackConfig(interval=0)


def test_registered_as_a_builtin_receiver() -> None:
    registry = load_components(build_plugin_manager(load_entry_points=False))
    entry = registry.get(Kind.RECEIVER, "conntrack")
    assert entry is not None and entry.factory is factory


def _state(*rows: tuple[int, int, int]) -> EntryState:
    """An entry state of (hash, status, expiry) rows with distinct keys and counters."""
    n = len(rows)
    return EntryState(
        np.array([r[0] for r in rows], np.uint64),
        np.arange(n * KEY_WORDS, dtype=np.uint32).reshape(n, KEY_WORDS),
        np.arange(n * 4, dtype=np.uint64).reshape(n, 4) * np.uint64(1 << 40),
        np.array([r[1] for r in rows], np.uint8),
        np.array([r[2] for r in rows], np.int64),
    )


def _batch(*ports: int) -> pa.RecordBatch:
    return FlowBatch([_record(p) for p in ports]).record_table()


def _rows(table: pa.RecordBatch) -> list[ConntrackRecord]:
    return FlowBatch(table).records


def test_checkpoint_round_trip_drops_delivered_batches(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "ct.state"
    state = _state((5, LIVE, 0), (9, LIVE, 0), (11, VANISHED, 123))
    batches = [PendingBatch("a" * 32, _batch(1)), PendingBatch("b" * 32, _batch(2, 3))]
    save(path, Checkpoint("node-a", 42, state, batches))
    mark_delivered(path, "a" * 32)
    loaded = load(path)
    assert loaded is not None
    assert (loaded.node, loaded.dump_ns) == ("node-a", 42)
    for name, array in state.to_arrays().items():
        assert np.array_equal(getattr(loaded.state, name), array), name
    assert [(b.id, _rows(b.records)) for b in loaded.batches] == [("b" * 32, [_record(2), _record(3)])]
    save(path, Checkpoint("node-a", 43, EntryState.empty(), []))  # a new checkpoint forgets old delivered ids
    assert not path.with_name("ct.state.delivered").exists()


def test_missing_checkpoint_is_none_and_a_corrupt_one_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "ct.state"
    assert load(path) is None
    save(path, Checkpoint("n", 1, _state((1, LIVE, 0)), []))
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="delete it"):
        load(path)
    path.write_text("hello")
    with pytest.raises(CheckpointError, match="not a conntrack checkpoint"):
        load(path)


@pytest.mark.kernel
@requires_root
def test_lifecycle_contract_and_background_cycles(tmp_path: Path) -> None:
    with NamespaceRegistry("knmct") as reg:
        pair = make_pair(reg)
        config = ConntrackConfig(
            netns=pair.server.name, node_name="n", interval=0.1, skip_sanity_check=True,
            checkpoint_path=str(tmp_path / "ct.state"),
        )
        check_lifecycle(create_component(factory, config))
        sink = SinkConsumer()
        receiver = create_component(factory, config, consumer=sink)
        receiver.shutdown()  # without start: a no-op
        receiver = create_component(factory, config, consumer=sink)
        receiver.start(StaticHost())
        try:
            assert sink.wait_for(lambda _: receiver.is_ready(), 5)
            udp_exchange(pair.client, pair.server, V4_SERVER, 10, 20)
            assert sink.wait_for(lambda s: any(r.transport == "udp" for r in s.records), 10)
            assert receiver.health() is None
            assert receiver._m_entries.value() >= 1
        finally:
            receiver.shutdown(10)
        assert (tmp_path / "ct.state").exists()
        assert receiver._m_checkpoint_bytes.value() > 0


def test_agent_config_validates_and_reports_every_conntrack_problem() -> None:
    from kubenetmon.config import validate
    from kubenetmon.errors import ConfigError

    registry = load_components(build_plugin_manager(load_entry_points=False))
    good = {
        "receivers": {"conntrack": {"interval": 5, "checkpoint_path": "/run/kubenetmon/ct.state", "netns": "node"}},
        "exporters": {"debug": {}},
        "service": {"pipelines": {"flows": {"receivers": ["conntrack"], "exporters": ["debug"]}}},
    }
    validate(good, registry)
    bad = {**good, "receivers": {"conntrack": {"interval": -1, "accounting": "zero", "intervall": 5}}}
    with pytest.raises(ConfigError) as info:
        validate(bad, registry)
    text = str(info.value)
    assert "receivers::conntrack::interval" in text
    assert "receivers::conntrack::accounting" in text
    assert "intervall" in text


def test_a_checkpoint_with_keys_of_the_older_format_keeps_its_batches_but_not_its_baselines(tmp_path: Path) -> None:
    import marshal
    import zlib

    path = tmp_path / "ct.state"
    payload = marshal.dumps({
        "version": 1, "node": "n", "dump_ns": 5, "state": {b"k": b"v"}, "limbo": {},
        "batches": [("c" * 32, [(*(getattr(_record(9), f) for f in _record(9).__slots__),)])],
    })
    path.write_bytes(b"KNMCT1\n" + zlib.crc32(payload).to_bytes(4, "big") + payload)
    loaded = load(path)
    assert loaded is not None and loaded.stale_state
    assert len(loaded.state) == 0
    assert [(b.id, _rows(b.records)) for b in loaded.batches] == [("c" * 32, [_record(9)])]
