"""The Ray dashboard of a live run, in a real browser.

A default training run (dashboard on, bound to 127.0.0.1) is started through the CLI; while it
trains, headless Chromium (Debian's ``chromium``) renders the dashboard's Jobs and Actors pages,
and the run's driver and every named actor of its ``actors.json`` must appear in the rendered DOM.
The dashboard's HTTP API is checked first, so a failure says which side is wrong: Ray's state, or
the page. Ray enables token authentication for a new local cluster: the browser carries the token
(from ``ray get-auth-token``) in the cookie the dashboard's own login dialog would set. The Actors view is saved as a PNG; ``RLPLAT_DASHBOARD_SCREENSHOT=docs/dashboard_actors.png``
regenerates the one in the README.

Chromium missing: a skip on a developer's machine, a failure under CI (``CI`` set; ``.ci/run``
installs it), so the browser check can never silently drop out of CI.
"""
import http.server
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

import pytest

from tests.conftest import own_cluster_env
from tests.test_e2e import ROOT, SMALL
from tests.test_ray_job import BIN

pytestmark = pytest.mark.runtime
WINDOW = (1400, 900)
STARTUP_S = 600  # building the actors on a loaded 2-core machine; the run itself lives until killed


@pytest.fixture
def chromium():
    path = shutil.which("chromium")
    if path is None:
        message = "Debian's chromium is not installed (apt-get install -y --no-install-recommends chromium)"
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(f"{message}; .ci/run installs it, so under CI this is a broken setup, not a skip")
        pytest.skip(message)
    return path


class LiveRun:
    """``python -m launch.train`` in its own session, its output collected by a thread (a full pipe
    would stall the driver), stopped with SIGINT then its whole process group (the embedded Ray)."""

    def __init__(self, out):
        self.out = out
        cmd = [sys.executable, "-m", "launch.train", "--config", "configs/grpo.yaml", f"trainer.output_dir={out}",
               "trainer.max_steps=10000", "trainer.save_every=0", "rollout.backend=hf", *SMALL]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=own_cluster_env(), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self._reader.start()

    def log(self) -> str:
        return "".join(self.lines)

    def wait_for(self, prefix: str) -> str:
        """The first driver-log line starting with ``prefix``, once the run has printed it."""
        deadline = time.time() + STARTUP_S
        while time.time() < deadline:
            line = next((ln for ln in list(self.lines) if ln.startswith(prefix)), None)
            if line:
                return line.strip()
            assert self.proc.poll() is None, f"the run exited ({self.proc.returncode}) before {prefix!r}:\n{self.log()[-6000:]}"
            time.sleep(1)
        pytest.fail(f"no {prefix!r} line within {STARTUP_S} s:\n{self.log()[-6000:]}")

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGINT)  # KeyboardInterrupt: the controller shuts its actors down
            self.proc.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:  # whatever is left of the embedded cluster
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=60)


def auth_token():
    """The cluster's token as a user gets it, or None where token authentication is off."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return None
    proc = subprocess.run([f"{BIN}/ray", "get-auth-token"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip(), proc.stdout + proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def get_json(url: str, token):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as r:
        return json.loads(r.read())


class Login:
    """A page on another 127.0.0.1 port that stores the token in the dashboard's cookie (cookies are
    per host, not per port) and goes on to ``?to=<dashboard URL>``: what the login dialog does."""

    def __init__(self, token):
        page = ("<script>document.cookie = 'ray-authentication-token=%s; path=/; SameSite=Lax';"
                "location.replace(new URLSearchParams(location.search).get('to'));</script>" % (token or ""))

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.end_headers()
                self.wfile.write(page.encode())

            def log_message(self, *args):
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, target: str) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/?to={urllib.parse.quote(target, safe='')}"

    def close(self) -> None:
        self.server.shutdown()


def browse(chromium: str, profile, url: str, *action: str) -> subprocess.CompletedProcess:
    """Headless Chromium on ``url``; the dashboard is a React app, so give it virtual time to fetch
    and render before ``action`` (``--dump-dom`` or ``--screenshot=...``)."""
    cmd = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}", "--hide-scrollbars",
           "--virtual-time-budget=15000", *action, url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr[-3000:]}"
    return proc


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def rendered(chromium, login, tmp_path, url: str, page: str) -> str:
    """The DOM of the dashboard's ``#/<page>`` view once rendered, also saved as ``<page>.html``."""
    dom = browse(chromium, tmp_path / f"profile-{page}", login.url(f"{url}/#/{page}"), "--dump-dom").stdout
    (tmp_path / f"{page}.html").write_text(dom)
    for prompt in ("Token authentication is enabled", "The existing authentication token is invalid"):
        assert prompt not in dom, f"the dashboard asks for a token ({prompt!r}): the browser's cookie was refused"
    return dom


def test_live_run_dashboard_shows_job_and_named_actors(tmp_path, tiny_models, chromium):
    started = time.time()
    run = LiveRun(tmp_path / "run")
    login = None
    try:
        url = run.wait_for("rlplat: dashboard ").split()[-1]
        assert url.startswith("http://127.0.0.1:"), url  # bound to loopback, never a public interface
        run.wait_for("step ")  # every actor is up and the run trains
        names = json.loads((tmp_path / "run" / "actors.json").read_text())
        assert {"rollout-0", "trainer-rank0", "trainer-rank1", "scorer-reference-0", "reward-0"} <= set(names), names

        # The dashboard's own API first: Ray's view of the job and the actors.
        token = auth_token()
        jobs = get_json(f"{url}/api/jobs/", token)
        drivers = [j for j in jobs if j.get("type") == "DRIVER" and "launch.train" in (j.get("entrypoint") or "")]
        assert len(drivers) == 1, f"/api/jobs/ lists no single running launch.train driver: {jobs}"
        job_id = drivers[0]["job_id"]
        assert drivers[0]["status"] == "RUNNING", drivers[0]
        actors = get_json(f"{url}/logical/actors", token)["data"]["actors"].values()
        alive = {a.get("name") for a in actors if a.get("state") == "ALIVE"}
        assert set(names) <= alive, f"named actors not ALIVE in /logical/actors: {sorted(set(names) - alive)}"

        # Then what a user sees.
        login = Login(token)
        jobs_dom = rendered(chromium, login, tmp_path, url, "jobs")
        for text in (job_id, f"trainer.output_dir={tmp_path / 'run'}", "RUNNING"):  # this run's driver, live
            assert text in jobs_dom, f"{text!r} is in /api/jobs/ but not on the rendered Jobs page ({tmp_path}/jobs.html)"
        actors_dom = rendered(chromium, login, tmp_path, url, "actors")
        missing = [n for n in names if n not in actors_dom]
        assert not missing, f"named actors in the API but not on the rendered Actors page: {missing} ({tmp_path}/actors.html)"

        shot = tmp_path / "dashboard_actors.png"
        browse(chromium, tmp_path / "profile-shot", login.url(f"{url}/#/actors"), f"--screenshot={shot}")
        assert png_size(shot) == WINDOW
        assert shot.stat().st_size > 20_000, "a near-blank screenshot: the page did not render"
        target = os.environ.get("RLPLAT_DASHBOARD_SCREENSHOT")
        if target:
            shutil.copyfile(shot, os.path.join(ROOT, target) if not os.path.isabs(target) else target)
        assert run.proc.poll() is None, "the run ended while the browser checked its dashboard"
        print(f"dashboard checked {time.time() - started:.0f} s after the run started; screenshot {shot.stat().st_size} bytes")
    finally:
        if login:
            login.close()
        run.stop()
