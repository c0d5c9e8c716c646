//! [`Limiter`] for [`SqliteStore`]: one statement per check, on the table
//! `keygate_usage` (migration 0006).
//!
//! SQLite takes the database's write lock when a writing statement *starts*, before it
//! reads anything, so one `WITH ... INSERT ... SELECT ... ON CONFLICT DO UPDATE` reads a
//! subject's row, decides, and writes it back (only if everything is allowed) with no
//! other writer in between, across connections and processes alike. An allowed check
//! gets its answer from `RETURNING`; a refused one writes nothing, so the state it was
//! refused on is read right after, only to say why and for how long (the refusal itself
//! was atomic).
//!
//! `now` comes from the gate's [`Clock`](crate::Clock), as for the other stores.

use std::collections::HashMap;

use async_trait::async_trait;

use super::SqliteStore;
use crate::key::KeyId;
use crate::limits::gcra::CreditState;
use crate::limits::{gcra, CreditPolicy, LimitCheck, LimitOutcome, Limiter, LimiterError, Subject};
use crate::store::sql::store_error;
use crate::store::usage::{self, credit_state, limiter_error, NotANumber};

/// The check. Binds: 1 subject, 2 now (ns), 3 the limits as a JSON array of
/// `[name, cost * T, B * T]` (ns), 4 the policy's remaining, 5 its set_at (µs), 6
/// `last_refill` of a fresh count, 7 the latest refill instant (NULL: none), 8 the refill
/// amount, 9 the credit cost (NULL: no credits in this check). Returns the row written
/// (none when refused).
const SPEND: &str = r#"
WITH one AS (
    SELECT cur.* FROM (SELECT 1) AS d LEFT JOIN keygate_usage AS cur ON cur.subject = ?1
),
lim AS (
    SELECT i.value ->> 0 AS name,
           max(coalesce(t.value, ?2), ?2) + (i.value ->> 1) AS new_tat,
           ?2 + (i.value ->> 2) AS limit_at
    FROM one JOIN json_each(?3) AS i
    LEFT JOIN json_each(coalesce(one.tats, '{}')) AS t ON t.key = (i.value ->> 0)
),
kept AS (
    SELECT one.*, (one.credits IS NOT NULL AND one.set_at >= ?5) AS keep FROM one
),
counted AS (
    SELECT CASE WHEN keep THEN credits ELSE ?4 END AS rem,
           CASE WHEN keep THEN last_refill ELSE ?6 END AS last,
           CASE WHEN keep THEN set_at ELSE ?5 END AS set_at
    FROM kept
),
refilled AS (
    SELECT CASE WHEN ?7 > last THEN ?8 ELSE rem END AS rem,
           CASE WHEN ?7 > last THEN ?7 ELSE last END AS last,
           set_at
    FROM counted
),
verdict AS (
    SELECT coalesce((SELECT min(new_tat <= limit_at) FROM lim), 1)
           AND (?9 IS NULL OR refilled.rem >= ?9) AS allowed
    FROM refilled
)
INSERT INTO keygate_usage AS u (subject, tats, credits, last_refill, set_at, version)
SELECT ?1,
       (SELECT json_group_object(k, v) FROM (
            SELECT e.key AS k, e.value AS v FROM json_each(coalesce(one.tats, '{}')) AS e
            WHERE e.value > ?2 AND e.key NOT IN (SELECT name FROM lim)
            UNION ALL
            SELECT name, new_tat FROM lim
        )),
       CASE WHEN ?9 IS NULL THEN one.credits ELSE refilled.rem - ?9 END,
       CASE WHEN ?9 IS NULL THEN one.last_refill ELSE refilled.last END,
       CASE WHEN ?9 IS NULL THEN one.set_at ELSE refilled.set_at END,
       coalesce(one.version, 0) + 1
FROM one, refilled, verdict
WHERE verdict.allowed
ON CONFLICT (subject) DO UPDATE
    SET tats = excluded.tats, credits = excluded.credits,
        last_refill = excluded.last_refill, set_at = excluded.set_at,
        version = excluded.version,
        updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
RETURNING tats, credits, last_refill, set_at
"#;

/// Gives back an allowed check: binds 1 subject, 2 now (ns), 3 the limits as a JSON array
/// of `[name, cost * T]`, 4 the credit cost (NULL: none). As `gcra::refund`.
const REFUND: &str = r#"
UPDATE keygate_usage AS u SET
    tats = (SELECT json_group_object(e.key, CASE WHEN i.value IS NULL THEN e.value
                ELSE max(e.value - (i.value ->> 1), ?2) END)
            FROM json_each(u.tats) AS e
            LEFT JOIN json_each(?3) AS i ON e.key = (i.value ->> 0)),
    credits = CASE WHEN ?4 IS NULL OR u.credits IS NULL THEN u.credits
                   ELSE min(u.credits + ?4, 9007199254740991) END,
    version = u.version + 1,
    updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
