"""Every action refused from every reachable state answers 409 and changes nothing (fake driver)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hvd.compute import lifecycle
from hvd.compute.lifecycle import Op, VmState
from tests.conftest import Api
from tests.functional.compute_helpers import action, make_flavor, make_qcow2, upload_image

# how to bring a fresh ACTIVE server into each state, and the API action of each Op
REACH: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "active": [],
    "stopped": [("stop", {})],
    "paused": [("pause", {})],
    "suspended": [("suspend", {})],
    "rescued": [("rescue", {})],
    "resized": [("resize", {"flavor": "m1.small"})],
    "shelved_offloaded": [("shelve", {})],
}
BODIES: dict[Op, dict[str, Any]] = {
    Op.REBUILD: {"image": "base"},
    Op.RESIZE: {"flavor": "m1.other"},
    Op.SNAPSHOT: {"name": "s"},
}
API_OPS = [op for op in Op if op not in (Op.LAUNCH, Op.DELETE, Op.SHELVE_OFFLOAD, Op.REBOOT_HARD)]


async def test_refused_actions_change_nothing(admin_api: Api, tmp_path: Path) -> None:
    await upload_image(admin_api, make_qcow2(tmp_path / "b.qcow2"), name="base")
    await make_flavor(admin_api)
    await make_flavor(admin_api, name="m1.small", ram_mb=256)
    await make_flavor(admin_api, name="m1.other", ram_mb=192)
    checked = 0
    for state, steps in REACH.items():
        _, server = await admin_api.call("POST", "/v1/servers?wait=true",
                                         {"name": f"t-{state}", "flavor": "m1.tiny", "image": "base"})
        sid = server["id"]
        for name, body in steps:
            status, out = await action(admin_api, sid, name, body)
            assert status == 202, out
        _, before = await admin_api.call("GET", f"/v1/servers/{sid}")
        assert before["vm_state"] == state, before
        for op in API_OPS:
            if lifecycle.is_allowed(op, VmState(state), None):
                continue
            status, err = await action(admin_api, sid, op.value, BODIES.get(op, {}), wait=False)
            assert status == 409, (state, op, err)
            assert f"Cannot '{op.value}' instance {sid} while it is in vm_state {state}" in err["error"]["message"]
            _, after = await admin_api.call("GET", f"/v1/servers/{sid}")
            assert (after["vm_state"], after["task_state"], after["power_state"]) == (
                before["vm_state"], None, before["power_state"]), (state, op)
            checked += 1
        await admin_api.call("DELETE", f"/v1/servers/{sid}?wait=true")
    assert checked > 60
