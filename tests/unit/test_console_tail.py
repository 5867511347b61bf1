"""The console log reader returns only the tail of the file (and of its newest rotated backup),
with whole lines, and never more than its byte cap."""

from __future__ import annotations

from pathlib import Path

from hvd.drivers.console import read_console_tail


def test_missing_log_is_empty(tmp_path: Path) -> None:
    assert read_console_tail(tmp_path / "console.log") == ""


def test_small_log_is_returned_whole_and_lines_tail_it(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_text("a\nb\nc\n")
    assert read_console_tail(log) == "a\nb\nc\n"
    assert read_console_tail(log, lines=2) == "b\nc\n"
    assert read_console_tail(log, max_bytes=6) == "a\nb\nc\n"  # exactly the cap: nothing cut


def test_big_log_gives_only_the_last_bytes_in_whole_lines(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_text("".join(f"line {n:06d}\n" for n in range(100_000)))  # 1.2 MB
    text = read_console_tail(log, max_bytes=1000)
    assert len(text.encode()) <= 1000
    assert text.endswith("line 099999\n")
    assert all(line.startswith("line ") and len(line) == 11 for line in text.splitlines())
    assert read_console_tail(log, lines=1, max_bytes=1000) == "line 099999\n"


def test_a_just_rotated_log_is_continued_from_its_backup(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    (tmp_path / "console.log.1").write_text("old 1\nold 2\n")
    log.write_text("new 1\n")
    assert read_console_tail(log) == "old 1\nold 2\nnew 1\n"
    assert read_console_tail(log, max_bytes=12) == "old 2\nnew 1\n"  # the cut line is dropped
    (tmp_path / "console.log.2").write_text("older\n")
    assert "older" not in read_console_tail(log)  # one backup at most


def test_virtlogd_names_its_newest_backup_dot_zero(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    (tmp_path / "console.log.0").write_text("newest backup\n")
    (tmp_path / "console.log.1").write_text("older backup\n")
    log.write_text("live\n")
    assert read_console_tail(log) == "newest backup\nlive\n"


def test_invalid_utf8_is_replaced(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_bytes(b"boot \xff\xfe ok\n")
    assert read_console_tail(log) == "boot \ufffd\ufffd ok\n"
