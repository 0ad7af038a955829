"""experiments/gpu_check.py on a CPU: what it refuses, what each step runs, and its report."""

import importlib.util

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "experiments" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_cuda_it_says_so_in_one_line_and_names_the_dry_run(gpu_check, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path)]) == 1
    message = capsys.readouterr().out
    assert "--device cuda, but torch" in message and "sees no CUDA device" in message and "--quick" in message
    assert list(tmp_path.iterdir()) == []  # nothing written
    assert gpu_check.main(["--device", "cpu", "--steps", "tests,speed", "--out", str(tmp_path)]) == 2
    assert "names speed; choose from tests, bench, ablation, data_parallel" in capsys.readouterr().out


def test_on_cuda_the_tests_run_on_the_gpu_and_the_bench_and_ablation_use_it(gpu_check, tmp_path):
    commands = gpu_check.step_commands("cuda", quick=False, out=tmp_path)
    tests, environment = commands["tests"]
    assert (
        environment == {"VAE_LAB_TEST_DEVICE": "cuda"} and tests[-1] == "no:cacheprovider"
    )  # the whole suite
    bench, _ = commands["bench"]
    assert bench[bench.index("--device") + 1] == "cuda" and "--rounds" not in bench
    ablation, _ = commands["ablation"]
    assert "device=cuda" in ablation and "trainer.epochs=2" in ablation
    data_parallel, _ = commands["data_parallel"]
    processes = max(1, gpu_check.torch.cuda.device_count())
    assert f"--nproc_per_node={processes}" in data_parallel and "device=cuda" in data_parallel
    quick = gpu_check.step_commands("cpu", quick=True, out=tmp_path)
    assert "--nproc_per_node=2" in quick["data_parallel"][0] and "device=cpu" in quick["data_parallel"][0]
    assert quick["tests"][0][-1] == "tests/test_on_device.py" and "trainer.epochs=1" in quick["ablation"][0]


def test_a_step_runs_from_the_repository_with_its_output_kept_and_the_report_shows_it(gpu_check, tmp_path):
    python = gpu_check.sys.executable
    ok = gpu_check.run_step("tests", [python, "-c", "print('3 passed in 1.0s')"], {}, tmp_path)
    failed = gpu_check.run_step("bench", [python, "-c", "import sys; sys.exit('no bench')"], {}, tmp_path)
    assert ok.exit_code == 0 and "3 passed" in (tmp_path / "tests.log").read_text()
    (tmp_path / "ablation").mkdir()
    (tmp_path / "ablation" / "comparison.md").write_text(
        "| run | coverage |\n|---|---|\n| loss=elbo | 0.03 |\n"
    )
    ablation = gpu_check.StepResult("ablation", [python, "ablation"], 0, 12.0, "")
    report = gpu_check.format_report("cpu", [ok, failed, ablation], tmp_path)
    assert "| tests | ok |" in report and "| bench | **failed (1)** |" in report
    assert "3 passed in 1.0s" in report and "no bench" in report and "| loss=elbo | 0.03 |" in report
