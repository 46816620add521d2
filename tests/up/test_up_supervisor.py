"""eucalypt.supervisor: the backoff arithmetic, and a real child process that keeps
crashing soon after it became healthy (the supervisor gives up and says why)."""

from __future__ import annotations

import socket
import sys

from eucalypt.supervisor import Backoff, ChildSpec, RestartPolicy, StartFailed, Supervisor

# A child that answers health checks for a moment, then exits 3.
FLAKY = """
import http.server, sys, threading, time
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Health)
threading.Thread(target=server.serve_forever, daemon=True).start()
print("flaky: serving", flush=True)
time.sleep(float(sys.argv[2]))
sys.exit(3)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_backoff_doubles_caps_and_gives_up_after_fast_crashes_in_a_row():
    policy = RestartPolicy(first_delay=1, max_delay=5, fast_crash_seconds=30, max_fast_crashes=5)
    backoff = Backoff(policy)
    assert [backoff.crashed(1) for _ in range(4)] == [1, 2, 4, 5]
    assert backoff.crashed(1) is None


def test_backoff_a_crash_after_a_long_run_starts_the_count_again():
    backoff = Backoff(RestartPolicy(first_delay=1, fast_crash_seconds=30, max_fast_crashes=3))
    assert backoff.crashed(1) == 1 and backoff.crashed(1) == 2
    assert backoff.crashed(3600) == 1
    assert backoff.fast_crashes == 0
    assert backoff.crashed(1) == 1 and backoff.crashed(1) == 2
    assert backoff.crashed(1) is None


def test_a_child_that_keeps_crashing_is_given_up_on(tmp_path):
    port = _free_port()
    said: list[str] = []
    policy = RestartPolicy(first_delay=0.05, max_delay=0.2, fast_crash_seconds=60, max_fast_crashes=3,
                           start_timeout=30)
    supervisor = Supervisor(tmp_path / "run", tmp_path / "logs", say=said.append, policy=policy, tick=0.05)
    child = supervisor.start(ChildSpec("flaky", (sys.executable, "-c", FLAKY, str(port), "0.5"),
                                       f"http://127.0.0.1:{port}/health"))
    assert (tmp_path / "run" / "flaky.pid").read_text().strip() == str(child.process.pid)
    assert supervisor.run() == 1
    text = "\n".join(said)
    assert text.count("flaky: exited unexpectedly (exit status 3)") == 2
    assert "flaky crashed 3 times in a row" in text and "giving up" in text
    assert "flaky: serving" in text            # the end of the child's log comes with the message
    log = (tmp_path / "logs" / "flaky.log").read_text()
    assert log.splitlines().count("flaky: serving") == 3 and "giving up" in log
    assert not (tmp_path / "run" / "flaky.pid").exists()


def test_a_child_that_dies_while_starting_fails_the_start_with_its_log(tmp_path):
    supervisor = Supervisor(tmp_path / "run", tmp_path / "logs", say=lambda _: None, tick=0.05)
    try:
        supervisor.start(ChildSpec("broken", (sys.executable, "-c", "print('no such thing'); raise SystemExit(2)"),
                                   f"http://127.0.0.1:{_free_port()}/health"))
    except StartFailed as exc:
        assert "broken exited during startup (exit status 2)" in str(exc)
        assert "no such thing" in str(exc)
    else:
        raise AssertionError("StartFailed expected")
    supervisor.stop_all()
