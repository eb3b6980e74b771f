"""``kubenetmon demo``: the whole pipeline on a mini-cluster of network namespaces, on one machine.

Also the building blocks the end-to-end tests and the end-to-end benchmark
share: :mod:`.minicluster` (nodes, pods, ClusterIP, public hosts as
namespaces), :mod:`.traffic` (known payloads), :mod:`.conntrack_table` (the
kernels' counters as ground truth), :mod:`.expected` (the attribution
oracle), :mod:`.processes` and :mod:`.pipeline` (the real agent and gateway
processes). Importing this package is cheap; the command imports the rest
when it runs.
"""

from __future__ import annotations

import argparse

from kubenetmon.hookspecs import hookimpl

__all__ = ["kubenetmon_register_commands"]


@hookimpl
def kubenetmon_register_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "demo",
        help="meter a mini-cluster of network namespaces end to end (needs root) and print the top talkers",
        description="Builds two nodes in two zones with pods, a ClusterIP and public hosts (S3 of another "
        "region, the Internet) out of network namespaces; runs one real agent per node and a real gateway "
        "writing into embedded ClickHouse (chDB); generates known traffic; prints the original README's "
        "query and checks the table against the kernels' conntrack counters; removes every namespace. "
        "The data stays for `kubenetmon report`.",
    )
    p.add_argument("--duration", type=float, default=45.0, help="seconds of generated traffic (default 45)")
    p.add_argument("--data-dir", default="/var/lib/kubenetmon/demo",
                   help="where chDB, logs and configs go (default /var/lib/kubenetmon/demo)")
    p.add_argument("--keep-data", action="store_true",
                   help="add to the data of a previous demo instead of starting from an empty table")
    p.add_argument("--interval", type=float, default=1.0, help="agent conntrack interval, seconds (default 1)")

    def run(args: argparse.Namespace) -> int:
        from kubenetmon.demo.run import run_demo

        return run_demo(args)

    p.set_defaults(func=run)
