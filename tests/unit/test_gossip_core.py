"""The pure gossip core, message by message: probes, indirect probes, suspicion, refutation, reports."""

from __future__ import annotations

import math
import random
from typing import Any

from hvd.cluster.gossip.broadcast import BroadcastQueue
from hvd.cluster.gossip.core import ALIVE, DEAD, LEFT, SUSPECT, CoreConfig, GossipCore
from hvd.cluster.gossip.lifeguard import Awareness, Suspicion, remaining_suspicion, retransmit_limit

CONFIG = CoreConfig()


def record(name: str, inc: int = 0, state: str = ALIVE) -> dict[str, Any]:
    return {"node": name, "addr": [name, 7946], "inc": inc, "state": state, "report": {"id": name}}


def core(name: str = "a", others: tuple[str, ...] = ("b", "c", "d", "e"), now: float = 0.0) -> GossipCore:
    return GossipCore(name, (name, 7946), {"id": name}, CONFIG, random.Random(1), now,
                      known=[record(o) for o in others])


def run(c: GossipCore, start: float, end: float) -> None:
    """Tick regularly (a long silence between ticks reads as a stall of this process)."""
    t = start
    while t < end:
        t += 0.05
        c.tick(t)


def sent(c: GossipCore) -> list[tuple[str, list[dict[str, Any]]]]:
    return [(addr[0], msgs) for addr, msgs in c.take_outgoing()]


def kinds(packets: list[tuple[str, list[dict[str, Any]]]]) -> list[tuple[str, str]]:
    return [(dst, m["t"]) for dst, msgs in packets for m in msgs]


def test_a_ping_for_us_is_acked_and_one_for_someone_else_is_ignored() -> None:
    c = core()
    c.take_outgoing()
    c.receive(("b", 7946), "b", [{"t": "ping", "seq": 7, "node": "a"}], 0.1)
    out = sent(c)
    assert out[0][0] == "b" and out[0][1][0] == {"t": "ack", "seq": 7}
    c.receive(("b", 7946), "b", [{"t": "ping", "seq": 8, "node": "zz"}], 0.1)
    assert not [m for _, msgs in sent(c) for m in msgs if m["t"] == "ack"]


def _start_probe(c: GossipCore) -> tuple[str, int, float]:
    t = 0.0
    while True:
        t += 0.01
        c.tick(t)
        for dst, msgs in sent(c):
            for m in msgs:
                if m["t"] == "ping":
                    return dst, int(m["seq"]), t


def test_an_acked_probe_raises_no_suspicion() -> None:
    c = core()
    target, seq, t = _start_probe(c)
    c.receive((target, 7946), target, [{"t": "ack", "seq": seq}], t + 0.01)
    c.tick(t + 2)
    assert c.state_of(target) == ALIVE
    assert not c.take_events()


def test_a_silent_target_gets_indirect_probes_then_becomes_suspect() -> None:
    c = core()
    target, seq, t = _start_probe(c)
    c.tick(t + CONFIG.probe_timeout + 0.001)
    preqs = [(dst, m) for dst, msgs in sent(c) for m in msgs if m["t"] == "preq"]
    assert len(preqs) == CONFIG.indirect_checks
    assert all(m["node"] == target and m["seq"] == seq and dst != target for dst, m in preqs)
    c.tick(t + CONFIG.probe_interval + 0.001)
    assert c.state_of(target) == SUSPECT
    events = c.take_events()
    assert [(e.name, e.state, e.previous) for e in events] == [(target, SUSPECT, ALIVE)]


def test_an_indirect_ack_saves_the_target() -> None:
    c = core()
    target, seq, t = _start_probe(c)
    c.tick(t + CONFIG.probe_timeout + 0.001)
    helper = next(dst for dst, msgs in sent(c) for m in msgs if m["t"] == "preq")
    c.receive((helper, 7946), helper, [{"t": "ack", "seq": seq}], t + CONFIG.probe_timeout + 0.01)
    c.tick(t + CONFIG.probe_interval + 0.01)
    assert c.state_of(target) == ALIVE


