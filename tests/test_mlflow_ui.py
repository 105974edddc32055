"""End to end in a real browser: the MLflow UI compares the two runs test_compare.py reads (conftest.two_runs).

Headless Chromium (Debian's `chromium` package) driven by Playwright's Python
package; Playwright's own browser downloads are not used. Skipped only when
one of the two is not installed.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
from pathlib import Path

import pytest
from conftest import COMPARE_EXPERIMENT, HI, LO, LR

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# No sandbox: CI runs as root in a container. The rest keeps Chromium off the network and quiet.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
TIMEOUT_MS = 60_000  # a cold React app on 2 busy cores; every wait below is a condition with this deadline


def _missing() -> list[str]:
    missing = []
    if importlib.util.find_spec("playwright") is None:
        missing.append("Playwright's Python package (pip install playwright)")
    if not Path(CHROMIUM).exists():
        missing.append("Chromium (apt-get install chromium)")
    return missing


pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(bool(_missing()), reason=f"browser test needs {' and '.join(_missing())}")]


@pytest.fixture
def page():
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            # Tall enough for run details, the params diff and the metrics in one screenshot.
            page = browser.new_page(viewport={"width": 1280, "height": 1180})
            page.set_default_timeout(TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def test_select_both_runs_and_compare(mlflow_server, two_runs, page, tmp_path):
    from playwright.sync_api import expect

    client = mlflow_server.client()
    experiment = client.get_experiment_by_name(COMPARE_EXPERIMENT)
    assert experiment.tags.get("mlflow.experimentKind") == "custom_model_development"  # created by the runs
    # MLflow 3.17's UI opens every experiment in its GenAI view unless the workflow toggle (or this URL
    # parameter) says "Model training"; with it, the experiment's page is the runs table, both runs listed.
    page.goto(f"{two_runs.uri}/#/experiments/{experiment.experiment_id}?workflowType=machine_learning")
    for run_id in two_runs.ids.values():
        # AG Grid keys each row by the MLflow run id.
        page.locator(f'[role="row"][row-id="{run_id}"] .ag-selection-checkbox input').check()
    page.get_by_role("button", name="Compare", exact=True).click()

    expect(page).to_have_url(re.compile(r"#/compare-runs\?runs="))
    expect(page.get_by_text("Comparing 2 Runs")).to_be_visible()
    _tidy(page)
    names = page.locator("tr", has=page.get_by_text("Run Name:", exact=True))
    for name in (HI, LO):
        expect(names).to_contain_text(name)
    # With "Show diff only" on, a row here is a param that differs.
    lr = page.locator("tr", has=page.locator("th", has_text=re.compile(r"^training\.lr$")))
    for value in LR.values():
        expect(lr).to_contain_text(value)
    expect(page.locator("tr", has=page.locator("th", has_text=re.compile(r"^model\.d_model$")))).to_have_count(0)
    # The best values (best/val_loss, ...) sort first in the metrics grid: what a comparison is for.
    expect(page.get_by_role("link", name="best/val_loss", exact=True)).to_be_in_viewport()
    expect(page.get_by_role("link", name="val/loss", exact=True)).to_have_count(1)

    shot = tmp_path / "mlflow-compare.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("TRACKED_TRAIN_SCREENSHOT_DIR"):  # how docs/img/mlflow-compare.png is made
        shutil.copy(shot, Path(os.environ["TRACKED_TRAIN_SCREENSHOT_DIR"]) / "mlflow-compare.png")


def _tidy(page) -> None:
    """Only what differs, no plots, no assistant panel: a screenshot that shows the comparison."""
    from playwright.sync_api import expect

    for section in ("Parameters", "Metrics"):
        # Metrics too: that drops train/lr (both runs end at min_lr), which brings val/loss into the
        # metrics grid's 300 px without scrolling it (MLflow 3.17 then misaligns names and values).
        diff_only = page.get_by_role("switch", name=f"{section} - Show diff only")
        diff_only.click()
        expect(diff_only).to_have_attribute("aria-checked", "true")
    # Cosmetic, and not in every MLflow version: only when present.
    for control in (page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]'),
                    page.get_by_role("button", name="Visualizations")):
        if control.count() and control.first.is_visible():
            control.first.click()
