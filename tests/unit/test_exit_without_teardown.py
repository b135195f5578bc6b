"""`docpipe` commands and workers end without the teardown, yet do what an exit owes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

EXITING = textwrap.dedent(
    """
    import atexit, sys, threading, time
    from pathlib import Path
    from pipeline.console import exit_without_teardown

    out = Path(sys.argv[1])

    def late_writer():
        time.sleep(0.3)
        (out / "thread").write_text("joined")

    class Teardown:
        def __del__(self):
            (out / "teardown").write_text("ran")

    keep = Teardown()  # collected only by the interpreter's teardown
    threading.Thread(target=late_writer).start()
    atexit.register(lambda: (out / "atexit").write_text("ran"))
    sys.stdout.write("buffered, no newline")
    exit_without_teardown(3)
    """
)


def test_exit_joins_threads_runs_atexit_flushes_and_skips_the_teardown(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", EXITING, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 3, result.stderr
    assert result.stdout == "buffered, no newline"
    assert (tmp_path / "thread").read_text() == "joined"
    assert (tmp_path / "atexit").read_text() == "ran"
    assert not (tmp_path / "teardown").exists()
