#!lua name=tern_v2
-- Tern's Redis functions: the atomic steps of the Redis store
-- (backend/src/redis_store.rs; key schema in backend/src/redis_store/keys.rs
-- and docs/redis.md).
--
-- Rules every function here keeps:
-- * It touches the keys of one hash tag only (one conversation, one group,
--   or one pair of users), so in Redis Cluster it runs on one node.
-- * It checks everything before it writes anything: Redis does not roll a
--   function back when it fails halfway, so a refusal must come before the
--   first write.
-- * Expected outcomes (duplicate, refusals, version conflicts) are return
--   codes, never errors: an error reply means a bug or a broken server.
-- * Numbers that must stay exact (times, expiries) travel and are stored as
--   the decimal strings the caller sent; seqs are Redis integers (exact
--   below 2^53, which a conversation does not reach).
--
-- The function names carry a version: an incompatible change gets new
-- names, so two versions of Tern can share a cluster during a rollout.

local OK, NOT_MEMBER, NOT_RECALLABLE, READ_NOT_ADVANCED, NOT_EDITABLE = 0, 1, 2, 3, 4
local NOT_THREADABLE, TODO_CHANGED, ANNOTATION_CHANGED = 5, 6, 7
local CONFLICT = -1
local HMGET_FIELDS_MAX = 1000

local function itoa(n)
  return string.format('%d', n)
end

-- A user's record for a conversation: "<visible_from>:<visible_to>:<read>".
local function parse_uc(s)
  local f, t, r = string.match(s, '^(%d+):(%d+):(%d+)$')
  if not f then
    error({ err = 'tern: corrupt user conversation record' })
  end
  return tonumber(f), tonumber(t), tonumber(r)
end

-- ---- protobuf, just enough to rewrite a recalled message ------------------

-- Reads a varint at byte i; returns the value and the next index, or nil.
local function read_varint(s, i)
  local v, m = 0, 1
  while true do
    local b = string.byte(s, i)
    if b == nil then return nil end
    i = i + 1
    v = v + (b % 128) * m
    if b < 128 then return v, i end
    m = m * 128
  end
end

