"""The web console in a real browser (Debian's chromium, driven through chromium-driver by
selenium), on the lab: `lb run` in the director, `lb web` beside it as uid nobody, the browser in
the director's namespace (no route out of the lab), selenium in this process reaching the driver
through a forwarder into that namespace.

Log in; create a virtual server with two real servers and an HTTP monitor; a client gets answers
through the new VIP from both; deactivate one in the browser and the traffic leaves it; a bad
value is shown next to its field and changes neither the file nor the running table; change the
password (with a user name) and log in with the new one.  The console runs as nobody and can
write neither BPF maps nor addresses.  Screenshots go to the test's artifacts directory
(printed; LB_ARTIFACTS=DIR keeps them there).

With two directors (test_ha_lab's pair): an edit on the active appears on the backup (file and
table) within seconds, both show the same configuration, and after failover the backup serves
the edited service.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from lab_http import http_get, wait_until as wait_for

from lb import control
from lb.config import store
from lb.lab import nsutil
from lb.web import password
from conftest import LB_BIN

LAB_NETWORK = "nat"
NOBODY = 65534
PASSWORD = "first password 1"
NEW_PASSWORD = "second password 2"
CONSOLE = "http://127.0.0.1:3636"
NEW_VIP = "198.18.0.20"
CHROMEDRIVER_PORT = 9515

CONFIG = """\
[global]
instance = "{instance}"
public_interface = "pub0"
private_interface = "priv0"
network = "nat"
nat_router = "198.18.1.254/24"
{ha}
[web]
enabled = true
password_file = "{pwfile}"

