"""`dsbs-fit`: the training step compiled for a TPU slice this machine does not have, its
figures, its verdict and its exit codes; and figures that say what the mesh holds."""

import json
import re
import subprocess
import sys

import pytest
import runs

from dsbs_jax import hardware
from dsbs_jax.programs.fit import out_of_memory

TPU = pytest.mark.skipif(
    not hardware.libtpu_installed(), reason="compiling for TPU slices needs the tpu extra"
)
QUICKSTART = ["--gin_file=gin/runs/quickstart.gin", *runs.TINY_MODEL]
GIB = r"(\d+\.\d{1,2}) GiB"
VERDICT = re.compile(rf"per-device memory: {GIB} of {GIB}: (fits|does not fit)")


def fit(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dsbs_jax.fit", *flags],
        cwd=runs.ROOT,
        env=runs.environment(),
        capture_output=True,
        text=True,
        timeout=600,
    )


def usage_error(run: subprocess.CompletedProcess) -> str:
    """The one line a usage error prints (exit 2), with no traceback and no figures."""
    assert run.returncode == 2, run.stdout + run.stderr[-3000:]
    ours = [line for line in run.stderr.splitlines() if line.startswith("dsbs-fit:")]
    assert len(ours) == 1, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    assert "per-device memory" not in run.stdout
    return ours[0]


@TPU
def test_a_small_run_fits_a_v4_8_and_says_with_what(tmp_path):
    run = fit("--topology", "v4-8", *QUICKSTART, "--json", str(tmp_path / "fit.json"))
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert lines[0].startswith("dsbs-fit: v4-8: 4 chips of TPU v4 (32 GiB HBM each), 1 host")
    assert "mesh: data 4 x fsdp 1 x model 1 (4 devices)" in lines
    assert "activations bfloat16" in run.stdout  # as the launchers run on accelerators
    assert "about an upper bound" in run.stdout  # padded rows of a packed run
    assert any(re.match(r"FLOPs per step: [\d.e+]+ per device", line) for line in lines)
    assert re.search(r"per device: arguments .* temporaries .* total", run.stdout)
    used, capacity, verdict = VERDICT.fullmatch(lines[-1]).groups()
    assert (capacity, verdict) == ("32.00", "fits")
    figures = json.loads((tmp_path / "fit.json").read_text())
    assert figures["fits"] and figures["platform"] == "tpu"
    assert float(used) == pytest.approx(figures["used_bytes"] / 2**30, abs=0.01)
    assert figures["flops_per_device"] > 0


@TPU
def test_a_model_too_large_for_a_v5e_chip_does_not_fit():
    # 6.4B parameters in one wide MLP per layer: with AdamW's moments, 77 GB per chip.
    run = fit(
        "--topology",
        "v5e-4",
        *QUICKSTART,
        "--gin.T5Config.emb_dim=1024",
        "--gin.T5Config.mlp_dim=1048576",
    )
    assert run.returncode == 1, run.stdout + run.stderr[-3000:]
    used, capacity, verdict = VERDICT.fullmatch(run.stdout.splitlines()[-1]).groups()
    assert verdict == "does not fit" and capacity == "16.00"
    assert float(used) > 16


def test_this_hosts_cpu_devices_give_an_estimate_against_the_given_memory():
    run = fit("--topology", "cpu", "--devices", "2", "--hbm_gib", "80", *QUICKSTART)
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    assert "mesh: data 2 x fsdp 1 x model 1 (2 devices)" in run.stdout
    assert "an estimate" in run.stdout
    assert "activations float32" in run.stdout  # the gin files' dtype: no accelerator
    assert VERDICT.fullmatch(run.stdout.splitlines()[-1]).group(2, 3) == ("80.00", "fits")


@TPU
def test_an_online_teachers_parameters_join_the_step(tmp_path):
    from dsbs_jax import checkpoints
    from dsbs_jax.models import T5Config

    teacher = T5Config(vocab_size=256, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64)
    (tmp_path / "config.json").write_text(json.dumps(checkpoints.hf_config_dict(teacher)))
    run = fit(
        "--topology",
        "v4-8",
        *QUICKSTART,
        f"--gin.TEACHER_CHECKPOINT_PATH='{tmp_path}'",
        "--gin.KD_WEIGHT=0.5",
    )
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    assert f"online teacher {tmp_path}" in run.stdout
    assert "(state, batch and teacher shards)" in run.stdout


def test_an_unknown_topology_is_a_usage_error():
    line = usage_error(fit("--topology", "v9-8", *QUICKSTART))
    assert line.startswith("dsbs-fit: unknown topology 'v9-8'; known: v4-8, v4-16")


def test_gpu_without_a_gpu_is_a_usage_error():
    line = usage_error(fit("--topology", "gpu", *QUICKSTART))
    assert "no GPU" in line


@TPU
def test_a_mesh_the_slice_cannot_form_is_a_usage_error():
    line = usage_error(fit("--topology", "v4-8", *QUICKSTART, "--gin.train.model_parallelism=3"))
    assert "model_parallelism (3) must divide each host's 4 devices" in line


@TPU
def test_bad_gin_is_a_usage_error():
    usage_error(fit("--topology", "v4-8", *QUICKSTART, "--gin.T5Config.emb_dimm=16"))


