"""The dashboard at `/`, in a real headless browser (Debian's chromium and chromedriver,
driven by selenium), against a real `hive serve` and the real engine."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from conftest import wait_until

REPO = Path(__file__).resolve().parents[3]
#: Where screenshots go (CI keeps target/).
SHOTS = REPO / "target" / "screenshots"


def chromium() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("chromium and chromedriver are not installed (./test.sh installs Debian's chromium-driver)")
    return browser, driver


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900",
                "--disable-gpu"):
        options.add_argument(arg)
    b = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    try:
        yield b
    finally:
        b.quit()


def wait(what, check, timeout=30.0, step=0.05):
    return wait_until(what, check, timeout, step)


def agent_doc(name: str, image: str, script: str) -> str:
    return (f"apiVersion: hive/v1\nkind: Agent\nmetadata: {{name: {name}}}\n"
            f"spec:\n  image: {image}\n  command: [sh, -c, {json.dumps(script)}]\n")


def api(url, key, method, path, content_type=None, **kw):
    headers = {"Authorization": f"Bearer {key}"}
    if content_type:
        headers["Content-Type"] = content_type
    return httpx.request(method, f"{url}{path}", headers=headers, **kw)


def phase(url, key, name):
    r = api(url, key, "GET", f"/v1/agents/{name}")
    return r.json()["status"]["phase"] if r.status_code == 200 else None


def running(container: str) -> bool:
    out = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", container],
                         capture_output=True, text=True)
    return out.stdout.strip() == "true"


def row_phase(b, name):
    """The phase a row shows, read in the page in one go (rows are redrawn as changes come)."""
    return b.execute_script(
        "const c = document.querySelector(`tr[data-name=\"${arguments[0]}\"] [data-phase]`);"
        "return c ? c.textContent : null;", name)


def click_in_row(b, name, selector):
    """Clicks inside a row, in the page itself, so a redraw between finding and clicking
    cannot leave a stale element."""
    b.execute_script(
        "document.querySelector(`tr[data-name=\"${arguments[0]}\"] ${arguments[1]}`).click();",
        name, selector)


def sign_in(b, url, key):
    from selenium.webdriver.common.by import By
    b.get(url + "/")
    field = b.find_element(By.ID, "key")
    field.clear()
    field.send_keys(key)
    b.find_element(By.CSS_SELECTOR, "#signin-form button[type=submit]").click()


def test_the_page_is_locked_down(hive_keys):
    url, _ = hive_keys
    for path in ("/", "/ui/app.js", "/ui/app.css"):
        r = httpx.get(url + path)
        assert r.status_code == 200, path
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
        assert r.headers["x-content-type-options"] == "nosniff"
    page = httpx.get(url + "/").text
    assert "<script>" not in page and " style=" not in page and "onclick" not in page, "nothing inline"
    assert not re.search(r"(src|href)=\"https?://", page), "nothing from elsewhere"


def test_sign_in_live_fleet_actions_logs(hive_keys, test_image, browser):
    from selenium.webdriver.common.by import By

    url, keys = hive_keys
    b = browser
    SHOTS.mkdir(parents=True, exist_ok=True)
    name = "dash-web"
    r = api(url, keys["sol"], "PUT", f"/v1/agents/{name}",
            content=agent_doc(name, test_image, "echo hello-from-dashboard; exec sleep 3600"),
            content_type="application/yaml")
    assert r.status_code in (200, 201), r.text
    wait("the agent to run", lambda: phase(url, keys["sol"], name) == "Running", 60)
    container = api(url, keys["sol"], "GET", f"/v1/agents/{name}").json()["status"]["containerId"]

    # A bad key says so, and shows nothing.
    sign_in(b, url, "not-a-key")
    error = wait("the refusal", lambda: b.find_element(By.ID, "signin-error").text)
    assert "refused" in error, error
    assert not b.find_element(By.ID, "fleet").is_displayed()

    sign_in(b, url, keys["sol"])
    wait("the agent's row", lambda: row_phase(b, name) == "Running")
    assert "owner sol" in b.find_element(By.ID, "who").text
    assert b.execute_script("return sessionStorage.getItem('hive.key')") == keys["sol"]
    assert keys["sol"] not in b.current_url
    b.save_screenshot(str(SHOTS / "dashboard.png"))

    # A change made through the API shows in the row within a second, without a reload.
    b.execute_script("window.__noReload = true")
    assert api(url, keys["sol"], "POST", f"/v1/agents/{name}/action", json={"action": "stop"}).status_code == 202
    wait("the API to say Stopped", lambda: phase(url, keys["sol"], name) == "Stopped", 60, 0.02)
    seen = time.monotonic()
    wait("the row to say Stopped", lambda: row_phase(b, name) == "Stopped", 5, 0.02)
    assert time.monotonic() - seen < 1.0
    assert b.execute_script("return window.__noReload === true"), "the page was not reloaded"

    # The buttons act on the real container.
    click_in_row(b, name, 'button[data-action="start"]')
    wait("the container to run again", lambda: running(container), 60)
    wait("the row to say Running", lambda: row_phase(b, name) == "Running", 30)
    click_in_row(b, name, 'button[data-action="stop"]')
    wait("the container to stop", lambda: not running(container), 60)

    # The panel: spec, events, logs.
    click_in_row(b, name, "td button")
    wait("the logs", lambda: "hello-from-dashboard" in b.find_element(By.ID, "detail-logs").text, 30)
    assert f"image: \"{test_image}\"" in b.find_element(By.ID, "detail-spec").text
    events = b.find_element(By.ID, "detail-events").text
    assert "Started" in events, events
    b.save_screenshot(str(SHOTS / "dashboard-agent.png"))

    # Apply YAML: the dry run's diff first, then the real apply.
    b.find_element(By.CSS_SELECTOR, "#apply summary").click()
    b.find_element(By.ID, "apply-text").send_keys(agent_doc("dash-new", test_image, "exec sleep 3600"))
    assert not b.find_element(By.ID, "apply-go").is_enabled()
    b.find_element(By.ID, "apply-dry").click()
    wait("the dry run", lambda: "agent/dash-new created" in b.find_element(By.ID, "apply-out").text)
    assert phase(url, keys["sol"], "dash-new") is None, "a dry run writes nothing"
    b.find_element(By.ID, "apply-go").click()
    wait("the new agent's row", lambda: row_phase(b, "dash-new") is not None, 10)

    # Delete asks first.
    click_in_row(b, "dash-new", 'button[data-action="delete"]')
    b.switch_to.alert.accept()
    wait("dash-new to go", lambda: phase(url, keys["sol"], "dash-new") is None, 60)
    wait("its row to go", lambda: row_phase(b, "dash-new") is None, 5)


def test_a_viewer_sees_no_write_buttons_and_its_writes_are_refused(hive_keys, test_image, browser):
    from selenium.webdriver.common.by import By

    url, keys = hive_keys
    b = browser
    r = api(url, keys["sol"], "PUT", "/v1/agents/dash-seen",
            content=agent_doc("dash-seen", test_image, "exec sleep 3600"),
            content_type="application/yaml")
    assert r.status_code in (200, 201)
    sign_in(b, url, keys["sol-viewer"])
    wait("the row", lambda: row_phase(b, "dash-seen") is not None)
    assert not b.find_elements(By.CSS_SELECTOR, "button[data-action]")
    assert not b.find_element(By.ID, "apply").is_displayed()
    # Whatever the page is made to do, the key decides.
    message = b.execute_async_script("""
        const done = arguments[arguments.length - 1];
        action('dash-seen', 'stop').then(() => done(document.getElementById('fleet-error').textContent));
    """)
    assert message.startswith("stop dash-seen: ") and "viewer" in message, message
    assert phase(url, keys["sol"], "dash-seen") != "Stopped"
    # Another owner's key does not see it at all.
    b.execute_script("sessionStorage.clear()")
    sign_in(b, url, keys["bob"])
    wait("bob's empty fleet", lambda: "0 agents" in b.find_element(By.ID, "overview").text)
    assert row_phase(b, "dash-seen") is None


def luminance(hex_colour: str) -> float:
    r, g, b = (int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5))
    lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in (r, g, b)]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def test_the_page_passes_basic_accessibility_checks(hive_keys, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    url, keys = hive_keys
    b = browser
    b.get(url + "/")
    # Every control has a label or an accessible name.
    for field in b.find_elements(By.CSS_SELECTOR, "input, select, textarea"):
        fid = field.get_attribute("id")
        assert b.find_elements(By.CSS_SELECTOR, f'label[for="{fid}"]'), f"#{fid} has no label"
    # The sign-in is reachable from the keyboard alone.
    body = b.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.TAB)
    for _ in range(5):
        if b.switch_to.active_element.get_attribute("id") == "key":
            break
        b.switch_to.active_element.send_keys(Keys.TAB)
    assert b.switch_to.active_element.get_attribute("id") == "key"
    b.switch_to.active_element.send_keys(keys["sol"], Keys.ENTER)
    wait("signed in by keyboard", lambda: b.find_element(By.ID, "fleet").is_displayed())
    for button in b.find_elements(By.TAG_NAME, "button"):
        if button.is_displayed():
            assert button.text.strip() or button.get_attribute("aria-label"), button.get_attribute("outerHTML")
    # Text colours against their backgrounds: WCAG AA (4.5:1).
    css = httpx.get(url + "/ui/app.css").text
    pairs = re.findall(r"background: (#[0-9a-f]{6}); color: (#[0-9a-f]{6})", css)
    pairs.append(("#ffffff", re.search(r"--fg: (#[0-9a-f]{6})", css).group(1)))
    pairs.append(("#ffffff", re.search(r"--muted: (#[0-9a-f]{6})", css).group(1)))
    assert len(pairs) >= 8
    for bg, fg in pairs:
        hi, lo = sorted((luminance(bg), luminance(fg)), reverse=True)
        assert (hi + 0.05) / (lo + 0.05) >= 4.5, (bg, fg)


def test_filters_and_sorting(hive_keys, test_image, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    url, keys = hive_keys
    b = browser
    for name, team, state in (("dash-a", "red", "Stopped"), ("dash-b", "blue", "Running")):
        doc = (f"apiVersion: hive/v1\nkind: Agent\nmetadata: {{name: {name}, labels: {{team: {team}}}}}\n"
               f"spec:\n  image: {test_image}\n  command: [sleep, \"3600\"]\n  state: {state}\n")
        r = api(url, keys["sol"], "PUT", f"/v1/agents/{name}", content=doc, content_type="application/yaml")
        assert r.status_code in (200, 201), r.text
    sign_in(b, url, keys["sol"])
    wait("both settled", lambda: row_phase(b, "dash-a") == "Stopped" and row_phase(b, "dash-b") == "Running", 60)
    names = lambda: b.execute_script(
        "return [...document.querySelectorAll('#agents tbody tr')].map((r) => r.dataset.name);")

    Select(b.find_element(By.ID, "phase-filter")).select_by_visible_text("Stopped")
    wait("only the stopped one", lambda: names() == ["dash-a"])
    Select(b.find_element(By.ID, "phase-filter")).select_by_visible_text("all")
    b.find_element(By.ID, "selector").send_keys("team=blue")
    b.find_element(By.CSS_SELECTOR, "#filters button[type=submit]").click()
    wait("only the blue one", lambda: names() == ["dash-b"])
    b.find_element(By.ID, "selector").clear()
    b.find_element(By.CSS_SELECTOR, "#filters button[type=submit]").click()
    wait("both again", lambda: names() == ["dash-a", "dash-b"])
    b.find_element(By.CSS_SELECTOR, 'th button[data-sort="name"]').click()
    wait("sorted the other way", lambda: names() == ["dash-b", "dash-a"])
    b.find_element(By.CSS_SELECTOR, 'th button[data-sort="phase"]').click()
    wait("sorted by phase", lambda: names() == ["dash-b", "dash-a"])