[control]
admin_group = "nogroup"
"""

HA = """
[ha]
primary = "198.18.0.1"
backup = "198.18.0.3"
primary_private = "198.18.1.1"
backup_private = "198.18.1.3"
key_file = "{key}"
keepalive = 0.2
deadtime = 1.0
garp_count = 3
garp_interval = 0.05
sync_interval = 0.1
"""

pytestmark = pytest.mark.skipif(not shutil.which("chromedriver") or not shutil.which("chromium"),
                                reason="Debian's chromium and chromium-driver (scripts/setup.sh installs them)")




class Forwarder:
    """127.0.0.1:PORT here -> 127.0.0.1:dport inside a lab node (the WebDriver protocol only)."""

    def __init__(self, node: str, dport: int):
        self.node, self.dport = node, dport
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(16)
        self.port = self.srv.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            try:
                u = nsutil.socket_in(self.node)
                u.connect(("127.0.0.1", self.dport))
            except OSError:
                c.close()
                continue
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a, b):
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.closed = True
        self.srv.close()


class Browser:
    """chromium + chromedriver in a lab node, driven from here."""

    def __init__(self, lab, node: str, workdir: Path, artifacts: Path):
        from selenium import webdriver

        self.lab, self.artifacts = lab, artifacts
        self.log = open(workdir / f"chromedriver-{node}.log", "wb")
        self.driver_proc = lab.popen(node, ["/usr/bin/chromedriver", f"--port={CHROMEDRIVER_PORT}"],
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.fwd = Forwarder(node, CHROMEDRIVER_PORT)
        wait_for(lambda: self._driver_up(), 30, "chromedriver")
        # the browser's profile in the test's own directory (pytest removes old ones), not /tmp
        profile = workdir / f"chromium-profile-{node}"
        profile.mkdir(exist_ok=True)
        opts = webdriver.ChromeOptions()
        opts.binary_location = "/usr/bin/chromium"
        for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                  "--window-size=1280,900", f"--user-data-dir={profile}"):
            opts.add_argument(a)
        self.d = webdriver.Remote(command_executor=f"http://127.0.0.1:{self.fwd.port}", options=opts)
        self.d.set_page_load_timeout(30)
        self.d.implicitly_wait(0)
        self.shots = 0

    def _driver_up(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.fwd.port), timeout=2) as s:
                s.sendall(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                return b"200 OK" in s.recv(4096)
        except OSError:
            return False

    def shot(self, name: str) -> Path:
        self.shots += 1
        p = self.artifacts / f"{self.shots:02d}-{name}.png"
        self.d.save_screenshot(str(p))
        return p

    # small helpers over the page
    def go(self, path: str):
        self.d.get(CONSOLE + path)

    def by_id(self, ident):
        from selenium.webdriver.common.by import By
        return self.d.find_element(By.ID, ident)

    def css(self, sel):
        from selenium.webdriver.common.by import By
        return self.d.find_elements(By.CSS_SELECTOR, sel)

    def fill(self, values: dict):
        from selenium.webdriver.support.ui import Select
        for name, value in values.items():
            el = self.by_id(name)
            if el.tag_name == "select":
                Select(el).select_by_value(value)
            elif el.get_attribute("type") == "checkbox":
                if el.is_selected() != bool(value):
                    el.click()
            else:
                el.clear()
                el.send_keys(value)

    def navigate_by(self, el):
        """Click what loads a new page and wait for it: chromedriver's click returns before a form
        post's answer arrives (under load the old page was still there)."""
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.support.ui import WebDriverWait
        old = self.d.find_element("tag name", "html")
        el.click()

        def old_page_gone(_d) -> bool:
            try:
                old.is_enabled()
                return False
            except WebDriverException:   # stale, or chromedriver's "Node ... does not belong to the document"
                return True
        WebDriverWait(self.d, 30).until(old_page_gone)
        WebDriverWait(self.d, 30).until(lambda d: d.execute_script("return document.readyState") == "complete")

    def submit(self, button_id="save"):
        self.navigate_by(self.by_id(button_id))

    def text(self) -> str:
        return self.d.page_source

    def login(self, user, pw):
        self.go("/login")
        self.fill({"user": user, "password": pw})
        self.navigate_by(self.css("button[type=submit]")[0])

    def row_button(self, table_row_selector: str, label: str):
        for b in self.css(f"{table_row_selector} button"):
            if b.text == label:
                return b
        raise AssertionError(f"no button {label!r} in {table_row_selector}")

    def close(self):
        try:
            self.d.quit()
        except Exception:
            pass
        self.fwd.close()
        if self.driver_proc.poll() is None:
            self.driver_proc.terminate()
            try:
                self.driver_proc.wait(10)
            except subprocess.TimeoutExpired:
                self.driver_proc.kill()
                self.driver_proc.wait(5)
        self.log.close()


class Console:
    """`lb web --instance NAME` in a lab node, as uid/gid nobody (no capabilities)."""

    def __init__(self, lab, node: str, instance: str, workdir: Path):
        self.log_path = workdir / f"lb-web-{node}.log"
        self.log = open(self.log_path, "wb")
        self.proc = lab.popen(node, ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                                     "--inh-caps=-all", LB_BIN, "web", "--instance", instance],
                              stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: b"web console on http://127.0.0.1:3636/" in self.log_path.read_bytes()
                 or self.proc.poll() is not None, 60, "lb web")
        assert self.proc.poll() is None, self.log_path.read_text()

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


@pytest.fixture
def artifacts(tmp_path, request):
    """LB_ARTIFACTS/<test>/ (make test: artifacts/ of the checkout, kept after the run)"""
    base = os.environ.get("LB_ARTIFACTS")
    d = Path(base) / "web" / request.node.name if base else tmp_path / "screenshots"
    d.mkdir(parents=True, exist_ok=True)
    yield d
    print(f"\nweb console screenshots: {d}")


@pytest.fixture
def nobody_dir():
    """A directory of nobody's for the console's password file (the console changes it)."""
    d = tempfile.mkdtemp(prefix="lb-web-")
    os.chown(d, NOBODY, NOBODY)
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def pw_file(d: Path, name: str) -> Path:
    p = d / name
    password.write(p, PASSWORD, "admin")
    os.chown(p, NOBODY, NOBODY)
    return p


