"""The dashboard at /ui in a real headless browser (Debian's chromium, driven by Selenium through
chromium-driver; scripts/test.sh installs both): log in, submit, watch the progress bar move and a
preview appear, reload mid-run and see the stream resume, see the image, cancel another job; watch a
batch's grid fill in with its counts by status; see a training job's loss curve and sample grids.

Screenshots go to $DIFFQ_TEST_SCREENSHOTS (default: the tests' temporary folder)."""

import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cli.client import Client
from tests.utils.jobs import text2img_spec, train_spec

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


def log_in(driver: Any, stack: Any) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{stack.api_url}/ui/")
    driver.find_element(By.ID, "key").send_keys(os.environ["DIFFQ_API_KEY"])
    driver.find_element(By.ID, "login").click()
    wait_for(lambda: driver.find_element(By.ID, "jobs"), what="the job list")


def test_the_dashboard_follows_a_job_live(stack, browser, client: Client) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    log_in(driver, stack)

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


def batch_state(driver: Any) -> dict[str, Any]:
    """The batch page as one snapshot: its counts by status, and per grid cell its status and whether
    it shows a loaded image."""
    return driver.execute_script(
        "const counts = {};"
        "for (const span of document.querySelectorAll('#counts [data-count]'))"
        "  counts[span.dataset.count] = Number(span.dataset.n);"
        "const cells = [...document.querySelectorAll('#grid .cell')].map((cell) => {"
        "  const img = cell.querySelector('img');"
        "  return {status: cell.dataset.status, image: !!img && img.complete && img.naturalWidth > 0};"
        "});"
        "const badge = document.querySelector('#batch-status [data-status]');"
        "return {counts, cells, status: badge && badge.dataset.status};"
    )


def test_the_batch_grid_fills_in_with_counts_by_status(stack, browser, client: Client) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    log_in(driver, stack)
    # Three short jobs and a longer one: the page opens while some still run.
    jobs = [
        text2img_spec(num_inference_steps=steps, num_images=1, seed=i)
        for i, steps in enumerate([20, 20, 20, 100])
    ]
    batch = client.submit_batch({"name": "dashboard", "jobs": jobs})
    driver.get(f"{stack.api_url}/ui/#/batches/{batch['id']}")

    seen: list[dict[str, Any]] = []
    shots: list[Path] = []

    def done() -> bool:
        state = batch_state(driver)
        if not state["cells"]:
            return False  # the page is still loading
        seen.append(state)
        images = sum(cell["image"] for cell in state["cells"])
        if 0 < images < 4 and not shots:
            shots.append(screenshot(driver, stack, "dashboard-batch-filling"))
        # The status comes from the stream's last `counts` event, a moment after the cells' own.
        return state["counts"].get("succeeded") == 4 and images == 4 and state["status"] == "succeeded"

    wait_for(done, timeout=120, what="the grid filling in")
    screenshot(driver, stack, "dashboard-batch-done")

    first, last = seen[0], seen[-1]
    assert len(first["cells"]) == 4 and sum(first["counts"].values()) == 4
    assert first["counts"]["succeeded"] < 4, "the batch was done before the page opened: nothing to watch"
    assert last["status"] == "succeeded"
    assert last["counts"] == {**dict.fromkeys(last["counts"], 0), "succeeded": 4}
    assert [cell["status"] for cell in last["cells"]] == ["succeeded"] * 4
    # The grid filled in as the jobs finished, without a reload: the page showed some images, not all.
    assert shots, [sum(cell["image"] for cell in state["cells"]) for state in seen]
    assert client.batch(batch["id"])["counts"]["succeeded"] == 4

    # A cell opens its job, whose page links back to the batch.
    driver.execute_script("document.querySelector('#grid .cell').click()")
    link = wait_for(lambda: driver.find_element(By.ID, "batch-link"), what="the job page of a cell")
    assert link.get_attribute("href").endswith(f"#/batches/{batch['id']}")

    # The batches page lists it, done, with its counts, and opens it.
    driver.get(f"{stack.api_url}/ui/#/batches")
    row = wait_for(
        lambda: driver.find_element(By.CSS_SELECTOR, f"#batches tr[data-batch='{batch['id']}']"),
        what="the batch in the batches list",
    )
    assert "succeeded" in row.text and "4 succeeded" in row.text and "dashboard" in row.text
    row.find_element(By.TAG_NAME, "a").click()
    wait_for(
        lambda: driver.find_elements(By.CSS_SELECTOR, "#grid .cell"), what="the batch page, from the list"
    )


def test_a_training_job_shows_its_loss_curve_and_sample_grids(stack, browser, client: Client) -> None:
    driver = browser
    log_in(driver, stack)
    job = client.submit(train_spec(f"dash-glyphs-{uuid.uuid4().hex[:8]}"))
    driver.get(f"{stack.api_url}/ui/#/jobs/{job['id']}")

    wait_for(lambda: status(driver) == "succeeded", timeout=240, what="the training job succeeding")
    # 8 optimizer steps (2 epochs of 4): a dot for each, on one line; a grid per epoch.
    wait_for(
        lambda: driver.execute_script("return document.querySelectorAll('#loss svg circle').length") == 8,
        timeout=30,
        what="8 points on the loss curve",
    )
    drawn = driver.execute_script(
        "const svg = document.querySelector('#loss svg');"
        "return {steps: [...svg.querySelectorAll('circle')].map((c) => Number(c.dataset.step)),"
        "        line: svg.querySelector('polyline').getAttribute('points').trim().split(' ').length};"
    )
    assert drawn == {"steps": list(range(1, 9)), "line": 8}
    wait_for(lambda: shown(driver, "#sample-grids figure:nth-of-type(2) img"), what="the sample grids")
    captions = driver.execute_script(
        "return [...document.querySelectorAll('#sample-grids figcaption')].map((c) => c.textContent);"
    )
    assert captions == ["sample_grid epoch 1", "sample_grid epoch 2"]
    driver.execute_script("document.querySelector('#loss').scrollIntoView()")
    screenshot(driver, stack, "dashboard-training")
