"""CatalogState.apply: deterministic over random command sequences, failed commands leave no trace,
snapshots round-trip, replayed entries are not applied twice, claims and quotas refuse overuse."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from pydantic import ValidationError

from hvd.catalog import all_commands, quota  # noqa: F401 - all_commands registers the handlers
from hvd.catalog.cmd_hosts import ClaimResources, HostRegister, HostSetEnabled, ReleaseClaim
from hvd.catalog.cmd_identity import (
    ProjectCreate,
    ProjectDelete,
    ProjectUpdate,
    RoleGrant,
    RoleRevoke,
    TokenIssue,
    TokenPurge,
    TokenRevoke,
    UserCreate,
    UserDelete,
    UserUpdate,
)
from hvd.catalog.cmd_resources import (
    FlavorAccess,
    FlavorCreate,
    FlavorDelete,
    FlavorSetSpecs,
    KeypairCreate,
    KeypairDelete,
    QuotaSet,
    ServerGroupCreate,
    ServerGroupDelete,
)
from hvd.catalog.commands import Command, encode, identified, split_identified
from hvd.catalog.db import connect
from hvd.catalog.state import PROPOSAL_MEMORY, PROPOSAL_PRUNE_EVERY, CatalogState, decode_result
from hvd.errors import CapacityExceeded, HvdError, QuotaExceeded

# Small pools of ids and names, so random sequences collide: duplicates, missing references, reuse.
PROJECTS = ["p1", "p2"]
USERS = ["u1", "u2"]
NAMES = ["alpha", "beta", "gamma"]
FLAVORS = ["f1", "f2", "f3"]
HOSTS = ["h1", "h2"]
INSTANCES = ["i1", "i2", "i3", "i4"]
TOKENS = ["t1", "t2", "t3"]
TIMES = ["2026-01-01T00:00:00.000000Z", "2026-06-01T00:00:00.000000Z", "2027-01-01T00:00:00.000000Z"]
ROLES = ["admin", "member", "reader"]

T0 = TIMES[0]

ids = st.sampled_from
small = st.integers(min_value=-2, max_value=40)
text = st.text(alphabet="abc ", max_size=5)
mostly_true = st.sampled_from([True, True, True, False])


def _host(name: str, vcpus: int, ratio: float) -> HostRegister:
    return HostRegister(
        name=name, node_id=f"n-{name}", availability_zone="nova", vcpus=vcpus, memory_mb=4096, disk_gb=100,
        reserved_vcpus=0, reserved_memory_mb=512, reserved_disk_gb=10, cpu_ratio=ratio, ram_ratio=1.5,
        disk_ratio=1.0, hypervisor_type="fake", hypervisor_version="1", arch="x86_64", cpu_model="cpu",
        api_url=f"http://{name}:8774", updated_at=T0,
    )


PROJECT_CREATE = st.builds(ProjectCreate, id=ids(PROJECTS), name=ids(NAMES), description=text,
                           enabled=mostly_true, created_at=ids(TIMES))
USER_CREATE = st.builds(UserCreate, id=ids(USERS), name=ids(NAMES), password_hash=ids(["h-a", "h-b"]),
                        email=text, enabled=mostly_true, created_at=ids(TIMES))
ROLE_GRANT = st.builds(RoleGrant, user_id=ids(USERS), project_id=ids(PROJECTS), role=ids(ROLES))
HOST_REGISTER = st.builds(_host, name=ids(HOSTS), vcpus=st.integers(min_value=1, max_value=8),
                          ratio=ids([1.0, 1.5, 16.0]))
# creations come often enough that later commands find something to act on
SETUP = st.one_of(PROJECT_CREATE, USER_CREATE, ROLE_GRANT, HOST_REGISTER)

COMMANDS: st.SearchStrategy[Command] = st.one_of(
    SETUP,
    SETUP,
    st.builds(ProjectUpdate, id=ids(PROJECTS), name=st.none() | ids(NAMES), description=st.none() | text,
              enabled=st.none() | st.booleans()),
    st.builds(ProjectDelete, id=ids(PROJECTS)),
    st.builds(UserUpdate, id=ids(USERS), password_hash=st.none() | ids(["h-c"]), email=st.none() | text,
              enabled=st.none() | st.booleans()),
    st.builds(UserDelete, id=ids(USERS)),
    st.builds(RoleRevoke, user_id=ids(USERS), project_id=ids(PROJECTS), role=ids(ROLES)),
    st.builds(TokenIssue, token_hash=ids(TOKENS), user_id=ids(USERS), project_id=ids(PROJECTS),
              issued_at=ids(TIMES), expires_at=ids(TIMES)),
    st.builds(TokenRevoke, token_hash=ids(TOKENS)),
    st.builds(TokenPurge, now=ids(TIMES)),
    st.builds(FlavorCreate, id=ids(FLAVORS), name=ids(NAMES), vcpus=small, ram_mb=small, disk_gb=small,
              is_public=st.booleans(), extra_specs=st.dictionaries(ids(["k1", "k2"]), text, max_size=2),
              created_at=ids(TIMES)),
    st.builds(FlavorDelete, id=ids(FLAVORS)),
    st.builds(FlavorSetSpecs, id=ids(FLAVORS), set=st.dictionaries(ids(["k1", "k2"]), text, max_size=2),
              unset=st.lists(ids(["k1", "k2", "k3"]), max_size=2)),
    st.builds(FlavorAccess, flavor_id=ids(FLAVORS), project_id=ids(PROJECTS), grant=st.booleans()),
    st.builds(KeypairCreate, id=ids(["k1", "k2", "k3"]), user_id=ids(USERS), project_id=ids(PROJECTS),
              name=ids(NAMES), public_key=st.just("ssh-ed25519 AAAA"), fingerprint=st.just("SHA256:x"),
              key_type=st.just("ssh-ed25519"), created_at=ids(TIMES)),
    st.builds(KeypairDelete, user_id=ids(USERS), name=ids(NAMES)),
    st.builds(ServerGroupCreate, id=ids(["g1", "g2", "g3"]), project_id=ids(PROJECTS), user_id=ids(USERS),
              name=ids(NAMES), policy=ids(["affinity", "anti-affinity"]), created_at=ids(TIMES)),
    st.builds(ServerGroupDelete, id=ids(["g1", "g2", "g3"])),
    st.builds(QuotaSet, project_id=ids(PROJECTS),
              limits=st.dictionaries(ids(["key_pairs", "server_groups", "cores", "bogus"]),
                                     st.integers(min_value=-3, max_value=3), max_size=3)),
    st.builds(HostSetEnabled, name=ids(HOSTS), enabled=mostly_true, reason=text),
    st.builds(ClaimResources, instance_id=ids(INSTANCES), kind=ids(["instance", "resize"]), host=ids(HOSTS),
              vcpus=st.integers(0, 12), memory_mb=st.integers(0, 6000), disk_gb=st.integers(0, 95),
              created_at=ids(TIMES)),
    st.builds(ReleaseClaim, instance_id=ids(INSTANCES), kind=st.none() | ids(["instance", "resize"])),
)

# entries as the log carries them: encoded commands, plus the odd corrupt or unknown one
ENTRY: st.SearchStrategy[bytes] = st.one_of(
    COMMANDS.map(encode),
    st.sampled_from([b"not json", b'{"type": "no.such"}', b'{"type": "project.delete"}', b"[]"]),
)
# a burst of creations, then anything
ENTRIES: st.SearchStrategy[list[bytes]] = st.builds(
    lambda setup, rest: [encode(c) for c in setup] + rest,
    st.lists(SETUP, min_size=4, max_size=15),
    st.lists(ENTRY, min_size=5, max_size=50),
)


def fresh() -> CatalogState:
    return CatalogState(connect(":memory:"))


def dump(state: CatalogState) -> list[str]:
    return list(state.conn.iterdump())


def dump_without_index(state: CatalogState) -> list[str]:
    return [line for line in dump(state) if not line.startswith('INSERT INTO "meta"')]


def is_error(result: bytes) -> bool:
    return "error" in json.loads(result)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entries=ENTRIES, cuts=st.lists(st.integers(min_value=1, max_value=8), max_size=40))
def test_same_entries_give_identical_databases_and_failures_leave_no_trace(
    entries: list[bytes], cuts: list[int]
) -> None:
    one_by_one, batched = fresh(), fresh()
    results_one = []
    for index, data in enumerate(entries, start=1):
        before = dump_without_index(one_by_one)
        result = one_by_one.apply(index, data)
        results_one.append(result)
        assert one_by_one.applied_index() == index
        if is_error(result):
            assert dump_without_index(one_by_one) == before, f"failed command changed the catalog: {data!r}"
    # the same entries in batches of random sizes (group commit) give the same results and database
    results_batched: list[bytes] = []
    numbered = list(enumerate(entries, start=1))
    cut_iter: Iterator[int] = iter(cuts)
    while numbered:
        size = next(cut_iter, 8)
        batch, numbered = numbered[:size], numbered[size:]
        results_batched.extend(batched.apply_batch([(i, d) for i, d in batch]))
    assert results_batched == results_one
    assert dump(batched) == dump(one_by_one)
    assert batched.conn.execute("PRAGMA foreign_key_check").fetchall() == []


@settings(max_examples=40, deadline=None)
@given(first=st.lists(COMMANDS, min_size=1, max_size=25), then=st.lists(COMMANDS, max_size=10))
def test_snapshot_restore_round_trip(first: list[Command], then: list[Command]) -> None:
    source = fresh()
    for i, cmd in enumerate(first, start=1):
        source.apply(i, encode(cmd))
    index, data = source.snapshot()
    assert index == len(first)
    copy = fresh()
    copy.restore(index, data)
    assert copy.applied_index() == index
    assert dump(copy) == dump(source)
    # both keep evolving identically from the snapshot
    for i, cmd in enumerate(then, start=index + 1):
        assert copy.apply(i, encode(cmd)) == source.apply(i, encode(cmd))
    assert dump(copy) == dump(source)


def test_restore_refuses_a_snapshot_whose_index_does_not_match() -> None:
    source = fresh()
    source.apply(1, encode(ProjectCreate(id="p1", name="a", created_at=T0)))
    index, data = source.snapshot()
    target = fresh()
    with pytest.raises(ValueError, match="does not match"):
        target.restore(index + 1, data)
    assert target.applied_index() == 0


def test_replayed_entries_are_not_applied_twice() -> None:
    state = fresh()
    cmds = [encode(ProjectCreate(id=f"p{i}", name=f"n{i}", created_at=T0)) for i in range(1, 5)]
    state.apply_batch([(1, cmds[0]), (2, cmds[1]), (3, cmds[2])])
    after_three = dump(state)
    # a restart replays 2 and 3 together with the new entry 4
    results = state.apply_batch([(2, cmds[1]), (3, cmds[2]), (4, cmds[3])])
    assert [is_error(r) for r in results] == [True, True, False]
    assert "already applied" in json.loads(results[0])["error"]["message"]
    assert state.applied_index() == 4
    assert state.conn.execute("SELECT COUNT(*) FROM projects").fetchone()[0] == 4
    # replaying only old entries changes nothing at all
    state2 = fresh()
    state2.apply_batch([(1, cmds[0]), (2, cmds[1]), (3, cmds[2])])
    state2.apply_batch([(1, cmds[0]), (3, cmds[2])])
    assert dump(state2) == after_three


def test_a_gap_in_the_log_applies_nothing() -> None:
    state = fresh()
    state.apply(1, encode(ProjectCreate(id="p1", name="a", created_at=T0)))
    before = dump(state)
    with pytest.raises(RuntimeError, match="gap"):
        state.apply_batch([(2, encode(ProjectCreate(id="p2", name="b", created_at=T0))),
                           (4, encode(ProjectCreate(id="p3", name="c", created_at=T0)))])
    assert dump(state) == before


def _result(state: CatalogState, index: int, cmd: Command) -> dict[str, object]:
    return decode_result(state.apply(index, encode(cmd)))


def test_claims_are_refused_beyond_capacity_times_ratio() -> None:
    state = fresh()
    # capacity = (total - reserved) * ratio: vcpus 4 * 1.5 = 6, memory (4096-512) * 1.5 = 5376, disk 90
    _result(state, 1, _host("h1", 4, 1.5))

    def claim(index: int, inst: str, vcpus: int, mem: int = 1, disk: int = 1) -> dict[str, object]:
        return _result(state, index, ClaimResources(instance_id=inst, host="h1", vcpus=vcpus, memory_mb=mem,
                                                    disk_gb=disk, created_at=T0))

    assert claim(2, "i1", 4)["host"] == "h1"
    assert claim(3, "i2", 2)["host"] == "h1"  # exactly at capacity
    with pytest.raises(CapacityExceeded, match=r"host h1 lacks vcpus: requested 1, claimed 6, capacity 6"):
        claim(4, "i3", 1)
    with pytest.raises(CapacityExceeded, match="lacks memory_mb"):
        claim(5, "i4", 0, mem=5377)
    with pytest.raises(CapacityExceeded, match="lacks disk_gb"):
        claim(6, "i5", 0, disk=91)
    assert state.conn.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 2
    # releasing frees the room again
    _result(state, 7, ReleaseClaim(instance_id="i1"))
    assert claim(8, "i3", 4)["host"] == "h1"


def test_quota_error_message_format() -> None:
    state = fresh()
    _result(state, 1, ProjectCreate(id="p1", name="a", created_at=T0))
    with pytest.raises(QuotaExceeded) as err:
        quota.check(state.conn, "p1", "cores", 4, 18)
    assert err.value.message == "Quota exceeded for cores: requested 4, in use 18, limit 20"
    assert err.value.details == {"resource": "cores", "requested": 4, "in_use": 18, "limit": 20}
    quota.check(state.conn, "p1", "cores", 2, 18)  # exactly at the limit is fine
    _result(state, 2, QuotaSet(project_id="p1", limits={"cores": -1}))
    quota.check(state.conn, "p1", "cores", 10**6, 10**6)  # -1 = unlimited


def test_quota_is_enforced_inside_apply_and_survives_the_wire() -> None:
    state = fresh()
    _result(state, 1, ProjectCreate(id="p1", name="a", created_at=T0))
    _result(state, 2, QuotaSet(project_id="p1", limits={"server_groups": 1}))
    _result(state, 3, ServerGroupCreate(id="g1", project_id="p1", user_id="u", name="g", policy="affinity",
                                        created_at=T0))
    with pytest.raises(QuotaExceeded) as err:
        _result(state, 4, ServerGroupCreate(id="g2", project_id="p1", user_id="u", name="g",
                                            policy="affinity", created_at=T0))
    assert err.value.message == "Quota exceeded for server_groups: requested 1, in use 1, limit 1"
    assert err.value.status == 403


def test_corrupt_entry_is_a_typed_refusal_not_a_crash() -> None:
    state = fresh()
    with pytest.raises(HvdError, match="malformed command"):
        decode_result(state.apply(1, b"{"))
    assert state.applied_index() == 1


def test_uncaught_integrity_error_is_a_conflict() -> None:
    state = fresh()
    _result(state, 1, ProjectCreate(id="p1", name="a", created_at=T0))
    # same id, different name: no handler pre-check covers the primary key
    with pytest.raises(HvdError) as err:
        _result(state, 2, ProjectCreate(id="p1", name="b", created_at=T0))
    assert err.value.status == 409
    assert isinstance(state.conn, sqlite3.Connection)


def test_a_resent_proposal_is_applied_once_and_answers_the_first_result() -> None:
    state = fresh()
    pid = b"\x07" * 16
    first = identified(pid, encode(ProjectCreate(id="p1", name="a", created_at=T0)))
    results = state.apply_batch([(1, first), (2, first)])
    assert results[0] == results[1] and not is_error(results[0])
    assert state.conn.execute("SELECT COUNT(*) FROM projects").fetchone()[0] == 1
    # a later copy (another leader appended it again) still finds the first result
    assert state.apply(9, first) == results[0]
    # the same command without an id is a new command: it conflicts instead
    assert is_error(state.apply(10, encode(ProjectCreate(id="p1", name="a", created_at=T0))))
    # a failed first attempt is remembered as failed: the re-send does not turn it into a success
    bad = identified(b"\x08" * 16, encode(ProjectCreate(id="p1", name="a", created_at=T0)))
    assert is_error(state.apply(11, bad)) and state.apply(12, bad) == state.apply(13, bad)


def test_remembered_proposals_are_forgotten_by_index_on_every_replica() -> None:
    a, b = fresh(), fresh()
    old = identified(b"\x01" * 16, encode(ProjectCreate(id="p1", name="a", created_at=T0)))
    for state in (a, b):
        state.apply(1, old)
        # far beyond the memory: the prune runs at the same entry on both replicas
        state.apply(1 + PROPOSAL_MEMORY + PROPOSAL_PRUNE_EVERY, encode(ProjectCreate(id="p2", name="b",
                                                                                      created_at=T0)))
    assert dump(a) == dump(b)
    assert a.conn.execute("SELECT COUNT(*) FROM proposals").fetchone()[0] == 0


def test_identified_rejects_a_malformed_id() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        identified(b"short", b"{}")
    assert split_identified(b'{"type": "x"}') == (None, b'{"type": "x"}')


@pytest.mark.parametrize("error", [
    OverflowError("Python int too large to convert to SQLite INTEGER"), ValueError("bad value"),
    TypeError("not a str"), KeyError("missing"), RecursionError("too deep"), sqlite3.DataError("too long"),
])
def test_a_command_failing_on_its_data_is_a_typed_refusal_and_the_index_advances(
    monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    state = fresh()

    def explode(conn: sqlite3.Connection, cmd: Command) -> dict[str, object]:
        conn.execute("INSERT INTO projects (id, name, description, enabled, created_at) VALUES ('px', 'x', '', 1, '')")
        raise error

    monkeypatch.setattr("hvd.catalog.commands.dispatch", explode)
    with pytest.raises(HvdError, match=type(error).__name__) as err:
        _result(state, 1, ProjectCreate(id="p1", name="a", created_at=T0))
    assert err.value.status == 400
    assert state.applied_index() == 1
    assert state.conn.execute("SELECT COUNT(*) FROM projects").fetchone()[0] == 0  # its write was undone
    monkeypatch.undo()
    _result(state, 2, ProjectCreate(id="p1", name="a", created_at=T0))  # the catalog goes on


def test_an_unstorable_integer_in_a_raw_entry_is_refused_on_every_replica() -> None:
    raw = b'{"type": "quota.set", "project_id": "p1", "limits": {"cores": 18446744073709551616}}'
    results = []
    for state in (fresh(), fresh()):
        results.append(state.apply(1, raw))
        assert state.applied_index() == 1
    assert results[0] == results[1] and is_error(results[0])


def test_a_full_disk_is_raised_not_recorded_and_the_retry_applies_it() -> None:
    state = fresh()
    pages = state.conn.execute("PRAGMA page_count").fetchone()[0]
    state.conn.execute(f"PRAGMA max_page_count={pages + 2}")  # SQLITE_FULL, as on a full disk
    big = ProjectCreate(id="p1", name="a", description="x" * 200_000, created_at=T0)
    # the original error, not "cannot rollback - no transaction is active" from the ROLLBACK after it
    with pytest.raises(sqlite3.OperationalError, match="database or disk is full"):
        state.apply(1, encode(big))
    assert state.applied_index() == 0 and not state.conn.in_transaction
    assert state.conn.execute("SELECT COUNT(*) FROM projects").fetchone()[0] == 0
    state.conn.execute("PRAGMA max_page_count=1073741823")  # space is back: the same entry applies
    _result(state, 1, big)
    assert state.applied_index() == 1


HOSTILE_VALUES = st.one_of(
    st.integers(), st.sampled_from([2**63, 2**64, -(2**63) - 1, 10**30]), st.floats(), st.text(max_size=30),
    st.sampled_from(["2001:db8::5%eth0", "a\x00b", "x" * 5000, "", "10.0.0.0/24"]), st.booleans(), st.none(),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


@st.composite
def hostile_entries(draw: st.DrawFn) -> bytes:
    """Raw bytes, or a command of a registered type (built from its field types where hypothesis can)
    with some fields replaced by hostile values."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=200))
    cls = draw(st.sampled_from(sorted(commands_registry(), key=lambda c: c.__name__)))
    try:
        body = json.loads(encode(draw(st.builds(cls))))
    except (ValidationError, InvalidArgument):  # a field type hypothesis cannot build valid values for
        body = {"type": cls.model_fields["type"].default}
    names = [name for name in cls.model_fields if name != "type"]
    for name in draw(st.lists(st.sampled_from(names), max_size=2)) if names else []:
        body[name] = draw(HOSTILE_VALUES)
    return json.dumps(body, allow_nan=True).encode()


def commands_registry() -> list[type[Command]]:
    from hvd.catalog.commands import _REGISTRY

    return [cls for cls, _ in _REGISTRY.values()]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entries=st.lists(hostile_entries(), min_size=1, max_size=10))
def test_apply_never_raises_on_any_entry_and_the_index_always_advances(entries: list[bytes]) -> None:
    state = fresh()
    for index, data in enumerate(entries, start=1):
        result = json.loads(state.apply(index, data))
        assert set(result) <= {"ok", "error"} and state.applied_index() == index
    assert not state.conn.in_transaction
