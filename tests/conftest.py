"""Shared test setup: four host CPU devices for mesh tests, and the HF reference models."""

import os
import pathlib
import shutil
import tempfile

# Must precede the first jax import: gives sharding tests a 4-device CPU mesh. The tests
# run on CPU devices: with libtpu installed (the test extra has it, for `dsbs-fit`'s
# ahead-of-time TPU compiles) JAX would first probe for a TPU, in every subprocess too.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One XLA compilation cache for the run, its workers and their subprocesses: the binaries'
# end-to-end runs compile the same tiny model's steps again and again. The process that
# makes the folder removes it; set JAX_COMPILATION_CACHE_DIR to keep one across runs.
XLA_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    XLA_CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="dsbs-xla-")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.2"

import pytest  # noqa: E402

# Test modules that take longest, longest first: the workers start them first, so that
# no long module is left running alone at the end. The rest follow in file order.
SLOWEST_MODULES = (
    "test_readme.py",
    "test_train.py",
    "test_kd_train.py",
    "test_kd_offline.py",
    "test_kd_trainer.py",
    "test_packing.py",
    "test_eval.py",
    "test_gcs.py",
)

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"
T5X_FIXTURE = SHARED / "fixtures" / "t5x" / "test_t5_tiny.checkpoint_0"


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
    if not SHARED.exists():
        pytest.fail(f"{SHARED} is missing: tests read the fixtures and datasets from ../shared")
    return SHARED


@pytest.fixture(scope="session")
def tfds_data_dir(shared_dir, tmp_path_factory) -> pathlib.Path:
    """Every dataset built once from ../shared/datasets (and the synthetic one), by dsbs-prepare."""
    from dsbs_jax.programs import prepare

    data_dir = tmp_path_factory.mktemp("tfds")
    manual_dir = shared_dir / "datasets"
    assert (
        prepare.main(
            ["--dataset", "all", "--manual_dir", str(manual_dir), "--data_dir", str(data_dir)]
        )
        == 0
    )
    return data_dir


@pytest.fixture(scope="session")
def small_vocabulary(shared_dir, tmp_path_factory) -> str:
    """A 2,000-piece SentencePiece model trained on the release text, standing in for T5's."""
    from dsbs_jax.data import release, vocabulary

    texts = []
    for dataset in ("cqa", "svamp", "esnli", "anli1"):
        for examples in release.read_dataset(shared_dir / "datasets", dataset).values():
            texts += [e.input for e in examples[:300]] + [e.teacher_output for e in examples[:300]]
    path = tmp_path_factory.mktemp("vocabulary") / "spm.model"
    path.write_bytes(vocabulary.train_sentencepiece(texts, vocab_size=2000))
    return str(path)


@pytest.fixture
def registered_tasks(tfds_data_dir, small_vocabulary) -> list[str]:
    """The tasks over the test data, registered again for each test that asks: an earlier
    in-process run (a binary's `main`) may have registered them with T5's gs:// vocabulary."""
    import tasks

    return tasks.register(data_dir=str(tfds_data_dir), vocabulary_path=small_vocabulary)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return SLOWEST_MODULES.index(name) if name in SLOWEST_MODULES else len(SLOWEST_MODULES)

    items.sort(key=rank)  # stable: each module's tests keep their order


def pytest_unconfigure(config: pytest.Config) -> None:
    if XLA_CACHE:
        shutil.rmtree(XLA_CACHE, ignore_errors=True)


@pytest.fixture
def declaration_tables():
    """The tables a dataset declaration fills, restored after the test."""
    from dsbs_jax.data import builders, datasets, teacher_outputs

    tables = (builders.BUILDERS, datasets.DATASETS, teacher_outputs.ANSWER_FORMATS)
    saved = [(table, dict(table)) for table in tables]
    yield
    for table, contents in saved:
        table.clear()
        table.update(contents)