local function put_varint(n)
  local out = {}
  while n >= 128 do
    out[#out + 1] = string.char(n % 128 + 128)
    n = math.floor(n / 128)
  end
  out[#out + 1] = string.char(n)
  return table.concat(out)
end

-- Walks the fields of a protobuf message. Returns a list of
-- {field, wire, first, key_end, next, payload_first, payload_last} or nil
-- when the bytes are not a well-formed message.
local function fields(s)
  local out, i, n = {}, 1, #s
  while i <= n do
    local key, j = read_varint(s, i)
    if not key then return nil end
    local field, wire = math.floor(key / 8), key % 8
    local nxt, pf, pl
    if wire == 0 then
      local _, k = read_varint(s, j)
      nxt = k
    elseif wire == 1 then
      nxt = j + 8
    elseif wire == 2 then
      local len, k = read_varint(s, j)
      if not len then return nil end
      pf, pl, nxt = k, k + len - 1, k + len
    elseif wire == 5 then
      nxt = j + 4
    else
      return nil
    end
    if not nxt or nxt > n + 1 then return nil end
    out[#out + 1] = { field, wire, i, j, nxt, pf, pl }
    i = nxt
  end
  return out
end

-- Message (tern.v1.Message): drops `content` (1), `mentions` (2) and
-- `mention_all` (3), sets `recalled` (5). Nil when the message is already
-- recalled or malformed.
local function recall_message(m)
  local fs = fields(m)
  if not fs then return nil end
  local out = {}
  for _, f in ipairs(fs) do
    local field, wire = f[1], f[2]
    if field == 5 and wire == 0 then
      if read_varint(m, f[4]) ~= 0 then return nil end
    elseif field > 3 then
      out[#out + 1] = string.sub(m, f[3], f[5] - 1)
    end
  end
  out[#out + 1] = '\40\1' -- field 5, varint, true
  return table.concat(out)
end

-- Entry (tern.v1.Entry) whose body is a Message (field 10): the same entry
-- with the message recalled. Nil when it is not a recallable message.
local function recall_entry(e)
  local fs = fields(e)
  if not fs then return nil end
  local out, found = {}, false
  for _, f in ipairs(fs) do
    if f[1] == 10 and f[2] == 2 then
      local m = recall_message(string.sub(e, f[6], f[7]))
      if not m then return nil end
      out[#out + 1] = string.sub(e, f[3], f[4] - 1) .. put_varint(#m) .. m
      found = true
    else
      out[#out + 1] = string.sub(e, f[3], f[5] - 1)
    end
  end
  if not found then return nil end
  return table.concat(out)
end

-- Entry (tern.v1.Entry) whose body is a Message (field 10): whether it is
-- not recalled (field 5) and was edited exactly `count` times (field 6).
-- The last occurrence of a field wins, as in protobuf.
local function editable(e, count)
  local fs = fields(e)
  if not fs then return false end
  local found = false
  local recalled, edits = 0, 0
  for _, f in ipairs(fs) do
    if f[1] == 10 and f[2] == 2 then
      local m = string.sub(e, f[6], f[7])
      local ms = fields(m)
      if not ms then return false end
      found = true
      recalled, edits = 0, 0
      for _, g in ipairs(ms) do
        if g[1] == 5 and g[2] == 0 then
          recalled = read_varint(m, g[4])
        elseif g[1] == 6 and g[2] == 0 then
          edits = read_varint(m, g[4])
        end
      end
    end
  end
  return found and recalled == 0 and edits == count
end

-- Entry (tern.v1.Entry) whose body is a Message (field 10): whether it is
-- one, whether it is recalled (field 5), and its thread root (field 11, 0
-- when it is not a thread reply). The last occurrence of a field wins.
local function message_thread(e)
  local fs = fields(e)
  if not fs then return false, 0, 0 end
  local found, recalled, root = false, 0, 0
  for _, f in ipairs(fs) do
    if f[1] == 10 and f[2] == 2 then
      local m = string.sub(e, f[6], f[7])
      local ms = fields(m)
      if not ms then return false, 0, 0 end
      found, recalled, root = true, 0, 0
      for _, g in ipairs(ms) do
        if g[1] == 5 and g[2] == 0 then
          recalled = read_varint(m, g[4])
        elseif g[1] == 11 and g[2] == 0 then
          root = read_varint(m, g[4])
        end
      end
    end
  end
  return found, recalled, root
end

-- The thread index member of reply `seq` under `root` (keys.rs
-- thread_member builds the same).
local function thread_member(root, seq)
  return string.format('%020d:%020d', root, seq)
end

-- Entry (tern.v1.Entry): whether its body is a Message (field 10) that is
-- not recalled (field 5).
local function live_message(e)
  local found, recalled = message_thread(e)
  return found and recalled == 0
end

-- ---- appends -------------------------------------------------------------

-- Appends one entry; the caller checked that `head` exists or not.
-- Returns the new seq.
local function push_entry(head, log, entry, time_ms, activity)
  local seq = redis.call('HINCRBY', head, 's', 1)
  redis.call('HSET', log, itoa(seq), entry)
  if activity then
    redis.call('HSET', head, 't', time_ms, 'a', time_ms)
  else
    redis.call('HSET', head, 't', time_ms)
  end
  return seq
end

-- tern_append_v2: one item of Store::append_batch.
-- KEYS: head, log, dedup, dedup_expiry, user_convs, members,
--       [threads, todos] (callers before threads and to-dos pass 6 keys),
--       [annotations: read by effect a only]
-- ARGV: now_ms, entry, time_ms, activity (1|0), dedup_field (''),
--       expires_at_ms, member_user (''), effect (n|r|d|e|h|t|a), effect_seq
--       (for h: the thread root), reader (for e: the expected edit count;
--       for t: the expected to-do version; for a: 1 when the message at
--       effect_seq must be live), purge_max,
--       [for e: the edited message entry; for t: the to-do record],
--       [for a: the annotation field, its expected bytes ('' for none),
--       its new bytes ('' deletes it)], participants...
-- Returns {code, seq, time_ms, duplicate}.
local function append(keys, args)
  local head, log, dedup, dedupx, ucs, members =
    keys[1], keys[2], keys[3], keys[4], keys[5], keys[6]
  local now = tonumber(args[1])
  local entry, time_ms, activity = args[2], args[3], args[4] == '1'
  local dfield, expires = args[5], args[6]
  local member, effect, eseq, reader = args[7], args[8], args[9], args[10]
  local purge_max = tonumber(args[11])

  -- 1. dedup
  if dfield ~= '' then
    local rec = redis.call('HGET', dedup, dfield)
    if rec then
      local seq, t, exp = string.match(rec, '^(%d+):(%d+):(%d+)$')
      if not seq then
        return redis.error_reply('tern: corrupt dedup record')
      end
      if tonumber(exp) > now then
        return { OK, tonumber(seq), t, 1 }
      end
    end
  end
  -- 2. membership
  if member ~= '' and redis.call('HEXISTS', members, member) == 0 then
    return { NOT_MEMBER }
  end
  -- 3. effect checks
  local recalled, reader_rec, edited, afield, unthread, thread_root, todo
  local first_participant = 12
  if effect == 'r' then
    local old = redis.call('HGET', log, eseq)
    if old then
      recalled = recall_entry(old)
      local _, _, root = message_thread(old)
      if root > 0 then unthread = thread_member(root, tonumber(eseq)) end
    end
    if not recalled then return { NOT_RECALLABLE } end
  elseif effect == 'h' then
    local old = redis.call('HGET', log, eseq)
    if not old then return { NOT_THREADABLE } end
    local found, rec, root = message_thread(old)
    if not found or rec ~= 0 or root ~= 0 then return { NOT_THREADABLE } end
    thread_root = tonumber(eseq)
  elseif effect == 't' then
    local cur = redis.call('HGET', keys[8], eseq)
    local v = 0
    if cur then v = tonumber(string.match(cur, '^(%d+):')) end
    if v ~= tonumber(reader) then return { TODO_CHANGED } end
    todo = itoa(v + 1) .. ':' .. args[12]
    first_participant = 13
  elseif effect == 'd' then
    local rec = redis.call('HGET', ucs, reader)
    if not rec then return { READ_NOT_ADVANCED } end
    local f, t, r = parse_uc(rec)
    if r >= tonumber(eseq) then return { READ_NOT_ADVANCED } end
    reader_rec = f .. ':' .. t .. ':' .. eseq
  elseif effect == 'e' then
    local old = redis.call('HGET', log, eseq)
    if not old or not editable(old, tonumber(reader)) then return { NOT_EDITABLE } end
    edited = args[12]
    first_participant = 13
  elseif effect == 'a' then
    if reader == '1' then
      local old = redis.call('HGET', log, eseq)
      if not old or not live_message(old) then return { ANNOTATION_CHANGED } end
    end
    afield = args[12]
    local now_rec = redis.call('HGET', keys[9], afield)
    if (now_rec or '') ~= args[13] then return { ANNOTATION_CHANGED } end
    first_participant = 15
  end
  -- 4. the entry (nothing was written before this point)
  local seq = push_entry(head, log, entry, time_ms, activity)
  -- 5. effect
  if recalled then
    redis.call('HSET', log, eseq, recalled)
  elseif reader_rec then
    redis.call('HSET', ucs, reader, reader_rec)
  elseif edited then
    redis.call('HSET', log, eseq, edited)
  elseif afield then
    if args[14] == '' then
      redis.call('HDEL', keys[9], afield)
    else
      redis.call('HSET', keys[9], afield, args[14])
    end
  elseif thread_root then
    redis.call('ZADD', keys[7], 0, thread_member(thread_root, seq))
  elseif todo then
    redis.call('HSET', keys[8], eseq, todo)
  end
  if unthread then
    redis.call('ZREM', keys[7], unthread)
  end
  -- 6. participants
  for i = first_participant, #args do
    redis.call('HSETNX', ucs, args[i], '1:0:0')
  end
  -- 7. dedup record, and a bounded purge of expired ones
  if dfield ~= '' then
    redis.call('HSET', dedup, dfield, itoa(seq) .. ':' .. time_ms .. ':' .. expires)
    redis.call('ZADD', dedupx, expires, dfield)
    if purge_max > 0 then
      local old = redis.call('ZRANGEBYSCORE', dedupx, '-inf', args[1], 'LIMIT', 0, purge_max)
      for _, f in ipairs(old) do
        redis.call('HDEL', dedup, f)
        redis.call('ZREM', dedupx, f)
      end
    end
  end
  return { OK, seq, time_ms, 0 }
end

-- tern_range_v2: entries from..=to of a log, at most `limit`.
-- KEYS: head, log. ARGV: from, to, limit.
-- Returns the entries of seqs max(from, 1), max(from, 1) + 1, ... in order
-- (nil where a seq has no entry), up to the head.
local function range(keys, args)
  local head = tonumber(redis.call('HGET', keys[1], 's') or '0')
  local from, to, limit = tonumber(args[1]), tonumber(args[2]), tonumber(args[3])
  if from < 1 then from = 1 end
  local last = math.min(to, head, from + limit - 1)
  local out = {}
  local s = from
  while s <= last do
    local chunk = {}
    local stop = math.min(last, s + HMGET_FIELDS_MAX - 1)
    for q = s, stop do chunk[#chunk + 1] = itoa(q) end
    local vals = redis.call('HMGET', keys[2], unpack(chunk))
    for k = 1, #chunk do out[#out + 1] = vals[k] end
    s = stop + 1
  end
  return out
end

-- tern_members_v2: member records after `after` in user id order.
-- KEYS: member_order, members. ARGV: after (''), limit.
local function members_page(keys, args)
  local min = '-'
  if args[1] ~= '' then min = '(' .. args[1] end
  local ids = redis.call('ZRANGE', keys[1], min, '+', 'BYLEX', 'LIMIT', 0, args[2])
  local out = {}
  local i = 1
  while i <= #ids do
    local chunk = {}
    for k = i, math.min(#ids, i + HMGET_FIELDS_MAX - 1) do chunk[#chunk + 1] = ids[k] end
    local vals = redis.call('HMGET', keys[2], unpack(chunk))
    for k = 1, #chunk do out[#out + 1] = vals[k] end
    i = i + #chunk
  end
  return out
end

-- tern_group_v2: Store::apply_group_change.
-- KEYS: version, meta, members, member_order, join_requests, head, log,
--       user_convs
-- ARGV: expect_version, meta,
--       n, (user, record) * n        members to put
--       n, user * n                  members to remove
--       n, (user, record) * n        join requests to put
--       n, user * n                  join requests to remove
--       n, (entry, time_ms) * n      entries
--       n, (kind j|l, user, at, history 1|0) * n   views
-- Returns {CONFLICT} or {OK, seq...}.
local function group_change(keys, args)
  local kver, kmeta, kmembers, korder, kjoin, khead, klog, kucs =
    keys[1], keys[2], keys[3], keys[4], keys[5], keys[6], keys[7], keys[8]
  local expect = tonumber(args[1])
  local cur = tonumber(redis.call('GET', kver) or '0')
  if cur ~= expect then return { CONFLICT } end
  redis.call('SET', kver, itoa(expect + 1))
  redis.call('SET', kmeta, args[2])
  local i = 3
  local n = tonumber(args[i]); i = i + 1
  for _ = 1, n do
    redis.call('HSET', kmembers, args[i], args[i + 1])
    redis.call('ZADD', korder, 0, args[i])
    i = i + 2
  end
  n = tonumber(args[i]); i = i + 1
  for _ = 1, n do
    redis.call('HDEL', kmembers, args[i])
    redis.call('ZREM', korder, args[i])
    i = i + 1
  end
  n = tonumber(args[i]); i = i + 1
  for _ = 1, n do
    redis.call('HSET', kjoin, args[i], args[i + 1])
    i = i + 2
  end
  n = tonumber(args[i]); i = i + 1
  for _ = 1, n do
    redis.call('HDEL', kjoin, args[i])
    i = i + 1
  end
  local seqs = {}
  n = tonumber(args[i]); i = i + 1
  for k = 1, n do
    seqs[k] = push_entry(khead, klog, args[i], args[i + 1], true)
    i = i + 2
  end
  n = tonumber(args[i]); i = i + 1
  for _ = 1, n do
    local kind, user, at = args[i], args[i + 1], tonumber(args[i + 2]) + 1
    local s = seqs[at]
    if kind == 'j' then
      local from = s
      if args[i + 3] == '1' then from = 1 end
      redis.call('HSET', kucs, user, itoa(from) .. ':0:' .. itoa(s - 1))
    else
      local rec = redis.call('HGET', kucs, user)
      if rec then
        local f, _, r = parse_uc(rec)
        redis.call('HSET', kucs, user, itoa(f) .. ':' .. itoa(s) .. ':' .. itoa(r))
      end
    end
    i = i + 4
  end
  local out = { OK }
  for k = 1, #seqs do out[k + 1] = seqs[k] end
  return out
end

-- tern_writes_v2: unconditional writes, all or none (Store::apply_social).
-- ARGV: (op, key index, a, b) * n with op one of
--   hset (field a = b), hdel (field a), sadd (a), srem (a), set (a), del.
local function writes(keys, args)
  for i = 1, #args, 4 do
    local op = args[i]
    if op ~= 'hset' and op ~= 'hdel' and op ~= 'sadd' and op ~= 'srem'
      and op ~= 'set' and op ~= 'del' then
      return redis.error_reply('tern: unknown write op ' .. op)
    end
    if keys[tonumber(args[i + 1])] == nil then
      return redis.error_reply('tern: write names no key')
    end
  end
  for i = 1, #args, 4 do
    local op, key, a, b = args[i], keys[tonumber(args[i + 1])], args[i + 2], args[i + 3]
    if op == 'hset' then redis.call('HSET', key, a, b)
    elseif op == 'hdel' then redis.call('HDEL', key, a)
    elseif op == 'sadd' then redis.call('SADD', key, a)
    elseif op == 'srem' then redis.call('SREM', key, a)
    elseif op == 'set' then redis.call('SET', key, a)
    else redis.call('DEL', key)
    end
  end
  return OK
end

-- tern_room_post_v2: a room message (issue 19). KEYS: the room's record,
-- head and kept list (one hash tag). ARGV: the entry without its seq, and
-- how many messages to keep. Returns the new seq, or 0 (nothing written)
-- when the room does not exist. The seq is appended to the stored entry as
-- field 2 (the last occurrence of a field wins when it is decoded).
local function room_post(keys, args)
  local keep = tonumber(args[2])
  if keep == nil or keep < 1 then
    return redis.error_reply('tern: room keep must be at least 1')
  end
  if redis.call('EXISTS', keys[1]) == 0 then
    return 0
  end
  local seq = redis.call('INCR', keys[2])
  redis.call('LPUSH', keys[3], args[1] .. '\16' .. put_varint(seq))
  redis.call('LTRIM', keys[3], 0, keep - 1)
  return seq
end

redis.register_function('tern_append_v2', append)
redis.register_function('tern_room_post_v2', room_post)
redis.register_function('tern_group_v2', group_change)
redis.register_function('tern_writes_v2', writes)
redis.register_function { function_name = 'tern_range_v2', callback = range, flags = { 'no-writes' } }
redis.register_function { function_name = 'tern_members_v2', callback = members_page, flags = { 'no-writes' } }
