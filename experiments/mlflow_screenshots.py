"""Screenshots of a finished sweep in the MLflow UI: the experiment's runs with the sweep's parent run
opened on its children, and MLflow's comparison of the children side by side (docs/trackers.md shows them).

    python experiments/mlflow_screenshots.py sqlite:///outputs/mlflow.db --sweep outputs/multirun/<day>/<time>

It starts `mlflow server` on the store (127.0.0.1 only), opens its pages in headless Chromium (Debian's
`chromium`) through Playwright, as experiments/tensorboard_screenshots.py does, and writes
mlflow_runs.png and mlflow_compare.png. The sweep must have run with logger=mlflow into that store.
"""

import argparse
import contextlib
import json
import sys
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tensorboard_screenshots import CHROMIUM, CHROMIUM_ARGS, free_port, local_server  # noqa: E402


@contextlib.contextmanager
def mlflow_server(store: str, port: int, timeout_s: float = 180):
    """Run the MLflow UI's server on the store until the block ends; yield its address once it answers."""
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    url = f"http://127.0.0.1:{port}"
    with local_server(command, f"{url}/health", "mlflow server", timeout_s):
        yield url


def sweep_runs(store: str, sweep: Path, experiment: str):
    """Give back (experiment id, the sweep's parent run id, its children's run ids by name)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise SystemExit(f"{store} has no experiment {experiment!r}: run the sweep with logger=mlflow first.")
    parents = []
    for group in dict.fromkeys([str(sweep), str(sweep.absolute())]):  # the sweep folder as Hydra was given it
        parents = parents or client.search_runs(
            [found.experiment_id], f"tags.`vae_lab.sweep_parent` = '{group}'"
        )
    if not parents:
        raise SystemExit(f"{store} has no parent run of the sweep {sweep}: was it run with logger=mlflow?")
    parent = parents[0].info.run_id
    children = client.search_runs([found.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")
    return found.experiment_id, parent, sorted(children, key=lambda run: run.info.run_name)


def close_assistant(page) -> None:
    """Close the MLflow Assistant's side panel, where the UI opens it (its last button is its close)."""
    title = page.get_by_text("MLflow Assistant", exact=True)
    if title.count():
        header = title.first.locator("xpath=ancestor::div[.//button][1]")
        header.get_by_role("button").last.click()
        page.wait_for_timeout(1_000)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "store", help="the tracking URI the sweep logged to, e.g. sqlite:///outputs/mlflow.db"
    )
    parser.add_argument("--sweep", type=Path, required=True, help="the sweep's folder (hydra.sweep.dir)")
    parser.add_argument("--experiment", default="vae_lab", help="the MLflow experiment (logger.experiment)")
    parser.add_argument("--out", type=Path, default=Path("docs/trackers"), help="where the PNGs go")
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=1000)
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).is_file():
        raise SystemExit(
            f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium)."
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise SystemExit(
            "the screenshots need Playwright: run `pip install -c constraints.txt -e '.[screenshots]'`."
        ) from None
    experiment_id, parent, children = sweep_runs(args.store, args.sweep, args.experiment)
    args.out.mkdir(parents=True, exist_ok=True)
    written = [args.out / "mlflow_runs.png", args.out / "mlflow_compare.png"]
    with mlflow_server(args.store, free_port()) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": args.width, "height": args.height})
        page.goto(f"{url}/#/experiments/{experiment_id}/runs")
        page.get_by_text(args.sweep.name).first.wait_for(timeout=90_000)
        close_assistant(page)
        row = page.get_by_role("row").filter(has_text=args.sweep.name).first
        if row.get_by_role("button").count():
            row.get_by_role("button").first.click()  # the parent run opened on its children
        page.wait_for_timeout(5_000)
        page.screenshot(path=str(written[0]))
        ids = urllib.parse.quote(json.dumps([run.info.run_id for run in children]))
        experiments = urllib.parse.quote(json.dumps([experiment_id]))
        page.set_viewport_size(
            {"width": args.width + 400, "height": 2 * args.height}
        )  # the params and metrics too
        page.goto(f"{url}/#/compare-runs?runs={ids}&experiments={experiments}")
        page.get_by_text(children[0].info.run_name).first.wait_for(timeout=90_000)
        page.wait_for_timeout(8_000)  # the charts draw after the table
        close_assistant(page)
        for switch in page.get_by_role("switch").all():  # "Show diff only": the values that differ
            switch.click()
        page.wait_for_timeout(2_000)
        page.screenshot(path=str(written[1]))
        browser.close()
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
