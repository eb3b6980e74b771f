"""A Kubernetes-shaped network on one machine, built from network namespaces.

Used by the end-to-end tests (``tests/e2e``) and by ``kubenetmon demo``::

    fabric ─┬─ node-a (zone a) ─┬─ pod  (10.244.0.10, fd00:244:0::10)
            │   conntrack+DNAT  └─ pod  …
            ├─ node-b (zone b) ─┬─ pod  (10.244.1.10, …)
            │                   └─ pod  …
            └─ public host (addresses inside cloud / Internet ranges)

* Every **node** is a namespace with its own conntrack table
  (``nf_conntrack_acct=1``, ``nf_conntrack_events=1`` and the nft ruleset that
  makes it track, forward included), routing for its pods like a host-gw CNI.
* Every **pod** is a namespace behind its node: a veth, a ``/32`` (and
  ``/128``) address, a default route to the node. Pod-to-pod traffic between
  nodes crosses both nodes, so both conntrack tables see it, as in a real
  cluster.
* The **fabric** namespace routes between nodes and to the **public host**
  (no conntrack of its own).
* A **ClusterIP** service is an nft ``dnat`` rule in every node, as
  kube-proxy's nftables mode writes it.

Every address lives inside these namespaces; :meth:`MiniCluster.close` (or
leaving the ``with`` block, or interpreter exit) removes them all.
"""

from __future__ import annotations

import ipaddress
import itertools
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from kubenetmon.netns import Namespace, NamespaceRegistry, veth_pair

__all__ = [
    "ClusterIPService",
    "MiniCluster",
    "Node",
    "NodeSpec",
    "Pod",
    "PodSpec",
    "PublicHost",
    "Topology",
    "default_topology",
]

#: Per-namespace conntrack timeouts for nodes: long enough that no entry
#: expires while a test or the demo runs, so a dump at the end is the
#: complete ground truth (the agents still get DESTROY events on teardown).
NODE_CONNTRACK_TIMEOUTS: dict[str, int] = {
    "net.netfilter.nf_conntrack_udp_timeout": 900,
    "net.netfilter.nf_conntrack_udp_timeout_stream": 900,
    "net.netfilter.nf_conntrack_tcp_timeout_time_wait": 900,
    "net.netfilter.nf_conntrack_tcp_timeout_close_wait": 900,
    "net.netfilter.nf_conntrack_tcp_timeout_fin_wait": 900,
    "net.netfilter.nf_conntrack_tcp_timeout_last_ack": 900,
}


@dataclass(frozen=True)
class NodeSpec:
    """A node to build: its Kubernetes name and availability zone."""

    name: str
    zone: str


@dataclass(frozen=True)
class PodSpec:
    """A pod to build: where it runs and the labels attribution reads."""

    name: str
    namespace: str
    app: str
    node: str
    ipv6: bool = True


@dataclass(frozen=True)
class Topology:
    """The whole cluster to build, plus the public addresses reachable from it."""

    cloud: str
    region: str
    cluster: str
    nodes: tuple[NodeSpec, ...]
    pods: tuple[PodSpec, ...]
    public_addresses: tuple[str, ...] = ()


def default_topology(public_addresses: tuple[str, ...] = ()) -> Topology:
    """Two zones, two nodes, five pods (two apps talk across zones, one serves a ClusterIP)."""
    nodes = (NodeSpec("node-a", "us-west-2a"), NodeSpec("node-b", "us-west-2b"))
    pods = (
        PodSpec("frontend-0", "shop", "frontend", "node-a"),
        PodSpec("checkout-0", "shop", "checkout", "node-a"),
        PodSpec("catalog-0", "shop", "catalog", "node-b"),
        PodSpec("payments-0", "billing", "payments", "node-b"),
        PodSpec("search-0", "shop", "search", "node-b"),
    )
    return Topology("aws", "us-west-2", "minicluster", nodes, pods, public_addresses)


@dataclass
class Node:
    """A built node: its namespace, InternalIPs and pod CIDRs."""

    name: str
    zone: str
    index: int
    netns: Namespace
    ipv4: str
    ipv6: str
    pod_cidr_v4: ipaddress.IPv4Network
    pod_cidr_v6: ipaddress.IPv6Network
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass
class Pod:
    """A built pod: its namespace, addresses and Kubernetes metadata."""

    name: str
    namespace: str
    app: str
    node: str
    netns: Namespace
    ipv4: str
    ipv6: str | None
    host_ifname: str  # the veth end inside the node namespace
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def labels(self) -> dict[str, str]:
        return {"app.kubernetes.io/name": self.app}

    @property
    def ips(self) -> list[str]:
        return [self.ipv4] + ([self.ipv6] if self.ipv6 else [])


