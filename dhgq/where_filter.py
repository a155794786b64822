"""``dhgq rerun --where``: a small boolean language over ``sources_google``'s columns, compiled to SQL.

The operator's expression used to be pasted into the query, in a READ ONLY transaction. That did
not make it harmless: a read-only transaction still creates large objects (``lo_create``), sends
``pg_notify``, terminates other sessions (``pg_terminate_backend``) and reads anything the role
reads (a ``UNION`` with a comment that cut off the rest of the query). So the expression is parsed
here and rebuilt from parts that can only compare columns with constants; nothing else reaches
the server::

    expr      := and ('OR' and)*
    and       := not ('AND' not)*
    not       := 'NOT' not | '(' expr ')' | predicate
    predicate := value [ op value | ['NOT'] ('LIKE' | 'ILIKE') value | 'IS' ['NOT'] ('NULL' | 'TRUE' | 'FALSE')
                       | ['NOT'] 'IN' '(' value (',' value)* ')' | ['NOT'] 'BETWEEN' value 'AND' value ]
    value     := term (('+' | '-') term)*
    term      := (column ('->' | '->>') string)* | string | number | TRUE | FALSE | NULL | now() | current_date
                 | ('interval' | 'date' | 'timestamptz') string ;  each optionally '::' type (of the whole
                 term: metadata->>'size'::bigint casts the value, not the key)
    op        := = | <> | != | < | <= | > | >=

Columns are ``sources_google``'s own (read from the catalog); types for ``::`` are a short list.
No function but ``now()``, no subquery, no other table, no ``;``, no comment, no quoted identifier.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

from psycopg import sql

from dhgq.errors import PermanentError

KEYWORDS = {
    "and", "or", "not", "is", "null", "true", "false", "like", "ilike", "in", "between",
    "now", "current_date", "interval", "date", "timestamptz",
}  # fmt: skip
CASTS = {
    "int": "integer",
    "integer": "integer",
    "bigint": "bigint",
    "numeric": "numeric",
    "float": "double precision",
    "text": "text",
    "boolean": "boolean",
    "date": "date",
    "timestamptz": "timestamptz",
    "interval": "interval",
    "uuid": "uuid",
    "jsonb": "jsonb",
}
COMPARISONS = {"=", "<>", "!=", "<", "<=", ">", ">="}
_TOKEN = re.compile(
    r"\s*(?:(?P<string>'(?:[^']|'')*')|(?P<number>\d+(?:\.\d+)?)|(?P<word>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>->>|->|::|<=|>=|<>|!=|[=<>(),+-]))"
)


@dataclass(frozen=True)
class Token:
    kind: str  # string, number, word, op, end
    text: str
    position: int

    def is_(self, *texts: str) -> bool:
        return self.kind in ("word", "op") and self.text.lower() in texts


def tokens(expression: str) -> list[Token]:
    """The expression's tokens; PermanentError at the first character that has no place in the language."""
    found, position = [], 0
    while position < len(expression):
        if expression[position:].strip() == "":
            break
        rest = expression[position:].lstrip()
        start = len(expression) - len(rest)
        if rest.startswith(("--", "/*")):
            raise _refused(expression, start, "comments are not part of a filter")
        match = _TOKEN.match(expression, position)
        if match is None or match.lastgroup is None:
            raise _refused(expression, start, f"unexpected {rest[0]!r}")
        found.append(Token(match.lastgroup, match.group(match.lastgroup), match.start(match.lastgroup)))
        position = match.end()
    return [*found, Token("end", "", len(expression))]


def compile_filter(expression: str, columns: set[str]) -> sql.Composable:
    """The SQL of ``expression``, built from checked parts only; PermanentError saying where it went wrong."""
    if not expression.strip():
        raise PermanentError("--where needs an expression, e.g. \"name LIKE 'keynote%'\"")
    parser = _Parser(expression, tokens(expression), columns)
    compiled = parser.expr()
    if parser.peek().kind != "end":
        raise parser.error("expected AND, OR or the end")
    return compiled


def _refused(expression: str, position: int, why: str) -> PermanentError:
    return PermanentError(f"--where {expression!r}: {why} at position {position + 1}")


