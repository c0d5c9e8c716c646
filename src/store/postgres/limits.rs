//! [`Limiter`] for [`PostgresStore`]: one statement per check, on the table
//! `keygate_usage` (migration 0006).
//!
//! A subject's whole state is one row, so the statement can lock it and decide on its
//! latest version: `SELECT ... FOR UPDATE` in a materialized CTE (in READ COMMITTED, it
//! waits for a concurrent writer and then returns the row as that writer left it), then
//! the decision, then `INSERT ... ON CONFLICT (subject) DO UPDATE ... WHERE version = the
//! version read` only if everything is allowed. The version check catches the one case
//! the lock cannot: two first checks of a subject that has no row yet both see none;
//! the second's insert then conflicts with the first's row, writes nothing, and the
//! check is run again (it then finds the row and waits on its lock). The answer carries
//! the decision and the state it was made on, in the same round trip.
//!
//! `now` comes from the gate's [`Clock`](crate::Clock), not the database's `now()`, for
//! the reasons given on the Redis limiter: one instant for every backend and manual
//! clocks in tests; app servers must keep their clocks in step.

use async_trait::async_trait;
use sqlx::Row;

use super::PostgresStore;
use crate::key::KeyId;
use crate::limits::{gcra, CreditPolicy, LimitCheck, LimitOutcome, Limiter, LimiterError, Subject};
use crate::store::sql::store_error;
use crate::store::usage::{self, credit_state, limiter_error};

/// How many times a check is run when its row was created under it (it succeeds on the
/// second unless the row is deleted and re-created in between, again and again).
const ATTEMPTS: usize = 8;

/// The check. Binds: 1 subject, 2 now (ns), 3 names, 4 `cost * T` (ns), 5 `B * T` (ns),
/// 6 the policy's remaining, 7 its set_at (µs), 8 `last_refill` of a fresh count, 9 the
/// latest refill instant (NULL: none), 10 the refill amount, 11 the credit cost (NULL: no
/// credits in this check), 12 whether the commit waits for the WAL flush (otherwise the
/// statement sets `synchronous_commit = off` for its own transaction; see
/// [`PostgresStore::durable_limits`]). Answers: allowed, rows written, the stored TATs (in the
/// order of the names), and the stored credits, last_refill and set_at.
const SPEND: &str = r#"
WITH durability AS MATERIALIZED (
    SELECT CASE WHEN $12::boolean THEN 'on'
                ELSE set_config('synchronous_commit', 'off', true) END
),
cur AS MATERIALIZED (
    SELECT tats, credits, last_refill, set_at, version
    FROM keygate_usage WHERE subject = $1 FOR UPDATE
),
one AS MATERIALIZED (
    SELECT cur.* FROM durability CROSS JOIN (VALUES (1)) AS d(x) LEFT JOIN cur ON true
),
lim AS MATERIALIZED (
    SELECT i.ord, i.name, (one.tats ->> i.name)::bigint AS raw,
           GREATEST((one.tats ->> i.name)::bigint, $2) + i.inc AS new_tat,
           $2 + i.tol AS limit_at
    FROM one CROSS JOIN unnest($3::text[], $4::bigint[], $5::bigint[])
        WITH ORDINALITY AS i(name, inc, tol, ord)
),
kept AS (
    SELECT one.*, (one.credits IS NOT NULL AND one.set_at >= $7) AS keep FROM one
),
counted AS (
    SELECT CASE WHEN keep THEN credits ELSE $6 END AS rem,
           CASE WHEN keep THEN last_refill ELSE $8 END AS last,
           CASE WHEN keep THEN set_at ELSE $7 END AS set_at
    FROM kept
),
refilled AS (
    SELECT CASE WHEN $9::bigint > last THEN $10 ELSE rem END AS rem,
           CASE WHEN $9::bigint > last THEN $9 ELSE last END AS last,
           set_at
    FROM counted
),
verdict AS (
    SELECT (SELECT coalesce(bool_and(new_tat <= limit_at), true) FROM lim)
           AND ($11::bigint IS NULL OR refilled.rem >= $11) AS allowed
    FROM refilled
),
up AS (
    INSERT INTO keygate_usage AS u (subject, tats, credits, last_refill, set_at, version)
    SELECT $1,
           (SELECT coalesce(jsonb_object_agg(k, v), '{}'::jsonb) FROM (
                SELECT e.key AS k, e.value AS v
                FROM jsonb_each(coalesce(one.tats, '{}'::jsonb)) AS e
                WHERE e.value::bigint > $2 AND e.key <> ALL ($3::text[])
                UNION ALL
                SELECT lim.name, to_jsonb(lim.new_tat) FROM lim
            ) AS s),
           CASE WHEN $11::bigint IS NULL THEN one.credits ELSE refilled.rem - $11 END,
           CASE WHEN $11::bigint IS NULL THEN one.last_refill ELSE refilled.last END,
           CASE WHEN $11::bigint IS NULL THEN one.set_at ELSE refilled.set_at END,
           coalesce(one.version, 0) + 1
    FROM one, refilled, verdict
    WHERE verdict.allowed
    ON CONFLICT (subject) DO UPDATE
        SET tats = excluded.tats, credits = excluded.credits,
            last_refill = excluded.last_refill, set_at = excluded.set_at,
            version = excluded.version, updated_at = now()
        WHERE u.version = excluded.version - 1
    RETURNING 1
)
SELECT verdict.allowed,
       (SELECT count(*) FROM up) AS written,
       (SELECT array_agg(raw ORDER BY ord) FROM lim) AS raws,
       one.credits, one.last_refill, one.set_at
