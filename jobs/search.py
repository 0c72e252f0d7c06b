"""Text search over executions' errors and arguments (the executions list's ``q``).

The SQL side finds rows whose raw error or arguments contain the text, through two
trigram GIN indexes (execution_error_trgm_idx, execution_args_trgm_idx): an ILIKE
'%text%' is answered from the index at any table size. It sees raw values, so below the
admin role every row it finds is checked again against the row as that user sees it
(``visible_match``): nobody finds a row by a value that is redacted for them.
"""

from __future__ import annotations

import json

from django.db.models import F, Func, Lookup, Q, TextField

from controlplane import redaction
from controlplane.roles import is_schedule_editor

# Trigrams: text shorter than three characters matches from no index entry, so it would
# read every row's text. Bounded above like every input.
Q_MIN = 3
Q_MAX = 200


class ArgumentsText(Func):
    """``args::text || ' ' || kwargs::text``: what execution_args_trgm_idx indexes and
    the search reads. The query must spell the same expression for the index to serve it.
    """

    template = "(%(expressions)s::text)"
    arg_joiner = "::text || ' ' || "
    output_field = TextField()

    def __init__(self, **extra):
        super().__init__(F("args"), F("kwargs"), **extra)


class ILike(Lookup):
    """``lhs ILIKE rhs``: the operator gin_trgm_ops serves (Django's icontains compares
    UPPER(column), which no trigram index on the column can answer)."""

    lookup_name = "trgm_ilike"

    def as_sql(self, compiler, connection):
        lhs, lhs_params = self.process_lhs(compiler, connection)
        rhs, rhs_params = self.process_rhs(compiler, connection)
        return f"{lhs} ILIKE {rhs}", [*lhs_params, *rhs_params]


def like_pattern(text: str) -> str:
    """'%text%' with LIKE's own wildcards and escape character taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def matching(text: str) -> Q:
    """Executions whose error or arguments contain ``text`` (any case).

    The error arm repeats the partial index's predicate (error <> '') so the planner can
    use execution_error_trgm_idx; the two arms become a BitmapOr of the two indexes.
    """
    pattern = like_pattern(text)
    in_error = ~Q(error="") & ILike(F("error"), pattern)
    in_arguments = ILike(ArgumentsText(), pattern)
    return in_error | Q(in_arguments)


def visible_match(execution, text: str, user) -> bool:
    """Whether ``text`` is in the execution's error or arguments as ``user`` sees them
    (redacted below the admin role); needs ``error``, ``args`` and ``kwargs`` loaded."""
    if is_schedule_editor(user):
        return True
    needle = text.lower()
    error = redaction.redact_text(execution.error or "")
    if needle in error.lower():
        return True
    args = jsonb_text(redaction.redact(execution.args))
    kwargs = jsonb_text(redaction.redact(execution.kwargs))
    return needle in f"{args} {kwargs}".lower()


def jsonb_text(value) -> str:
    """A JSON value as PostgreSQL writes jsonb as text: ", " and ": " separators, object
    keys shortest first then bytewise (jsonb's storage order), so a text spanning two
    values matches here as it matched in SQL."""
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: (len(k.encode()), k.encode()))
        pairs = (f"{json.dumps(k, ensure_ascii=False)}: {jsonb_text(value[k])}" for k in keys)
        return "{" + ", ".join(pairs) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(jsonb_text(item) for item in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def needs_recheck(user) -> bool:
    """Whether rows found by text must be checked again for ``user`` (below admin)."""
    return not is_schedule_editor(user)