def test_a_helper_forwards_the_ack_or_nacks_at_its_deadline() -> None:
    c = core()
    c.tick(0.5)
    c.tick(1.0)  # a regular tick: a long silence would read as a stall, which drops relays
    c.take_outgoing()
    c.receive(("b", 7946), "b", [{"t": "preq", "seq": 41, "node": "d", "addr": ["d", 7946], "nack": True}], 1.0)
    ping = next(m for dst, msgs in sent(c) for m in msgs if m["t"] == "ping" and dst == "d")
    c.receive(("d", 7946), "d", [{"t": "ack", "seq": ping["seq"]}], 1.01)
    assert ("b", {"t": "ack", "seq": 41}) in [(dst, msgs[0]) for dst, msgs in sent(c)]
    c.tick(1.5)
    c.tick(2.0)
    c.receive(("b", 7946), "b", [{"t": "preq", "seq": 42, "node": "e", "addr": ["e", 7946], "nack": True}], 2.0)
    sent(c)
    c.tick(2.0 + CONFIG.probe_timeout + 0.001)
    assert ("b", {"t": "nack", "seq": 42}) in [(dst, msgs[0]) for dst, msgs in sent(c)]


def test_missing_nacks_lower_our_own_health_and_slow_our_probes() -> None:
    c = core()
    _, _, t = _start_probe(c)
    c.tick(t + CONFIG.probe_interval + 0.001)  # no ack, no nack: our network looks broken
    assert c.awareness.score == CONFIG.indirect_checks
    assert c.awareness.scale(CONFIG.probe_interval) == CONFIG.probe_interval * (CONFIG.indirect_checks + 1)


def test_a_member_refutes_its_own_suspicion_with_a_higher_incarnation_and_answers_the_accuser() -> None:
    c = core()
    c.take_outgoing()
    c.receive(("b", 7946), "b", [{"t": "suspect", "node": "a", "inc": 0, "from": "b"}], 1.0)
    assert c.incarnation == 1
    assert c.counters.values["refutes"] == 1
    direct = [m for dst, msgs in sent(c) if dst == "b" for m in msgs if m["t"] == "alive"]
    assert direct and direct[0]["inc"] == 1
    c.receive(("b", 7946), "b", [{"t": "dead", "node": "a", "inc": 1, "from": "b"}], 1.1)
    assert c.incarnation == 2 and c.state_of("a") == ALIVE


def test_an_accuser_with_stale_news_is_sent_the_refutation_it_missed() -> None:
    c = core()
    c.receive(("b", 7946), "b", [{"t": "alive", "node": "d", "inc": 3, "addr": ["d", 7946], "report": {}}], 1.0)
    c.take_outgoing()
    c.receive(("e", 7946), "e", [{"t": "suspect", "node": "d", "inc": 2, "from": "e"}], 1.1)
    assert c.state_of("d") == ALIVE
    assert next(msgs[0] for dst, msgs in sent(c) if dst == "e")["inc"] == 3


def test_suspicion_times_out_to_dead_and_a_newer_alive_cancels_it() -> None:
    c = core()
    c.receive(("b", 7946), "b", [{"t": "suspect", "node": "d", "inc": 0, "from": "b"}], 1.0)
    c.receive(("b", 7946), "b", [{"t": "suspect", "node": "e", "inc": 0, "from": "b"}], 1.0)
    c.receive(("e", 7946), "e", [{"t": "alive", "node": "e", "inc": 1, "addr": ["e", 7946], "report": {}}], 1.1)
    assert c.state_of("e") == ALIVE  # refuted
    c.take_events()
    run(c, 1.0, 1.0 + 3 * CONFIG.suspicion_mult * CONFIG.probe_interval * CONFIG.suspicion_max_mult)
    assert c.state_of("d") == DEAD
    assert ("d", DEAD) in [(e.name, e.state) for e in c.take_events()]


def test_old_incarnations_are_ignored() -> None:
    c = core()
    c.receive(("d", 7946), "d", [{"t": "alive", "node": "d", "inc": 5, "addr": ["d", 7946], "report": {}}], 1.0)
    c.receive(("b", 7946), "b", [{"t": "dead", "node": "d", "inc": 4, "from": "b"}], 1.1)
    assert c.state_of("d") == ALIVE


def test_a_dead_message_from_the_member_itself_means_left() -> None:
    c = core()
    c.receive(("d", 7946), "d", [{"t": "dead", "node": "d", "inc": 0, "from": "d"}], 1.0)
    assert c.state_of("d") == LEFT


def test_leave_tells_every_live_member_at_once_and_stops() -> None:
    c = core()
    c.take_outgoing()
    c.leave(1.0)
    out = sent(c)
    assert sorted(dst for dst, _ in out) == ["b", "c", "d", "e"]
    assert all(msgs[0] == {"t": "dead", "node": "a", "inc": 0, "from": "a"} for _, msgs in out)
    c.tick(5.0)
    assert not c.take_outgoing()


