"""The column glossary: every column of every table a diagnostic writes has a meaning, looked up from the
table's scope outwards, and the pages' column help comes from it."""

from __future__ import annotations

import pandas as pd
import pytest

from diagnostics import glossary
from tests import result_fixtures as results

RESULTS = ("overview", "spectra", "alignment", "alignment_unlabelled", "directions", "optimizer_traces", "steering",
           "compare")
# Tables the pages build themselves from a result's fields.
PAGE_TABLES = {("steering", "examples"): ["sample", "prompt", "s", "p", "unsteered", "steered", "random"]}


@pytest.mark.parametrize("name", RESULTS)
def test_every_column_of_every_table_has_a_meaning(name):
    result = getattr(results, name)()
    tables = {(result.diagnostic, stem): list(frame.columns) for stem, frame in result.tables().items()}
    tables.update({k: v for k, v in PAGE_TABLES.items() if k[0] == result.diagnostic})
    missing = {f"{d}.{t}: {c}" for (d, t), columns in tables.items() for c in columns
               if not glossary.meaning(c, d, t)}
    assert not missing, sorted(missing)


def test_the_narrowest_scope_wins():
    assert "difference vector" in glossary.meaning("norm", "steering", "samples")
    assert "added vector" in glossary.meaning("norm", "steering", "steered")
    assert "traversal step" in glossary.meaning("alpha", "directions", "directions_traversal")
    assert "power-law exponent" in glossary.meaning("alpha", "spectra", "layers")
    assert glossary.meaning("kind", "overview", "tensors") == glossary.meaning("kind", "spectra", "layers")
    assert glossary.meaning("no such column", "spectra", "layers") is None


def test_suffixed_columns_are_described_from_their_base():
    assert glossary.meaning("class_top1_ab_lo", "alignment", "metrics") == (
        "lower end of the 95% interval of class_top1_ab")
    assert glossary.meaning("best_val_loss_max", "optimizer_traces", "sweep") == "highest best_val_loss over seeds"
    assert glossary.meaning("nothing_lo", "alignment", "metrics") is None  # no base, no meaning


def test_norms_are_named_for_what_they_are():
    assert glossary.meaning("frobenius_norm", "overview", "tensors").startswith("Frobenius norm")
    assert glossary.meaning("frobenius_norm_sq", "spectra", "layers").startswith("squared Frobenius norm")
    assert "frobenius_norm" in results.overview().to_frame() and "norm" not in results.overview().to_frame()
    assert "frobenius_norm_sq" in results.spectra().to_frame() and "norm" not in results.spectra().to_frame()


def test_legend_keeps_the_tables_order_and_leaves_out_unknown_columns():
    legend = glossary.legend(["alpha", "mystery", "D", "phase"], "spectra", "layers")
    assert [c for c, _ in legend] == ["alpha", "D", "phase"]
    assert all(text for _, text in legend)


def test_page_tables_get_the_glossary_as_help_and_numbers_to_four_digits():
    from ui.tables import column_config

    frame = pd.DataFrame({"alpha": [2.5], "phase": ["heavy-tailed"], "mystery": ["?"]})
    config = column_config(frame, "spectra", "layers")
    assert config["alpha"]["help"] == glossary.meaning("alpha", "spectra")
    assert config["alpha"]["type_config"]["format"] == "%.4g"
    assert config["phase"]["help"] == glossary.meaning("phase", "spectra")
    assert "mystery" not in config
