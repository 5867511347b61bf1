"""Five real daemons on loopback: time from ``kill -9`` until every other daemon declares the victim
dead, from the ``host.state`` events each daemon publishes on /v1/events (their own timestamps, same
machine clock). Used by ``python bench/gossip.py --real``; runs alone too: ``python bench/gossip_real.py``.
"""

from __future__ import annotations

import json
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.functional.test_gossip_daemons import NODES, GossipCluster, start_five


class DeathWatch:
    """Follows one daemon's /v1/events; remembers when it declared each member dead."""

    def __init__(self, cluster: GossipCluster, observer: str) -> None:
        self.observer = observer
        self.dead_at: dict[str, float] = {}
        token = cluster.tokens.get(observer) or (cluster.call(observer, "GET", "/v1/hosts") and
                                                 cluster.tokens[observer])
        self._resp = requests.get(cluster.url(observer) + "/v1/events", stream=True, timeout=(5, None),
                                  headers={"Authorization": f"Bearer {token}"})
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for line in self._resp.iter_lines():
                if not line.startswith(b"data: "):
                    continue
                event = json.loads(line[6:])
                if (event.get("type") == "host.state" and event.get("host") == self.observer
                        and event.get("state") == "dead"):
                    self.dead_at[event["member"]] = float(event["time"])
        except (requests.RequestException, ValueError, AttributeError):
            return  # AttributeError: urllib3 read from a response close() shut under this thread

    def close(self) -> None:
        self._resp.close()


def kill_detection(trials: int = 10) -> list[float]:
    """Seconds from kill -9 to "dead" at the last of the other four daemons, per trial."""
    with tempfile.TemporaryDirectory(prefix="hvd-gossip-bench-") as tmp:
        cluster = start_five(Path(tmp))
        try:
            cluster.wait("all alive", lambda: all(cluster.all_see(NODES, n, "alive") for n in NODES), 120)
            times = []
            for trial in range(trials):
                victim = NODES[trial % len(NODES)]
                others = [n for n in NODES if n != victim]
                watches = [DeathWatch(cluster, o) for o in others]
                time.sleep(1.0)  # the streams are subscribed
                killed = time.time()
                cluster.stop(victim, signal.SIGKILL)
                cluster.wait("all see it dead", lambda w=watches, v=victim: all(v in x.dead_at for x in w), 120)
                times.append(max(w.dead_at[victim] for w in watches) - killed)
                for w in watches:
                    w.close()
                cluster.start(victim)
                cluster.tokens.pop(victim, None)
                cluster.wait("alive again", lambda v=victim, o=others: cluster.all_see(o, v, "alive"), 120)
                cluster.wait_ready(NODES, timeout=120)  # its API serves too (gossip starts before it)
                print(f"  trial {trial + 1}: {victim} dead everywhere after {times[-1]:.2f} s", flush=True)
            return times
        finally:
            for node in list(cluster.procs):
                cluster.stop(node, signal.SIGKILL)


if __name__ == "__main__":
    results = kill_detection()
    print(f"median {statistics.median(results):.2f} s, max {max(results):.2f} s over {len(results)} trials")
