"""What a report says before its tables: images per cell, degenerate fits, caveats."""

from __future__ import annotations

from trustad.report.caveats import caveat_lines, image_counts, with_image_counts
from trustad.report.tables import Table
from trustad.report.text import summary


def _row(seed: int, note: str = "", **kw) -> dict:
    base = dict(dataset="mvtec", category="bottle", shots="1", seed=str(seed), condition="clean")
    base.update(eps="0", auroc="0.9", n_calibration="4", n_evaluation="6", note=note)
    base.update(kw)
    return base


def test_degenerate_fits_and_one_seed_are_said_first():
    rows = [_row(0, "platt: fit did not converge (calibration classes perfectly separated)")]
    lines = caveat_lines(rows)
    assert any(line.startswith("1 seed: no spread") for line in lines)
    assert any("as few as 4 images" in line for line in lines)
    assert "Warning (1 result rows): platt: fit did not converge" in "\n".join(lines)
    assert "Read this first" in summary(rows)
    two_seeds = caveat_lines([_row(0, n_calibration="40"), _row(1, n_calibration="40")])
    assert two_seeds == []


def test_gated_and_flag_caveats_appear_with_their_columns():
    rows = [_row(0, gated_share="1.0", flag_auroc_noise_level="1.0")]
    text = "\n".join(caveat_lines(rows))
    assert "prior" in text and "adaptive" in text


def test_every_table_row_says_how_many_images_it_rests_on():
    rows = [_row(0), _row(1, n_calibration="6", n_evaluation="8")]
    assert image_counts(rows, per_category=False) == {("mvtec", "1"): "5 / 7"}
    table = with_image_counts(
        Table("t", "T", ["dataset", "shots", "AUROC"], [["mvtec", "1", "90"]]), rows, False
    )
    assert table.header == ["dataset", "shots", "images cal / eval", "AUROC"]
    assert table.body == [["mvtec", "1", "5 / 7", "90"]]


def test_what_a_run_left_out_is_listed():
    lines = caveat_lines([_row(0)], ["[bottle] test image left out: x.png: cannot decode"])
    assert "Left out: [bottle] test image left out: x.png: cannot decode" in lines
