#!/usr/bin/env python3
"""The admin page in a real browser: headless Chromium driven over WebDriver (selenium).

Usage: admin_page.py SERVER_BINARY [SCREENSHOT_DIR]

Starts SERVER_BINARY (examples/server.rs or examples/actix_server.rs, built) on a free port
with a fresh SQLite database, reads the admin key it prints on first start, and drives the
page at /admin:

  sign in (a wrong key first: refused with a message) -> create a key for `user` -> read
  the key the page shows once, press Copy -> GET /api/libraries with it: 200 -> switch it
  off in the page -> 401 -> switch it on -> 200 -> rotate it: the old key 401, the new one
  200 -> delete it (cancel first, then confirm) -> gone from the page and from the API
  (404); a key named `<img src=x onerror=alert(1)>` is shown as text (no element, no
  alert); rotate (the old key refused, shown as expired); an API error shown from its
  JSON (404); edit (rename + switch off); usage limits and network restrictions (a rate
  limit of 1/min set in the form: the second call is 429; a bad CIDR refused by the API
  with its 400 shown at the field, a hostile value in it shown as text; credits and
  networks set by editing, shown in the list and the API; the limit removed: 200 again;
  credits used up outside the page shown as 0 after signing in again); an expiry date (a past one refused in the
  form); keyboard (Enter opens the form, Escape closes it); the page answers with its CSP
  and no CSP violation or script error is logged; a non-admin key is told so; "stay
  signed in" survives a reload, sign out leaves nothing in sessionStorage or cookies.

Screenshots at 1280x800 (desktop) and 390x844 (phone) go to SCREENSHOT_DIR (default
target/admin-page-screenshots/<server name>/). Any failure exits 1 with a message.
Needs /usr/bin/chromium, /usr/bin/chromedriver and the `selenium` package.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import (
    NoAlertPresentException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
XSS_NAME = "<img src=x onerror=alert(1)>"
WAIT = 15


def fail(message):
    print(f"admin page: FAIL: {message}", file=sys.stderr)
    sys.exit(1)


STEP = ["start"]


def step(name):
    STEP[0] = name
    print(f"admin page: {name}", flush=True)


def check(condition, message):
    if not condition:
        raise AssertionError(message)


class Server:
    """The example server on a free port, fresh database; stdout/stderr collected."""

    def __init__(self, binary):
        self.work = tempfile.mkdtemp(prefix="keygate-admin-page-")
        env = dict(os.environ)
        for name in ("KEYGATE_PEPPER", "KEYGATE_PEPPER_FILE", "KEYGATE_JWT_SECRET"):
            env.pop(name, None)
        env.update(
            KEYGATE_ADDR="127.0.0.1:0",
            KEYGATE_DB=f"sqlite://{self.work}/keys.db",
            KEYGATE_PREFIX="abs",
            RUST_LOG="warn",
        )
        self.stderr_lines = []
        self.process = subprocess.Popen(
            [binary], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.addr = None
        self.admin_key = None
        listening = threading.Event()

        def read_stderr():
            for line in self.process.stderr:
                self.stderr_lines.append(line.rstrip("\n"))
                match = re.search(r"listening on (http://[0-9.:]+)", line)
                if match:
                    self.addr = match.group(1)
                    listening.set()

        threading.Thread(target=read_stderr, daemon=True).start()
        if not listening.wait(60):
            self.stop()
            raise AssertionError("server did not start:\n" + "\n".join(self.stderr_lines))
        line = self.process.stdout.readline()
        match = re.match(r"admin API key: (\S+)$", line.strip())
        if not match:
            self.stop()
            raise AssertionError(f"no admin key on stdout (got {line!r})")
        self.admin_key = match.group(1)

    def call(self, path, key, method="GET"):
        request = urllib.request.Request(self.addr + path, method=method)
        request.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode(), dict(response.headers)
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(), dict(error.headers)

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.work, ignore_errors=True)


def browser(profile):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--hide-scrollbars",
        "--window-size=1280,800",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def viewport(driver, width, height, mobile):
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
    )


class Page:
    def __init__(self, driver, server, shots):
        self.driver = driver
        self.server = server
        self.shots = shots
        # The page re-renders its rows after every change: retry on stale elements.
        self.wait = WebDriverWait(driver, WAIT, ignored_exceptions=(StaleElementReferenceException,))

    def by_id(self, ident):
        return self.driver.find_element(By.ID, ident)

    def visible(self, ident):
        return self.wait.until(EC.visibility_of_element_located((By.ID, ident)))

    def shot(self, name):
        path = os.path.join(self.shots, name + ".png")
        self.driver.save_screenshot(path)
        print(f"admin page: screenshot {path}")

    def full_shot(self, name, width, mobile):
        """A screenshot as tall as the page (the cards list on a phone scrolls)."""
        height = self.driver.execute_script(
            "return Math.max(document.documentElement.scrollHeight, document.body.scrollHeight)"
        )
        viewport(self.driver, width, max(height, 1), mobile)
        self.shot(name)

    def rows(self, name):
        return [
            tr
            for tr in self.driver.find_elements(By.CSS_SELECTOR, "#key-rows tr")
            if tr.find_element(By.CSS_SELECTOR, ".key-name").text == name
        ]

    def row(self, name):
        rows = self.rows(name)
        return rows[0] if rows else None

    def wait_row(self, name, present=True):
        self.wait.until(lambda d: (self.row(name) is not None) == present)
        return self.row(name)

    def sign_in(self, key):
        field = self.visible("signin-key")
        field.clear()
        field.send_keys(key)
        self.by_id("signin-submit").click()

    def create(self, name, user="user", expiry=None):
        self.visible("add-key").click()
        self.visible("create-name").send_keys(name)
        Select(self.by_id("create-user-select")).select_by_value(user)
        if expiry:
            Select(self.by_id("create-expiry")).select_by_value(expiry)
        self.by_id("create-submit").click()
        secret = self.visible("secret-value")
        self.wait.until(lambda d: secret.get_attribute("value"))
        return secret.get_attribute("value")

    def done_secret(self):
        self.by_id("secret-done").click()
        self.wait.until(EC.invisibility_of_element_located((By.ID, "secret-dialog")))
        check(self.by_id("secret-value").get_attribute("value") == "", "plaintext left in the page")

    def toggle(self, name, want_on):
        switch = self.row(name).find_element(By.CSS_SELECTOR, 'input[data-action="toggle"]')
        check(switch.is_selected() != want_on, f"{name} already {'on' if want_on else 'off'}")
        switch.click()
        self.wait.until(
            lambda d: self.row(name)
            .find_element(By.CSS_SELECTOR, 'input[data-action="toggle"]')
            .is_selected()
            == want_on
            and self.row(name).find_element(By.CSS_SELECTOR, ".switch-text").text
            == ("On" if want_on else "Off")
        )

    def open_section(self, ident):
        section = self.by_id(ident)
        if section.get_attribute("open") is None:
            section.find_element(By.TAG_NAME, "summary").click()
        self.wait.until(lambda d: section.get_attribute("open") is not None)
        return section

    def chips(self, name):
        return [c.text for c in self.row(name).find_elements(By.CSS_SELECTOR, ".cell-limits .chip")]

    def set_field(self, ident, value):
        field = self.by_id(ident)
        field.clear()
        if value:
            field.send_keys(value)
        return field

    def confirm(self):
        self.visible("confirm-submit").click()
        self.wait.until(EC.invisibility_of_element_located((By.ID, "confirm-dialog")))


def expect_status(server, path, key, status, what):
    got, body, _ = server.call(path, key)
    check(got == status, f"{what}: GET {path} answered {got}, wanted {status}: {body}")


def run(binary, shots):
    os.makedirs(shots, exist_ok=True)
    server = Server(binary)
    profile = tempfile.mkdtemp(prefix="keygate-chromium-")
    driver = None
    try:
        # The page's own headers, as a browser receives them.
        step("The page's own headers, as a browser receives them.")
        status, body, headers = server.call("/admin/", "unused")
        lower = {k.lower(): v for k, v in headers.items()}
        check(status == 200, f"/admin/ answered {status}")
        csp = lower.get("content-security-policy", "")
        for directive in ("default-src 'none'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'"):
            check(directive in csp, f"CSP lacks {directive}: {csp!r}")
        check(lower.get("x-content-type-options") == "nosniff", "no nosniff")
        check(lower.get("referrer-policy") == "no-referrer", "no Referrer-Policy")

        driver = browser(profile)
        page = Page(driver, server, shots)
        viewport(driver, 1280, 800, False)
        origin = server.addr
        driver.execute_cdp_cmd(
            "Browser.grantPermissions",
            {"origin": origin, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]},
        )

        # /admin redirects to /admin/; the sign-in form comes up.
        step('/admin redirects to /admin/; the sign-in form comes up.')
        driver.get(origin + "/admin")
        page.visible("signin-key")
        check(driver.current_url == origin + "/admin/", f"not redirected: {driver.current_url}")
        page.shot("desktop-1-signin")

        # A wrong key: refused, with a message, still on the sign-in form.
        step('A wrong key: refused, with a message, still on the sign-in form.')
        page.sign_in("abs_" + "x" * 71)
        error = page.visible("signin-error")
        check("refused" in error.text, f"wrong key message: {error.text!r}")
        page.sign_in(server.admin_key)
        page.visible("keys")
        page.wait_row("Admin key (first start)")
        who = page.by_id("session-who").text
        check(who == "Admin", f"session label: {who!r}")

        # Keyboard: Enter on the focused "Add API key" opens the form, Escape closes it.
        step('Keyboard: Enter on the focused "Add API key" opens the form, Escape closes it.')
        add = page.by_id("add-key")
        check(driver.switch_to.active_element == add, "focus is not on Add API key after sign-in")
        add.send_keys(Keys.ENTER)
        page.visible("create-name")
        page.shot("desktop-3-create")
        driver.switch_to.active_element.send_keys(Keys.ESCAPE)
        page.wait.until(EC.invisibility_of_element_located((By.ID, "create-dialog")))

        # Create -> the key shown once -> Copy.
        step('Create -> the key shown once -> Copy.')
        key = page.create("Backup Script", expiry="30")
        check(re.fullmatch(r"abs_[A-Za-z0-9]{71}", key), f"shown key has the wrong shape: {key!r}")
        warning = page.by_id("secret-warning").text
        check("will not be shown again" in warning, f"warning: {warning!r}")
        page.by_id("secret-copy").click()
        page.wait.until(lambda d: page.by_id("secret-copied").text)
        copied = page.by_id("secret-copied").text
        check(copied == "Copied to the clipboard.", f"copy button: {copied!r}")
        clipboard = driver.execute_async_script(
            "const done = arguments[0];"
            "navigator.clipboard.readText().then(done, e => done('ERROR ' + e));"
        )
        check(clipboard == key, f"clipboard holds {clipboard!r}, not the shown key")
        page.shot("desktop-4-created")
        page.done_secret()
        tr = page.wait_row("Backup Script")
        check("Demo user" in tr.text, f"row user: {tr.text!r}")
        check("Never" in tr.text, "last used should be Never")

        expect_status(server, "/api/libraries", key, 200, "new key")

        # Switch off in the page -> refused; on again -> accepted.
        step('Switch off in the page -> refused; on again -> accepted.')
        page.toggle("Backup Script", False)
        expect_status(server, "/api/libraries", key, 401, "switched-off key")
        page.toggle("Backup Script", True)
        expect_status(server, "/api/libraries", key, 200, "switched-on key")

        # A key whose name is HTML: shown as text, no element made, no alert.
        step('A key whose name is HTML: shown as text, no element made, no alert.')
        xss_key = page.create(XSS_NAME)
        check(page.by_id("secret-name").text == f"“{XSS_NAME}” is ready.", "secret dialog name")
        page.done_secret()
        tr = page.wait_row(XSS_NAME)
        images = driver.execute_script(
            "return document.querySelectorAll('#key-rows img, #secret-name img, dialog img').length"
        )
        check(images == 0, f"{images} <img> elements were created from a key name")
        check(
            driver.execute_script("return document.querySelectorAll('[onerror]').length") == 0,
            "an onerror attribute reached the DOM",
        )
        try:
            text = driver.switch_to.alert.text
            raise AssertionError(f"an alert opened: {text!r}")
        except NoAlertPresentException:
            pass
        expect_status(server, "/api/libraries", xss_key, 200, "HTML-named key")
        page.shot("desktop-2-list")

        # Rotate the HTML-named key: the new key works, the old one is refused at once.
        step('Rotate the HTML-named key: the new key works, the old one is refused at once.')
        tr.find_element(By.CSS_SELECTOR, 'button[data-action="rotate"]').click()
        page.visible("confirm-grace")
        page.shot("desktop-6-rotate-confirm")
        title = page.by_id("confirm-text").text
        check(XSS_NAME in title, f"rotate confirmation: {title!r}")
        page.confirm()
        rotated = page.visible("secret-value").get_attribute("value")
        check(page.by_id("secret-title").text == "API key rotated", "rotate dialog title")
        check(rotated and rotated != xss_key, "rotate showed no new key")
        page.done_secret()
        # The old key stays listed, ended by the rotation (grace 0): shown as expired.
        page.wait.until(lambda d: len(page.rows(XSS_NAME)) == 2)
        ended = [tr for tr in page.rows(XSS_NAME) if "Expired" in tr.text]
        check(len(ended) == 1, "the rotated-out key is not shown as expired")
        old_row_id = ended[0].get_attribute("data-key-id")
        expect_status(server, "/api/libraries", rotated, 200, "rotated key")
        expect_status(server, "/api/libraries", xss_key, 401, "key replaced by rotate")

        # Delete (confirm) -> gone from the page and the API; its key refused.
        step('Delete (confirm) -> gone from the page and the API; its key refused.')
        key_id = page.row("Backup Script").get_attribute("data-key-id")
        page.row("Backup Script").find_element(By.CSS_SELECTOR, 'button[data-action="delete"]').click()
        text = page.visible("confirm-text").text
        check("Backup Script" in text and "cannot be undone" in text, f"delete confirmation: {text!r}")
        page.shot("desktop-5-delete-confirm")
        # Cancel first: nothing happens.
        step('Cancel first: nothing happens.')
        driver.find_element(By.CSS_SELECTOR, "#confirm-dialog [data-close]").click()
        page.wait.until(EC.invisibility_of_element_located((By.ID, "confirm-dialog")))
        check(page.row("Backup Script") is not None, "cancel deleted the key")
        page.row("Backup Script").find_element(By.CSS_SELECTOR, 'button[data-action="delete"]').click()
        page.confirm()
        page.wait_row("Backup Script", present=False)
        expect_status(server, f"/api/api-keys/{key_id}", server.admin_key, 404, "deleted key record")
        expect_status(server, "/api/libraries", key, 401, "deleted key")

        # An API error is shown from its JSON: delete a key another client already deleted.
        step('An API error is shown from its JSON: delete a key another client already deleted.')
        status, _, _ = server.call(f"/api/api-keys/{old_row_id}", server.admin_key, method="DELETE")
        check(status == 200, "out-of-band delete")
        driver.find_element(
            By.CSS_SELECTOR, f'tr[data-key-id="{old_row_id}"] button[data-action="delete"]'
        ).click()
        page.visible("confirm-submit").click()
        error = page.visible("confirm-error")
        check(error.text == "That key no longer exists.", f"404 message: {error.text!r}")
        driver.find_element(By.CSS_SELECTOR, "#confirm-dialog [data-close]").click()
        # The page reloaded its list: the deleted key is gone, the rotated one stays.
        page.wait.until(lambda d: len(page.rows(XSS_NAME)) == 1)
        check(
            not driver.find_elements(By.CSS_SELECTOR, f'tr[data-key-id="{old_row_id}"]'),
            "the deleted key is still listed",
        )

        # Edit (Audiobookshelf's edit form): rename and switch off in one save.
        step("Edit (Audiobookshelf's edit form): rename and switch off in one save.")
        tablet = page.create("Tablet sync")
        page.done_secret()
        expect_status(server, "/api/libraries", tablet, 200, "tablet key")
        page.row("Tablet sync").find_element(By.CSS_SELECTOR, 'button[data-action="edit"]').click()
        name_field = page.visible("create-name")
        check(page.by_id("create-title").text == "Edit API key", "edit form title")
        check(name_field.get_attribute("value") == "Tablet sync", "edit form name")
        check(Select(page.by_id("create-user-select")).first_selected_option.get_attribute("value") == "user", "edit form user")
        check(not page.by_id("create-expiry").is_displayed(), "edit form shows the expiry")
        name_field.clear()
        name_field.send_keys("Tablet sync (kitchen)")
        page.by_id("create-active").click()
        page.by_id("create-submit").click()
        page.wait.until(EC.invisibility_of_element_located((By.ID, "create-dialog")))
        tr = page.wait_row("Tablet sync (kitchen)")
        check(page.row("Tablet sync") is None, "old name still listed")
        check(tr.find_element(By.CSS_SELECTOR, ".switch-text").text == "Off", "edit did not switch it off")
        expect_status(server, "/api/libraries", tablet, 401, "key switched off by edit")

        # Usage limits in the form: a rate limit of 1 per minute -> the second call is 429.
        step("Usage limits in the form: a rate limit of 1 per minute -> the second call is 429.")
        page.visible("add-key").click()
        page.visible("create-name").send_keys("Metered sync")
        Select(page.by_id("create-user-select")).select_by_value("user")
        check(not page.by_id("ratelimit-add").is_displayed(), "the usage section is not collapsed")
        check(page.by_id("usage-summary").text == "None", "usage summary of a new key")
        check(page.by_id("network-summary").text == "Any network", "network summary of a new key")
        page.open_section("usage-section")
        page.by_id("ratelimit-add").click()
        limit_row = driver.find_element(By.CSS_SELECTOR, "#ratelimit-rows .limit-row")
        check(limit_row.find_element(By.CSS_SELECTOR, ".rl-name").get_attribute("value") == "requests", "default limit name")
        limit_row.find_element(By.CSS_SELECTOR, ".rl-limit").send_keys("1")
        check(Select(limit_row.find_element(By.CSS_SELECTOR, ".rl-per")).first_selected_option.text == "minute", "default per")
        check(page.by_id("usage-summary").text == "1/min", f"usage summary: {page.by_id('usage-summary').text!r}")
        page.shot("desktop-8-limits-form")
        page.by_id("create-submit").click()
        metered = page.visible("secret-value").get_attribute("value")
        page.done_secret()
        page.wait_row("Metered sync")
        check(page.chips("Metered sync") == ["1/min"], f"chips: {page.chips('Metered sync')}")
        metered_id = page.row("Metered sync").get_attribute("data-key-id")
        expect_status(server, "/api/libraries", metered, 200, "first call of a 1/min key")
        status, body, headers = server.call("/api/libraries", metered)
        check(status == 429, f"second call of a 1/min key answered {status}: {body}")
        check(json.loads(body)["error"] == "rate_limited", f"429 body: {body}")
        check(any(k.lower() == "retry-after" for k in headers), f"429 without Retry-After: {headers}")

        # Network and credits by editing: the API's 400 is shown at the field it names,
        # with the value typed (a hostile one as text); then credits and two networks saved.
        step("Network and credits by editing: the API's 400 at its field; then saved and listed.")
        page.row("Metered sync").find_element(By.CSS_SELECTOR, 'button[data-action="edit"]').click()
        page.visible("create-name")
        check(page.by_id("usage-summary").text == "1/min", "edit form usage summary")
        page.open_section("network-section")
        page.set_field("create-cidrs", "10.0.0.1/8")
        check(page.by_id("network-summary").text == "1 network", f"network summary: {page.by_id('network-summary').text!r}")
        page.by_id("create-submit").click()
        error = page.visible("create-error")
        check(
            error.text == "Allowed networks, entry 1 “10.0.0.1/8”: address has bits set beyond the prefix length: write the network address.",
            f"400 for a CIDR: {error.text!r}",
        )
        check(page.by_id("create-cidrs").get_attribute("aria-invalid") == "true", "bad CIDR field not marked")
        check(driver.switch_to.active_element == page.by_id("create-cidrs"), "bad CIDR field not focused")
        hostile = "<img src=x onerror=alert(2)>"
        page.set_field("create-cidrs", "127.0.0.0/8\n" + hostile)
        page.by_id("create-submit").click()
        page.wait.until(lambda d: "entry 2" in page.by_id("create-error").text)
        error = page.by_id("create-error").text
        check(error == f"Allowed networks, entry 2 “{hostile}”: not an IPv4 or IPv6 address.", f"hostile CIDR: {error!r}")
        check(
            driver.execute_script("return document.querySelectorAll('#create-error *, dialog img').length") == 0,
            "the hostile value made an element",
        )
        page.shot("desktop-9-cidr-error")
        page.set_field("create-cidrs", "127.0.0.0/8\n::1")
        page.open_section("usage-section")
        page.by_id("credits-on").click()
        page.set_field("credits-remaining", "4200")
        Select(page.by_id("credits-refill")).select_by_value("monthly")
        page.set_field("credits-amount", "1000")
        page.set_field("credits-day", "40")
        page.by_id("create-submit").click()
        page.wait.until(lambda d: "Credits" in page.by_id("create-error").text)
        error = page.by_id("create-error").text
        check(error == "Credits: the refill day must be 1 to 31.", f"400 for credits: {error!r}")
        check(page.by_id("credits-day").get_attribute("aria-invalid") == "true", "refill day not marked")
        check(page.by_id("create-cidrs").get_attribute("aria-invalid") is None, "an old mark stayed")
        page.set_field("credits-day", "15")
        page.by_id("create-submit").click()
        page.wait.until(EC.invisibility_of_element_located((By.ID, "create-dialog")))
        page.wait.until(lambda d: len(page.chips("Metered sync")) == 3)
        chips = page.chips("Metered sync")
        check(
            chips[0] == "1/min" and re.fullmatch(r"4[,.\u202f\u00a0]?200 credits", chips[1]) and chips[2] == "2 networks",
            f"chips after edit: {chips}",
        )
        status, body, _ = server.call(f"/api/api-keys/{metered_id}", server.admin_key)
        view = json.loads(body)["apiKey"]
        check(view["allowedCidrs"] == ["127.0.0.0/8", "::1/128"], f"allowedCidrs: {view['allowedCidrs']}")
        check(
            view["credits"]["remaining"] == 4200
            and view["credits"]["refill"] == {"interval": "monthly", "amount": 1000, "refillDay": 15},
            f"credits: {view['credits']}",
        )
        check(view["ratelimits"] == [{"name": "requests", "limit": 1, "duration": 60000, "autoApply": True}], f"ratelimits: {view['ratelimits']}")
        page.shot("desktop-10-list-limits")

        # The edit form shows what was saved; removing the rate limit lets the key through.
        step("The edit form shows what was saved; removing the rate limit lets the key through.")
        expect_status(server, "/api/libraries", metered, 429, "still limited")
        page.row("Metered sync").find_element(By.CSS_SELECTOR, 'button[data-action="edit"]').click()
        page.visible("create-name")
        check(page.by_id("network-summary").text == "2 networks", "edit form network summary")
        page.open_section("usage-section")
        check(page.by_id("credits-on").is_selected(), "credits box")
        check(page.by_id("credits-remaining").get_attribute("value") == "4200", "credits left")
        check(page.by_id("credits-day").get_attribute("value") == "15", "refill day")
        check(page.by_id("credits-reset-note").is_displayed(), "no note that saving credits restarts the count")
        driver.find_element(By.CSS_SELECTOR, "#ratelimit-rows [data-remove]").click()
        check(page.by_id("usage-summary").text.endswith("credits"), f"summary: {page.by_id('usage-summary').text!r}")
        page.by_id("create-submit").click()
        page.wait.until(EC.invisibility_of_element_located((By.ID, "create-dialog")))
        page.wait.until(lambda d: len(page.chips("Metered sync")) == 2)
        expect_status(server, "/api/libraries", metered, 200, "rate limit removed")
        status, body, _ = server.call(f"/api/api-keys/{metered_id}", server.admin_key)
        view = json.loads(body)["apiKey"]
        check(view["ratelimits"] == [] and view["credits"]["remaining"] == 4199, f"after removing the limit: {view}")

        # Credits used up outside the page: shown as 0 (from the gate's count) after a reload.
        step("Credits used up outside the page: shown as 0 after a reload.")
        page.visible("add-key").click()
        page.visible("create-name").send_keys("Two credits")
        Select(page.by_id("create-user-select")).select_by_value("user")
        page.open_section("usage-section")
        page.by_id("credits-on").click()
        page.set_field("credits-remaining", "2")
        page.by_id("create-submit").click()
        two = page.visible("secret-value").get_attribute("value")
        page.done_secret()
        page.wait_row("Two credits")
        check(page.chips("Two credits") == ["2 credits"], f"chips: {page.chips('Two credits')}")
        expect_status(server, "/api/libraries", two, 200, "credit 1 of 2")
        expect_status(server, "/api/libraries", two, 200, "credit 2 of 2")
        status, body, _ = server.call("/api/libraries", two)
        check(status == 429 and json.loads(body)["error"] == "credits_exhausted", f"third call: {status} {body}")

        # An expiry date: a past one is refused in the form; a future one is kept.
        step('An expiry date: a past one is refused in the form; a future one is kept.')
        page.visible("add-key").click()
        page.visible("create-name").send_keys("Until 2030")
        Select(page.by_id("create-user-select")).select_by_value("user")
        Select(page.by_id("create-expiry")).select_by_value("date")
        page.visible("create-date")
        driver.execute_script("document.getElementById('create-date').value = '2001-02-03'")
        page.by_id("create-submit").click()
        error = page.visible("create-error")
        check(error.text == "The expiry date must be in the future.", f"past date: {error.text!r}")
        driver.execute_script("document.getElementById('create-date').value = '2030-01-15'")
        page.by_id("create-submit").click()
        page.visible("secret-value")
        page.done_secret()
        tr = page.wait_row("Until 2030")
        status, body, _ = server.call(
            f"/api/api-keys/{tr.get_attribute('data-key-id')}", server.admin_key
        )
        expires_at = json.loads(body)["apiKey"]["expiresAt"]
        # The end of 15 January 2030, local time: the 15th or 16th in UTC.
        check(expires_at[:10] in ("2030-01-15", "2030-01-16"), f"expiresAt {expires_at}")
        expiry_cell = tr.find_element(By.CSS_SELECTOR, 'td[data-label="Expires"] time')
        check(expiry_cell.get_attribute("datetime").startswith(expires_at[:10]), "expiry cell")
        delete = tr.find_element(By.CSS_SELECTOR, 'button[data-action="delete"]')
        delete.click()
        page.confirm()
        page.wait_row("Until 2030", present=False)

        # Phone width: the list as cards, the form, the shown key.
        step('Phone width: the list as cards, the form, the shown key.')
        page.create("Phone sync", expiry="7")
        viewport(driver, 390, 844, True)
        page.shot("phone-3-created")
        page.done_secret()
        page.create("Nightly backup of the audiobook library")
        page.done_secret()
        viewport(driver, 390, 844, True)
        page.shot("phone-1-list")
        page.full_shot("phone-1-list-full", 390, True)
        viewport(driver, 390, 844, True)
        page.by_id("add-key").click()
        page.visible("create-name")
        page.shot("phone-2-create")
        page.open_section("usage-section")
        page.by_id("ratelimit-add").click()
        page.by_id("credits-on").click()
        Select(page.by_id("credits-refill")).select_by_value("monthly")
        page.open_section("network-section")
        page.set_field("create-cidrs", "203.0.113.0/24\n2001:db8::/32")
        page.full_shot("phone-4-limits-form", 390, True)
        viewport(driver, 390, 844, True)
        driver.switch_to.active_element.send_keys(Keys.ESCAPE)
        page.wait.until(EC.invisibility_of_element_located((By.ID, "create-dialog")))
        viewport(driver, 1280, 800, False)
        page.shot("desktop-2b-list")
        # The same list in dark mode (prefers-color-scheme).
        step('The same list in dark mode (prefers-color-scheme).')
        driver.execute_cdp_cmd(
            "Emulation.setEmulatedMedia",
            {"features": [{"name": "prefers-color-scheme", "value": "dark"}]},
        )
        page.shot("desktop-7-dark")
        driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})

        # No CSP violation or script error while all this ran.
        step('No CSP violation or script error while all this ran.')
        problems = [
            entry["message"]
            for entry in driver.get_log("browser")
            if entry["level"] == "SEVERE" and "favicon" not in entry["message"]
            and "/api/" not in entry["message"]  # the 401 and 404 answers provoked above
        ]
        check(not problems, "browser console errors:\n" + "\n".join(problems))

        # Stay signed in across a reload only when asked; sign out clears it.
        step('Stay signed in across a reload only when asked; sign out clears it.')
        page.by_id("sign-out").click()
        page.visible("signin-key")
        check(driver.execute_script("return sessionStorage.length") == 0, "sessionStorage kept a key")
        check(driver.execute_script("return document.cookie") == "", "a cookie was set")
        # A valid key without the admin permission: told so, not signed in.
        step('A valid key without the admin permission: told so, not signed in.')
        page.sign_in(rotated)
        error = page.visible("signin-error")
        check(error.text == "This key is valid, but it has no admin permission.", f"non-admin: {error.text!r}")
        check(not page.by_id("keys").is_displayed(), "a non-admin key got the list")
        driver.refresh()
        page.visible("signin-key")
        page.by_id("signin-remember").click()
        page.sign_in(server.admin_key)
        page.visible("keys")
        driver.refresh()
        page.visible("keys")  # signed in again from sessionStorage
        page.wait_row("Two credits")
        chips = page.chips("Two credits")
        check(chips == ["0 credits"], f"used-up credits after reload: {chips}")
        check("chip-empty" in page.row("Two credits").find_element(By.CSS_SELECTOR, ".chip").get_attribute("class"), "0 credits not marked")
        page.by_id("sign-out").click()
        page.visible("signin-key")
        check(driver.execute_script("return sessionStorage.length") == 0, "sign out left the key")
        viewport(driver, 390, 844, True)
        page.shot("phone-0-signin")
    except (AssertionError, TimeoutException) as error:
        if driver is not None:
            try:
                page.shot("failure")
                state = driver.execute_script(
                    "return {url: location.href,"
                    " dialogs: [...document.querySelectorAll('dialog[open]')].map(d => d.id),"
                    " errors: [...document.querySelectorAll('.form-error:not([hidden]), #banner:not([hidden])')]"
                    ".map(e => e.id + ': ' + e.textContent),"
                    " rows: [...document.querySelectorAll('#key-rows tr')].map(r => r.textContent)}"
                )
                print("--- page state ---\n" + json.dumps(state, indent=1), file=sys.stderr)
                for entry in driver.get_log("browser"):
                    print("console:", entry["level"], entry["message"], file=sys.stderr)
            except Exception:  # noqa: BLE001 - best effort
                pass
        print("--- server stderr ---\n" + "\n".join(server.stderr_lines[-40:]), file=sys.stderr)
        fail(f"at step {STEP[0]!r}: {type(error).__name__}: {error}")
    finally:
        if driver is not None:
            driver.quit()
        server.stop()
        shutil.rmtree(profile, ignore_errors=True)


def main():
    if len(sys.argv) < 2:
        fail("usage: admin_page.py SERVER_BINARY [SCREENSHOT_DIR]")
    binary = sys.argv[1]
    name = os.path.basename(binary)
    shots = sys.argv[2] if len(sys.argv) > 2 else os.path.join("target", "admin-page-screenshots", name)
    for tool in (CHROMIUM, CHROMEDRIVER, binary):
        if not os.access(tool, os.X_OK):
            fail(f"{tool} is missing or not executable")
    started = time.monotonic()
    run(binary, shots)
    print(f"admin page: ok ({name}, {time.monotonic() - started:.1f} s)")


if __name__ == "__main__":
    main()
