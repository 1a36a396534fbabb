"""The dashboard at /ui in a real headless browser (Debian's chromium, driven by Selenium through
chromium-driver; scripts/test.sh installs both): log in, submit, watch the progress bar move and a
preview appear, reload mid-run and see the stream resume, see the image, cancel another job.

Screenshots go to $DIFFQ_TEST_SCREENSHOTS (default: the tests' temporary folder)."""

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cli.client import Client
from tests.utils.jobs import text2img_spec

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver; "
    "scripts/test.sh does)",
)


@pytest.fixture
def browser(stack) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


def wait_for(condition: Callable[[], Any], timeout: float = 60, what: str = "the page") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except Exception:  # the element is not there yet, or was just replaced
            value = None
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not happen in {timeout} s")


def screenshot(driver: Any, stack: Any, name: str) -> Path:
    folder = Path(os.environ.get("DIFFQ_TEST_SCREENSHOTS", stack.tmp))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def progress(driver: Any) -> tuple[int, int]:
    value, total = driver.execute_script(
        "const bar = document.querySelector('#progress'); return [bar.value, bar.max];"
    )
    return int(value), int(total)


def shown(driver: Any, selector: str) -> bool:
    """An <img> that has loaded a picture."""
    return bool(
        driver.execute_script(
            "const img = document.querySelector(arguments[0]);"
            "return !!img && !img.hidden && img.complete && img.naturalWidth > 0;",
            selector,
        )
    )


def status(driver: Any) -> str:
    return driver.execute_script("return document.querySelector('#status [data-status]').dataset.status;")


def test_the_dashboard_follows_a_job_live(stack, browser, client: Client) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    driver.get(f"{stack.api_url}/ui/")
    driver.find_element(By.ID, "key").send_keys(os.environ["DIFFQ_API_KEY"])
    driver.find_element(By.ID, "login").click()
    wait_for(lambda: driver.find_element(By.ID, "jobs"), what="the job list")

    # Submit through the form: a long enough run to watch, a preview every 5 steps.
    driver.get(f"{stack.api_url}/ui/#/submit")
    form = wait_for(lambda: driver.find_element(By.ID, "submit-form"), what="the form")
    steps = form.find_element(By.NAME, "num_inference_steps")
    steps.clear()
    steps.send_keys("400")
    form.find_element(By.NAME, "seed").send_keys("7")
    driver.find_element(By.ID, "submit").click()
    wait_for(lambda: "#/jobs/" in driver.current_url, what="the job page")
    job_id = driver.current_url.rsplit("/", 1)[-1]

    # The bar moves, and a preview appears.
    first = wait_for(lambda: progress(driver)[0] > 0 and progress(driver), what="the first step")
    wait_for(lambda: progress(driver)[0] > first[0] + 5, what="the bar moving")
    wait_for(lambda: shown(driver, "#preview"), what="a preview")
    mid_run = screenshot(driver, stack, "dashboard-job-running")
    assert mid_run.stat().st_size > 10_000

    # Reload mid-run: the stream replays and goes on from where the job is.
    before_reload = progress(driver)[0]
    assert status(driver) == "running"
    driver.refresh()
    wait_for(lambda: progress(driver)[0] >= before_reload, timeout=30, what="the bar after the reload")
    after_reload = progress(driver)[0]
    wait_for(lambda: progress(driver)[0] > after_reload, what="the bar moving after the reload")
    wait_for(lambda: shown(driver, "#preview"), what="the preview after the reload")

    # The end: the status, the image.
    wait_for(lambda: status(driver) == "succeeded", timeout=120, what="the job succeeding")
    wait_for(lambda: shown(driver, "#outputs img"), what="the image")
    value, total = progress(driver)
    assert value == total >= 400
    assert client.job(job_id)["status"] == "succeeded"
    screenshot(driver, stack, "dashboard-job-done")

    # Cancel another job from its page.
    other = client.submit(text2img_spec(num_inference_steps=900, num_images=1))
    driver.get(f"{stack.api_url}/ui/#/jobs/{other['id']}")
    wait_for(lambda: status(driver) == "running" and progress(driver)[0] > 0, what="the other job running")
    driver.find_element(By.ID, "cancel").click()
    wait_for(lambda: status(driver) == "canceled", timeout=30, what="the cancel")
    assert client.job(other["id"])["status"] == "canceled"

    # The job list shows both, with their statuses.
    driver.get(f"{stack.api_url}/ui/#/jobs")
    rows = wait_for(
        lambda: driver.find_elements(By.CSS_SELECTOR, f"tr[data-job='{job_id}'] .status"), what="the list"
    )
    assert rows[0].text == "succeeded"
    screenshot(driver, stack, "dashboard-jobs")
