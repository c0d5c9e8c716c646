//! [`Limiter`] for [`RedisStore`]: one `EVALSHA` per check.
//!
//! # Layout
//!
//! Per subject (`key:<id>` or `owner:<user id>`, see
//! [`Subject::storage_key`](crate::limits::Subject::storage_key)), with the default
//! namespace `keygate:`:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `keygate:v1:usage:{<subject>}:rl` | hash, expiring | field `<limit name>`: the limit's GCRA `TAT`, ns since the epoch |
//! | `keygate:v1:usage:{<subject>}:cr` | hash, never expiring | `remaining`, `last_refill` (µs), `set_at` (µs, or `i64::MIN`) |
//!
//! Both keys of a subject share the hash tag `{<subject>}`, and are equal up to the end
//! of it, so they sit in one Redis Cluster slot whatever the namespace or subject holds
//! (the tag is the text between the first `{` and the first `}` after it, and that text
//! lies in the common prefix). The rate-limit hash expires a minute after its furthest
//! `TAT` (an expired `TAT` means the same as none); the credit hash never expires, since
//! losing it would hand the key a fresh count.
//!
//! # Time
//!
//! The script takes `now` from the gate's [`Clock`](crate::Clock), not from Redis `TIME`:
//! every backend then decides on the same instant, a [`ManualClock`](crate::ManualClock)
//! drives them all in tests, and `now` is also what refill instants are computed from.
//! The cost is that several app servers must keep their clocks in step: a node whose clock
//! runs `d` ahead can admit up to `d / T` units early once (a node behind is stricter, since
//! `max(TAT, now)` keeps the later instant), and one more than a minute behind Redis can
//! find a rate-limit hash expired early.

use std::sync::LazyLock;

use ::redis::Script;
use async_trait::async_trait;

use super::conn::backend;
use super::RedisStore;
use crate::key::KeyId;
use crate::limits::{gcra, CreditPolicy, LimitCheck, LimitOutcome, Limiter, LimiterError, Subject};
use crate::store::usage::{self, credit_state, limiter_error, parse_opt};

/// The subject's two keys: rate limits, credits.
pub(super) fn usage_keys(namespace: &str, subject: &Subject<'_>) -> (String, String) {
    let base = format!("{namespace}v1:usage:{{{}}}", subject.storage_key());
    (format!("{base}:rl"), format!("{base}:cr"))
}

// KEYS: rate-limit hash, credit hash.
// ARGV: now (µs), n, then per limit: name, cost * T (ns), B * T (ns); then the credit
// spend: cost ('' for none), the policy's remaining, its set_at, last_refill of a fresh
// count, the latest refill instant ('' for none), the refill amount.
// Returns {allowed (1 or 0), {stored TAT or '' per limit}, {remaining, last_refill,
// set_at} or {'', '', ''}}: the state the decision was made on.
//
// Nanosecond instants exceed the 2^53 a Lua number holds exactly, so they are split into
// microseconds and a remainder of 0..999 ns (`split`); `now` is whole microseconds.
static SPEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local function split(s)
  local len = #s
  if len <= 3 then return 0, tonumber(s) end
  return tonumber(string.sub(s, 1, len - 3)), tonumber(string.sub(s, len - 2))
end
local now = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local ok = 1
local raws, news = {}, {}
local top = now
for i = 1, n do
  local a = 3 * i
  local raw = redis.call('HGET', KEYS[1], ARGV[a])
  local hi, lo = now, 0
  if raw then
    raws[i] = raw
    local th, tl = split(raw)
    if th > hi or (th == hi and tl > lo) then hi, lo = th, tl end
  else
    raws[i] = ''
  end
  local ih, il = split(ARGV[a + 1])
  hi, lo = hi + ih, lo + il
  if lo >= 1000 then hi, lo = hi + 1, lo - 1000 end
  local oh, ol = split(ARGV[a + 2])
  oh = oh + now
  if hi > oh or (hi == oh and lo > ol) then ok = 0 end
  news[i] = string.format('%d%03d', hi, lo)
  if hi > top then top = hi end