def bodies(lab, vip, n):
    out = []
    for _ in range(n):
        status, body = http_get(lab, vip, timeout=3.0)
        assert status == 200
        out.append(body.strip())
    return out


def status_of(instance):
    try:
        return control.request(instance, "status", timeout=5).get("status", {})
    except (OSError, ValueError, control.NotRunning):
        return {}


def reals_in_table(instance, vip):
    """{address: weight} of the VIP's service's real servers taking new connections, in the
    running table (the data plane's own read; a removed server drains at weight 0 until idle)."""
    reply = control.request(instance, "table", timeout=10)
    for s in reply.get("services", []):
        if s["address"] == vip:
            return {r["address"]: r["weight"] for r in s["reals"] if r["weight"] > 0}
    return None


def create_service(b: Browser):
    """VIRTUAL SERVER, two REAL SERVERs, MONITORING SCRIPTS (HTTP) -- all in the browser."""
    b.go("/virtual")
    b.navigate_by(b.by_id("add-virtual"))
    b.fill({"vs.name": "shop", "vs.address": NEW_VIP, "vs.port": "80", "vs.protocol": "tcp", "vs.scheduler": "rr"})
    b.shot("virtual-server-form")
    b.submit()
    assert "saved" in b.by_id("flash").text, b.text()
    for name, addr in (("rs1", "198.18.1.11"), ("rs2", "198.18.1.12")):
        b.go("/virtual/real?vs=shop")
        b.navigate_by(b.by_id("add-real"))
        b.fill({"rs.name": name, "rs.address": addr, "rs.weight": "1"})
        b.submit()
        assert "saved" in b.by_id("flash").text, b.text()
    b.go("/virtual/monitor?vs=shop")
    b.fill({"monitor.kind": "http", "monitor.path": "/", "monitor.status": "200-399", "monitor.interval": "0.5",
            "monitor.timeout": "3", "monitor.reentry": "1"})
    b.shot("monitoring-scripts")
    b.submit()
    assert "saved" in b.by_id("flash").text, b.text()


