"""The model-list filter: what it accepts, how it refuses, and which models it selects."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import null, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.db.model import Model, ModelTag
from app.errors import InvalidInput
from app.registry.filters import And, Compare, Not, Or, parse_filter, to_clause

NAME_EXP_A = Compare("display_name", "equals", "exp_a")
TAG_A = Compare("tags", "has", "a")
TAG_B = Compare("tags", "has", "b")
TAG_C = Compare("tags", "has", "c")
PUBLISHED = Compare("state.published", "equals", True)

VALID = [
    ("display_name = exp_a", NAME_EXP_A),
    ("display_name=exp_a", NAME_EXP_A),
    ("displayName = exp_a", NAME_EXP_A),
    ("display_name = 'exp_a'", NAME_EXP_A),
    ('display_name = "exp_a"', NAME_EXP_A),
    ("  display_name\t=\nexp_a  ", NAME_EXP_A),
    ("display_name : exp_a", NAME_EXP_A),
    ("display_name : exp_*", Compare("display_name", "prefix", "exp_")),
    ("displayName:exp-*", Compare("display_name", "prefix", "exp-")),
    ('display_name : "exp*"', Compare("display_name", "prefix", "exp")),
    ("display_name = -x-", Compare("display_name", "equals", "-x-")),
    ('display_name = "AND"', Compare("display_name", "equals", "AND")),
    ("display_name = " + "n" * 60, Compare("display_name", "equals", "n" * 60)),
    ("tags: a", TAG_A),
    ('tags : "a"', TAG_A),
    ("tags:'a'", TAG_A),
    ("state.published = true", PUBLISHED),
    ("state.published=false", Compare("state.published", "equals", False)),
    ("tags: a AND tags: b", And((TAG_A, TAG_B))),
    ("tags: a AND tags: b AND tags: c", And((TAG_A, TAG_B, TAG_C))),
    ("tags: a OR tags: b OR tags: c", Or((TAG_A, TAG_B, TAG_C))),
    ("NOT tags: a", Not(TAG_A)),
    ("-tags: a", Not(TAG_A)),
    ("NOT NOT tags: a", Not(Not(TAG_A))),
    ("tags: a AND NOT tags: b", And((TAG_A, Not(TAG_B)))),
    ("tags: a OR -tags: b", Or((TAG_A, Not(TAG_B)))),
    ("(tags: a)", TAG_A),
    ("NOT(tags:a)", Not(TAG_A)),
    ("(tags: a AND tags: b) OR tags: c", Or((And((TAG_A, TAG_B)), TAG_C))),
    ("tags: a AND (tags: b OR tags: c)", And((TAG_A, Or((TAG_B, TAG_C))))),
    ("-(tags: a OR tags: b) AND state.published = true", And((Not(Or((TAG_A, TAG_B))), PUBLISHED))),
    ('(tags:"a")AND(state.published=true)', And((TAG_A, PUBLISHED))),
    (" AND ".join(["tags: a"] * 20), And((TAG_A,) * 20)),
    ("(" * 10 + "tags: a" + ")" * 10, TAG_A),
]


@pytest.mark.parametrize(("text", "expected"), VALID)
def test_a_valid_filter_parses_to_its_expression(text: str, expected: object) -> None:
    assert parse_filter(text) == expected


@pytest.mark.parametrize("text", [None, "", "   ", "\t\n"])
def test_no_filter_or_a_blank_one_is_no_filter(text: str | None) -> None:
    assert parse_filter(text) is None


INVALID = [
    (
        "foo = x",
        'unknown field "foo" at position 1; expected display_name, tags or state.published',
    ),
    (
        "tags: a AND Tags: b",
        'unknown field "Tags" at position 13; expected display_name, tags or state.published',
    ),
    ("tags = x", 'operator "=" does not apply to tags at position 6; use :'),
    (
        "state.published : true",
        'operator ":" does not apply to state.published at position 17; use =',
    ),
    ("state.published = yes", 'expected true or false at position 19, found "yes"'),
    ("state.published = True", 'expected true or false at position 19, found "True"'),
    (
        'state.published = "true"',
        'expected true or false at position 19, found the quoted value "true"',
    ),
    ('display_name = "exp', 'unterminated quote " at position 16'),
    ("tags: 'a AND tags: b", "unterminated quote ' at position 7"),
    ("tags: a AND", "expected a field, NOT, - or ( at position 12, found the end of the filter"),
    ("AND tags: a", 'expected a field, NOT, - or ( at position 1, found "AND"'),
    ("tags: a AND AND tags: b", 'expected a field, NOT, - or ( at position 13, found "AND"'),
    ("()", "empty parentheses at position 1"),
    ("tags: a AND ( )", "empty parentheses at position 13"),
    (
        "(tags: a",
        "expected AND, OR or ) at position 9, found the end of the filter; "
        "the ( at position 1 is not closed",
    ),
    ("tags: a)", 'expected AND, OR or the end of the filter at position 8, found ")"'),
    (
        "tags: a tags: b",
        'expected AND, OR or the end of the filter at position 9, found "tags"; '
        "join comparisons with AND or OR",
    ),
    (
        "tags: a and tags: b",
        'expected AND, OR or the end of the filter at position 9, found "and"; '
        "keywords are uppercase: AND",
    ),
    (
        "display_name : a*b",
        "* at position 17 is allowed only at the end of a display_name : prefix*",
    ),
    (
        "display_name = exp*",
        "* at position 19 is allowed only at the end of a display_name : prefix*",
    ),
    (
        "display_name : 'ex**'",
        "* at position 19 is allowed only at the end of a display_name : prefix*",
    ),
    ("tags: a*", "* at position 8 is allowed only at the end of display_name"),
    ("display_name : *", "empty prefix at position 16; names are 1 to 60 of A-Z a-z 0-9 _ -"),
    ("display_name = ''", "empty value at position 16; names are 1 to 60 of A-Z a-z 0-9 _ -"),
    (
        "display_name = a.b",
        'invalid character "." in value at position 17; names are 1 to 60 of A-Z a-z 0-9 _ -',
    ),
    (
        "tags: 'a b'",
        'invalid character " " in value at position 9; names are 1 to 60 of A-Z a-z 0-9 _ -',
    ),
    (
        "display_name : 'é*'",
        'invalid character "é" in prefix at position 17; names are 1 to 60 of A-Z a-z 0-9 _ -',
    ),
    (
        "display_name = " + "n" * 61,
        "value at position 16 is longer than 60 characters (61)",
    ),
    (
        "display_name : " + "n" * 61 + "*",
        "prefix at position 16 is longer than 60 characters (61)",
    ),
    ("display_name =", "expected a value after = at position 15, found the end of the filter"),
    ("tags: (a)", 'expected a value after : at position 7, found "("'),
    ("tags a", 'expected = or : after tags at position 6, found "a"'),
    ("tags: AND", "expected a value at position 7, found AND; quote it to mean a name"),
    ("tags: a & tags: b", 'unexpected character "&" at position 9'),
    ("tags: a NOT tags: b", 'expected AND, OR or the end of the filter at position 9, found "NOT"'),
    (
        "tags: a AND tags: b OR tags: c",
        "AND and OR mixed without parentheses at position 21; "
        "add parentheses to say which comes first",
    ),
    (
        "tags: a OR tags: b AND tags: c",
        "AND and OR mixed without parentheses at position 20; "
        "add parentheses to say which comes first",
    ),
    (" AND ".join(["tags: a"] * 21), "more than 20 comparisons at position 241"),
    ("(" * 11 + "tags: a" + ")" * 11, "nested deeper than 10 at position 11"),
    ("NOT " * 11 + "tags: a", "nested deeper than 10 at position 41"),
    ("tags: " + "a" * 995, "longer than 1000 characters (1001)"),
]


@pytest.mark.parametrize(("text", "message"), INVALID)
def test_an_invalid_filter_is_refused_with_the_problem_and_its_position(
    text: str, message: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_filter(text)
    assert caught.value.message == f"filter: {message}"
    violation = caught.value.details[0]["fieldViolations"][0]
    assert violation == {"field": "filter", "description": message}


# -- which models a filter selects -------------------------------------------------------

# id: (display_name, tags, published_split); "json-null" is what the ORM writes for None.
MODELS: dict[str, tuple[str, list[str], object]] = {
    "a": ("exp_a", ["prod", "face"], {"1": 100}),
    "b": ("expXa", ["face"], "json-null"),
    "c": ("Exp_c", [], "sql-null"),
    "d": ("prod-detector", ["prod"], {"1": 80, "2": 20}),
    "e": ("exp_e", ["face", "old"], "sql-null"),
    "f": ("exp", [], {"3": 100}),
}


def insert_models(session_factory: sessionmaker[Session]) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    with session_factory.begin() as session:
        for model_id, (display_name, tags, split) in MODELS.items():
            session.add(
                Model(
                    id=model_id,
                    display_name=display_name,
                    labels=["cat"],
                    model_type="efficientdet-lite0",
                    input_size=320,
                    created_at=now,
                    updated_at=now,
                    published_split=split if isinstance(split, dict) else None,
                )
            )
            session.add_all(ModelTag(model_id=model_id, tag=tag) for tag in tags)
        session.flush()
        sql_null = [i for i, (_, _, split) in MODELS.items() if split == "sql-null"]
        session.execute(update(Model).where(Model.id.in_(sql_null)).values(published_split=null()))


def selected(session_factory: sessionmaker[Session], text: str) -> list[str]:
    expr = parse_filter(text)
    assert expr is not None
    with session_factory() as session:
        query = select(Model.id).where(to_clause(expr)).order_by(Model.id)
        return list(session.scalars(query))


SELECTIONS = [
    ("display_name = exp_a", ["a"]),
    ("display_name : exp", ["f"]),
    ("display_name : exp*", ["a", "b", "e", "f"]),
    # "_" is a LIKE wildcard and SQLite's LIKE ignores case: neither may leak in.
    ("display_name : exp_*", ["a", "e"]),
    ("displayName : 'prod-detector'", ["d"]),
    ("tags: face", ["a", "b", "e"]),
    ("tags: Face", []),
    ("tags: prod AND tags: face", ["a"]),
    ("tags: prod OR tags: old", ["a", "d", "e"]),
    ("state.published = true", ["a", "d", "f"]),
    ("state.published = false", ["b", "c", "e"]),
    ("NOT tags: face", ["c", "d", "f"]),
    ("display_name : exp* AND -state.published = true", ["b", "e"]),
    ("(tags: face OR tags: prod) AND state.published = false", ["b", "e"]),
    ("-(display_name : exp* OR tags: prod)", ["c"]),
]


@pytest.mark.parametrize(("text", "ids"), SELECTIONS)
def test_a_filter_selects_exactly_the_matching_models(
    session_factory: sessionmaker[Session], text: str, ids: list[str]
) -> None:
    insert_models(session_factory)
    assert selected(session_factory, text) == ids


def test_an_unpublished_model_is_unpublished_whether_its_split_is_sql_or_json_null(
    session_factory: sessionmaker[Session],
) -> None:
    insert_models(session_factory)
    with session_factory() as session:
        sql_null = session.scalars(
            select(Model.id).where(Model.published_split.is_(None)).order_by(Model.id)
        ).all()
    # "b" was given None through the ORM: the column stores it as SQL NULL, not JSON null,
    # which a bare IS NOT NULL would call published.
    assert sql_null == ["b", "c", "e"]
    assert "b" not in selected(session_factory, "state.published = true")
    assert "b" in selected(session_factory, "state.published = false")