end
local c = 3 * n + 3
local craw = {'', '', ''}
local cnew
if ARGV[c] ~= '' then
  local cost = tonumber(ARGV[c])
  local st = redis.call('HMGET', KEYS[2], 'remaining', 'last_refill', 'set_at')
  local rem, last, set
  local have = st[1] and st[2] and st[3]
  if have then craw = {st[1], st[2], st[3]} end
  if have and tonumber(st[3]) >= tonumber(ARGV[c + 2]) then
    rem, last, set = tonumber(st[1]), tonumber(st[2]), st[3]
  else
    rem, last, set = tonumber(ARGV[c + 1]), tonumber(ARGV[c + 3]), ARGV[c + 2]
  end
  if ARGV[c + 4] ~= '' and tonumber(ARGV[c + 4]) > last then
    rem, last = tonumber(ARGV[c + 5]), tonumber(ARGV[c + 4])
  end
  if rem < cost then ok = 0 end
  cnew = {string.format('%d', rem - cost), string.format('%d', last), set}
end
if ok == 1 then
  if n > 0 then
    local fields = {}
    for i = 1, n do
      fields[2 * i - 1] = ARGV[3 * i]
      fields[2 * i] = news[i]
    end
    redis.call('HSET', KEYS[1], unpack(fields))
    local want = math.floor((top - now) / 1000) + 60000
    if redis.call('PTTL', KEYS[1]) < want then
      redis.call('PEXPIRE', KEYS[1], want)
    end
  end
  if cnew then
    redis.call('HSET', KEYS[2], 'remaining', cnew[1], 'last_refill', cnew[2], 'set_at', cnew[3])
  end
end
return {ok, raws, craw}
"#,
    )
});

// KEYS: rate-limit hash, credit hash.
// ARGV: now (µs), n, then per limit: name, cost * T (ns); then the credit cost ('' for
// none). Moves each stored TAT back by its increment, never before now, and gives the
// credits back (never above 2^53 - 1): what `gcra::refund` and the memory limiter do.
static REFUND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local function split(s)
  local len = #s
  if len <= 3 then return 0, tonumber(s) end
  return tonumber(string.sub(s, 1, len - 3)), tonumber(string.sub(s, len - 2))
end
local now = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
for i = 1, n do
  local name = ARGV[2 * i + 1]
  local raw = redis.call('HGET', KEYS[1], name)
  if raw then
    local th, tl = split(raw)
    local ih, il = split(ARGV[2 * i + 2])
    local hi, lo = th - ih, tl - il
    if lo < 0 then hi, lo = hi - 1, lo + 1000 end
    if hi < now then hi, lo = now, 0 end
    redis.call('HSET', KEYS[1], name, string.format('%d%03d', hi, lo))
  end
end
local c = 2 * n + 3
if ARGV[c] ~= '' then
  local rem = redis.call('HGET', KEYS[2], 'remaining')
  if rem then
    local back = math.min(tonumber(rem) + tonumber(ARGV[c]), 9007199254740991)
    redis.call('HSET', KEYS[2], 'remaining', string.format('%d', back))
  end
end
return 1
"#,
    )
});

/// The script's invocation for `check`.
fn invocation(
    namespace: &str,
    check: &LimitCheck<'_>,
) -> Result<::redis::ScriptInvocation<'static>, LimiterError> {
    let prepared = usage::prepare(check)?;
    let (rl, cr) = usage_keys(namespace, &check.subject);
    let mut call = SPEND.key(rl);
    call.key(cr).arg(prepared.now_us).arg(prepared.names.len());
    for ((name, inc), tol) in prepared
        .names
        .iter()
        .zip(&prepared.incs)
        .zip(&prepared.tols)
    {
        call.arg(name).arg(inc).arg(tol);
    }
    match &prepared.credits {
        None => {
            call.arg("").arg(0).arg(0).arg(0).arg("").arg(0);
        }
        Some(c) => {
            call.arg(c.cost)
                .arg(c.remaining)
                .arg(c.set_at)
                .arg(c.fresh_last);
            match c.refill_at {
                Some(at) => call.arg(at),
                None => call.arg(""),
            };
            call.arg(c.amount);
        }
    }
    Ok(call)
}

/// For the benches: the script's invocation for `check`, to time a bare `EVALSHA`.
#[cfg(feature = "testing")]
impl RedisStore {
    #[doc(hidden)]
    pub fn limit_invocation(
        &self,
        check: &LimitCheck<'_>,
    ) -> Result<::redis::ScriptInvocation<'static>, LimiterError> {
        invocation(self.namespace(), check)
    }
}

/// The script's answer: decision, stored TATs, stored credit fields.
type Answer = (i64, Vec<String>, Vec<String>);

