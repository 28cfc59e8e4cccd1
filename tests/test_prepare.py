"""`dsbs-prepare` on the paper's released data: the README's figures, idempotence, errors."""

import shutil

import pytest

from dsbs_jax.programs import prepare


def table_rows(output: str) -> dict[tuple[str, str], list[str]]:
    rows = {}
    for line in output.splitlines()[2:]:
        dataset, split, *figures = line.split()
        rows[(dataset, split)] = figures
    return rows


def test_reproduces_the_release_figures_and_is_idempotent(shared_dir, tfds_data_dir, capsys):
    before = {p: p.stat().st_mtime_ns for p in tfds_data_dir.rglob("*") if p.is_file()}
    args = ["--dataset", "all", "--manual_dir", str(shared_dir / "datasets")]
    assert prepare.main([*args, "--data_dir", str(tfds_data_dir)]) == 0
    rows = table_rows(capsys.readouterr().out)
    after = {p: p.stat().st_mtime_ns for p in tfds_data_dir.rglob("*") if p.is_file()}
    assert after == before  # nothing rebuilt

    # rows, unparsed, then "correct / rows (accuracy)"
    assert rows[("cqa", "test")][:4] == ["1,221", "0", "943", "/"]
    assert rows[("svamp", "test")][:4] == ["200", "2", "148", "/"]
    cqa_train, cqa_validation = rows[("cqa", "train")], rows[("cqa", "validation")]
    assert int(cqa_train[0].replace(",", "")) + int(cqa_validation[0]) == 9741  # 10% held out
    assert int(cqa_train[2].replace(",", "")) + int(cqa_validation[2]) == 7234
    for dataset in ("esnli", "anli1"):  # the samples: no train split, 200 rows each
        assert (dataset, "train") not in rows
        assert rows[(dataset, "validation")][0] == rows[(dataset, "test")][0] == "200"
    assert rows[("synthetic", "test")][0] == "300"
    assert (tfds_data_dir / "dsbs_synthetic" / "sentencepiece.model").exists()


def run_prepare(dataset: str, manual_dir, data_dir, capsys) -> tuple[int, str]:
    args = ["--dataset", dataset, "--manual_dir", str(manual_dir), "--data_dir", str(data_dir)]
    code = prepare.main(args)
    return code, capsys.readouterr().err


@pytest.fixture
def svamp_copy(shared_dir, tmp_path):
    shutil.copytree(shared_dir / "datasets" / "svamp", tmp_path / "manual" / "svamp")
    for path in (tmp_path / "manual").rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return tmp_path / "manual"


def test_an_empty_manual_dir_is_an_error(tmp_path, capsys):
    (tmp_path / "manual").mkdir()
    code, err = run_prepare("cqa", tmp_path / "manual", tmp_path / "data", capsys)
    assert code == 2 and f"no folder cqa/ in the manual dir {tmp_path / 'manual'}" in err
    code, err = run_prepare("all", tmp_path / "manual", tmp_path / "data", capsys)
    assert code == 2 and "no dataset folder" in err


def test_a_malformed_line_names_file_and_line(svamp_copy, tmp_path, capsys):
    rows = svamp_copy / "svamp" / "svamp_test.json"
    lines = rows.read_text().splitlines()
    lines[4] = lines[4][:-5]
    rows.write_text("\n".join(lines) + "\n")
    code, err = run_prepare("svamp", svamp_copy, tmp_path / "data", capsys)
    assert code == 2 and str(rows) in err and "line 5" in err
    assert not (tmp_path / "data" / "dsbs_svamp" / "1.0.0").exists()  # nothing half-built


def test_teacher_outputs_that_do_not_match_the_rows(svamp_copy, tmp_path, capsys):
    (svamp_copy / "svamp" / "llm" / "train_CoT_1.json").unlink()
    code, err = run_prepare("svamp", svamp_copy, tmp_path / "data", capsys)
    assert code == 2 and "train" in err and "800" in err and "500" in err


def test_the_same_rows_prepared_again_have_the_same_digest_and_others_another(
    svamp_copy, tmp_path, capsys
):
    """Results record `metadata.json` (`sources.dataset_fingerprint`): it must name the rows,
    not the build (the TFRecords' bytes differ between builds of the same rows)."""

    def digest(data_dir) -> str:
        return (data_dir / "dsbs_svamp" / "1.0.0" / "metadata.json").read_text()

    for name in ("first", "again"):
        assert run_prepare("svamp", svamp_copy, tmp_path / name, capsys)[0] == 0
    assert digest(tmp_path / "first") == digest(tmp_path / "again")
    rows = svamp_copy / "svamp" / "svamp_test.json"
    lines = rows.read_text().splitlines()
    lines[4] = lines[4].replace('{"input":"', '{"input":"So, ', 1)
    rows.write_text("\n".join(lines) + "\n")
    assert run_prepare("svamp", svamp_copy, tmp_path / "edited", capsys)[0] == 0
    assert digest(tmp_path / "edited") != digest(tmp_path / "first")
