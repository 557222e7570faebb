"""The model-list ``filter`` of Firebase ML, parsed into a small AST and turned into SQL.

Accepted, as the firebase-admin SDK passes it through (Google's AIP-160 syntax, cut down)::

    filter     := [expr]                        empty or blank: no filter
    expr       := unary {"AND" unary} | unary {"OR" unary}
    unary      := ("NOT" | "-") unary | "(" expr ")" | comparison
    comparison := field ("=" | ":") value
    field      := display_name | displayName | tags | state.published
    value      := bare [A-Za-z0-9_-]+ | 'quoted' | "quoted"   (true/false for state.published)

``display_name = x`` and ``display_name : x`` match exactly, ``display_name : x*`` by prefix;
``tags: a`` means the model has tag ``a``. Keywords are uppercase. AND and OR may not be
mixed without parentheses: AIP-160 reads ``a AND b OR c`` as ``a AND (b OR c)`` where most
people (and SQL) read ``(a AND b) OR c``, so such a filter is refused rather than guessed.
Every error is an ``InvalidInput`` naming the problem and its 1-based position.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import ColumnElement, and_, exists, func, not_, or_

from app.db.model import Model, ModelTag
from app.errors import InvalidInput

MAX_LENGTH = 1000
MAX_COMPARISONS = 20
MAX_NAME_LENGTH = 60
MAX_DEPTH = 10  # parentheses and negations nested in one another

FieldName = Literal["display_name", "tags", "state.published"]
# "equals": exact match; "has": a tag among the model's; "prefix": display_name starts with.
Op = Literal["equals", "has", "prefix"]


@dataclass(frozen=True)
class Compare:
    field: FieldName
    op: Op
    value: str | bool


@dataclass(frozen=True)
class And:
    items: tuple[Filter, ...]


@dataclass(frozen=True)
class Or:
    items: tuple[Filter, ...]


@dataclass(frozen=True)
class Not:
    item: Filter


Filter = Compare | And | Or | Not


def parse_filter(text: str | None) -> Filter | None:
    """The filter's AST, or None when there is no filter; ``InvalidInput`` when malformed."""
    if text is None or not text.strip():
        return None
    if len(text) > MAX_LENGTH:
        raise _error(f"longer than {MAX_LENGTH} characters ({len(text)})")
    return _Parser(text).parse()


def to_clause(expr: Filter) -> ColumnElement[bool]:
    """The WHERE clause over ``Model`` that selects the models the filter matches."""
    match expr:
        case Compare(field="display_name", op="equals", value=str(name)):
            return Model.display_name == name
        case Compare(field="display_name", op="prefix", value=str(prefix)):
            # LIKE uses an index where it can; it is case-insensitive on SQLite, so the
            # substr comparison keeps the match exact on both databases.
            return and_(
                Model.display_name.startswith(prefix, autoescape=True),
                func.substr(Model.display_name, 1, len(prefix)) == prefix,
            )
        case Compare(field="tags", op="has", value=str(tag)):
            return exists().where(ModelTag.model_id == Model.id, ModelTag.tag == tag)
        case Compare(field="state.published", op="equals", value=bool(published)):
            return _published() if published else not_(_published())
        case And(items):
            return and_(*(to_clause(item) for item in items))
        case Or(items):
            return or_(*(to_clause(item) for item in items))
        case Not(item):
            return not_(to_clause(item))
    raise ValueError(f"not a filter expression: {expr!r}")


def _published() -> ColumnElement[bool]:
    # The column stores None as SQL NULL (none_as_null), so IS NOT NULL is the whole test and
    # never NULL itself: NOT of it is the exact complement.
    return Model.published_split.is_not(None)


# -- tokens ------------------------------------------------------------------------------

TokenKind = Literal["word", "keyword", "op", "value", "string", "(", ")", "-", "end"]

_SPACE = " \t\r\n"
_WORD = re.compile(r"[A-Za-z0-9_.]+")
_BARE_VALUE = re.compile(r"[^ \t\r\n()]+")
# The registry's rule for display names and tags (DESIGN 3.4).
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,60}$")
_KEYWORDS = ("AND", "OR", "NOT")
_FIELDS: dict[str, FieldName] = {
    "display_name": "display_name",
    "displayName": "display_name",
    "tags": "tags",
    "state.published": "state.published",
}


@dataclass(frozen=True)
class _Token:
    kind: TokenKind
    text: str
    position: int  # 1-based, in the filter as given

    def describe(self) -> str:
        if self.kind == "end":
            return "the end of the filter"
        if self.kind == "string":
            return f"the quoted value {self.text}"
        return f'"{self.text}"'


def _tokenize(text: str) -> list[_Token]:
    """Tokens in order; a value is read as such only right after ``=`` or ``:``."""
    tokens: list[_Token] = []
    i = 0
    while True:
        while i < len(text) and text[i] in _SPACE:
            i += 1
        if i == len(text):
            tokens.append(_Token("end", "", i + 1))
            return tokens
        after_op = bool(tokens) and tokens[-1].kind == "op"
        char = text[i]
        if char in "'\"":
            end = text.find(char, i + 1)
            if end < 0:
                raise _error(f"unterminated quote {char} at position {i + 1}")
            tokens.append(_Token("string", text[i : end + 1], i + 1))
            i = end + 1
        elif char in "()":
            tokens.append(_Token("(" if char == "(" else ")", char, i + 1))
            i += 1
        elif after_op:
            match = _BARE_VALUE.match(text, i)
            assert match  # not a space, not a parenthesis: at least one character
            tokens.append(_Token("value", match.group(), i + 1))
            i = match.end()
        elif char in "=:":
            tokens.append(_Token("op", char, i + 1))
            i += 1
        elif char == "-":
            tokens.append(_Token("-", char, i + 1))
            i += 1
        elif match := _WORD.match(text, i):
            word = match.group()
            tokens.append(_Token("keyword" if word in _KEYWORDS else "word", word, i + 1))
            i = match.end()
        else:
            raise _error(f'unexpected character "{char}" at position {i + 1}')