fn decode(check: &LimitCheck<'_>, answer: Answer) -> Result<LimitOutcome, LimiterError> {
    let (allowed, raws, credits) = answer;
    let tats = raws
        .iter()
        .map(|raw| parse_opt(raw))
        .collect::<Result<Vec<_>, _>>()?;
    let field = |i: usize| parse_opt(credits.get(i).map_or("", String::as_str));
    let state = credit_state(field(0)?, field(1)?, field(2)?)?;
    Ok(usage::outcome(check, allowed == 1, &tats, state))
}

/// Rate limits and credits kept in the same Redis as the keys, under the store's
/// namespace: exact across any number of app servers, one round trip (one `EVALSHA`;
/// `EVAL` once per connection after a script cache flush) per check. See the
/// [`RedisStore`] docs, "Limits and credits".
#[async_trait]
impl Limiter for RedisStore {
    async fn check(&self, check: &LimitCheck<'_>) -> Result<LimitOutcome, LimiterError> {
        let call = invocation(self.namespace(), check)?;
        let answer: Answer = self
            .conn
            .bounded(async {
                let mut conn = self.conn.manager();
                call.invoke_async(&mut conn).await.map_err(backend)
            })
            .await
            .map_err(limiter_error)?;
        decode(check, answer)
    }

    async fn credits(
        &self,
        key: KeyId,
        policy: &CreditPolicy,
        now: i64,
    ) -> Result<u64, LimiterError> {
        let (_, cr) = usage_keys(self.namespace(), &Subject::Key(key));
        let fields: Vec<Option<String>> = self
            .conn
            .read(|mut conn| {
                let cr = cr.clone();
                async move {
                    ::redis::cmd("HMGET")
                        .arg(cr)
                        .arg("remaining")
                        .arg("last_refill")
                        .arg("set_at")
                        .query_async(&mut conn)
                        .await
                }
            })
            .await
            .map_err(limiter_error)?;
        let field =
            |i: usize| parse_opt(fields.get(i).and_then(Option::as_deref).unwrap_or_default());
        let state = credit_state(field(0)?, field(1)?, field(2)?)?;
        Ok(gcra::credits_at(state, policy, now).remaining)
    }

    async fn refund(&self, check: &LimitCheck<'_>) -> Result<(), LimiterError> {
        let prepared = usage::prepare(check)?;
        let (rl, cr) = usage_keys(self.namespace(), &check.subject);
        let mut call = REFUND.key(rl);
        call.key(cr).arg(prepared.now_us).arg(prepared.names.len());
        for (name, inc) in prepared.names.iter().zip(&prepared.incs) {
            call.arg(name).arg(inc);
        }
        match &prepared.credits {
            Some(c) => call.arg(c.cost),
            None => call.arg(""),
        };
        self.conn
            .bounded(async {
                let mut conn = self.conn.manager();
                call.invoke_async::<i64>(&mut conn).await.map_err(backend)
            })
            .await
            .map_err(limiter_error)?;
        Ok(())
    }

    async fn forget(&self, subject: Subject<'_>) -> Result<(), LimiterError> {
        let (rl, cr) = usage_keys(self.namespace(), &subject);
        self.conn
            .bounded(async {
                ::redis::cmd("DEL")
                    .arg(rl)
                    .arg(cr)
                    .exec_async(&mut self.conn.manager())
                    .await
                    .map_err(backend)
            })
            .await
            .map_err(limiter_error)
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects, clippy::indexing_slicing)] // small known strings
mod tests {
    use super::*;

    /// Redis Cluster's slot tag: the text between the first `{` and the first `}` after
    /// it, if non-empty; else the whole key.
    fn tag(key: &str) -> &str {
        if let Some(open) = key.find('{') {
            if let Some(len) = key[open + 1..].find('}') {
                if len > 0 {
                    return &key[open + 1..open + 1 + len];
                }
            }
        }
        key
    }

    #[test]
    fn a_subjects_keys_share_one_slot_whatever_the_names_hold() {
        let id = KeyId::random();
        for ns in ["keygate:", "a{b", "x}y:", "{t}:", "", "{"] {
            for owner in ["alice", "we{ird", "we}ird", "{}", "}{", ""] {
                for subject in [Subject::Key(id), Subject::Owner(owner)] {
                    let (rl, cr) = usage_keys(ns, &subject);
                    assert_ne!(rl, cr);
                    assert_eq!(tag(&rl), tag(&cr), "{rl} {cr}");
                }
            }
        }
        let (rl, _) = usage_keys("keygate:", &Subject::Key(id));
        assert_eq!(tag(&rl), format!("key:{id}"));
    }
}
