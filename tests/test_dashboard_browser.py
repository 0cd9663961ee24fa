"""The dashboard in a real browser: headless Chromium (Debian's chromium + chromium-driver) against
a live server, a real Celery worker and a real Radicale. The browser resolves no name but
loopback's, as on a machine without internet: the page, the admin and the API docs need none.

A person signs in, presses "Sync now" and watches the run go queued → running → succeeded and
its event count appear, without reloading. A proxy in front of Radicale holds the sync's REPORT
requests so the `running` state lasts until the test has seen it. In "This week" they create,
edit and delete an event, and each change reaches Radicale; the proxy holds the answer to the
create's PUT so the event's `pending` state lasts until the test has seen it. They connect a
CalDAV account from the form, switch one of its calendars off, rename and remove it.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
import tempfile
import uuid
import zoneinfo

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select, WebDriverWait

from calendars.models import Account, Calendar, Event
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
        # No internet: every name but loopback's fails to resolve.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
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
    assert first.trigger == "dashboard"
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
    assert first_row.find_element(By.CSS_SELECTOR, ".progress").text == "5 events read"
    assert first_row.find_element(By.CSS_SELECTOR, ".result").text == "5 events created"
    assert first_row.find_element(By.CSS_SELECTOR, ".trigger").text == "Dashboard"
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
    # A clock time, labelled with the browser's zone (UTC here), named at the top of the page.
    assert re.match(r"in 1[45] min \(.+ UTC\)$", cell(browser, f"{row} .next-sync"))
    assert "UTC" in cell(browser, "#zone-note")
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


@pytest.fixture
def week_calendar(radicale):
    """A user with one empty Radicale calendar, reached through a proxy that can hold answers."""
    name = f"week-{uuid.uuid4().hex[:8]}"
    radicale.make_calendar(name, display_name="Plans")
    proxy = GatedProxy(radicale.base_url)
    account = services.account_connect(
        owner=make_user("ivy"),
        provider="caldav",
        name="Plans server",
        url=proxy.url + "/",
        username=radicale.user,
        credentials={"password": "secret-password"},
    )
    calendar = Calendar.objects.get(account=account, remote_id__endswith=f"/{name}/")
    yield proxy, calendar, name
    proxy.stop()
    radicale.delete_calendar(name)


def week_row(browser, summary: str):
    """The row of "This week" showing `summary` (one lookup: the list is re-rendered as it polls)."""
    rows = browser.find_elements(
        By.XPATH,
        f'//table[@id="week"]//tr[contains(@class, "week-event")][.//*[@class="summary"]="{summary}"]',
    )
    return rows[0] if rows else None


def week_state(browser, summary: str) -> str | None:
    try:
        row = week_row(browser, summary)
        return row.get_attribute("data-state") if row else None
    except StaleElementReferenceException:  # re-rendered meanwhile: ask again
        return None


def set_value(browser, field, value: str) -> None:
    """What a person picks in a datetime-local input (typing one depends on the locale)."""
    browser.execute_script("arguments[0].value = arguments[1]", field, value)


def test_this_week_creates_edits_and_deletes_an_event_on_the_server(
    browser, live_server, radicale, week_calendar, worker
):
    proxy, calendar, name = week_calendar
    on_server = lambda: radicale.session.get(radicale.calendar_url(name)).text  # noqa: E731
    tokyo = zoneinfo.ZoneInfo("Asia/Tokyo")
    day = (dt.datetime.now(tokyo) + dt.timedelta(days=1)).date().isoformat()
    # The browser is in Tokyo: its wall times go to the API with Tokyo's offset.
    browser.execute_cdp_cmd("Emulation.setTimezoneOverride", {"timezoneId": "Asia/Tokyo"})
    try:
        browser.delete_all_cookies()
        sign_in(browser, live_server, "ivy")
        assert "Asia/Tokyo (UTC+09:00)" in cell(browser, "#week-note")
        wait_for(
            lambda: "Nothing in the next 7 days." in cell(browser, "#week"),
            timeout=10,
            what="the empty week",
        )
        form = browser.find_element(By.ID, "new-event")
        assert Select(form.find_element(By.NAME, "calendar")).first_selected_option.text == "Plans"

        # The API's 400 is shown next to the form, naming the field.
        form.find_element(By.NAME, "summary").send_keys("Dentist")
        set_value(browser, form.find_element(By.NAME, "start"), f"{day}T10:00")
        set_value(browser, form.find_element(By.NAME, "end"), f"{day}T09:00")
        form.find_element(By.CSS_SELECTOR, 'button[type="submit"]').click()
        wait_for(
            lambda: cell(browser, "#new-event .form-errors") == "End: Must be after start.",
            timeout=10,
            what="the error naming the end",
        )
        assert not Event.objects.filter(calendar=calendar).exists()

        proxy.hold_put_answers()
        set_value(browser, form.find_element(By.NAME, "end"), f"{day}T11:30")
        form.find_element(By.NAME, "location").send_keys("Ginza")
        form.find_element(By.CSS_SELECTOR, 'button[type="submit"]').click()
        row = wait_for(lambda: week_row(browser, "Dentist"), timeout=10, what="the new event")
        assert row.find_element(By.CSS_SELECTOR, ".sync").text == "pending…"
        assert row.find_element(By.CSS_SELECTOR, ".calendar").text == "Plans"
        assert "10:00" in row.find_element(By.CSS_SELECTOR, ".when").text
        assert not form.find_element(By.CSS_SELECTOR, ".form-errors").is_displayed()
        wait_for(lambda: proxy.answers_held, timeout=30, what="the worker's PUT")
        proxy.release_put_answers()
        wait_for(
            lambda: week_state(browser, "Dentist") == "synced",
            timeout=30,
            what="the event to show synced",
        )
        row = week_row(browser, "Dentist")
        assert row.get_attribute("data-states") == "pending synced"
        assert row.find_element(By.CSS_SELECTOR, ".sync").text == ""
        event = Event.objects.get(calendar=calendar)
        start = dt.datetime.fromisoformat(f"{day}T10:00").replace(tzinfo=tokyo)
        assert event.start == start and event.end == start + dt.timedelta(minutes=90)
        text = on_server()
        assert f"UID:{event.uid}" in text and "SUMMARY:Dentist" in text
        # Written in the browser's zone, with its VTIMEZONE.
        assert f"DTSTART;TZID=Asia/Tokyo:{start:%Y%m%dT%H%M%S}" in text
        assert "TZID:Asia/Tokyo" in text and event.timezone == "Asia/Tokyo"
        assert "LOCATION:Ginza" in text

        row.find_element(By.CSS_SELECTOR, ".edit").click()
        edit = browser.find_element(By.CSS_SELECTOR, "#week form.edit-event")
        assert edit.find_element(By.NAME, "start").get_attribute("value") == f"{day}T10:00"
        summary = edit.find_element(By.NAME, "summary")
        summary.clear()
        summary.send_keys("Dentist (moved)")
        edit.find_element(By.CSS_SELECTOR, 'button[type="submit"]').click()
        wait_for(
            lambda: "SUMMARY:Dentist (moved)" in on_server(),
            timeout=30,
            what="the edit on the server",
        )
        wait_for(
            lambda: week_state(browser, "Dentist (moved)") == "synced",
            timeout=30,
            what="the edited event to show synced",
        )
        assert not browser.find_elements(By.CSS_SELECTOR, "#week form.edit-event")
        assert "10:00" in cell(browser, f'#week tr[data-event="{event.pk}"] .when')
        assert "LOCATION:Ginza" in on_server()

        week_row(browser, "Dentist (moved)").find_element(By.CSS_SELECTOR, ".delete").click()
        alert = WebDriverWait(browser, 10).until(expected_conditions.alert_is_present())
        assert "Dentist (moved)" in alert.text
        alert.accept()
        wait_for(
            lambda: week_row(browser, "Dentist (moved)") is None,
            timeout=10,
            what="the event to leave the list",
        )
        wait_for(lambda: event.uid not in on_server(), timeout=30, what="the delete on the server")
        wait_for(
            lambda: not Event.objects.filter(pk=event.pk).exists(),
            timeout=10,
            what="the row to go",
        )
        assert "Nothing in the next 7 days." in cell(browser, "#week")
        assert not browser.find_element(By.ID, "week-message").is_displayed()
    finally:
        proxy.release_put_answers()
        browser.execute_cdp_cmd("Emulation.setTimezoneOverride", {"timezoneId": ""})


def test_api_docs_render_without_internet(browser, live_server):
    """Swagger UI's files come from Caly itself: the docs list the operations with no CDN."""
    try:  # the network is cut off indeed
        browser.get("https://cdn.jsdelivr.net/")
        assert "ERR_NAME_NOT_RESOLVED" in browser.page_source
    except WebDriverException as exc:
        assert "ERR_NAME_NOT_RESOLVED" in str(exc)

    browser.get(live_server.url + "/api/docs/")

    def listed(path: str) -> bool:
        try:
            return any(
                (element.get_attribute("data-path") or element.text.replace("\u200b", "")) == path
                for element in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")
            )
        except StaleElementReferenceException:  # drawn again meanwhile: ask again
            return False

    wait_for(lambda: listed("/api/accounts/"), timeout=20, what="Swagger UI's operations")
    assert listed("/api/sync/")
    loaded = browser.execute_script(
        "return performance.getEntriesByType('resource').map((e) => new URL(e.name).origin)"
    )
    assert loaded and set(loaded) == {live_server.url}