def test_console_in_a_browser_on_the_lab(lab, lb_runner, tmp_path, artifacts, nobody_dir):
    cfg_path = tmp_path / "lab.toml"
    cfg_path.write_text(CONFIG.format(instance="lab", ha="", pwfile=pw_file(nobody_dir, "lab.passwd")))
    lb_runner.start(cfg_path, wait=False).wait_running(timeout=180)     # bcc compiles: slow under load
    console = Console(lab, "director", "lab", tmp_path)
    b = None
    try:
        # the console is nobody's process: no capabilities, and neither BPF maps nor addresses
        st = Path(f"/proc/{console.proc.pid}/status").read_text()
        assert f"Uid:\t{NOBODY}\t{NOBODY}\t{NOBODY}\t{NOBODY}" in st and "CapEff:\t0000000000000000" in st
        pinned = sorted(Path("/sys/fs/bpf/lb/lab").iterdir())
        assert pinned
        probe = lab.run("director", ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                                     str(Path(LB_BIN).with_name("python")), "-c", NOBODY_PROBE, str(pinned[0])],
                        check=False, timeout=30)
        assert probe.stdout.split() in (["bpf:EPERM", "address:refused"], ["bpf:EACCES", "address:refused"]), \
            probe.stdout + probe.stderr

        b = Browser(lab, "director", tmp_path, artifacts)
        b.login("admin", PASSWORD)
        assert "Control/Monitoring" in b.d.title, b.text()
        b.shot("control-monitoring-empty")

        create_service(b)
        cfg = store.read(cfg_path)
        assert [vs.name for vs in cfg.cfg.virtual_servers] == ["shop"] and cfg.cfg.serial_no == 4
        assert store.prev_path(cfg_path).exists()
        vs = cfg.cfg.virtual_servers[0]
        assert (vs.monitor.kind, [r.name for r in vs.real_servers]) == ("http", ["rs1", "rs2"])
        # the health checks bring both up; the client gets answers from both through the new VIP
        wait_for(lambda: [r.get("health") for s in status_of("lab").get("services", []) for r in s["real_servers"]]
                 == ["up", "up"], 30, "both real servers up")
        seen = wait_for(lambda: set(bodies(lab, NEW_VIP, 8)) == {"rs1", "rs2"} or None, 20,
                        "answers from rs1 and rs2 through the new VIP")
        assert seen

        b.go("/status")
        wait_for(lambda: 'data-rs="rs2"' in b.text(), 15, "the status table")
        b.d.execute_script("window.lbSamePage = true")  # gone if the page were loaded again
        when = b.by_id("when").text
        time.sleep(1.1)                                 # a later second for the clock to show
        b.by_id("now").click()                          # "Update now": the table comes in place
        wait_for(lambda: b.by_id("when").text != when, 15, "the table's update time")
        assert b.d.execute_script("return window.lbSamePage === true"), "Update now reloaded the page"
        wait_for(lambda: "198.18.1.12:80" in b.by_id("live").text, 15, "the live table")
        b.shot("control-monitoring")

        # deactivate rs2 in the REAL SERVER screen: the traffic leaves it
        b.go("/virtual/real?vs=shop")
        b.navigate_by(b.row_button('tr[data-rs="rs2"]', "Deactivate"))
        assert "saved" in b.by_id("flash").text, b.text()
        wait_for(lambda: reals_in_table("lab", NEW_VIP) == {"198.18.1.11": 1}, 10, "rs2 out of the table")
        assert set(bodies(lab, NEW_VIP, 8)) == {"rs1"}
        assert store.read(cfg_path).cfg.virtual_servers[0].real_servers[1].active is False

        # a bad value: the field's own error, the file and the running table unchanged
        before, table_before = cfg_path.read_bytes(), reals_in_table("lab", NEW_VIP)
        b.go("/virtual/real/edit?vs=shop&rs=rs1")
        b.fill({"rs.weight": "heavy"})
        b.submit()
        err = b.css('.fielderr[data-for="rs.weight"]')
        assert err and err[0].text == 'expected an integer, got string "heavy"', b.text()
        assert b.by_id("rs.weight").get_attribute("value") == "heavy"
        b.shot("field-level-error")
        assert cfg_path.read_bytes() == before and reals_in_table("lab", NEW_VIP) == table_before
        assert set(bodies(lab, NEW_VIP, 4)) == {"rs1"}

        # change the password (and the user name), log out, log in with the new one
        b.go("/password")
        b.fill({"pw-user": "piranha", "pw-current": PASSWORD, "pw-new": NEW_PASSWORD, "pw-again": NEW_PASSWORD})
        b.submit()
        assert "password changed for user piranha" in b.by_id("flash").text
        b.navigate_by(b.css("header form button")[0])   # log out
        b.login("admin", PASSWORD)
        assert "Wrong user name or password" in b.text()
        time.sleep(1.1)                                  # this client's one failure: a second's wait
        b.login("piranha", NEW_PASSWORD)
        assert "Control/Monitoring" in b.d.title, b.text()
        bodies(lab, NEW_VIP, 6)                          # some traffic for the picture
        b.go("/status")
        wait_for(lambda: 'data-rs="rs1"' in b.text(), 15, "the status table")
        b.d.set_window_size(1280, 1000)
        b.shot("console")
        b.go("/virtual")
        b.shot("virtual-servers")
        b.d.set_window_size(390, 844)                    # a phone: no page wider than its screen
        for path in ("/status", "/virtual", "/virtual/real/edit?vs=shop&rs=rs1"):
            b.go(path)
            assert b.d.execute_script("return document.documentElement.scrollWidth <= window.innerWidth"), path
            # and nothing from elsewhere: every resource the page loaded, every link and source, is lb's
            loaded = b.d.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
            refs = b.d.execute_script("return Array.from(document.querySelectorAll('[src],[href]'))"
                                      ".map(e => e.getAttribute('src') || e.getAttribute('href'))")
            assert loaded and all(u.startswith(CONSOLE + "/") for u in loaded), (path, loaded)
            assert not [r for r in refs if re.match(r"^(https?:)?//", r)], (path, refs)
        b.go("/status")
        b.shot("phone-control-monitoring")
    finally:
        if b is not None:
            b.close()
        console.close()