WHERE u.subject = ?1
"#;

/// A subject's row: TATs as JSON, credits, last_refill, set_at.
type Row = (String, Option<i64>, Option<i64>, Option<i64>);

fn tats_of(json: &str) -> Result<HashMap<String, i64>, LimiterError> {
    serde_json::from_str(json)
        .map_err(|_| LimiterError::Corrupt(Box::new(NotANumber(json.to_owned()))))
}

/// Rate limits and credits in the same SQLite database as the keys (table
/// `keygate_usage`), one statement per check: exact for every process sharing the file.
#[async_trait]
impl Limiter for SqliteStore {
    async fn check(&self, check: &LimitCheck<'_>) -> Result<LimitOutcome, LimiterError> {
        let prepared = usage::prepare(check)?;
        let subject = check.subject.storage_key();
        let limits: Vec<(&str, i64, i64)> = prepared
            .names
            .iter()
            .zip(&prepared.incs)
            .zip(&prepared.tols)
            .map(|((name, inc), tol)| (name.as_str(), *inc, *tol))
            .collect();
        let limits = serde_json::to_string(&limits).map_err(LimiterError::backend)?;
        let c = prepared.credits.as_ref();
        let written: Option<Row> = sqlx::query_as(SPEND)
            .bind(&subject)
            .bind(prepared.now_ns)
            .bind(limits)
            .bind(c.map_or(0, |c| c.remaining))
            .bind(c.map_or(0, |c| c.set_at))
            .bind(c.map_or(0, |c| c.fresh_last))
            .bind(c.and_then(|c| c.refill_at))
            .bind(c.map_or(0, |c| c.amount))
            .bind(c.map(|c| c.cost))
            .fetch_optional(self.pool())
            .await
            .map_err(|e| limiter_error(store_error(e)))?;
        match written {
            Some((json, credits, last, set)) => {
                // The state before: each new TAT less its increment (that is max(TAT, now),
                // which decides as TAT does), the count plus what was spent.
                let tats = tats_of(&json)?;
                let before: Vec<Option<i64>> = prepared
                    .names
                    .iter()
                    .zip(&prepared.incs)
                    .map(|(name, inc)| tats.get(name).map(|tat| tat.saturating_sub(*inc)))
                    .collect();
                let state = match (c, credit_state(credits, last, set)?) {
                    (Some(c), Some(s)) => Some(CreditState::new(
                        s.remaining
                            .saturating_add(u64::try_from(c.cost).unwrap_or(0)),
                        s.last_refill,
                        s.set_at,
                    )),
                    _ => None,
                };
                Ok(usage::outcome(check, true, &before, state))
            }
            None => {
                let row: Option<Row> = sqlx::query_as(
                    "SELECT tats, credits, last_refill, set_at FROM keygate_usage WHERE subject = ?1",
                )
                .bind(&subject)
                .fetch_optional(self.pool())
                .await
                .map_err(|e| limiter_error(store_error(e)))?;
                let (tats, state) = match row {
                    Some((json, credits, last, set)) => {
                        (tats_of(&json)?, credit_state(credits, last, set)?)
                    }
                    None => (HashMap::new(), None),
                };
                let tats: Vec<Option<i64>> = prepared
                    .names
                    .iter()
                    .map(|name| tats.get(name).copied())
                    .collect();
                Ok(usage::outcome(check, false, &tats, state))
            }
        }
    }

    async fn credits(
        &self,
        key: KeyId,
        policy: &CreditPolicy,
        now: i64,
    ) -> Result<u64, LimiterError> {
        let row: Option<(Option<i64>, Option<i64>, Option<i64>)> = sqlx::query_as(
            "SELECT credits, last_refill, set_at FROM keygate_usage WHERE subject = ?1",
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
        let limits: Vec<(&str, i64)> = prepared
            .names
            .iter()
            .zip(&prepared.incs)
            .map(|(name, inc)| (name.as_str(), *inc))
            .collect();
        let limits = serde_json::to_string(&limits).map_err(LimiterError::backend)?;
        sqlx::query(REFUND)
            .bind(check.subject.storage_key())
            .bind(prepared.now_ns)
            .bind(limits)
            .bind(prepared.credits.as_ref().map(|c| c.cost))
            .execute(self.pool())
            .await
            .map_err(|e| limiter_error(store_error(e)))?;
        Ok(())
    }

    async fn forget(&self, subject: Subject<'_>) -> Result<(), LimiterError> {
        sqlx::query("DELETE FROM keygate_usage WHERE subject = ?1")
            .bind(subject.storage_key())
            .execute(self.pool())
            .await
            .map_err(|e| limiter_error(store_error(e)))?;
        Ok(())
    }
}
