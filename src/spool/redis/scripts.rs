//! The spool's Lua scripts (see the parent module). Each runs atomically in
//! Redis, which is what keeps the byte counter equal to the bytes of the
//! entries it counts, whatever replica dies between two calls.
//!
//! Entries carry two fields: `r` (the encoded record) and `n` (its size as
//! counted against `max_bytes`). A counter that would go below zero (it was
//! lost or edited by hand) is set to zero instead.

use std::sync::LazyLock;

use redis::Script;

/// Returns field `name` of a stream entry `{id, {f1, v1, ...}}`, or nil.
const FIELD: &str = r#"
local function field(e, name)
  local f = e[2]
  if not f then return nil end
  for i = 1, #f, 2 do
    if f[i] == name then return f[i + 1] end
  end
  return nil
end
local function decr(counter, n)
  if tonumber(redis.call('DECRBY', counter, n or 0)) < 0 then
    redis.call('SET', counter, 0)
  end
end
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{FIELD}{body}"))
}

/// KEYS: stream, counter, the put's nonce mark. ARGV: record, size,
/// max_bytes, mark ttl ms. `{1, id}` stored (or stored already by an earlier
/// attempt of this put), `{0, ''}` full.
pub(super) static PUT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local prev = redis.call('GET', KEYS[3])
if prev then return {1, prev} end
local used = tonumber(redis.call('GET', KEYS[2]) or '0')
if used + tonumber(ARGV[2]) > tonumber(ARGV[3]) then return {0, ''} end
local id = redis.call('XADD', KEYS[1], '*', 'r', ARGV[1], 'n', ARGV[2])
redis.call('INCRBY', KEYS[2], ARGV[2])
redis.call('SET', KEYS[3], id, 'PX', ARGV[4])
return {1, id}
"#,
    )
});

/// KEYS: stream. ARGV: group, consumer, min_idle ms, max. `{{id, r}, ...}`:
/// entries idle for longer than min_idle taken over, then new ones, at most
/// max in all (an entry read here is this consumer's until acked, so none
/// is read that is not returned).
pub(super) static TAKE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
pcall(redis.call, 'XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
local max = tonumber(ARGV[4])
local out = {}
local claimed = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], '0-0', 'COUNT', max)
for _, e in ipairs(claimed[2]) do
  if e and e[1] then out[#out + 1] = {e[1], field(e, 'r') or false} end
end
local left = max - #out
if left > 0 then
  local fresh = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', left, 'STREAMS', KEYS[1], '>')
  if fresh then
    for _, e in ipairs(fresh[1][2]) do
      out[#out + 1] = {e[1], field(e, 'r') or false}
    end
  end
end
return out
"#,
    )
});

/// KEYS: stream, counter. ARGV: group, id. 1 removed, 0 absent.
pub(super) static REMOVE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local e = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if #e == 0 then return 0 end
redis.call('XDEL', KEYS[1], ARGV[2])
decr(KEYS[2], field(e[1], 'n'))
return 1
"#,
    )
});

/// KEYS: live, dead. ARGV: group, id. 1 buried, 0 not live.
pub(super) static BURY: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local e = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if #e == 0 then return 0 end
redis.call('XADD', KEYS[2], '*', 'r', field(e[1], 'r') or '', 'n', field(e[1], 'n') or '0')
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
"#,
    )
});

/// KEYS: stream. ARGV: start, end. `{{id, r}, ...}` of `XRANGE start end`.
pub(super) static RANGE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local out = {}
for _, e in ipairs(redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[2])) do
  out[#out + 1] = {e[1], field(e, 'r') or false}
end
return out
"#,
    )
});

/// KEYS: live, dead, counter. ARGV: dead id, new record, its size. The new
/// live id, or nil when the dead letter is gone (deleted or revived by
/// someone else since it was read). The counter moves by the size
/// difference (none: `live_since_ms` is not counted).
pub(super) static REVIVE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local e = redis.call('XRANGE', KEYS[2], ARGV[1], ARGV[1])
if #e == 0 then return false end
local old = tonumber(field(e[1], 'n') or '0')
local id = redis.call('XADD', KEYS[1], '*', 'r', ARGV[2], 'n', ARGV[3])
redis.call('XDEL', KEYS[2], ARGV[1])
local diff = tonumber(ARGV[3]) - old
if diff >= 0 then redis.call('INCRBY', KEYS[3], diff) else decr(KEYS[3], -diff) end
return id
"#,
    )
});

/// KEYS: dead, counter. ARGV: id. 1 deleted, 0 absent.
pub(super) static DELETE_DEAD: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local e = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #e == 0 then return 0 end
redis.call('XDEL', KEYS[1], ARGV[1])
decr(KEYS[2], field(e[1], 'n'))
return 1
"#,
    )
});

/// KEYS: live, dead, counter. `{depth, dead, bytes or nil, first live r or nil}`.
pub(super) static STATS: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
local r = false
if #first > 0 then r = field(first[1], 'r') or false end
return {redis.call('XLEN', KEYS[1]), redis.call('XLEN', KEYS[2]), redis.call('GET', KEYS[3]), r}
"#,
    )
});

/// KEYS: stream. ARGV: group, consumer. Deletes the consumer from the group
/// if it holds no entry (deleting one that does would strand its entries:
/// they are past the group's last-delivered id, so no `>` read returns them
/// again); 1 deleted, 0 kept or no such group.
pub(super) static FORGET: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local ok, p = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if not ok or #p > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
"#,
    )
});

/// KEYS: live, dead. ARGV: `l` or `d` and an id, in pairs. Per pair, 1 when
/// that entry is still in its stream, else 0 (for the count of entries that
/// do not decode, one round trip whatever their number).
pub(super) static PRESENT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local out = {}
for i = 1, #ARGV, 2 do
  local key = KEYS[1]
  if ARGV[i] == 'd' then key = KEYS[2] end
  local e = redis.call('XRANGE', key, ARGV[i + 1], ARGV[i + 1])
  out[#out + 1] = #e
end
return out
"#,
    )
});
