"""The dashboard in a real headless browser (Debian's chromium, driven by selenium).

A job submitted over LUXI appears without a reload, its log grows as the
command writes, and the page's kill button cancels it; a read-only user sees
no buttons. A screenshot is kept under the test's tmp_path.
"""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_helper import Daemon, state_dir_under
from tests.rapi_helper import USERS, Rapi

pytest.importorskip("selenium")
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

CHROMIUM = os.environ.get("JOBQUEUE_CHROMIUM") or shutil.which("chromium")
CHROMEDRIVER = os.environ.get("JOBQUEUE_CHROMEDRIVER") or shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="no chromium and chromedriver (make test installs them as root)",
)
WAIT = 20.0


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, Rapi]]:
    work = tmp_path_factory.mktemp("dashboard")
    master = Daemon(state_dir_under(work), workers=2).start()
    rapi = Rapi(work, master.paths.master_socket, "--dashboard-interval", "0.2").start()
    yield master, rapi
    rapi.stop()
    luxi = master.client()
    for job_id, status in luxi.query_jobs(None, ["id", "status"]):
        if status not in ("success", "error", "canceled"):
            luxi.cancel_job(job_id, True)  # a failed test may leave a command running
    master.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    assert CHROMIUM is not None and CHROMEDRIVER is not None
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",  # root has no sandbox
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('profile')}",
    ):
        options.add_argument(flag)
    options.accept_insecure_certs = True  # the test certificate is self-signed
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


def log_in(driver: webdriver.Chrome, user: str) -> None:
    """Send the user's basic credentials with every request of the page."""
    token = base64.b64encode(f"{user}:{USERS[user][1]}".encode()).decode()
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd(
        "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}}
    )


def until(driver: webdriver.Chrome, condition: Any, what: str) -> Any:
    """Wait for ``condition(driver)``; the page redraws rows, so stale elements are retried."""
    wait = WebDriverWait(driver, WAIT, ignored_exceptions=(StaleElementReferenceException,))
    return wait.until(lambda d: condition(d), message=what)


def click(driver: webdriver.Chrome, selector: str) -> None:
    """Click an element; a row redrawn between finding and clicking it is found again."""

    def clicked(d: webdriver.Chrome) -> bool:
        d.find_element(By.CSS_SELECTOR, selector).click()
        return True

    until(driver, clicked, f"a click on {selector}")


def open_job(driver: webdriver.Chrome, job_id: int) -> None:
    """Click the job's row until the job view shows that job.

    A click goes to the point where the row was found: were the live table
    redrawn in between with the rows moved, it would open another job.
    """
    selector = f'#jobs-table tr[data-job-id="{job_id}"]'

    def opened(d: webdriver.Chrome) -> bool:
        d.find_element(By.CSS_SELECTOR, selector).click()
        return text_of(d, "#job-id") == str(job_id)

    until(driver, opened, f"job {job_id} opened from its row")


def text_of(driver: webdriver.Chrome, selector: str) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, selector).text)


def log_lines(driver: webdriver.Chrome) -> list[str]:
    return [item.text for item in driver.find_elements(By.CSS_SELECTOR, "#job-log li")]


def test_live_jobs_log_and_cancel(
    served: tuple[Daemon, Rapi], browser: webdriver.Chrome, tmp_path: Path
) -> None:
    master, rapi = served
    log_in(browser, "writer")
    browser.get(rapi.url + "/")
    until(browser, lambda d: text_of(d, "#connection") == "live", "the event stream to open")
    browser.execute_script("window.notReloaded = true;")

    flag = tmp_path / "more"
    script = (
        f'echo tick-1; while [ ! -e "{flag}" ]; do sleep 0.02; done; echo tick-2; '
        "while true; do sleep 0.05; done"
    )
    job_id = master.client().submit_job(
        [{"OP_ID": "OP_COMMAND_RUN", "argv": ["sh", "-c", script], "locks": ["host:web1"]}]
    )
    row = f'#jobs-table tr[data-job-id="{job_id}"]'
    until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, row), "the new job's row")
    until(
        browser,
        lambda d: d.find_element(By.CSS_SELECTOR, row).get_attribute("data-status") == "running",
        "the row to show it running",
    )
    until(browser, lambda d: "host:web1" in text_of(d, "#locks-table"), "its lock to be listed")
    assert "job " + str(job_id) in text_of(browser, "#running-jobs")

    open_job(browser, job_id)
    until(browser, lambda d: any("tick-1" in line for line in log_lines(d)), "the first log line")
    assert not any("tick-2" in line for line in log_lines(browser))
    flag.touch()  # the command writes its second line: the log must grow by itself
    until(browser, lambda d: any("tick-2" in line for line in log_lines(d)), "the log to grow")

    # A second job waits for the first one's lock: raise its priority, then cancel it.
    luxi = master.client()
    waiting = luxi.submit_job(
        [{"OP_ID": "OP_COMMAND_RUN", "argv": ["true"], "locks": ["host:web1"], "priority": 10}]
    )
    waiting_row = f'#jobs-table tr[data-job-id="{waiting}"]'
    until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, waiting_row), "the waiting job")
    open_job(browser, waiting)
    until(browser, lambda d: text_of(d, "#job-status") == "waiting", "the waiting job's view")
    Select(browser.find_element(By.ID, "priority-select")).select_by_visible_text("high")
    click(browser, "#priority-button")
    until(browser, lambda d: text_of(d, "#job-priority").startswith("-10"), "the new priority")
    assert luxi.query_jobs([waiting], ["priority"])[0] == [-10]
    assert browser.find_element(By.ID, "cancel-button").text == "Cancel"
    click(browser, "#cancel-button")
    until(browser, lambda d: text_of(d, "#job-status") == "canceled", "the waiting job canceled")

    open_job(browser, job_id)
    until(browser, lambda d: any("tick-2" in line for line in log_lines(d)), "its log again")
    button = browser.find_element(By.ID, "cancel-button")
    until(browser, lambda d: button.is_displayed() and button.text == "Kill", "the kill button")
    button.click()
    until(browser, lambda d: text_of(d, "#job-status") == "canceled", "the job to show canceled")
    (status,) = master.client().query_jobs([job_id], ["status"])[0]
    assert status == "canceled"
    until(
        browser,
        lambda d: d.find_element(By.CSS_SELECTOR, row).get_attribute("data-status") == "canceled",
        "the row to show it canceled",
    )
    assert browser.execute_script("return window.notReloaded === true;")
    browser.save_screenshot(str(tmp_path / "dashboard.png"))
    assert (tmp_path / "dashboard.png").stat().st_size > 0


def test_a_read_user_sees_no_buttons(
    served: tuple[Daemon, Rapi], browser: webdriver.Chrome
) -> None:
    master, rapi = served
    job_id = master.client().submit_job([{"OP_ID": "OP_TEST_DELAY", "duration": 30}])
    log_in(browser, "reader")
    browser.get("about:blank")  # a new page, not just a new fragment of the old one
    browser.get(f"{rapi.url}/#job={job_id}")
    until(browser, lambda d: text_of(d, "#job-status") == "running", "the job to show running")
    assert "read only" in text_of(browser, "#user")
    assert not browser.find_element(By.ID, "job-actions").is_displayed()
    assert not browser.find_element(By.ID, "cancel-button").is_displayed()
    master.client().cancel_job(job_id, True)
    until(browser, lambda d: text_of(d, "#job-status") == "canceled", "the cancel to show")
