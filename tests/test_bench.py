"""The benchmark's own code on tiny sizes, and each speed option against the default path."""

import json
import re
import subprocess

import pytest
import torch

from tests import warm_start
from tests.conftest import python
from vae_lab.speed import SpeedOptions
from vae_lab.speed.layers import FastConvTranspose2d, FastDropout


def test_fast_dropout_keeps_one_minus_p_and_rescales():
    torch.manual_seed(0)
    layer = FastDropout(0.3).train()
    out = layer(torch.ones(200_000))
    kept = out != 0
    assert kept.double().mean().item() == pytest.approx(0.7, abs=0.005)
    assert torch.allclose(out[kept], torch.full_like(out[kept], 1 / 0.7))
    assert out.mean().item() == pytest.approx(1.0, abs=0.01)  # the expectation is unchanged
    x = torch.randn(10, 5)
    assert torch.equal(layer.eval()(x), x)
    with pytest.raises(ValueError, match="dropout probability"):
        FastDropout(1.0)


def test_fast_dropout_gradient_flows_through_kept_units_only():
    layer = FastDropout(0.5).train()
    x = torch.ones(1000, requires_grad=True)
    out = layer(x)
    out.sum().backward()
    assert torch.equal(x.grad, out.detach())  # d out / d x is the mask itself: 0 or 1/(1-p)


def test_fast_dropout_in_place_after_batch_norm_gives_the_same_output_and_gradients():
    x = torch.randn(8, 4, 5, 5).contiguous(memory_format=torch.channels_last)
    results = []
    for inplace in (False, True):
        torch.manual_seed(3)  # the same BatchNorm start and the same masks
        block = torch.nn.Sequential(torch.nn.BatchNorm2d(4), FastDropout(0.3, inplace=inplace)).train()
        inputs = x.clone().requires_grad_()
        out = block(inputs)
        out.backward(torch.arange(out.numel(), dtype=out.dtype).view_as(out))
        results.append((out.detach(), inputs.grad, block[0].weight.grad, block[0].bias.grad))
    for plain, in_place in zip(*results, strict=True):
        assert torch.equal(plain, in_place)
    assert (results[0][0] == 0).any() and (results[0][0] != 0).any()


def test_fast_dropout_in_place_after_a_layer_that_keeps_its_output_is_refused_by_autograd():
    inputs = torch.randn(100, requires_grad=True)
    out = FastDropout(0.3, inplace=True).train()(torch.sigmoid(inputs))  # sigmoid keeps its output
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.contiguous_format])
@pytest.mark.parametrize("stride", [1, 2])
def test_fast_conv_transpose_is_nn_conv_transpose_with_the_same_gradients(stride, memory_format):
    torch.manual_seed(0)
    plain = torch.nn.ConvTranspose2d(8, 4, 3, stride, padding=1, output_padding=stride - 1)
    fast = FastConvTranspose2d(8, 4, 3, stride, padding=1, output_padding=stride - 1)
    fast.load_state_dict(plain.state_dict())  # the same parameters, by the same names
    plain, fast = plain.to(memory_format=memory_format), fast.to(memory_format=memory_format)
    x = torch.randn(16, 8, 7, 7).contiguous(memory_format=memory_format).requires_grad_()
    out_plain, out_fast = plain(x), fast(x)
    assert out_fast.shape == (16, 4, 7 * stride, 7 * stride)
    assert torch.equal(out_fast, out_plain)
    upstream = torch.randn_like(out_plain)
    grads_plain = torch.autograd.grad(out_plain, [x, plain.weight, plain.bias], upstream)
    grads_fast = torch.autograd.grad(out_fast, [x, fast.weight, fast.bias], upstream)
    assert torch.equal(grads_fast[0], grads_plain[0]) and torch.equal(grads_fast[1], grads_plain[1])
    # the bias gradient is the same sum in another order: equal to float rounding
    torch.testing.assert_close(grads_fast[2], grads_plain[2], rtol=1e-5, atol=1e-5)
    no_bias = FastConvTranspose2d(8, 4, 3, stride, padding=1, output_padding=stride - 1, bias=False)
    assert no_bias(x).shape == out_plain.shape


CPUINFO = """processor\t: 0
model name\t: Intel(R) Xeon(R) Gold 6230
flags\t\t: fpu sse2 avx2 avx512f avx512bw {extra}

processor\t: 1
model name\t: Intel(R) Xeon(R) Gold 6230
flags\t\t: fpu sse2 avx2 avx512f avx512bw {extra}
"""


