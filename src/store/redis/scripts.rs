//! The key layout of a [`RedisStore`](super::RedisStore) and the Lua scripts that keep it
//! consistent: every write that touches more than one key is one script, so it is atomic.
//!
//! Each script is wrapped in a function that takes typed arguments, so its `KEYS`/`ARGV`
//! contract is written down once, next to the Lua.

use std::sync::LazyLock;

use ::redis::{RedisError, Script};
use chrono::{DateTime, Utc};

use super::topology::Conn;
use crate::key::KeyId;
use crate::store::Cursor;

/// The key names of one namespace, layout version 1 (see [`RedisStore`](super::RedisStore),
/// "Layout").
pub(super) struct Keys {
    record_prefix: String,
    created: String,
    last_used: String,
    owner_prefix: String,
    pub(super) channel: String,
    /// The change sequence's counter (string) and log (sorted set, score = member's
    /// number, member `<seq>:<id>`).
    pub(super) change_seq: String,
    pub(super) change_log: String,
    /// The pepper fingerprints' hash.
    pub(super) peppers: String,
    /// How the write scripts publish a change notice and the feed subscribes:
    /// `PUBLISH`/`SUBSCRIBE`, or sharded `SPUBLISH`/`SSUBSCRIBE` (Redis 7 Cluster).
    pub(super) sharded: bool,
}

impl Keys {
    /// The keys of namespace `ns`. On a Redis Cluster (`cluster`) every one of them starts
    /// with the hash tag `{<ns>}`, so every key a record script touches (the record, the
    /// indexes, the last-used hash, the change sequence and log) and the sharded change
    /// channel sit in one slot. `sharded`: publish with `SPUBLISH`.
    pub(super) fn new(ns: &str, cluster: bool, sharded: bool) -> Self {
        let ns = if cluster {
            format!("{{{ns}}}")
        } else {
            ns.to_owned()
        };
        Self {
            record_prefix: format!("{ns}v1:key:"),
            created: format!("{ns}v1:created"),
            last_used: format!("{ns}v1:last_used"),
            owner_prefix: format!("{ns}v1:owner:"),
            channel: format!("{ns}changes"),
            change_seq: format!("{ns}v1:change_seq"),
            change_log: format!("{ns}v1:change_log"),
            peppers: format!("{ns}peppers"),
            sharded,
        }
    }

    /// The publish command the write scripts end with (their last `ARGV`).
    fn publish(&self) -> &'static str {
        if self.sharded {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    fn record(&self, id: &str) -> String {
        format!("{}{id}", self.record_prefix)
    }

    /// The index [`list`] reads: every record's, or one owner's.
    pub(super) fn index(&self, owner: Option<&str>) -> String {
        match owner {
            Some(owner) => format!("{}{owner}", self.owner_prefix),
            None => self.created.clone(),
        }
    }
}

/// A record's member in the creation-order indexes: `<created_at>:<id>`, where
/// `<created_at>` is its Unix microseconds as 16 lowercase hex digits, offset by 2^63 so
/// that earlier instants (negative ones, before 1970, included) have smaller numbers.
/// Fixed width, lowercase hex and lowercase hyphenated ids make the members' byte order
/// (`ZRANGEBYLEX`, all scores 0) the order of [`Cursor`]s: by `created_at`, then by id.
pub(super) fn position(created_at: DateTime<Utc>, id: KeyId) -> String {
    let micros = u64::from_be_bytes(created_at.timestamp_micros().to_be_bytes());
    format!("{:016x}:{id}", micros ^ 0x8000_0000_0000_0000)
}

/// The member of `cursor`, as [`position`].
pub(super) fn cursor_position(cursor: &Cursor) -> String {
    position(cursor.created_at(), cursor.id())
}

/// The id part of a [`position`] (Lua: `string.sub(member, 18)`).
pub(super) fn position_id(member: &[u8]) -> Option<&[u8]> {
    member.get(17..)
}

/// Where a record is indexed: its owner's index and its [`position`].
#[derive(PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) owner: String,
    pub(super) position: String,
}

impl Entry {
    pub(super) fn new(owner: &str, created_at: DateTime<Utc>, id: KeyId) -> Self {
        Self {
            owner: owner.to_owned(),
            position: position(created_at, id),
        }
    }
}

/// How a compare-and-set script ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cas {
    /// Written.
    Done,
    /// The record changed since it was read: read it again.
    Changed,
    /// There is no such record.
    Gone,
}

impl Cas {
    fn of(code: i64) -> Self {
        match code {
            1 => Self::Done,
            -1 => Self::Gone,
            _ => Self::Changed,
        }
    }
}

