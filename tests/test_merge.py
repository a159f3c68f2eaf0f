"""The three-way merge `update` uses."""

from __future__ import annotations

from bgtasks_gen.merge import merge3

BASE = "a\nb\nc\nd\ne\nf\n"


def test_untouched_file_takes_the_new_version() -> None:
    result = merge3(BASE, BASE, BASE.replace("c\n", "C\n"))
    assert result.clean and result.text == "a\nb\nC\nd\ne\nf\n"


def test_user_edit_elsewhere_is_kept_with_the_new_version() -> None:
    ours = BASE.replace("a\n", "a  # mine\n")
    theirs = BASE.replace("e\n", "e2\nextra\n")
    result = merge3(BASE, ours, theirs)
    assert result.clean
    assert result.text == "a  # mine\nb\nc\nd\ne2\nextra\nf\n"


def test_template_unchanged_keeps_the_users_file() -> None:
    ours = "totally\nrewritten\n"
    assert merge3(BASE, ours, BASE).text == ours


def test_same_change_on_both_sides_is_not_a_conflict() -> None:
    both = BASE.replace("d\n", "D\n")
    result = merge3(BASE, both, both)
    assert result.clean and result.text == both


def test_overlapping_edits_conflict_and_markers_show_both() -> None:
    ours = BASE.replace("c\n", "mine\n")
    theirs = BASE.replace("c\n", "new\n")
    result = merge3(BASE, ours, theirs)
    assert result.conflicts == [3]
    marked = merge3(BASE, ours, theirs, markers=True)
    assert "<<<<<<< yours\nmine\n=======\nnew\n>>>>>>> bgtasks\n" in marked.text


def test_insertions_at_the_same_place_conflict() -> None:
    ours = BASE.replace("c\n", "c\nx\n")
    theirs = BASE.replace("c\n", "c\ny\n")
    assert not merge3(BASE, ours, theirs).clean
