"""examples/energy_lm/harness_table.py without training: the table's cells (the harness's
metric with its standard error) and the time per document."""

import pytest

from conftest import load_script


@pytest.fixture(scope="module")
def harness_table():
    return load_script("examples/energy_lm/harness_table.py")


def test_the_table_reads_each_metric_with_its_standard_error(harness_table):
    results = {"energy_lm_lastword": {"acc,none": 0.25, "acc_stderr,none": 0.05,
                                      "perplexity,none": 310.5, "perplexity_stderr,none": 40.0},
               "energy_lm_cloze": {"acc,none": 0.5, "acc_stderr,none": 0.1,
                                   "acc_norm,none": 0.4, "acc_norm_stderr,none": 0.1},
               "energy_lm_perplexity": {"bits_per_byte,none": 2.5,
                                        "bits_per_byte_stderr,none": "N/A"}}
    kept = {"results": results, "seconds": 30.0, "documents": 60}
    text = harness_table.table([("monarc", "elm (estimate Z)", kept)], limit=20, updates=600)
    assert ("| monarc | elm (estimate Z) | 0.250 ± 0.050 | 310.500 ± 40.000 | 0.500 ± 0.100 "
            "| 0.400 ± 0.100 | 2.500 | 0.50 |") in text
    assert "the first 20 documents" in text and "600 updates" in text


def test_the_timing_row_is_per_thousand_tokens(harness_table):
    text = harness_table.timing_table({"harness_lm_s": 2.0, "harness_elm_s": 10.0,
                                       "eval_elm_s": 4.0, "tokens": 4000})
    assert "test split's 4000 tokens" in text
    assert "| 0.50 | 2.50 | 1.00 |" in text