/// Lowercase hex SHA-1, as Lua's `redis.sha1hex` computes it: the compare half of
/// compare-and-set (it saves sending a large record back).
fn sha1_hex(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The current JSON and last-used time of a record, in one round trip.
pub(super) async fn fetch(
    conn: &mut Conn,
    keys: &Keys,
    id: &str,
) -> Result<(Option<Vec<u8>>, Option<Vec<u8>>), RedisError> {
    ::redis::pipe()
        .cmd("GET")
        .arg(keys.record(id))
        .cmd("HGET")
        .arg(&keys.last_used)
        .arg(id)
        .query_async(conn)
        .await
}

/// The Lua function every write script ends with: takes the next change number, logs
/// `<seq>:<id>` under it (trimming the log every 1024th change to its latest 100 000
/// entries, [`CHANGE_LOG_KEEP`](crate::store::CHANGE_LOG_KEEP)) and publishes the same.
/// In the script, so atomic with the write: a node that read the counter at n finds every
/// change up to n in the log (unless trimmed). The publish command (`PUBLISH` or, on a
/// Redis Cluster, `SPUBLISH` to a channel in the record's slot) is every write script's
/// last `ARGV`.
macro_rules! log_change_lua {
    () => {
        r#"
local function log_change(seq_key, log_key, channel, id)
  local seq = redis.call('INCR', seq_key)
  local entry = string.format('%d', seq) .. ':' .. id
  redis.call('ZADD', log_key, seq, entry)
  if seq % 1024 == 0 then
    redis.call('ZREMRANGEBYSCORE', log_key, '-inf', seq - 100000)
  end
  redis.call(ARGV[#ARGV], channel, entry)
end
"#
    };
}

// KEYS: record, created, owner index, last_used, change_seq, change_log.
// ARGV: json, id, channel, last-used micros or "", position, publish command.
// 1 inserted, 0 the id exists.
static INSERT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        log_change_lua!(),
        r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], 0, ARGV[5])
redis.call('ZADD', KEYS[3], 0, ARGV[5])
if ARGV[4] == '' then
  redis.call('HDEL', KEYS[4], ARGV[2])
else
  redis.call('HSET', KEYS[4], ARGV[2], ARGV[4])
end
log_change(KEYS[5], KEYS[6], ARGV[3], ARGV[2])
return 1
"#,
    ))
});

/// Writes a new record and indexes it at `entry`; `false` if the id exists.
pub(super) async fn insert(
    conn: &mut Conn,
    keys: &Keys,
    id: &str,
    entry: &Entry,
    json: Vec<u8>,
    last_used: Option<DateTime<Utc>>,
) -> Result<bool, RedisError> {
    let last_used = last_used
        .map(|at| at.timestamp_micros().to_string())
        .unwrap_or_default();
    let inserted: i64 = INSERT
        .key(keys.record(id))
        .key(&keys.created)
        .key(keys.index(Some(&entry.owner)))
        .key(&keys.last_used)
        .key(&keys.change_seq)
        .key(&keys.change_log)
        .arg(json)
        .arg(id)
        .arg(&keys.channel)
        .arg(last_used)
        .arg(&entry.position)
        .arg(keys.publish())
        .invoke_async(conn)
        .await?;
    Ok(inserted == 1)
}

// KEYS: record, created, old owner index, new owner index, change_seq, change_log.
// ARGV: sha1 of the JSON the patch was applied to, new json, id, channel, old position,
// new position, publish command.
// 1 written, 0 the record changed meanwhile, -1 it is gone.
static UPDATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        log_change_lua!(),
        r#"
local current = redis.call('GET', KEYS[1])
if not current then return -1 end
if redis.sha1hex(current) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
if ARGV[5] ~= ARGV[6] then
  redis.call('ZREM', KEYS[2], ARGV[5])
  redis.call('ZADD', KEYS[2], 0, ARGV[6])
end
if KEYS[3] ~= KEYS[4] or ARGV[5] ~= ARGV[6] then
  redis.call('ZREM', KEYS[3], ARGV[5])
  redis.call('ZADD', KEYS[4], 0, ARGV[6])
end
log_change(KEYS[5], KEYS[6], ARGV[4], ARGV[3])
return 1
"#,
    ))
});

