// Package pgexpr reads the row condition of `duplex backfill --where`: one
// boolean expression over the columns of one table, in a small subset of
// PostgreSQL's expression syntax, and prints it back in a canonical, fully
// parenthesised form that is the only text duplex ever sends to the
// database.
//
// The package owns the grammar and its limits. Accepted: column names of
// the table (bare, unquoted or "quoted"), literals (numbers, 'strings',
// TRUE, FALSE, NULL, DATE/TIME/TIMESTAMP/TIMESTAMPTZ/INTERVAL 'literal'),
// CURRENT_DATE, CURRENT_TIMESTAMP, LOCALTIMESTAMP, the operators
// = <> != < > <= >= + - * / % || AND OR NOT, [NOT] LIKE/ILIKE,
// [NOT] IN (list), [NOT] BETWEEN, IS [NOT] NULL/TRUE/FALSE/UNKNOWN,
// IS [NOT] DISTINCT FROM, casts to a fixed list of built-in types
// (expr::type), and a fixed list of side-effect-free built-in functions
// (lower, upper, length, date_trunc, now, coalesce, …), with PostgreSQL's
// operator precedence (see "Operator Precedence" in the PostgreSQL
// manual, section 4.1.6).
//
// Refused, with the reason: a semicolon (a second statement), comments,
// dollar quoting and parameters ($), Unicode, bit and hex strings
// (U&'…', B'…', X'…'), escapes in E'…' strings other than a doubled
// backslash, any other function (so no pg_terminate_backend,
// pg_read_file, set_config, dblink, lo_export),
// subqueries and every keyword outside the grammar (SELECT, FROM, …),
// qualified column names, columns the table does not have, more than
// 4096 bytes or 64 levels of nesting.
//
// Output: column names quoted as identifiers, strings as E'…' literals
// (backslashes doubled, so their meaning does not depend on the server's
// standard_conforming_strings), functions qualified with pg_catalog
// where they are functions, every operation in parentheses. Parsing that
// output again yields it unchanged.
//
// It does not own type checking (whether the expression is boolean, the
// operand types fit): the database does that, by planning the query
// (capture/postgres checks it with EXPLAIN in a read-only transaction).
package pgexpr
