"""Screenshots of a finished sweep in TensorBoard: its HParams table and parallel-coordinates view, and the
Embedding Projector with one run's test codes (docs/trackers.md shows them).

    python experiments/tensorboard_screenshots.py outputs/multirun/<date>/<time> --out docs/trackers

It starts TensorBoard on the sweep folder (127.0.0.1 only), opens its pages in headless Chromium (Debian's
`chromium` package: `apt-get install chromium`) through Playwright (`pip install -c constraints.txt -e
'.[screenshots]'`; Playwright's own browser download is not used), and writes hparams_table.png,
hparams_parallel_coordinates.png and projector.png. The sweep must have run with logger=tensorboard.
"""

import argparse
import contextlib
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
# headless as root, with no network beyond this machine: no sandbox, no background connections; WebGL
# (the projector) drawn in software
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def local_server(command: list[str], health_url: str, name: str, timeout_s: float):
    """Run a web server's command until the block ends; wait until health_url answers first."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                urllib.request.urlopen(health_url, timeout=5).read()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"{name} did not start: {process.stderr.read()[-2000:]}") from None
                time.sleep(1)
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextlib.contextmanager
def tensorboard(logdir: Path, port: int, timeout_s: float = 120):
    """Run TensorBoard on logdir until the block ends; yield its address once it answers."""
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--load_fast", "false", "--reload_interval", "5"]
    url = f"http://127.0.0.1:{port}"
    with local_server(command, f"{url}/data/runs", "TensorBoard", timeout_s):
        yield url


def runs_with_events(logdir: Path) -> list[Path]:
    return sorted({path.parent for path in logdir.rglob("events.out.tfevents.*")})


def screenshot_hparams(page, url: str, out: Path, color_by: str) -> list[Path]:
    """The HParams dashboard's table, then its parallel-coordinates view, its lines coloured by the
    metric `color_by` (a TensorBoard tag, e.g. metrics/iwae/nll_k100) where the sweep has it."""
    page.goto(f"{url}/#hparams")
    page.get_by_text("TABLE VIEW").first.wait_for(timeout=60_000)
    page.wait_for_timeout(8_000)  # the session list arrives after the tabs
    table = out / "hparams_table.png"
    page.screenshot(path=str(table))
    page.get_by_text("PARALLEL COORDINATES VIEW").first.click()
    page.wait_for_timeout(6_000)
    menu = page.locator("#colorByDropDownMenu").first
    items = page.locator("#colorByListBox paper-item").filter(has_text=color_by)
    if menu.count() and items.count():
        menu.click()
        items.first.click()
        page.wait_for_timeout(3_000)
    else:
        print(f"no metric {color_by} to colour the parallel coordinates by: left as TensorBoard colours them")
    parallel = out / "hparams_parallel_coordinates.png"
    page.screenshot(path=str(parallel))
    return [table, parallel]


def screenshot_projector(page, url: str, out: Path, color_by: str = "label") -> Path:
    """The Embedding Projector on the first run's test codes, each point drawn as its image (the sprite),
    coloured by its label."""
    page.goto(f"{url}/#projector")
    page.wait_for_timeout(5_000)
    # the projector's page sits in an iframe of TensorBoard's; Playwright's selectors pierce shadow roots
    frames = [page.main_frame, *page.frames]
    color_menu = None
    for _ in range(60):  # it fetches the tensors, the labels and the sprite, then lays the points out
        color_menu = next(
            (f.locator("#colorby").first for f in frames if f.locator("#colorby").count()), None
        )
        if color_menu is not None:
            break
        page.wait_for_timeout(1_000)
        frames = [page.main_frame, *page.frames]
    if color_menu is None:
        print("the projector's colour menu did not appear: the screenshot shows it uncoloured")
    else:
        color_menu.click()
        color_menu.locator("paper-item").filter(has_text=color_by).first.click()
    page.wait_for_timeout(8_000)
    path = out / "projector.png"
    page.screenshot(path=str(path))
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path, help="a finished sweep's folder, run with logger=tensorboard")
    parser.add_argument("--out", type=Path, default=Path("docs/trackers"), help="where the PNGs go")
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=1000)
    parser.add_argument(
        "--color-by", default="metrics/iwae/nll_k100", help="the metric that colours the lines"
    )
    args = parser.parse_args(argv)
    if not runs_with_events(args.sweep):
        raise SystemExit(f"{args.sweep} holds no TensorBoard events: run the sweep with logger=tensorboard.")
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
    args.out.mkdir(parents=True, exist_ok=True)
    with tensorboard(args.sweep, free_port()) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": args.width, "height": args.height})
        written = screenshot_hparams(page, url, args.out, args.color_by)
        written.append(screenshot_projector(page, url, args.out))
        browser.close()
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