/// Replaces the record read as `read` (indexed at `old`) by `json` (indexed at `new`),
/// unless it changed since.
pub(super) async fn update(
    conn: &mut Conn,
    keys: &Keys,
    id: &str,
    (read, old): (&[u8], &Entry),
    (json, new): (Vec<u8>, &Entry),
) -> Result<Cas, RedisError> {
    let written: i64 = UPDATE
        .key(keys.record(id))
        .key(&keys.created)
        .key(keys.index(Some(&old.owner)))
        .key(keys.index(Some(&new.owner)))
        .key(&keys.change_seq)
        .key(&keys.change_log)
        .arg(sha1_hex(read))
        .arg(json)
        .arg(id)
        .arg(&keys.channel)
        .arg(&old.position)
        .arg(&new.position)
        .arg(keys.publish())
        .invoke_async(conn)
        .await?;
    Ok(Cas::of(written))
}

// KEYS: record, created, owner index (or created again when unknown), last_used,
// change_seq, change_log.
// ARGV: sha1 of the JSON read, id, channel, position ("" when unknown), publish command.
// 1 deleted, 0 the record changed meanwhile, -1 there was none.
static DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        log_change_lua!(),
        r#"
local current = redis.call('GET', KEYS[1])
if not current then return -1 end
if redis.sha1hex(current) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
if ARGV[4] ~= '' then
  redis.call('ZREM', KEYS[2], ARGV[4])
  redis.call('ZREM', KEYS[3], ARGV[4])
end
redis.call('HDEL', KEYS[4], ARGV[2])
log_change(KEYS[5], KEYS[6], ARGV[3], ARGV[2])
return 1
"#,
    ))
});

/// Deletes the record read as `read`, unless it changed since, and its index entries
/// (`None` when the record is too damaged to say where it is indexed: [`list`] skips
/// index members whose record is gone).
pub(super) async fn delete(
    conn: &mut Conn,
    keys: &Keys,
    id: &str,
    read: &[u8],
    entry: Option<&Entry>,
) -> Result<Cas, RedisError> {
    let (owner_index, position) = match entry {
        Some(entry) => (keys.index(Some(&entry.owner)), entry.position.as_str()),
        None => (keys.created.clone(), ""),
    };
    let deleted: i64 = DELETE
        .key(keys.record(id))
        .key(&keys.created)
        .key(owner_index)
        .key(&keys.last_used)
        .key(&keys.change_seq)
        .key(&keys.change_log)
        .arg(sha1_hex(read))
        .arg(id)
        .arg(&keys.channel)
        .arg(position)
        .arg(keys.publish())
        .invoke_async(conn)
        .await?;
    Ok(Cas::of(deleted))
}

// KEYS: change_seq, change_log. ARGV: the last number seen (-1: none), most entries.
// {current, {entries after the last seen, up to current}}; no entries when there is
// nothing to replay or more than the most (the caller then resyncs).
static READ_LOG: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local last = tonumber(ARGV[1])
if last < 0 or current <= last or current - last > tonumber(ARGV[2]) then
  return {current, {}}
end
return {current, redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[1], current)}
"#,
    )
});

/// The change counter and the log entries after `after` up to it (`(seq, id)`
/// ascending), in one atomic read; at most `max` entries (none when there are more).
/// Entries that do not parse are left out (the caller then sees a hole and resyncs).
pub(super) async fn read_log<C: ::redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    after: Option<i64>,
    max: i64,
) -> Result<(i64, Vec<(i64, KeyId)>), RedisError> {
    let (current, entries): (i64, Vec<String>) = READ_LOG
        .key(&keys.change_seq)
        .key(&keys.change_log)
        .arg(after.unwrap_or(-1))
        .arg(max)
        .invoke_async(conn)
        .await?;
    let entries = entries
        .iter()
        .filter_map(|entry| match crate::store::parse_notice(entry)? {
            (Some(seq), id) => Some((seq, id)),
            (None, _) => None,
        })
        .collect();
    Ok((current, entries))
}

// KEYS: last_used, then the record key of each pair. ARGV: id1, micros1, id2, micros2, ...
static LAST_USED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    local id = ARGV[2 * i - 3]
    local at = ARGV[2 * i - 2]
    local current = tonumber(redis.call('HGET', KEYS[1], id))
    if not current or current < tonumber(at) then
      redis.call('HSET', KEYS[1], id, at)
    end
  end
end
return 0
"#,
    )
});

/// Moves each existing record's last-used time forward to the batch's, never back.
pub(super) async fn record_last_used(
    conn: &mut Conn,
    keys: &Keys,
    batch: &[(KeyId, DateTime<Utc>)],
) -> Result<(), RedisError> {
    let mut invocation = LAST_USED.key(&keys.last_used);
    for (id, at) in batch {
        let id = id.to_string();
        invocation
            .key(keys.record(&id))
            .arg(id)
            .arg(at.timestamp_micros());
    }
    invocation.invoke_async::<i64>(conn).await.map(drop)
}

