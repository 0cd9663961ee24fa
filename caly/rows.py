"""Row helpers for the statements every sync run makes, where the ORM's own cost shows.

`update_rows`: what `Model.objects.filter(**where).update(**values)` does, its SQL built once;
`write_together`: several of them (and statements written by hand) as one transaction, in one
round trip on PostgreSQL.
`read_rows` / `read_row`: what `filter(**where)` (with `select_related`, `select_for_update`,
`order_by`) reads, its SQL built once; `read_values`: the same for `values_list()`.
`upsert_sql`: the INSERT ... ON CONFLICT DO UPDATE the ORM cannot write for one row or many.

Django builds and compiles the query of every `QuerySet.update()` call anew. On the 2-core
machines Caly is measured on that is about 0.5 ms of CPU per call, against 0.09 ms for the same
statement sent through Django's cursor, and a sync that finds no change makes eight such updates
(its claim, its progress, its ending and the lease's release). Reading is dearer still: the claim's
read of a run with its account cost 1.3 ms of CPU through a queryset.

`update_rows` covers the simple shapes those updates have: equality (or `__in`) filters joined
by AND, values that are plain values or `F(same field) ± number`; a filter may also compare with a
column of another row (`ValueOf`). It prepares every value with the model field's own
`get_db_prep_save` / `get_db_prep_value`, and reads every column through the field's own
converters and `Model.from_db`, so what is stored and read is what the ORM would store and read,
on PostgreSQL and on SQLite. Anything else goes to the ORM unchanged.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from django.db import DEFAULT_DB_ALIAS, connections, models, transaction
from django.db.models import F, Subquery, Value
from django.db.models.expressions import CombinedExpression

M = TypeVar("M", bound=models.Model)


@dataclass(frozen=True)
class ValueOf:
    """In a `where`: the value of `field` in the row of `model` whose primary key is `pk`.

    `{"account_id": ValueOf(SyncRun, "account_id", 7)}` reads or updates the rows of run 7's
    account, in the same statement (a subquery), without reading the run first.
    """

    model: type[models.Model]
    field: str
    pk: Any


# (field name, filter kind): kind is "=", "null" (IS NULL), the number of values of `__in`, or
# (model, field name) for a `ValueOf`.
_Where = tuple[tuple[str, Any], ...]
# (field name, "=" for a value, "+" or "-" for F(field) plus or minus a number).
_Set = tuple[tuple[str, str], ...]


def update_rows(
    model: type[models.Model], where: Mapping[str, Any], values: Mapping[str, Any]
) -> int:
    """UPDATE the rows of `model` matching `where` with `values`; returns how many matched."""
    return write_together(Update(model, where, values))


class Update(NamedTuple):
    """The arguments of one `update_rows` call, for `write_together`."""

    model: type[models.Model]
    where: Mapping[str, Any]
    values: Mapping[str, Any]


class Statement(NamedTuple):
    """A statement written by hand (`%s` placeholders), for `write_together`."""

    sql: str
    params: Sequence[Any] = ()


def write_together(*writes: Update | Statement) -> int:
    """Make the writes in the order given, as one transaction; returns how many rows the last
    one matched.

    On PostgreSQL they travel as one query: its statements run in order, in one transaction (an
    implicit one outside `atomic`), so locks are taken in the order given and a failing statement
    undoes the others. Elsewhere, or if one of them is a shape for the ORM, they are made one
    after the other (inside `atomic` when there are several).
    """
    db = connections[DEFAULT_DB_ALIAS]  # looked up once: each `connection.x` is a lookup
    writes = [
        w if isinstance(w, Statement) else Update(w.model, _materialised(w.where), w.values)
        for w in writes
    ]
    if not writes:
        return 0
    with transaction.mark_for_rollback_on_error():
        statements = [w if isinstance(w, Statement) else _update_statement(*w, db) for w in writes]
        if db.vendor != "postgresql" or any(s is None for s in statements):
            with transaction.atomic() if len(writes) > 1 else contextlib.nullcontext():
                return [_write(w, s, db) for w, s in zip(writes, statements, strict=True)][-1]
        sent = [(sql, params) for sql, params in statements if sql]
        if not sent:
            return 0
        with db.cursor() as cursor:
            cursor.execute("; ".join(sql for sql, _ in sent), [p for _, ps in sent for p in ps])
            return cursor.rowcount if statements[-1][0] else 0


def _write(write: Update | Statement, statement: tuple[str, Sequence] | None, db) -> int:
    """One write on its own: `statement` is its SQL ("" where nothing can match), or None where
    the ORM must update."""
    if statement is None:
        model, where, values = write
        return model._base_manager.filter(**_orm_where(where)).update(**values)
    sql, params = statement
    if not sql:
        return 0
    with db.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def _update_statement(model, where, values, db) -> tuple[str, list] | None:
    """The UPDATE of `update_rows` and its parameters; None where the ORM must update, and no
    SQL ("") where nothing can match."""
    where_shape, where_params = _where(model, where, db)
    set_shape, set_params = _set(model, values, db)
    if where_shape is None or set_shape is None or not values:
        return None
    if _matches_nothing(where_shape):
        return "", []
    return _update_sql(model, where_shape, set_shape, db.vendor), [*set_params, *where_params]


def read_rows(
    model: type[M],
    where: Mapping[str, Any],
    *,
    related: Sequence[str] = (),
    lock: bool = False,
    order_by: Sequence[str] = (),
) -> list[M]:
    """The rows of `model` matching `where`, as the ORM would read them.

    `related`: foreign keys whose rows come along (`select_related`); `lock`: the rows of
    `model` (not the related ones) stay locked until the transaction ends
    (`select_for_update(of=("self",))`); `order_by`: field names, `-` for descending. Without
    `order_by` the rows come in no particular order (the model's default ordering is not
    applied: nothing to sort).
    """

    def by_orm(queryset):
        queryset = queryset.select_related(*related)
        if lock:
            queryset = queryset.select_for_update(of=("self",))
        return list(queryset.order_by(*order_by))

    return _read(model, where, (tuple(related), lock, tuple(order_by), None), by_orm)


def read_row(model: type[M], where: Mapping[str, Any], **options) -> M | None:
    """The one row matching `where` (by a unique key), or None; options as for `read_rows`."""
    rows = read_rows(model, where, **options)
    return rows[0] if rows else None


def read_values(
    model: type[models.Model],
    where: Mapping[str, Any],
    fields: Sequence[str],
    *,
    distinct: bool = False,
) -> list[tuple]:
    """`filter(**where).values_list(*fields)` (`.distinct()`), without ordering."""

    def by_orm(queryset):
        queryset = queryset.values_list(*fields)
        return list((queryset.distinct() if distinct else queryset).order_by())

    return _read(model, where, ((), False, (), (tuple(fields), distinct)), by_orm)


def _read(model, where: Mapping[str, Any], shape: tuple, by_orm: Callable) -> list:
    """Run the cached SELECT of `shape` (the arguments of `_select_plan` after `where`), or
    hand `filter(**where)` to `by_orm` where the ORM must read."""
    where = _materialised(where)
    db = connections[DEFAULT_DB_ALIAS]
    where_shape, params = _where(model, where, db)
    plan = None
    if where_shape is not None:
        plan = _select_plan(model, where_shape, *shape, db.alias, db.vendor)
    if plan is None:
        return by_orm(model._base_manager.filter(**_orm_where(where)))
    if _matches_nothing(where_shape):
        return []
    with db.cursor() as cursor:
        cursor.execute(plan.sql, params)
        return [plan.read(row, db) for row in cursor.fetchall()]


@functools.cache
def upsert_sql(
    model: type[models.Model],
    names: tuple[str, ...],
    *,
    conflict: tuple[str, ...],
    update: tuple[str, ...],
    rows: str = "",
    alias: str = DEFAULT_DB_ALIAS,
) -> str:
    """INSERT of the fields `names`; where a row with the same `conflict` fields exists, its
    `update` fields take the new values instead (PostgreSQL and SQLite).

    `rows` is the VALUES list, such as several rows of placeholders; by default one row of
    placeholders, one per name.
    """
    quote = connections[alias].ops.quote_name
    column = {n: quote(_field(model, n).column) for n in (*names, *conflict, *update)}
    rows = rows or f"({', '.join(['%s'] * len(names))})"
    return (
        f"INSERT INTO {quote(model._meta.db_table)} ({', '.join(column[n] for n in names)}) "
        f"VALUES {rows} ON CONFLICT ({', '.join(column[n] for n in conflict)}) "
        f"DO UPDATE SET {', '.join(f'{column[n]} = EXCLUDED.{column[n]}' for n in update)}"
    )


def _field(model, name: str) -> models.Field:
    return model._meta.pk if name == "pk" else model._meta.get_field(name)


def _own_table(model) -> bool:
    """Are all of `model`'s columns in its own table (no multi-table inheritance)?"""
    return all(_plain(model, field, None) for field in model._meta.concrete_fields)


