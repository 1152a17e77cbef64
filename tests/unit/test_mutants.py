"""The curated mutants (tests/mutants/*.toml, run by ``make mutate``) cannot go stale silently.

A ``find`` text that no longer matches the code would make the runner stop;
this keeps that failure in ``make test``, where the change that broke it is made.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lab import mutate

REPO = Path(mutate.__file__).resolve().parents[1]

#: Every row of issue 14's mutation table has a mutant (ids of tests/mutants/*.toml).
ISSUE_14_TABLE = {
    "bridge-ack-on-receipt", "manifest-signature-not-verified", "probation-never-rolls-back",
    "probation-latency-rule-removed", "probation-relative-bound-removed", "probation-invalid-output-rule-removed",
    "edge-ack-on-ingest", "drift-one-device-is-the-fleet", "outbox-delete-on-handoff",
    "bridge-qos1-dropped-when-queue-full", "edge-qos1-dropped-and-acked-when-inbox-full", "gate-never-refuses",
}


def test_every_mutant_is_well_formed_and_its_find_text_matches_exactly_once():
    mutants = mutate.load_mutants()
    mutate.check_current(mutants)  # raises StaleMutant naming each stale entry
    assert ISSUE_14_TABLE <= {m.id for m in mutants}
    for m in mutants:
        assert m.promise.strip() and "MUTANT" in m.replace, m.id  # the mutated line says so in a traceback


def test_every_named_test_function_exists():
    for m in mutate.load_mutants():
        for node in m.tests:
            path, _, name = node.partition("::")
            if name:
                function = re.sub(r"\[.*\]$", "", name)
                assert re.search(rf"^def {re.escape(function)}\(", (REPO / path).read_text(), re.M), (m.id, node)


def test_stale_and_malformed_entries_are_refused(tmp_path):
    good = (REPO / "tests" / "mutants" / "drift.toml").read_text()
    (tmp_path / "a.toml").write_text(good.replace("changed_n / n_dev >= s.fleet_fraction", "no such code"))
    with pytest.raises(mutate.StaleMutant, match="occurs 0 times"):
        mutate.check_current(mutate.load_mutants(tmp_path))
    (tmp_path / "a.toml").write_text(good.replace("tests = ", "tsets = "))
    with pytest.raises(mutate.StaleMutant, match="missing"):
        mutate.load_mutants(tmp_path)


def test_the_copy_is_what_python_imports(tmp_path):
    """The runner mutates a copy of the tree; a fresh interpreter there (as the tests' CLI processes
    run) must import the component modules from the copy, not from the worktree's editable install."""
    copy = mutate.make_copy(tmp_path / "tree")
    files = ("runtime/delivery.py", "cloud_bridge/drift.py", "edgeloop/deploy_contract.py")
    where = mutate.imported_from(copy, *map(mutate.module_of, files))
    assert [p.resolve() for p in where.values()] == [(copy / f).resolve() for f in files], where
    with pytest.raises(RuntimeError, match="not from the mutated copy"):
        mutate.assert_in_copy(REPO / "runtime" / "delivery.py", copy, "edgeloop.edge.delivery")


def test_the_report_replaces_its_own_block_and_explains_survivors(tmp_path):
    m = mutate.load_mutants()[0]
    doc = tmp_path / "testing.md"
    doc.write_text("# Testing\n\nhand-written text\n")
    killed = mutate.Outcome(m, "killed", ["tests/unit/test_x.py::test_y"], 1.0)
    mutate.write_report([killed], 60.0, doc)
    survived = mutate.Outcome(m, "survived", [], 2.0)
    mutate.write_report([survived], 120.0, doc)  # the second run replaces the first block
    text = doc.read_text()
    assert text.startswith("# Testing\n\nhand-written text\n") and text.count(mutate.BEGIN) == 1
    assert "0 of 1 mutants killed, 1 not" in text and f"`{m.id}` (survived)" in text and "test_y" not in text