def test_a_member_we_hold_dead_is_told_so_when_it_talks() -> None:
    c = core()
    c.receive(("b", 7946), "b", [{"t": "dead", "node": "d", "inc": 0, "from": "b"}], 1.0)
    c.take_outgoing()
    c.receive(("d", 7946), "d", [{"t": "ping", "seq": 1, "node": "a"}], 2.0)
    told = [m for dst, msgs in sent(c) if dst == "d" for m in msgs if m["t"] == "dead"]
    assert told and told[0]["node"] == "d"


def test_push_pull_merge_treats_a_remote_dead_as_a_suspicion_and_learns_new_members() -> None:
    c = core()
    state = {"from": "b", "members": [record("d", 0, DEAD), record("new", 2), record("e", 0, LEFT)]}
    c.merge_state(state, 1.0)
    assert c.state_of("d") == SUSPECT
    assert c.state_of("new") == ALIVE
    assert c.state_of("e") == LEFT
    assert {m["node"] for m in c.push_pull_state()["members"]} >= {"a", "b", "new"}


def test_push_pull_telling_a_restarted_member_it_is_dead_makes_it_refute() -> None:
    c = GossipCore("d", ("d", 7946), {"id": "d"}, CONFIG, random.Random(1), 0.0)  # a fresh process
    c.merge_state({"from": "b", "members": [record("b"), record("d", 7, DEAD)]}, 0.5)
    assert c.incarnation == 8


def test_a_significant_report_change_is_announced_with_a_floor_and_load_jitter_is_not() -> None:
    c = core(now=0.0)
    c.tick(CONFIG.report_min_interval)
    assert c.update_report({"id": "a", "vcpus_free": 3}, CONFIG.report_min_interval) is True
    assert c.incarnation == 1
    assert c.update_report({"id": "a", "vcpus_free": 2}, CONFIG.report_min_interval + 0.1) is True
    assert c.incarnation == 1  # inside the floor: waits
    c.tick(2 * CONFIG.report_min_interval + 0.01)
    assert c.incarnation == 2 and c.me.report["vcpus_free"] == 2
    assert c.update_report({"id": "a", "vcpus_free": 2, "load": 0.3}, 10.0) is False


def test_a_stall_is_our_fault_not_the_probe_targets() -> None:
    c = core()
    target, _, t = _start_probe(c)
    c.tick(t + 30.0)  # the process was stopped for 30 s
    assert c.state_of(target) == ALIVE
    assert c.counters.values["stalls"] == 1
    assert c.awareness.score == 1


def test_malformed_messages_are_counted_not_raised() -> None:
    c = core()
    c.receive(("b", 7946), "b", [{"t": "ping"}, {"t": "alive", "node": "x"}, {"t": "what"}], 1.0)
    assert c.counters.values["malformed_messages"] == 2
    assert c.counters.values["unknown_messages"] == 1


def test_suspicion_timeout_formula_matches_lifeguard() -> None:
    assert remaining_suspicion(0, 3, 0.0, 2.0, 12.0) == 12.0
    assert math.isclose(remaining_suspicion(1, 3, 0.0, 2.0, 12.0), 12.0 - 0.5 * 10.0)
    assert remaining_suspicion(3, 3, 1.0, 2.0, 12.0) == 1.0
    s = Suspicion("b", 2, 2.0, 12.0, now=0.0)
    assert s.deadline == 12.0
    assert s.confirm("b", 1.0) is False  # the first accuser does not confirm itself
    assert s.confirm("c", 1.0) is True and s.deadline < 12.0
    assert s.confirm("c", 1.5) is False
    assert s.confirm("d", 2.0) is True and s.deadline == 2.0
    assert retransmit_limit(4, 9) == 4 and retransmit_limit(4, 10) == 8 and retransmit_limit(4, 1000) == 16


def test_awareness_stays_in_bounds() -> None:
    a = Awareness(8)
    a.apply(-3)
    assert a.score == 0
    a.apply(100)
    assert a.score == 7 and a.scale(1.0) == 8.0


def test_broadcast_queue_replaces_per_member_orders_by_transmits_and_respects_the_budget() -> None:
    q = BroadcastQueue()
    q.queue("x", {"t": "suspect", "node": "x"})
    q.queue("x", {"t": "alive", "node": "x"})
    q.queue("y", {"t": "alive", "node": "y", "report": {"pad": "p" * 100}})
    assert len(q) == 2
    first = q.take(1000, limit=2)
    assert {m["node"] for m in first} == {"x", "y"} and all(m["t"] == "alive" for m in first)
    assert [m["node"] for m in q.take(40, limit=2)] == ["x"]  # y no longer fits
    assert len(q) == 1
    assert [m["node"] for m in q.take(40, limit=2, fresh_packet=True)] == ["y"]  # too big: goes alone
    assert len(q) == 0