def _materialised(where: Mapping[str, Any]) -> dict[str, Any]:
    """An `__in` iterable is read once, here, so a fallback to the ORM sees the same values."""
    return {
        key: list(value)
        if key.endswith("__in") and not hasattr(value, "resolve_expression")
        else value
        for key, value in where.items()
    }


def _orm_where(where: Mapping[str, Any]) -> dict[str, Any]:
    """`where` for the ORM: a `ValueOf` becomes the subquery it stands for."""
    return {
        key: Subquery(value.model._base_manager.filter(pk=value.pk).values(value.field))
        if isinstance(value, ValueOf)
        else value
        for key, value in where.items()
    }


def _matches_nothing(where: _Where) -> bool:
    """`__in` an empty list matches nothing, as in the ORM."""
    return any(kind == 0 for _, kind in where)


def _plain(model, field, value) -> bool:
    """Can `value` go into a statement as it is, for a column of `model`'s own table?

    Not for expressions, querysets or model instances, relations, or fields a parent model
    (multi-table inheritance) keeps in its own table: those are the ORM's.
    """
    return (
        field.concrete
        and field.model._meta.concrete_model is model._meta.concrete_model
        and not hasattr(value, "resolve_expression")
        and not isinstance(value, models.Model)
    )


def _where(model, where: Mapping[str, Any], db) -> tuple[_Where | None, list]:
    shape, params = [], []
    for key, value in where.items():
        name, _, lookup = key.partition("__")
        field = _field(model, name)
        # JSON fields compare None with JSON null, not SQL NULL: the ORM's job too.
        if lookup not in ("", "in") or isinstance(field, models.JSONField):
            return None, []
        if isinstance(value, ValueOf):
            other = _field(value.model, value.field)
            if lookup or not _plain(value.model, other, None):
                return None, []
            params.append(value.model._meta.pk.get_db_prep_value(value.pk, db))
            shape.append((name, (value.model, value.field)))
        elif lookup == "in":
            plain = _plain(model, field, value)  # a queryset stays a subquery, in the ORM
            if not (plain and all(_plain(model, field, v) for v in value)):
                return None, []
            params.extend(field.get_db_prep_value(v, db) for v in value)
            shape.append((name, len(value)))
        elif not _plain(model, field, value):
            return None, []
        elif value is None:
            shape.append((name, "null"))
        else:
            params.append(field.get_db_prep_value(value, db))
            shape.append((name, "="))
    return tuple(shape), params


