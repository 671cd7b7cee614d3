"""A 3-node NATS JetStream cluster on loopback, for moving the journal off the embedded server.

    python ops/nats_cluster.py start DIR     # prints SOUL_NATS_URL for the three nodes
    python ops/nats_cluster.py status DIR    # one JSON object per node
    python ops/nats_cluster.py stop DIR

Each node gets a config in DIR (client port, cluster port, JetStream store), binds 127.0.0.1
only, and routes to the other two. With `SOUL_NATS_REPLICAS=3` a new journal stream is
replicated to all three, so it survives the loss of any one node. The same configs, with real
host names instead of 127.0.0.1, are a starting point for a cluster across machines.
`cluster.json` keeps each node's pid and start time: `stop` signals only a pid that is still its node.

Durability is JetStream's default, unchanged here: an R3 write is acknowledged once two of the three
nodes have written it to their store, through the OS's page cache; each node fsyncs every
`sync_interval` (2 min by default), not per write. So the acknowledged journal survives kill -9 of
any node, but three nodes on one machine share its power: a crash of the machine (or VM) itself can
lose up to the last interval of acknowledged writes. `sync_interval: always` in the `jetstream`
block closes that at a price (here it cut raw R3 publishes one at a time from ~735/s to ~300/s).
Nothing else in these configs bears on write speed: route compression off, one route per pair
instead of three, GOMAXPROCS 1 or 2 measured the same (ops/bench/cluster_bench.py measures R3 here).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable from a checkout without an editable install
    sys.path.insert(0, str(ROOT))

from journal.embedded import free_port, port_open, nats_server_binary, same_process, started_at, stop_process  # noqa: E402

NODES = ("n1", "n2", "n3")
RouteVia = Callable[[str, str, int], int]  # (node, other, other's route port) -> the port node dials


def config(folder: Path, name: str, ports: dict[str, tuple[int, int]], via: RouteVia | None = None) -> str:
    client, route = ports[name]
    dial = via or (lambda _node, _other, port: port)
    routes = ", ".join(f"nats-route://127.0.0.1:{dial(name, other, ports[other][1])}"
                       for other in NODES if other != name)
    # Routed through `via`, a node must not be reached at its real route port: servers gossip the
    # address they advertise and dial it directly (an implicit route past the cut). Port 1 refuses.
    hidden = ", advertise: 127.0.0.1:1" if via else ""
    return (
        f"server_name: {name}\n"
        f"listen: 127.0.0.1:{client}\n"
        f'jetstream {{ store_dir: "{folder / name}" }}\n'
        f"cluster {{ name: soul, listen: 127.0.0.1:{route}, routes: [{routes}]{hidden} }}\n"
    )


def start(folder: Path, timeout: float = 30.0, via: RouteVia | None = None) -> str:
    """The cluster's URL, starting it first if needed. `via` sends each route through another port
    (tests/system/test_cluster.py puts a proxy there that it can cut: a partition between live nodes)."""
    folder.mkdir(parents=True, exist_ok=True)
    state_file = folder / "cluster.json"
    if state_file.exists() and all(n["running"] for n in status(folder)):
        return url(json.loads(state_file.read_text()))
    picked = distinct_ports(2 * len(NODES))
    ports = {name: (picked[2 * i], picked[2 * i + 1]) for i, name in enumerate(NODES)}
    nodes, processes = {}, []
    for name in NODES:
        conf = folder / f"{name}.conf"
        conf.write_text(config(folder, name, ports, via))
        process = subprocess.Popen(
            [str(nats_server_binary()), "-c", str(conf), "-l", str(folder / f"{name}.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        processes.append(process)
        nodes[name] = {"pid": process.pid, "started": started_at(process.pid), "port": ports[name][0]}
        state_file.write_text(json.dumps(nodes))  # as each starts: a failed start can stop those already running
    deadline = time.monotonic() + timeout
    while True:
        # A node that could not bind a port (taken meanwhile) exits: leave no half cluster behind.
        if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
            stop(folder)
            raise SystemExit(f"the cluster did not start; see the logs in {folder}")
        if all(port_open(port) for pair in ports.values() for port in pair):
            break
        time.sleep(0.05)
    return url(nodes)


def distinct_ports(count: int) -> list[int]:
    """`count` different free ports. Each `free_port` is free when asked, but the kernel may hand
    the same one out again once its socket is closed: two nodes given one port fail to start."""
    picked: list[int] = []
    while len(picked) < count:
        port = free_port()
        if port not in picked:
            picked.append(port)
    return picked


def url(nodes: dict[str, dict[str, float]]) -> str:
    return ",".join(f"nats://127.0.0.1:{n['port']}" for n in nodes.values())


def started_nodes(folder: Path) -> dict[str, dict[str, float]]:
    """What `start` wrote of each node: pid, start time, client port."""
    try:
        return json.loads((folder / "cluster.json").read_text())
    except FileNotFoundError:
        return {}


def status(folder: Path) -> list[dict[str, object]]:
    nodes = started_nodes(folder)
    return [
        {"node": name, "pid": n["pid"], "port": n["port"],
         "running": same_process(int(n["pid"]), n.get("started"), named=str(folder / f"{name}.conf"))
         and port_open(n["port"])}
        for name, n in nodes.items()
    ]


def stop(folder: Path) -> None:
    for name, n in started_nodes(folder).items():  # a pid another process has taken since is left alone
        stop_process(int(n["pid"]), n.get("started"), signal.SIGTERM, signal.SIGKILL, 15.0,
                     named=str(folder / f"{name}.conf"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["start", "status", "stop"])
    parser.add_argument("folder", type=Path, help="where the configs, stores and logs live")
    args = parser.parse_args()
    if args.action == "start":
        print(start(args.folder))
    elif args.action == "status":
        for node in status(args.folder):
            print(json.dumps(node))
    else:
        stop(args.folder)


if __name__ == "__main__":
    main()