# A small T5.1.1 whose arrays fill TPU tiles ((8, 128) for 32 bits), so that the bytes
# are the arrays' own: smaller dimensions are padded to the tiles in HBM, as on the chip.
LANES = {"emb_dim": 128, "num_heads": 2, "head_dim": 64, "mlp_dim": 256, "layers": 1}
LENGTHS = {"inputs": 128, "label": 128, "rationale": 128}
LANE_MODEL = [
    *(f"--gin.T5Config.{k}={v}" for k, v in LANES.items() if k != "layers"),
    f"--gin.T5Config.num_encoder_layers={LANES['layers']}",
    f"--gin.T5Config.num_decoder_layers={LANES['layers']}",
    f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}",
]


def parameters(vocab: int = 256, buckets: int = 32) -> tuple[int, int]:
    """`LANES`'s T5.1.1 parameters counted from its sizes (not from the model's code), with
    the quickstart's vocabulary and T5Config's default buckets: all of them, and those
    without an `embed` dimension (the relative position biases, `[heads, buckets]`, which
    `fsdp` leaves whole)."""
    e, m, heads = LANES["emb_dim"], LANES["mlp_dim"], LANES["num_heads"]
    a = heads * LANES["head_dim"]
    encoder_layer = 4 * e * a + 3 * e * m + 2 * e  # attention, gated MLP, 2 layer norms
    decoder_layer = 8 * e * a + 3 * e * m + 3 * e  # self and cross attention, 3 norms
    relpos = heads * buckets
    stacks = LANES["layers"] * (encoder_layer + decoder_layer) + 2 * (e + relpos)
    return vocab * e + stacks + e * vocab, 2 * relpos  # embedding, stacks, output layer


@TPU
@pytest.mark.parametrize("fsdp", [1, 4])
def test_the_arguments_are_each_devices_share_of_the_state_and_batch(tmp_path, fsdp):
    """On a v4-8's 4 chips: AdamW's state is 3 float32 copies of the parameters (them and
    the two moments); with `fsdp` 4 each chip holds a quarter of every parameter with an
    `embed` dimension, whole otherwise; the batch is split over data x fsdp, 4 ways. The
    compiled arguments are that, plus a few scalars and the tiles' padding of the smallest
    arrays (layer norm scales, position biases): under 2%."""
    path = tmp_path / "fit.json"
    run = fit(
        "--topology",
        "v4-8",
        *QUICKSTART,
        *LANE_MODEL,
        f"--gin.train.fsdp_parallelism={fsdp}",
        "--json",
        str(path),
    )
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    assert f"mesh: data {4 // fsdp} x fsdp {fsdp} x model 1 (4 devices)" in run.stdout
    figures = json.loads(path.read_text())
    total, whole = parameters()
    assert figures["parameters"] == total
    state = 3 * 4 * ((total - whole) / fsdp + whole)
    rows = 32 // 4  # the quickstart's BATCH_SIZE over the 4 data-parallel devices
    # Each task's inputs, and its decoder inputs, targets and loss weights: int32.
    tasks = ("label", "rationale")
    batch = sum(4 * rows * (LENGTHS["inputs"] + 3 * LENGTHS[task]) for task in tasks)
    expected = state + batch
    assert expected <= figures["memory_bytes"]["arguments"] <= 1.02 * expected + 4096


def test_the_tpu_compilers_refusals_are_read_for_what_they_need():
    # As XLA's TPU compiler refused T5.1.1-XXL on a v4-32 with a 1-D mesh (libtpu 0.0.42.1).
    refusal = (
        "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
        "temporaries (42.43G) exceeds available HBM (30.75G)."
    )
    assert out_of_memory(refusal) == (42.43, 30.75)
    assert out_of_memory("RESOURCE_EXHAUSTED: Used 20.5G of 15.48G hbm. Exceeded") == (20.5, 15.48)
    assert out_of_memory("INTERNAL: the compiler crashed") is None


def test_the_slices_are_named_as_cloud_tpu_names_them():
    assert hardware.tpu_slice("v4-8").describe() == (
        "v4-8: 4 chips of TPU v4 (32 GiB HBM each), 1 host, topology 2x2x1"
    )
    v5e = hardware.tpu_slice("v5litepod-16")
    assert (v5e.name, v5e.chips, v5e.hosts, v5e.hbm_gib) == ("v5e-16", 16, 4, 16)
    v5p = hardware.tpu_slice("v5p-64")
    assert (v5p.chips, v5p.hosts, v5p.hbm_gib) == (32, 8, 95)
    assert hardware.tpu_slice("v9-8") is None


def test_without_libtpu_a_slice_says_what_to_install(monkeypatch):
    monkeypatch.setattr(hardware, "libtpu_installed", lambda: False)
    with pytest.raises(
        hardware.TopologyError, match=r"needs libtpu: pip install 'dsbs-jax\[tpu\]'"
    ):
        hardware.slice_devices(hardware.tpu_slice("v4-8"))


@TPU
@pytest.mark.skipif(hardware._accelerator_hints(), reason="this machine may have accelerators")
def test_an_installed_libtpu_stays_quiet_on_a_machine_without_tpus():
    """libtpu, once installed, prints its failed search for TPUs at JAX's first computation;
    importing dsbs_jax first chooses the CPU, as JAX would after that search."""
    env = {k: v for k, v in runs.environment().items() if k != "JAX_PLATFORMS"}
    run = subprocess.run(
        [sys.executable, "-c", "import dsbs_jax, jax; print(jax.devices())"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.stdout == "[CpuDevice(id=0)]\n"
    assert "TPU" not in run.stderr, run.stderr
