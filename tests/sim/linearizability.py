"""A Wing & Gong / Lowe style linearizability checker for a key/value register history.

Each key is an independent register, so the history is partitioned by key (as Porcupine does)
and each part is searched separately: depth-first over "which pending operation takes effect
next", memoising (set of linearized ops, register value) to prune repeated states.
"""

from __future__ import annotations

from dataclasses import dataclass

INFINITY = 1 << 62  # return time of an operation whose outcome the client never learned


@dataclass(frozen=True, slots=True)
class Op:
    """One client operation. ``call``/``ret`` are from one global monotonic event counter."""

    client: int
    key: str
    kind: str  # "put" or "get"
    value: str  # put: the value written; get: the value observed
    call: int
    ret: int = INFINITY


def _check_register(ops: list[Op], max_states: int) -> bool | None:
    ops = sorted(ops, key=lambda o: o.call)
    n = len(ops)
    must = 0  # every completed op has to be linearized; pending puts may never have happened
    for i, o in enumerate(ops):
        if o.ret != INFINITY:
            must |= 1 << i
    seen: set[tuple[int, str]] = set()
    stack: list[tuple[int, str]] = [(0, "")]
    while stack:
        done, value = stack.pop()
        if done & must == must:
            return True
        if (done, value) in seen:
            continue
        seen.add((done, value))
        if len(seen) > max_states:
            return None
        # an op may go next only if no other remaining op returned before it was called
        min_ret = min(ops[i].ret for i in range(n) if not done >> i & 1)
        for i in range(n):
            if done >> i & 1:
                continue
            o = ops[i]
            if o.call > min_ret:
                break
            if o.kind == "put":
                stack.append((done | 1 << i, o.value))
            elif o.value == value:
                stack.append((done | 1 << i, value))
    return False


def check_linearizable(history: list[Op], max_states: int = 200_000) -> tuple[bool, str]:
    """(ok, explanation). An undecided search (more than ``max_states`` states) is a failure: a
    history the checker cannot vouch for proves nothing."""
    by_key: dict[str, list[Op]] = {}
    for op in history:
        by_key.setdefault(op.key, []).append(op)
    for key, ops in sorted(by_key.items()):
        ok = _check_register(ops, max_states)
        if ok is False:
            lines = [
                f"  c{o.client} {o.kind}({o.value!r}) [{o.call}, {'inf' if o.ret == INFINITY else o.ret}]"
                for o in sorted(ops, key=lambda o: o.call)
            ]
            return False, f"history of key {key!r} is not linearizable:\n" + "\n".join(lines)
        if ok is None:
            return False, f"key {key!r}: undecided, the search exceeded {max_states} states ({len(ops)} ops)"
    return True, ""