# runs as nobody inside the director: open a pinned map, add an address (both must fail)
NOBODY_PROBE = r"""
import errno, subprocess, sys
from lb.dataplane import bpfsys
try:
    bpfsys.obj_get(sys.argv[1])
    print("bpf:opened")
except OSError as e:
    print("bpf:" + errno.errorcode.get(e.errno, str(e.errno)))
r = subprocess.run(["ip", "addr", "add", "198.18.0.99/32", "dev", "pub0"], capture_output=True)
print("address:refused" if r.returncode != 0 else "address:added")
"""


def test_an_edit_on_the_active_reaches_the_backup_and_survives_failover(lab, ha_runner, tmp_path, artifacts,
                                                                         nobody_dir):
    key = tmp_path / "ha.key"
    key.write_bytes(b"lab-shared-secret-0123456789abcdef")
    os.chmod(key, 0o600)
    paths = {}
    pwf = pw_file(nobody_dir, "web.passwd")     # [web] is shared by both directors' configuration
    for node, inst in (("director", "lab"), ("director2", "lab2")):
        p = tmp_path / f"{inst}.toml"
        p.write_text(CONFIG.format(instance=inst, ha=HA.format(key=key), pwfile=pwf))
        paths[node] = p
    d1 = ha_runner.start("director", paths["director"], wait=False).wait_running(timeout=180)
    d1.wait_log("role starting -> active", timeout=15)
    d2 = ha_runner.start("director2", paths["director2"], wait=False).wait_running(timeout=180)
    d2.wait_log("role starting -> backup", timeout=15)
    console = Console(lab, "director", "lab", tmp_path)
    b = None
    try:
        b = Browser(lab, "director", tmp_path, artifacts)
        b.login("admin", PASSWORD)
        create_service(b)
        # the backup's file and table follow within seconds; both say they run the same configuration
        # four saves, four pushes: wait for the last one (the serial numbers match)
        wait_for(lambda: store.read(paths["director2"]).cfg.serial_no == store.read(paths["director"]).cfg.serial_no,
                 15, "the backup's file")
        backup = store.read(paths["director2"]).cfg
        assert backup.instance == "lab2" and backup.serial_no == store.read(paths["director"]).cfg.serial_no
        assert store.identity(backup) == store.identity(store.read(paths["director"]).cfg)
        wait_for(lambda: reals_in_table("lab2", NEW_VIP) == {"198.18.1.11": 1, "198.18.1.12": 1}, 15,
                 "the backup's table")
        wait_for(lambda: (status_of("lab").get("configuration") or {}).get("peer", {}).get("same") is True, 15,
                 "the active to see the same configuration on its peer")
        assert (status_of("lab2").get("configuration") or {}).get("peer", {}).get("same") is True
        b.go("/redundancy")
        wait_for(lambda: "same configuration" in b.text(), 15, "the console to show the same configuration")
        b.shot("redundancy-same-configuration")
        # failover: the backup serves the edited service
        wait_for(lambda: set(bodies(lab, NEW_VIP, 6)) == {"rs1", "rs2"} or None, 20, "the service on the active")
        d1.signal(9)                                     # the active dies: lb killed, then its links
        for dev in ("pub0", "priv0"):
            lab.run("director", ["ip", "link", "set", "dev", dev, "down"])
        wait_for(lambda: status_of("lab2").get("role") == "active", 15, "the backup to take over")
        wait_for(lambda: set(bodies(lab, NEW_VIP, 6)) == {"rs1", "rs2"} or None, 20, "the service on the new active")
    finally:
        if b is not None:
            b.close()
        console.close()