// KEYS: index, last_used.
// ARGV: lower bound ("-", or "(" and an exclusive position), limit, record key prefix.
// Returns position, json, last-used for each of the first `limit` members past the bound
// whose record exists, from one consistent snapshot. A member whose record is gone (left
// by deleting a record too damaged to say where it is indexed) is passed over, so a page
// is only short at the end of the index.
static LIST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local limit = tonumber(ARGV[2])
local min = ARGV[1]
local out = {}
local found = 0
while found < limit do
  local members = redis.call('ZRANGEBYLEX', KEYS[1], min, '+', 'LIMIT', 0, math.min(limit - found, 1000))
  if #members == 0 then break end
  for _, member in ipairs(members) do
    local id = string.sub(member, 18)
    local json = redis.call('GET', ARGV[3] .. id)
    if json then
      out[#out + 1] = member
      out[#out + 1] = json
      out[#out + 1] = redis.call('HGET', KEYS[2], id)
      found = found + 1
    end
  end
  min = '(' .. members[#members]
end
return out
"#,
    )
});

/// One listed record: its index member, JSON and last-used time.
pub(super) type Row = (Vec<u8>, Vec<u8>, Option<Vec<u8>>);

/// Up to `limit` records of `index` in creation order, after `after` (exclusive).
pub(super) async fn list(
    conn: &mut Conn,
    keys: &Keys,
    index: &str,
    after: Option<&Cursor>,
    limit: usize,
) -> Result<Vec<Row>, RedisError> {
    let min = after.map_or_else(|| "-".to_owned(), |c| format!("({}", cursor_position(c)));
    let flat: Vec<Option<Vec<u8>>> = LIST
        .key(index)
        .key(&keys.last_used)
        .arg(min)
        .arg(limit)
        .arg(&keys.record_prefix)
        .invoke_async(conn)
        .await?;
    let mut rows = Vec::with_capacity(flat.len() / 3);
    let mut flat = flat.into_iter();
    while let (Some(Some(member)), Some(Some(json)), Some(last_used)) =
        (flat.next(), flat.next(), flat.next())
    {
        rows.push((member, json, last_used));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha1_matches_redis_sha1hex() {
        // redis-cli EVAL "return redis.sha1hex('abc')" 0
        assert_eq!(sha1_hex(b"abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
    }

    #[test]
    fn lexical_order_of_ids_is_id_order() {
        let mut ids: Vec<KeyId> = (0..200).map(|_| KeyId::random()).collect();
        let mut texts: Vec<String> = ids.iter().map(ToString::to_string).collect();
        ids.sort();
        texts.sort();
        let sorted: Vec<String> = ids.iter().map(ToString::to_string).collect();
        assert_eq!(sorted, texts);
    }

    #[test]
    fn byte_order_of_positions_is_cursor_order() {
        let micros = [
            i64::MIN,
            DateTime::<Utc>::MIN_UTC.timestamp_micros(),
            -62_135_596_800_000_000, // 0001-01-01
            -1_000_001,
            -1,
            0,
            1,
            15,
            16,
            1_767_225_600_000_000,
            253_402_300_799_999_999, // 9999-12-31T23:59:59.999999
            DateTime::<Utc>::MAX_UTC.timestamp_micros(),
        ];
        let ids: Vec<KeyId> = (0..4).map(|_| KeyId::random()).collect();
        let mut cursors = Vec::new();
        for m in micros {
            let Some(at) = DateTime::from_timestamp_micros(m) else {
                continue;
            };
            for id in &ids {
                cursors.push(Cursor::new(at, *id));
            }
        }
        assert!(cursors.len() > 40);
        let mut by_position: Vec<(String, Cursor)> =
            cursors.iter().map(|c| (cursor_position(c), *c)).collect();
        by_position.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        cursors.sort();
        let order: Vec<Cursor> = by_position.iter().map(|(_, c)| *c).collect();
        assert_eq!(order, cursors);
        for (member, cursor) in &by_position {
            assert_eq!(member.len(), 16 + 1 + 36, "{member}");
            assert_eq!(
                position_id(member.as_bytes()),
                Some(cursor.id().to_string().as_bytes())
            );
        }
        assert_eq!(
            position(DateTime::from_timestamp_micros(0).unwrap(), KeyId::NIL),
            "8000000000000000:00000000-0000-0000-0000-000000000000"
        );
    }
}