@pytest.mark.parametrize(
    ("extra", "native"), [("", False), ("amx_bf16 amx_tile", True), ("avx512_bf16", True)]
)
def test_cpu_features_read_the_bf16_flags_of_proc_cpuinfo(tmp_path, extra, native):
    from vae_lab.speed.cpu import cpu_features

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO.format(extra=extra))
    features = cpu_features(cpuinfo)
    assert features.name == "Intel(R) Xeon(R) Gold 6230" and features.native_bf16 is native
    assert f"AMX-BF16 {'yes' if 'amx' in extra else 'no'}" in features.describe()
    unknown = cpu_features(tmp_path / "absent")
    assert unknown.native_bf16 is None and "unknown" in unknown.describe()


@pytest.mark.parametrize("native", [False, True])
def test_bf16_on_a_cpu_without_native_bf16_is_warned_against(monkeypatch, caplog, native):
    from vae_lab.speed.cpu import CpuFeatures
    from vae_lab.training import loop

    flags = frozenset({"avx512f", "amx_bf16"} if native else {"avx512f"})
    monkeypatch.setattr(loop, "cpu_features", lambda: CpuFeatures("Xeon", flags))
    model = torch.nn.Linear(2, 2)
    with caplog.at_level("WARNING", logger="vae_lab"):
        loop.TrainStep(model, None, torch.optim.Adam(model.parameters()), SpeedOptions(precision="bf16"))
        loop.TrainStep(model, None, torch.optim.Adam(model.parameters()), SpeedOptions())
    warnings = [r.getMessage() for r in caplog.records if "speed.precision=bf16" in r.getMessage()]
    assert len(warnings) == (0 if native else 1)
    assert not warnings or "slower than fp32" in warnings[0] and "Xeon" in warnings[0]


def test_the_bench_says_which_options_are_faster_and_which_slower_here():
    from vae_lab.bench import option_verdicts

    rows = {
        "vae_lab, options off": 100.0,
        "options off + bf16 autocast": 64.0,
        "options off + fast dropout": 136.0,
    }
    rows |= {
        "options off + fused Adam": 101.0,
        "plain": 90.0,
        "vae_lab": 200.0,
        "vae_lab without fused blocks": 160.0,
    }
    lines = option_verdicts({name: {"images_per_s": speed} for name, speed in rows.items()})
    assert lines == [
        "bf16 autocast: 0.64x the options-off path, slower here: leave it off on this CPU",
        "fast dropout: 1.36x the options-off path, faster here",
        "fused Adam: 1.01x the options-off path, within the bench's noise (±10%) on its own",
        "fused blocks: 1.25x the default path without it, faster here",
    ]


def test_the_bench_measures_every_option_on_its_own_unless_told_which():
    from vae_lab.bench import ALL_OPTIONS, OPTIONS, OPTIONS_OFF, WITHOUT, BenchError, variant_specs

    specs = variant_specs(ALL_OPTIONS)
    assert list(specs)[:3] == ["plain", "vae_lab", "vae_lab, options off"]
    assert specs["plain"] is None and specs["vae_lab"] == [] and specs["vae_lab, options off"] == OPTIONS_OFF
    assert {f"options off + {name}" for name in OPTIONS} | {
        f"vae_lab without {name}" for name in WITHOUT
    } == set(list(specs)[3:])
    assert specs["options off + bf16 autocast"] == [*OPTIONS_OFF, "speed.precision=bf16"]
    assert specs["vae_lab without fused blocks"] == ["speed.fused_blocks=false"]  # the default, less it
    assert OPTIONS_OFF[0] == "speed=off" and all(o.startswith("speed.") for o in WITHOUT.values())
    assert len(OPTIONS) == 7 and "compile" in OPTIONS
    with pytest.raises(BenchError, match="--options bf17: not a speed option; choose from channels_last"):
        variant_specs(["bf17"])