def _set(model, values: Mapping[str, Any], db) -> tuple[_Set | None, list]:
    shape, params = [], []
    for name, value in values.items():
        field = _field(model, name)
        if isinstance(value, CombinedExpression):
            step = _step(name, value)
            if step is None or not _plain(model, field, None):
                return None, []
            shape.append((name, value.connector))
            params.append(step)
        elif not _plain(model, field, value):
            return None, []
        else:
            shape.append((name, "="))
            params.append(field.get_db_prep_save(value, db))
    return tuple(shape), params


def _step(name: str, value: CombinedExpression) -> int | float | None:
    """The number in `F(name) + n` or `F(name) - n`; None for any other expression."""
    lhs, rhs = value.lhs, value.rhs
    if not (isinstance(lhs, F) and lhs.name == name and value.connector in ("+", "-")):
        return None
    number = rhs.value if isinstance(rhs, Value) else rhs
    return number if isinstance(number, (int, float)) and not isinstance(number, bool) else None


def _column(model, name: str, table: str = "") -> str:
    quote = connections[DEFAULT_DB_ALIAS].ops.quote_name
    column = quote(_field(model, name).column)
    return f"{quote(table)}.{column}" if table else column


def _conditions(model, where: _Where, table: str = "") -> str:
    """The WHERE clause of `where` (empty without conditions)."""
    quote = connections[DEFAULT_DB_ALIAS].ops.quote_name
    conditions = []
    for name, kind in where:
        column = _column(model, name, table)
        if kind == "=":
            conditions.append(f"{column} = %s")
        elif kind == "null":
            conditions.append(f"{column} IS NULL")
        elif isinstance(kind, tuple):
            other, field = kind
            conditions.append(
                f"{column} = (SELECT {_column(other, field)} FROM "
                f"{quote(other._meta.db_table)} WHERE {_column(other, 'pk')} = %s)"
            )
        else:
            conditions.append(f"{column} IN ({', '.join(['%s'] * kind)})")
    return f" WHERE {' AND '.join(conditions)}" if conditions else ""