@dataclass(frozen=True)
class ClusterIPService:
    """A virtual address DNAT'ed to one backend pod in every node."""

    name: str
    namespace: str
    cluster_ip: str
    port: int
    transport: str
    backend: Pod
    target_port: int


@dataclass
class PublicHost:
    """A host outside the cluster; its addresses come from the topology."""

    netns: Namespace
    addresses: tuple[str, ...]


class MiniCluster:
    """Builds a :class:`Topology` out of namespaces and tears it down.

    ``prefix`` starts every namespace name (``knme2e`` for tests,
    ``knmdemo`` for the demo). Use as a context manager; a failure while
    building removes what was built.
    """

    _SERVICE_NET = ipaddress.ip_network("10.96.0.0/16")

    def __init__(self, topology: Topology, prefix: str) -> None:
        self.topology = topology
        self.registry = NamespaceRegistry(prefix)
        self.nodes: dict[str, Node] = {}
        self.pods: dict[str, Pod] = {}
        self.services: dict[str, ClusterIPService] = {}
        self.public: PublicHost | None = None
        self._fabric: Namespace | None = None
        self._ifnames = itertools.count()
        self._pod_slots: dict[str, Iterator[int]] = {}
        self._lock = threading.Lock()

    # --- life -----------------------------------------------------------------

    def __enter__(self) -> MiniCluster:
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def build(self) -> None:
        """Create the fabric, the nodes, the pods and the public host."""
        self._fabric = self.registry.create("fab")
        self._fabric.enable_forwarding()
        for index, spec in enumerate(self.topology.nodes):
            self._add_node(index, spec)
        for pod in self.topology.pods:
            self.add_pod(pod)
        if self.topology.public_addresses:
            self._add_public_host(self.topology.public_addresses)

    def close(self) -> None:
        """Remove every namespace (and with them every link, address, route and rule). Idempotent."""
        self.registry.close()

    @property
    def fabric(self) -> Namespace:
        if self._fabric is None:
            raise RuntimeError("the mini-cluster is not built; use it as a context manager")
        return self._fabric

    # --- nodes ----------------------------------------------------------------

    def _add_node(self, index: int, spec: NodeSpec) -> None:
        ns = self.registry.create(f"n{index}")
        node = Node(
            name=spec.name,
            zone=spec.zone,
            index=index,
            netns=ns,
            ipv4=f"10.250.{index}.2",
            ipv6=f"fd00:250:{index}::2",
            pod_cidr_v4=ipaddress.IPv4Network(f"10.244.{index}.0/24"),
            pod_cidr_v6=ipaddress.IPv6Network(f"fd00:244:{index}::/64"),
        )
        # Counters and events must be on before the first entry exists.
        ns.set_sysctls(NODE_CONNTRACK_TIMEOUTS)
        ns.track_connections()
        ns.enable_forwarding()
        fabric_if = f"fn{index}"
        veth_pair(self.fabric, fabric_if, ns, "eth0")
        self.fabric.add_address(fabric_if, f"10.250.{index}.1/24")
        self.fabric.add_address(fabric_if, f"fd00:250:{index}::1/64")
        ns.add_address("eth0", f"{node.ipv4}/24")
        ns.add_address("eth0", f"{node.ipv6}/64")
        ns.add_route("default", via=f"10.250.{index}.1")
        ns.add_route("default", via=f"fd00:250:{index}::1")
        self.fabric.add_route(str(node.pod_cidr_v4), via=node.ipv4)
        self.fabric.add_route(str(node.pod_cidr_v6), via=node.ipv6)
        self.nodes[spec.name] = node
        # .1 is the node's own gateway address on every pod veth; pods from .10.
        self._pod_slots[spec.name] = itertools.count(10)

    def node_of(self, pod: Pod) -> Node:
        return self.nodes[pod.node]

    # --- pods -----------------------------------------------------------------

    def add_pod(self, spec: PodSpec, *, ipv4: str | None = None, ipv6: str | None = None) -> Pod:
        """Create a pod behind its node; ``ipv4``/``ipv6`` reuse a former pod's addresses."""
        node = self.nodes[spec.node]
        with self._lock:
            if spec.name in self.pods:
                raise ValueError(f"pod {spec.name!r} exists; delete it first")
            slot = next(self._pod_slots[spec.node]) if ipv4 is None else None
            ifname = f"vp{next(self._ifnames)}"
        if slot is not None:
            ipv4 = str(node.pod_cidr_v4.network_address + slot)
            if spec.ipv6:
                ipv6 = str(node.pod_cidr_v6.network_address + slot)
        assert ipv4 is not None
        gateway_v4 = str(node.pod_cidr_v4.network_address + 1)
        ns = self.registry.create(f"p{ifname[2:]}")
        try:
            veth_pair(node.netns, ifname, ns, "eth0")
            # Routed veths (Calico-like): the node answers for the pod's gateway
            # address on every pod veth and routes each pod's /32 to its veth.
            node.netns.add_address(ifname, f"{gateway_v4}/32")
            node.netns.ip("route", "add", f"{ipv4}/32", "dev", ifname)
            ns.add_address("eth0", f"{ipv4}/32")
            ns.ip("route", "add", gateway_v4, "dev", "eth0", "scope", "link")
            ns.add_route("default", via=gateway_v4, dev="eth0")
            if ipv6:
                node.netns.add_address(ifname, "fe80::1/64")
                node.netns.ip("-6", "route", "add", f"{ipv6}/128", "dev", ifname)
                ns.add_address("eth0", f"{ipv6}/128")
                ns.add_route("default", via="fe80::1", dev="eth0")
        except BaseException:
            ns.delete()
            raise
        pod = Pod(spec.name, spec.namespace, spec.app, spec.node, ns, ipv4, ipv6, ifname)
        with self._lock:
            self.pods[spec.name] = pod
        return pod

    def delete_pod(self, name: str) -> Pod:
        """Delete a pod's namespace (its veth and the node's routes to it go too)."""
        with self._lock:
            pod = self.pods.pop(name)
        # Deleting the node's end removes the pair and the routes at once;
        # a deleted namespace's devices go away later, asynchronously.
        node = self.nodes[pod.node]
        node.netns.ip("link", "del", pod.host_ifname)
        pod.netns.delete()
        return pod

    def pod_by_ip(self, address: str) -> Pod | None:
        for pod in self.pods.values():
            if address in pod.ips:
                return pod
        return None

    # --- services and the outside -----------------------------------------------

    def add_cluster_ip(
        self, name: str, backend: Pod, *, port: int, target_port: int, transport: str = "tcp"
    ) -> ClusterIPService:
        """DNAT ``<cluster_ip>:<port>`` to the backend in every node (kube-proxy nftables style)."""
        cluster_ip = str(self._SERVICE_NET.network_address + 10 + len(self.services))
        table = f"knm_svc_{len(self.services)}"
        rule = (
            f"table ip {table} {{\n"
            f"  chain prerouting {{ type nat hook prerouting priority dstnat; policy accept;\n"
            f"    ip daddr {cluster_ip} {transport} dport {port} dnat to {backend.ipv4}:{target_port}\n"
            f"  }}\n"
            f"}}\n"
        )
        for node in self.nodes.values():
            node.netns.nft(rule)
        service = ClusterIPService(name, backend.namespace, cluster_ip, port, transport, backend, target_port)
        self.services[name] = service
        return service

    def _add_public_host(self, addresses: tuple[str, ...]) -> None:
        ns = self.registry.create("pub")
        veth_pair(self.fabric, "fpub", ns, "eth0")
        for address in addresses:
            ip = ipaddress.ip_address(address)
            # A /32 (/128) on the host and a host route in the fabric: the
            # addresses need not share a subnet (one cloud prefix, one Internet).
            ns.add_address("eth0", f"{ip}/{ip.max_prefixlen}")
            self.fabric.ip(f"-{ip.version}", "route", "add", f"{ip}/{ip.max_prefixlen}", "dev", "fpub")
        ns.add_address("eth0", "10.250.255.2/30")
        ns.add_address("eth0", "fd00:250:255::2/64")
        self.fabric.add_address("fpub", "10.250.255.1/30")
        self.fabric.add_address("fpub", "fd00:250:255::1/64")
        # Answer from the public addresses, not from the link's.
        for version, gateway in ((4, "10.250.255.1"), (6, "fd00:250:255::1")):
            own = [a for a in addresses if ipaddress.ip_address(a).version == version]
            if own:
                ns.ip(f"-{version}", "route", "add", "default", "via", gateway, "src", own[0])
        self.public = PublicHost(ns, addresses)