def test_connecting_switching_renaming_and_removing_an_account(
    browser, live_server, radicale, worker
):
    name = f"garden-{uuid.uuid4().hex[:8]}"
    radicale.make_calendar(name, display_name="Garden")
    radicale.put(name, "plant.ics", vevent(f"plant-{name}@example.com", summary="Plant"))
    user = make_user("kim")
    try:
        browser.delete_all_cookies()
        sign_in(browser, live_server, "kim")
        assert "No accounts connected yet" in cell(browser, "#accounts")
        assert "CALY_GOOGLE_CLIENT_ID" in cell(browser, "#google-connect")  # not set up here

        # The API's 400 is shown under the field it names; nothing is connected.
        form = browser.find_element(By.ID, "connect-caldav")
        form.find_element(By.NAME, "url").send_keys("not a url")
        form.find_element(By.NAME, "username").send_keys(radicale.user)
        form.find_element(By.NAME, "password").send_keys(radicale.password)
        form.find_element(By.NAME, "name").send_keys("Garden server")
        form.find_element(By.CSS_SELECTOR, 'button[type="submit"]').click()
        url_error = '#connect-caldav .field-error[data-for="url"]'
        wait_for(
            lambda: "Enter a valid URL." in cell(browser, url_error),
            timeout=10,
            what="the error under the URL",
        )
        assert form.find_element(By.NAME, "url").get_attribute("aria-invalid") == "true"
        assert not Account.objects.filter(owner=user).exists()

        url = form.find_element(By.NAME, "url")
        url.clear()
        url.send_keys(radicale.base_url + "/")
        form.find_element(By.CSS_SELECTOR, 'button[type="submit"]').click()
        account = wait_for(
            lambda: Account.objects.filter(owner=user).first(), timeout=30, what="the account"
        )
        row = f"#account-{account.pk}"
        wait_for(
            lambda: browser.find_elements(By.CSS_SELECTOR, f"{row} .name"),
            timeout=10,
            what="the account's row",
        )
        assert cell(browser, f"{row} .name") == "Garden server"
        assert not browser.find_element(By.CSS_SELECTOR, url_error).is_displayed()
        # Connected, then synced at once, as asked for on the dashboard.
        run = wait_for(
            lambda: SyncRun.objects.filter(account=account, state="succeeded").first(),
            timeout=30,
            what="the first sync",
        )
        assert run.trigger == SyncRun.Trigger.DASHBOARD
        wait_for(
            lambda: shown_state(browser, run.pk) == "succeeded",
            timeout=15,
            what="the page to show it",
        )

        # Its calendars, each with its switch: switching one off stops syncing it.
        calendar = Calendar.objects.get(account=account, remote_id__endswith=f"/{name}/")
        switch = f'{row} input.selected[data-calendar="{calendar.pk}"]'
        wait_for(
            lambda: browser.find_elements(By.CSS_SELECTOR, switch), timeout=10, what="the switch"
        )
        assert browser.find_element(By.CSS_SELECTOR, switch).is_selected()
        assert cell(browser, f'{row} li[data-calendar="{calendar.pk}"]') == "Garden"

        def switch_off():
            try:
                browser.find_element(By.CSS_SELECTOR, switch).click()
                return True
            except StaleElementReferenceException:  # the list was drawn again meanwhile
                return None

        wait_for(switch_off, timeout=10, what="the switch to be clicked")
        wait_for(
            lambda: not Calendar.objects.get(pk=calendar.pk).selected,
            timeout=10,
            what="the calendar switched off",
        )
        wait_for(
            lambda: not browser.find_element(By.CSS_SELECTOR, switch).is_selected(),
            timeout=10,
            what="the switch to show off",
        )

        browser.find_element(By.CSS_SELECTOR, f"{row} .rename-account").click()
        field = browser.find_element(By.CSS_SELECTOR, f'{row} form.rename input[name="name"]')
        field.clear()
        field.send_keys("Garden (home)")
        browser.find_element(By.CSS_SELECTOR, f'{row} form.rename button[type="submit"]').click()
        wait_for(
            lambda: cell(browser, f"{row} .name") == "Garden (home)",
            timeout=10,
            what="the new name",
        )
        assert Account.objects.get(pk=account.pk).name == "Garden (home)"
        assert not browser.find_element(By.CSS_SELECTOR, f"{row} form.rename").is_displayed()

        browser.find_element(By.CSS_SELECTOR, f"{row} .remove-account").click()
        alert = WebDriverWait(browser, 10).until(expected_conditions.alert_is_present())
        assert "Garden (home)" in alert.text
        alert.accept()
        wait_for(
            lambda: not browser.find_elements(By.CSS_SELECTOR, row),
            timeout=10,
            what="the account to leave the page",
        )
        assert not Account.objects.filter(pk=account.pk).exists()
        assert "No accounts connected yet" in cell(browser, "#accounts")
    finally:
        radicale.delete_calendar(name)