@functools.lru_cache(maxsize=256)
def _update_sql(model, where: _Where, values: _Set, vendor: str) -> str:
    quote = connections[DEFAULT_DB_ALIAS].ops.quote_name
    assignments = [
        f"{_column(model, n)} = %s"
        if op == "="
        else f"{_column(model, n)} = {_column(model, n)} {op} %s"
        for n, op in values
    ]
    return (
        f"UPDATE {quote(model._meta.db_table)} SET {', '.join(assignments)}"
        f"{_conditions(model, where)}"
    )


Converter = Callable[[Any, Any, Any], Any]


@dataclass(frozen=True)
class _Part:
    """Where one model's columns sit in a row read by a `_SelectPlan`, and how to read them."""

    model: type[models.Model]
    start: int
    end: int
    converters: tuple[tuple[int, tuple[Converter, ...], Any], ...]
    # Related parts only: the foreign key of the first model this part's row is cached on,
    # and where the related row's primary key sits among its columns (None: no related row).
    via: models.Field | None = None
    pk_index: int = 0


@dataclass(frozen=True)
class _SelectPlan:
    sql: str
    parts: tuple[_Part, ...]
    instances: bool  # model instances (read_rows), or tuples of values (read_values)

    def read(self, row: Sequence, db) -> models.Model | tuple:
        row = list(row)
        for part in self.parts:
            for index, converters, expression in part.converters:
                for convert in converters:
                    row[index] = convert(row[index], expression, db)
        if not self.instances:
            return tuple(row)
        base, *related = self.parts
        instance = base.model.from_db(db.alias, None, row[base.start : base.end])
        for part in related:
            values = row[part.start : part.end]
            other = (
                None
                if values[part.pk_index] is None
                else part.model.from_db(db.alias, None, values)
            )
            part.via.set_cached_value(instance, other)
        return instance


@functools.lru_cache(maxsize=512)
def _select_plan(
    model,
    where: _Where,
    related: tuple[str, ...],
    lock: bool,
    order_by: tuple[str, ...],
    values: tuple[tuple[str, ...], bool] | None,
    alias: str,
    vendor: str,
) -> _SelectPlan | None:
    """The SELECT of `read_rows` (or of `read_values` with `values` = (fields, distinct)); None
    where the ORM must read instead.

    One plan serves every thread: the backend's converters it keeps (SQLite's, for dates and
    booleans) depend on settings only, and each read passes its own connection to them.
    """
    db = connections[alias]
    quote = db.ops.quote_name
    table = model._meta.db_table
    joins, parts, columns = [], [], []

    def add_part(part_model, fields, part_table, via=None):
        start = len(columns)
        pk_index = fields.index(part_model._meta.pk) if via is not None else 0
        converters = []
        for offset, field in enumerate(fields):
            expression = field.get_col(part_table)
            found = tuple(db.ops.get_db_converters(expression)) + tuple(
                expression.get_db_converters(db)
            )
            if found:
                converters.append((start + offset, found, expression))
            columns.append(f"{quote(part_table)}.{quote(field.column)}")
        parts.append(_Part(part_model, start, len(columns), tuple(converters), via, pk_index))

    if values is not None:
        names, distinct = values
        fields = [_field(model, n) for n in names]
        if not all(_plain(model, f, None) for f in fields):
            return None
        add_part(model, fields, table)
    elif _own_table(model):
        distinct = False
        add_part(model, model._meta.concrete_fields, table)
    else:
        return None
    lock = lock and db.features.has_select_for_update  # SQLite locks the whole database
    if lock and related and not db.features.has_select_for_update_of:
        return None
    for name in related:
        via = _field(model, name)
        other = via.related_model
        if not (via.many_to_one or via.one_to_one) or not via.concrete or other is model:
            return None
        if not (_plain(model, via, None) and _own_table(other)):
            return None
        other_table = other._meta.db_table
        kind = "LEFT OUTER JOIN" if via.null else "INNER JOIN"
        joins.append(
            f" {kind} {quote(other_table)} ON {quote(other_table)}.{quote(via.target_field.column)}"
            f" = {quote(table)}.{quote(via.column)}"
        )
        add_part(other, other._meta.concrete_fields, other_table, via)
    ordering = [
        f"{_column(model, n.lstrip('-'), table)} {'DESC' if n.startswith('-') else 'ASC'}"
        for n in order_by
    ]
    sql = (
        f"SELECT {'DISTINCT ' if distinct else ''}{', '.join(columns)} FROM {quote(table)}"
        f"{''.join(joins)}{_conditions(model, where, table)}"
        + (f" ORDER BY {', '.join(ordering)}" if ordering else "")
    )
    if lock:
        sql += f" FOR UPDATE OF {quote(table)}" if related else " FOR UPDATE"
    return _SelectPlan(sql, tuple(parts), instances=values is None)