FROM verdict, one
"#;

/// Gives back an allowed check: binds 1 subject, 2 now (ns), 3 names, 4 `cost * T` (ns),
/// 5 the credit cost (NULL: none). As `gcra::refund`: each TAT back by its increment but
/// not before now; credits back, at most 2^53 - 1.
const REFUND: &str = r#"
UPDATE keygate_usage AS u SET
    tats = (SELECT coalesce(jsonb_object_agg(e.key, CASE WHEN i.inc IS NULL THEN e.value
                ELSE to_jsonb(GREATEST(e.value::bigint - i.inc, $2)) END), '{}'::jsonb)
            FROM jsonb_each(u.tats) AS e
            LEFT JOIN unnest($3::text[], $4::bigint[]) AS i(name, inc) ON e.key = i.name),
    credits = CASE WHEN $5::bigint IS NULL OR u.credits IS NULL THEN u.credits
                   ELSE LEAST(u.credits + $5, 9007199254740991) END,
    version = u.version + 1,
    updated_at = now()
WHERE u.subject = $1
"#;

/// [`SPEND`] with `check`'s binds.
fn query<'q>(
    subject: &'q str,
    prepared: &'q usage::Prepared,
    durable: bool,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let c = prepared.credits.as_ref();
    sqlx::query(SPEND)
        .bind(subject)
        .bind(prepared.now_ns)
        .bind(&prepared.names)
        .bind(&prepared.incs)
        .bind(&prepared.tols)
        .bind(c.map_or(0, |c| c.remaining))
        .bind(c.map_or(0, |c| c.set_at))
        .bind(c.map_or(0, |c| c.fresh_last))
        .bind(c.and_then(|c| c.refill_at))
        .bind(c.map_or(0, |c| c.amount))
        .bind(c.map(|c| c.cost))
        .bind(durable)
}

/// For the benches: the bare statement of `check` (one attempt, the row not decoded).
#[cfg(feature = "testing")]
impl PostgresStore {
    #[doc(hidden)]
    pub async fn limit_statement(
        &self,
        check: &LimitCheck<'_>,
    ) -> Result<sqlx::postgres::PgRow, LimiterError> {
        let prepared = usage::prepare(check)?;
        let subject = check.subject.storage_key();
        query(&subject, &prepared, self.durable_limits)
            .fetch_one(self.pool())
            .await
            .map_err(|e| limiter_error(store_error(e)))
    }
}

/// A check whose row kept being created under it.
#[derive(Debug, thiserror::Error)]
#[error("usage row of {0} was created concurrently {ATTEMPTS} times in a row")]
struct Contention(String);

/// Rate limits and credits in the same database as the keys (table `keygate_usage`):
/// exact across any number of app servers, one statement per check.
#[async_trait]
impl Limiter for PostgresStore {
    async fn check(&self, check: &LimitCheck<'_>) -> Result<LimitOutcome, LimiterError> {
        let prepared = usage::prepare(check)?;
        let subject = check.subject.storage_key();
        for _ in 0..ATTEMPTS {
            let row = query(&subject, &prepared, self.durable_limits)
                .fetch_one(self.pool())
                .await
                .map_err(|e| limiter_error(store_error(e)))?;
            let read = |e| limiter_error(store_error(e));
            let allowed: bool = row.try_get("allowed").map_err(read)?;
            let written: i64 = row.try_get("written").map_err(read)?;
            if allowed && written == 0 {
                continue; // the row was created under this check: run it again
            }
            let raws: Option<Vec<Option<i64>>> = row.try_get("raws").map_err(read)?;
            let state = credit_state(
                row.try_get("credits").map_err(read)?,
                row.try_get("last_refill").map_err(read)?,
                row.try_get("set_at").map_err(read)?,
            )?;
            return Ok(usage::outcome(
                check,
                allowed,
                &raws.unwrap_or_default(),
                state,
            ));
        }
        Err(LimiterError::backend(Contention(subject)))
    }

    async fn credits(
        &self,
        key: KeyId,
        policy: &CreditPolicy,
        now: i64,
    ) -> Result<u64, LimiterError> {
        let row: Option<(Option<i64>, Option<i64>, Option<i64>)> = sqlx::query_as(
            "SELECT credits, last_refill, set_at FROM keygate_usage WHERE subject = $1",
        )
        .bind(Subject::Key(key).storage_key())
        .fetch_optional(self.pool())
        .await
        .map_err(|e| limiter_error(store_error(e)))?;
        let state = match row {
            Some((credits, last, set)) => credit_state(credits, last, set)?,
            None => None,
        };
        Ok(gcra::credits_at(state, policy, now).remaining)
    }

    async fn refund(&self, check: &LimitCheck<'_>) -> Result<(), LimiterError> {
        let prepared = usage::prepare(check)?;
        sqlx::query(REFUND)
            .bind(check.subject.storage_key())
            .bind(prepared.now_ns)
            .bind(&prepared.names)
            .bind(&prepared.incs)
            .bind(prepared.credits.as_ref().map(|c| c.cost))
            .execute(self.pool())
            .await
            .map_err(|e| limiter_error(store_error(e)))?;
        Ok(())
    }

    async fn forget(&self, subject: Subject<'_>) -> Result<(), LimiterError> {
        sqlx::query("DELETE FROM keygate_usage WHERE subject = $1")
            .bind(subject.storage_key())
            .execute(self.pool())
            .await
            .map_err(|e| limiter_error(store_error(e)))?;
        Ok(())
    }
}