class _Parser:
    def __init__(self, expression: str, items: list[Token], columns: set[str]) -> None:
        self.expression = expression
        self.items = items
        self.index = 0
        self.columns = columns

    def peek(self, ahead: int = 0) -> Token:
        return self.items[min(self.index + ahead, len(self.items) - 1)]

    def take(self) -> Token:
        token = self.peek()
        self.index += 1
        return token

    def skip(self, text: str) -> bool:
        """Take the next token when it is ``text``; whether it was."""
        if self.peek().is_(text):
            self.index += 1
            return True
        return False

    def expect(self, *texts: str) -> Token:
        if not self.peek().is_(*texts):
            raise self.error(f"expected {' or '.join(repr(t.upper()) for t in texts)}")
        return self.take()

    def error(self, why: str) -> PermanentError:
        token = self.peek()
        seen = "the end" if token.kind == "end" else repr(token.text)
        return _refused(self.expression, token.position, f"{why}, found {seen}")

    def expr(self) -> sql.Composable:
        parts = [self.conjunction()]
        while self.peek().is_("or"):
            self.take()
            parts.append(self.conjunction())
        return sql.SQL(" OR ").join(parts) if len(parts) > 1 else parts[0]

    def conjunction(self) -> sql.Composable:
        parts = [self.negation()]
        while self.peek().is_("and"):
            self.take()
            parts.append(self.negation())
        return sql.SQL(" AND ").join(parts) if len(parts) > 1 else parts[0]

    def negation(self) -> sql.Composable:
        if self.peek().is_("not"):
            self.take()
            return sql.SQL("NOT ({})").format(self.negation())
        if self.peek().is_("("):
            self.take()
            inner = self.expr()
            self.expect(")")
            return sql.SQL("({})").format(inner)
        return self.predicate()

    def predicate(self) -> sql.Composable:
        left = self.value()
        token = self.peek()
        if token.kind == "op" and token.text in COMPARISONS:
            self.take()
            return sql.SQL("{} {} {}").format(left, sql.SQL("<>" if token.text == "!=" else token.text), self.value())
        if token.is_("is"):
            self.take()
            negated = sql.SQL(" NOT") if self.skip("not") else sql.SQL("")
            constant = self.expect("null", "true", "false").text.upper()
            return sql.SQL("{} IS{} {}").format(left, negated, sql.SQL(constant))
        negated = sql.SQL("NOT ") if self.skip("not") else sql.SQL("")
        if self.peek().is_("like", "ilike"):
            operator = sql.SQL(self.take().text.upper())
            return sql.SQL("{} {}{} {}").format(left, negated, operator, self.value())
        if self.peek().is_("in"):
            self.take()
            self.expect("(")
            values = [self.value()]
            while self.peek().is_(","):
                self.take()
                values.append(self.value())
            self.expect(")")
            return sql.SQL("{} {}IN ({})").format(left, negated, sql.SQL(", ").join(values))
        if self.peek().is_("between"):
            self.take()
            low = self.value()
            self.expect("and")
            return sql.SQL("{} {}BETWEEN {} AND {}").format(left, negated, low, self.value())
        if negated.as_string(None):
            raise self.error("expected LIKE, ILIKE, IN or BETWEEN after NOT")
        return left  # a boolean column, e.g. audio_extracted

    def value(self) -> sql.Composable:
        parts: list[sql.Composable] = [self.term()]
        while self.peek().is_("+", "-"):
            parts += [sql.SQL(f" {self.take().text} "), self.term()]
        return sql.Composed(parts) if len(parts) > 1 else parts[0]

    def term(self) -> sql.Composable:
        term = self.primary()
        while self.peek().is_("::"):
            self.take()
            name = self.take()
            if name.kind != "word" or name.text.lower() not in CASTS:
                self.index -= 1
                raise self.error(f"expected a type ({', '.join(sorted(CASTS))})")
            term = sql.SQL("({})::{}").format(term, sql.SQL(CASTS[name.text.lower()]))
        return term

    def primary(self) -> sql.Composable:
        token = self.peek()
        if token.kind == "string":
            self.take()
            return sql.Literal(token.text[1:-1].replace("''", "'"))
        if token.kind == "number":
            self.take()
            return sql.Literal(Decimal(token.text) if "." in token.text else int(token.text))
        if token.kind != "word":
            raise self.error("expected a column or a constant")
        word = token.text.lower()
        if word in ("true", "false", "null"):
            self.take()
            return sql.SQL(word.upper())
        if word == "now":
            self.take()
            self.expect("(")
            self.expect(")")
            return sql.SQL("now()")
        if word == "current_date":
            self.take()
            return sql.SQL("current_date")
        if word in ("interval", "date", "timestamptz") and self.peek(1).kind == "string":
            self.take()
            literal = self.take().text[1:-1].replace("''", "'")
            return sql.SQL("{}::{}").format(sql.Literal(literal), sql.SQL(word))
        if word in self.columns:
            self.take()
            return self.path(sql.Identifier(word))
        if self.peek(1).is_("("):
            raise self.error("no function but now() is allowed")
        raise self.error(f"unknown column (sources_google has {', '.join(sorted(self.columns))})")

    def path(self, column: sql.Composable) -> sql.Composable:
        """``metadata->'a'->>'b'``: into a JSON column, by constant keys only."""
        while self.peek().is_("->", "->>"):
            arrow = self.take().text
            key = self.take()
            if key.kind not in ("string", "number"):
                self.index -= 1
                raise self.error(f"expected a constant key after {arrow}")
            index = sql.Literal(key.text[1:-1].replace("''", "'") if key.kind == "string" else int(key.text))
            column = sql.SQL("{} {} {}").format(column, sql.SQL(arrow), index)
        return column