# -- parser ------------------------------------------------------------------------------


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.index = 0
        self.comparisons = 0

    @property
    def token(self) -> _Token:
        return self.tokens[self.index]

    def advance(self) -> _Token:
        token = self.token
        self.index += 1
        return token

    def at_keyword(self, word: str) -> bool:
        return self.token.kind == "keyword" and self.token.text == word

    def parse(self) -> Filter:
        expr = self.expr(depth=0)
        if self.token.kind != "end":
            raise self.unexpected("AND, OR or the end of the filter")
        return expr

    def expr(self, depth: int) -> Filter:
        items = [self.unary(depth)]
        joiner = self.token.text if self.at_keyword("AND") or self.at_keyword("OR") else None
        while self.at_keyword("AND") or self.at_keyword("OR"):
            if self.token.text != joiner:
                raise _error(
                    f"AND and OR mixed without parentheses at position {self.token.position}; "
                    "add parentheses to say which comes first"
                )
            self.advance()
            items.append(self.unary(depth))
        if joiner is None:
            return items[0]
        return And(tuple(items)) if joiner == "AND" else Or(tuple(items))

    def unary(self, depth: int) -> Filter:
        token = self.token
        if depth >= MAX_DEPTH and (token.kind in ("(", "-") or self.at_keyword("NOT")):
            raise _error(f"nested deeper than {MAX_DEPTH} at position {token.position}")
        if self.at_keyword("NOT") or token.kind == "-":
            self.advance()
            return Not(self.unary(depth + 1))
        if token.kind == "(":
            self.advance()
            if self.token.kind == ")":
                raise _error(f"empty parentheses at position {token.position}")
            expr = self.expr(depth + 1)
            if self.token.kind != ")":
                raise self.unexpected(
                    "AND, OR or )", hint=f"the ( at position {token.position} is not closed"
                )
            self.advance()
            return expr
        return self.comparison()

    def comparison(self) -> Compare:
        token = self.token
        if token.kind != "word":
            raise self.unexpected("a field, NOT, - or (")
        field = _FIELDS.get(token.text)
        if field is None:
            raise _error(
                f'unknown field "{token.text}" at position {token.position}; '
                "expected display_name, tags or state.published"
            )
        self.comparisons += 1
        if self.comparisons > MAX_COMPARISONS:
            raise _error(f"more than {MAX_COMPARISONS} comparisons at position {token.position}")
        self.advance()
        if self.token.kind != "op":
            raise self.unexpected(f"= or : after {token.text}")
        op = self.advance()
        if self.token.kind not in ("value", "string"):
            raise self.unexpected(f"a value after {op.text}")
        value = self.advance()
        if field == "state.published":
            if op.text != "=":
                raise _wrong_operator(op, field, "=")
            if value.kind != "value" or value.text not in ("true", "false"):
                raise _error(
                    f"expected true or false at position {value.position}, found {value.describe()}"
                )
            return Compare(field, "equals", value.text == "true")
        if field == "tags" and op.text != ":":
            raise _wrong_operator(op, field, ":")
        if value.kind == "value" and value.text in _KEYWORDS:
            raise _error(
                f"expected a value at position {value.position}, found {value.text}; "
                "quote it to mean a name"
            )
        name, offset = (value.text[1:-1], 1) if value.kind == "string" else (value.text, 0)
        prefix = field == "display_name" and op.text == ":" and name.endswith("*")
        if prefix:
            name = name[:-1]
        star = name.find("*")
        if star >= 0:
            where = "a display_name : prefix*" if field == "display_name" else "display_name"
            raise _error(
                f"* at position {value.position + offset + star} is allowed only at the end "
                f"of {where}"
            )
        what = "prefix" if prefix else "value"
        rule = f"names are 1 to {MAX_NAME_LENGTH} of A-Z a-z 0-9 _ -"
        if not name:
            raise _error(f"empty {what} at position {value.position}; {rule}")
        if len(name) > MAX_NAME_LENGTH:
            raise _error(
                f"{what} at position {value.position} is longer than {MAX_NAME_LENGTH} "
                f"characters ({len(name)})"
            )
        if not _NAME.match(name):
            bad = next(i for i, char in enumerate(name) if not _NAME.match(char))
            raise _error(
                f'invalid character "{name[bad]}" in {what} at position '
                f"{value.position + offset + bad}; {rule}"
            )
        if field == "tags":
            return Compare("tags", "has", name)
        return Compare("display_name", "prefix" if prefix else "equals", name)

    def unexpected(self, expected: str, *, hint: str | None = None) -> InvalidInput:
        token = self.token
        message = f"expected {expected} at position {token.position}, found {token.describe()}"
        if token.kind == "word" and token.text.upper() in _KEYWORDS:
            hint = f"keywords are uppercase: {token.text.upper()}"
        elif expected.startswith("AND, OR") and token.kind in ("word", "(", "-"):
            hint = "join comparisons with AND or OR"
        return _error(f"{message}; {hint}" if hint else message)


def _wrong_operator(op: _Token, field: FieldName, right: str) -> InvalidInput:
    return _error(
        f'operator "{op.text}" does not apply to {field} at position {op.position}; use {right}'
    )


def _error(description: str) -> InvalidInput:
    return InvalidInput.field("filter", description)
