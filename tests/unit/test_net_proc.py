"""The network layer's command runner: a tool that hangs is killed and reported, never waited on."""

from __future__ import annotations

import pytest

from hvd.net.proc import CommandFailed, run


async def test_a_hung_command_is_killed_after_its_timeout() -> None:
    with pytest.raises(CommandFailed, match="no answer within 0 s: killed") as failed:
        await run(["sleep", "30"], timeout=0.3)
    assert failed.value.returncode == -9  # killed, not waited for


async def test_a_quick_command_answers() -> None:
    assert (await run(["echo", "hi"])).stdout == "hi\n"
