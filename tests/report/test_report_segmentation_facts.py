"""The few-label facts a segmentation report shows from run.json and summary.json."""

from segmorph.report.segmentation import few_label_facts


def test_few_label_facts_name_what_the_run_used_besides_its_labels():
    record = {
        "train_cases": [f"c{k}" for k in range(10)], "labelled_cases": ["c1", "c4"], "init": "runs/pre",
        "transfer": {"source": "runs/pre/checkpoint_best.pt", "loaded": ["a", "b", "c"], "skipped": {"heads.0.weight": "shape"}},
        "synthetic": {"run": "runs/gan", "share": 0.3, "count": 0}, "annotate_every": 5,
    }  # fmt: skip
    facts = few_label_facts(record, {"unlabelled_cases": 8})
    assert facts == {
        "labelled training cases": "2 of 10", "unlabelled scans (semi-supervised)": 8,
        "initialised from": "runs/pre (3 of 4 tensors)", "synthetic pairs": "from runs/gan, share 0.3",
        "annotated slices": "every 5th (the others ignored)",
    }  # fmt: skip


def test_a_plain_run_has_no_few_label_facts():
    assert few_label_facts({"train_cases": ["a", "b"], "val_cases": ["c"]}, {"train_cases": 2}) == {}
