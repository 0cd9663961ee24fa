"""The dashboard in a real browser: headless Chromium (Debian's chromium + chromium-driver) against
a live server, a real Celery worker and a real Radicale.

A person signs in, presses "Sync now" and watches the run go queued → running → succeeded and
its event count appear, without reloading. A proxy in front of Radicale holds the sync's REPORT
requests so the `running` state lasts until the test has seen it.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import uuid

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from calendars.models import Account
from sync import services
from sync.models import SyncRun
from tests.factories import make_user
from tests.support.caldav_servers import vevent
from tests.support.gated_proxy import GatedProxy
from tests.support.polling import wait_for
from tests.support.schedules import beat_schedule  # noqa: F401 (fixture)

# The page reads the resync schedule (`beat_schedule`).
pytestmark = [
    pytest.mark.integration,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("beat_schedule"),
]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser():
    profile = tempfile.mkdtemp(prefix="caly-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",  # the tests run as root
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def proxied_account(radicale):
    """A user whose CalDAV account reaches Radicale through a gated proxy; five events wait."""
    name = f"browser-{uuid.uuid4().hex[:8]}"
    radicale.make_calendar(name, display_name="Team")
    for i in range(5):
        radicale.put(name, f"b{i}.ics", vevent(f"b{i}-{name}@example.com", summary=f"Talk {i}"))
    proxy = GatedProxy(radicale.base_url)
    user = make_user("grace")
    account = services.account_connect(
        owner=user,
        provider="caldav",
        name="Team server",
        url=proxy.url + "/",
        username=radicale.user,
        credentials={"password": "secret-password"},
    )
    yield proxy, account
    proxy.stop()
    radicale.delete_calendar(name)


def sign_in(browser, live_server, username: str) -> None:
    browser.get(live_server.url + "/")
    assert "/login/" in browser.current_url  # the dashboard needs a signed-in user
    browser.find_element(By.NAME, "username").send_keys(username)
    browser.find_element(By.NAME, "password").send_keys("pw-" + username)
    browser.find_element(By.ID, "sign-in").click()
    wait_for(lambda: browser.find_elements(By.ID, "accounts"), timeout=10, what="the dashboard")


def run_row(browser, run_id: int):
    rows = browser.find_elements(By.CSS_SELECTOR, f'#runs tr.run[data-run="{run_id}"]')
    return rows[0] if rows else None


def shown_state(browser, run_id: int) -> str | None:
    row = run_row(browser, run_id)
    return row.find_element(By.CSS_SELECTOR, ".state").text if row else None


def cell(browser, selector: str) -> str:
    return browser.find_element(By.CSS_SELECTOR, selector).text


def test_sync_now_shows_the_run_live_from_queued_to_succeeded(
    browser, live_server, proxied_account, worker
):
    proxy, account = proxied_account
    sign_in(browser, live_server, "grace")
    row = f"#account-{account.pk}"
    assert cell(browser, f"{row} .name") == "Team server"
    assert cell(browser, f"{row} .last-sync") == "never"
    assert cell(browser, f"{row} .events") == "0"
    assert "No syncs yet." in cell(browser, "#runs")

    proxy.close_gate()
    browser.find_element(By.CSS_SELECTOR, f"{row} .sync-now").click()

    first = wait_for(
        lambda: SyncRun.objects.filter(account=account).first(), timeout=10, what="the run"
    )
    assert first.trigger == "api"
    wait_for(lambda: proxy.held, timeout=30, what="the sync to reach the calendar listing")
    wait_for(
        lambda: shown_state(browser, first.pk) == "running",
        timeout=10,
        what="the page to show the run running",
    )
    assert cell(browser, f"{row} .current").startswith("running · 0/1 calendars")
    assert cell(browser, f"{row} .next-sync") == "now"

    # Pressed again while it runs: a second run waits its turn, and the page says so.
    browser.find_element(By.CSS_SELECTOR, f"{row} .sync-now").click()
    second = wait_for(
        lambda: SyncRun.objects.filter(account=account, deferred=True).first(),
        timeout=30,
        what="the second run to wait behind the first",
    )
    assert shown_state(browser, second.pk) == "queued"
    assert "waiting for a worker" in run_row(browser, second.pk).text

    proxy.open_gate()
    wait_for(
        lambda: shown_state(browser, first.pk) == "succeeded",
        timeout=30,
        what="the page to show the first run succeeded",
    )
    first_row = run_row(browser, first.pk)
    assert first_row.find_element(By.CSS_SELECTOR, ".progress").text == "5 events"
    assert first_row.find_element(By.CSS_SELECTOR, ".result").text == (
        "5 new, 0 changed, 0 removed"
    )
    # Every state the page showed for the run, in order, without a reload.
    assert first_row.get_attribute("data-states") == "queued running succeeded"
    wait_for(
        lambda: cell(browser, f"{row} .events") == "5",
        timeout=10,
        what="the account's event count",
    )
    wait_for(
        lambda: shown_state(browser, second.pk) == "succeeded",
        timeout=30,
        what="the second run to finish",
    )
    assert run_row(browser, second.pk).get_attribute("data-states").startswith("queued")
    wait_for(
        lambda: cell(browser, f"{row} .last-sync") == "just now",
        timeout=10,
        what="the last sync time",
    )
    assert re.match(r"in 1[45] min \(", cell(browser, f"{row} .next-sync"))
    assert browser.find_element(By.ID, "banner").is_displayed() is False


def test_reconnecting_an_account_from_the_dashboard(browser, live_server, radicale, worker):
    """A CalDAV account whose password stopped working: the page says what to do, and doing it
    (typing the current password) makes the account active and syncs it."""
    user = make_user("heidi")
    account = services.account_connect(
        owner=user,
        provider="caldav",
        name="Old password",
        url=radicale.base_url + "/",
        username=radicale.user,
        credentials={"password": "old-password"},
    )
    Account.objects.filter(pk=account.pk).update(
        status=Account.Status.NEEDS_REAUTH, last_error="The server rejected the password."
    )
    browser.delete_all_cookies()
    sign_in(browser, live_server, "heidi")
    row = f"#account-{account.pk}"
    notice = browser.find_element(By.CSS_SELECTOR, f'{row} .notice[data-when="needs_reauth"]')
    assert "Enter the current password to reconnect" in notice.text
    assert not browser.find_element(By.CSS_SELECTOR, f"{row} .sync-now").is_enabled()
    assert cell(browser, f"{row} .next-sync") == "paused until you reconnect"

    notice.find_element(By.NAME, "password").send_keys("secret-password")
    notice.find_element(By.CSS_SELECTOR, "button").click()

    wait_for(
        lambda: cell(browser, f"{row} .status") == "Active",
        timeout=10,
        what="the account to show active",
    )
    run = wait_for(
        lambda: SyncRun.objects.filter(account=account, state="succeeded").first(),
        timeout=30,
        what="the sync after reconnecting",
    )
    wait_for(
        lambda: shown_state(browser, run.pk) == "succeeded",
        timeout=15,
        what="the page to show it",
    )
    assert not notice.is_displayed()
    assert browser.find_element(By.CSS_SELECTOR, f"{row} .sync-now").is_enabled()
    assert Account.objects.get(pk=account.pk).credentials == {"password": "secret-password"}

    # "Sync all" asks for every active account of the user, through the same endpoint.
    browser.find_element(By.ID, "sync-all").click()
    again = wait_for(
        lambda: SyncRun.objects.filter(account=account).exclude(pk=run.pk).first(),
        timeout=10,
        what="the sync of all accounts",
    )
    wait_for(
        lambda: shown_state(browser, again.pk) == "succeeded",
        timeout=30,
        what="the page to show it",
    )