def test_the_benchmark_runs_on_tiny_sizes_and_writes_well_formed_numbers(tmp_path, fake_mnist_root):
    report_path = tmp_path / "bench.json"
    result = warm_start.run(
        [
            python(),
            "-m",
            "vae_lab.bench",
            "--data-root",
            str(fake_mnist_root),
            "--rounds",
            "2",
            "--window-steps",
            "2",
            "--warmup-steps",
            "1",
            "--batch-size",
            "16",
            "--options",
            "bf16 autocast,fused blocks",  # the machinery on five variants; variant_specs has all of them
            "--json",
            str(report_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert list(report["variants"]) == [
        "plain",
        "vae_lab",
        "vae_lab, options off",
        "options off + bf16 autocast",
        "vae_lab without fused blocks",
    ]
    for row in report["variants"].values():
        assert len(row["windows_images_per_s"]) == 2 and row["images_per_s"] > 0
        assert row["peak_rss_mib"] > 100  # each variant's own process: torch alone takes more
        assert row["gflops_per_s"] == pytest.approx(row["images_per_s"] * report["flops_per_image"] / 1e9)
    assert report["ratio"] == report["variants"]["vae_lab"]["ratio_to_plain"] > 0
    assert report["variants"]["plain"]["ratio_to_plain"] == 1.0
    # forward and backward of the article's VAE: about 89 MFLOP per image, counted by torch
    assert 80e6 < report["flops_per_image"] < 100e6
    assert report["matmul_peak_gflops"] > 0
    assert report["peak_rss_mib"] == report["variants"]["vae_lab"]["peak_rss_mib"]
    assert report["startup_to_first_step_s"] > 0
    assert "| vae_lab |" in result.stdout and "x plain" in result.stdout
    assert f"CPU: {report['cpu']}" in result.stdout and "AVX512-BF16" in report["cpu"]
    assert "bf16 autocast: " in result.stdout and "x the options-off path" in result.stdout
    assert "fused blocks: " in result.stdout and "x the default path without it" in result.stdout


def test_the_bench_profiles_the_default_path_by_operator_beside_the_unprofiled_step(fake_mnist_root):
    from vae_lab.speed.measure import profile_default_path

    table = profile_default_path(str(fake_mnist_root), "cpu", steps=2, batch_size=8)
    header = table.splitlines()[0]
    assert re.fullmatch(
        r"2 training steps of vae_lab's default path, batch 8, cpu: "
        r"\d+\.\d ms a step unprofiled, \d+\.\d ms profiled",
        header,
    ), header
    assert (
        "aten::convolution_backward" in table and "_ReluBatchNormDropoutBackward" in table
    )  # the fused blocks
    assert "Input Shapes" not in table  # recording shapes slows the big element-wise operators several times
    refused = warm_start.run(
        [python(), "-m", "vae_lab.bench", "--profile", "0"], capture_output=True, text=True, timeout=120
    )
    assert refused.returncode == 1 and "Traceback" not in refused.stderr and "--profile 0" in refused.stderr
    no_data = warm_start.run(
        [python(), "-m", "vae_lab.bench", "--profile", "2", "--data-root", str(fake_mnist_root / "nowhere")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert no_data.returncode == 1 and "Traceback" not in no_data.stderr
    assert no_data.stderr.startswith("python -m vae_lab.bench: MNIST could not be read from ")
    assert len(no_data.stderr.strip().splitlines()) == 1


def test_a_variant_that_cannot_be_built_stops_the_benchmark_with_its_reason(fake_mnist_root):
    from vae_lab.bench import BenchError, Variant

    spec = {"overrides": ["model=no_such_model"], "data_root": str(fake_mnist_root), "batch_size": 8}
    variant = Variant("broken", {**spec, "device": "cpu"})
    try:
        with pytest.raises(BenchError, match="'broken' variant's process stopped; .*no_such_model"):
            variant.answer()
    finally:
        variant.close()


def test_the_benchmark_refuses_a_device_it_cannot_use_in_one_line(fake_mnist_root):
    result = warm_start.run(
        [python(), "-m", "vae_lab.bench", "--data-root", str(fake_mnist_root), "--device", "tpu"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("python -m vae_lab.bench: ") and "tpu" in result.stderr


def test_an_installed_wheel_carries_the_configs_and_the_plain_loop_and_trains_a_step(
    tmp_path, fake_mnist_root
):
    """Not editable: conf/ ships inside the package as vae_lab/conf; the plain loop is in vae_lab.speed."""
    from tests.conftest import REPO

    build = subprocess.run(
        [
            python(),
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "wheel"),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp_path / "wheel").glob("vae_lab-*.whl")
    site = tmp_path / "site"
    install = subprocess.run(
        [python(), "-m", "pip", "install", "--no-deps", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    # one fresh interpreter on the installed package alone: where its configs are, then a training step
    probe = subprocess.run(
        [
            python(),
            "-c",
            "import sys, vae_lab.config, vae_lab.speed.plain_vae, vae_lab.bench; "
            "print(vae_lab.config.CONF_DIR, flush=True); "
            "sys.exit(vae_lab.bench.main(['--startup-probe', '--data-root', sys.argv[1]]))",
            str(fake_mnist_root),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site)},
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    conf_dir, *rest = probe.stdout.splitlines()
    assert conf_dir == str(site / "vae_lab" / "conf")
    assert "first step done" in rest, probe.stderr[-2000:]
