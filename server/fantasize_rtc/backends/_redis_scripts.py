"""Lua scripts of the Redis backend: every check-then-act on shared state runs in one script, so it
is atomic across processes.

Keys (``P`` is the configured prefix, ``m`` a member ``room/peer``; ids never contain ``/``):

- ``P room:<room>`` hash ``max``, ``meta`` (JSON text, never decoded in Lua), ``created``
- ``P peers:<room>`` hash peer -> ``token \\t connectedAt \\t metadata JSON``
- ``P srv:<room>`` hash ``peer|process`` -> listed-at (server peers are per process)
- ``P rooms`` set of room ids; ``P npeers`` peer count; ``P tokens`` hash token -> m
- ``P seen`` sorted set m -> last seen (ms): the reaper reads it by score
- ``P presence`` hash m -> id of the process holding the peer's live channel
- ``P seq`` hash m -> last message sequence number (orders a peer's outbox)
- ``P ob:<m>`` sorted set seq -> ``seq \\t ts \\t from \\t text`` (the outbox); ``P obidx`` sorted
  set m -> oldest ts of that outbox; ``P obbytes`` hash m -> bytes queued for m (the ``ts \\t from
  \\t text`` part of each item); ``P obtotal`` the sum over all outboxes
- ``P proc:<process>`` key with a TTL while the process lives; ``P ch:<process>`` its channel;
  ``P events`` a channel every process hears (departures)

Every script gets ``P`` as ``ARGV[1]``. Keys are built inside the scripts, so the backend needs
one Redis (or a primary), not Redis Cluster.
"""

from __future__ import annotations

__all__ = [
    "ADD_SERVER_PEER",
    "CLAIM",
    "CREATE_ROOM",
    "DELIVER",
    "EXPIRE_OUTBOXES",
    "JOIN",
    "LEAVE",
    "RECIPIENTS",
    "SNAPSHOT",
    "TOUCH",
]

_COMMON = r"""
local P = ARGV[1]
local function rk(rid) return P .. 'room:' .. rid end
local function pk(rid) return P .. 'peers:' .. rid end
local function sk(rid) return P .. 'srv:' .. rid end
local SEEN = P .. 'seen'
local TOKENS = P .. 'tokens'
local ROOMS = P .. 'rooms'
local NPEERS = P .. 'npeers'
local PRES = P .. 'presence'
local SEQ = P .. 'seq'
local OBIDX = P .. 'obidx'
local OBB, OBT = P .. 'obbytes', P .. 'obtotal'
local function ob(m) return P .. 'ob:' .. m end
-- An outbox went (drained, its peer left, or its key expired): forget its bytes.
local function forget_bytes(m)
  local used = redis.call('HGET', OBB, m)
  if used then
    redis.call('DECRBY', OBT, used)
    redis.call('HDEL', OBB, m)
  end
end
local function alive(proc) return redis.call('EXISTS', P .. 'proc:' .. proc) == 1 end

local function snapshot(rid)
  local room = redis.call('HMGET', rk(rid), 'max', 'meta', 'created')
  local peers = redis.call('HGETALL', pk(rid))
  local plist = {}
  for i = 1, #peers, 2 do
    local seen = redis.call('ZSCORE', SEEN, rid .. '/' .. peers[i])
    plist[#plist + 1] = peers[i]
    plist[#plist + 1] = peers[i + 1]
    plist[#plist + 1] = seen or '0'
  end
  local srv = redis.call('HGETALL', sk(rid))
  local slist = {}
  for i = 1, #srv, 2 do
    local bar = string.find(srv[i], '|', 1, true)
    if bar and alive(string.sub(srv[i], bar + 1)) then
      slist[#slist + 1] = string.sub(srv[i], 1, bar - 1)
      slist[#slist + 1] = srv[i + 1]
    end
  end
  return {room[1], room[2], room[3], plist, slist}
end
"""

#: ARGV: P, room, max_peers, metadata, now, max_rooms
CREATE_ROOM = (
    _COMMON
    + r"""
local rid = ARGV[2]
if redis.call('EXISTS', rk(rid)) == 1 then return {'exists'} end
if redis.call('SCARD', ROOMS) >= tonumber(ARGV[6]) then return {'capacity_rooms'} end
redis.call('HSET', rk(rid), 'max', ARGV[3], 'meta', ARGV[4], 'created', ARGV[5])
redis.call('SADD', ROOMS, rid)
return {'ok', snapshot(rid)}
"""
)

#: ARGV: P, room, peer, metadata, now, token, proof, trusted, default_max_peers, max_rooms, max_peers,
#: caller process. A new member is announced on ``P events`` (processes cache room members).
JOIN = (
    _COMMON
    + r"""
local rid, pid, meta, now, token, proof = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local trusted = ARGV[8] == '1'
local max_peers = tonumber(ARGV[11])
local created = redis.call('EXISTS', rk(rid)) == 0
local npeers = tonumber(redis.call('GET', NPEERS) or '0')
local existing = redis.call('HGET', pk(rid), pid)
if created then
  if redis.call('SCARD', ROOMS) >= tonumber(ARGV[10]) then return {'capacity_rooms'} end
  if npeers >= max_peers then return {'capacity_peers'} end
elseif not existing and npeers >= max_peers then
  return {'capacity_peers'}
end
local replaced = false
if existing then
  local old = string.sub(existing, 1, string.find(existing, '\t', 1, true) - 1)
  if not trusted and proof ~= old then return {'taken'} end
  replaced = old
  if proof == old then token = old end
else
  local room_max = ARGV[9]
  if not created then room_max = redis.call('HGET', rk(rid), 'max') end
  if redis.call('HLEN', pk(rid)) >= tonumber(room_max) then return {'full', room_max} end
end
if created then
  redis.call('HSET', rk(rid), 'max', ARGV[9], 'meta', '{}', 'created', now)
  redis.call('SADD', ROOMS, rid)
end
local m = rid .. '/' .. pid
redis.call('HSET', pk(rid), pid, token .. '\t' .. now .. '\t' .. meta)
redis.call('ZADD', SEEN, now, m)
if not replaced then
  redis.call('INCR', NPEERS)
  redis.call('PUBLISH', P .. 'events', '!joined\t' .. ARGV[12] .. '\t' .. rid .. '\t' .. pid)
elseif replaced ~= token then
  redis.call('HDEL', TOKENS, replaced)
end
redis.call('HSET', TOKENS, token, m)
local holder = false
if replaced then holder = redis.call('HGET', PRES, m) end
return {'ok', created and 1 or 0, replaced and 1 or 0, token, snapshot(rid), holder}
"""
)

#: ARGV: P, room, peer, caller process, deadline ('' or ms: only remove a peer still silent since
#: before it, for the reaper). Nil when the peer is not there (someone else removed it first) or was
#: seen again. Tells every process (``P events``) so their server peers can end the peer's sessions.
LEAVE = (
    _COMMON
    + r"""
local rid, pid = ARGV[2], ARGV[3]
local rec = redis.call('HGET', pk(rid), pid)
if not rec then return false end
local m = rid .. '/' .. pid
local seen = redis.call('ZSCORE', SEEN, m) or '0'
if ARGV[5] ~= '' and tonumber(seen) >= tonumber(ARGV[5]) then return false end
local token = string.sub(rec, 1, string.find(rec, '\t', 1, true) - 1)
redis.call('HDEL', pk(rid), pid)
redis.call('ZREM', SEEN, m)
redis.call('HDEL', TOKENS, token)
redis.call('DECR', NPEERS)
redis.call('DEL', ob(m))
redis.call('ZREM', OBIDX, m)
forget_bytes(m)
redis.call('HDEL', SEQ, m)
redis.call('HDEL', PRES, m)
redis.call('PUBLISH', P .. 'events', '!left\t' .. ARGV[4] .. '\t' .. rid .. '\t' .. pid)
local remaining = redis.call('HKEYS', pk(rid))
local closed = 0
if #remaining == 0 then
  redis.call('DEL', rk(rid), pk(rid), sk(rid))
  redis.call('SREM', ROOMS, rid)
  closed = 1
end
return {rec, seen, closed, remaining}
"""
)

#: ARGV: P, room, peer, now
TOUCH = (
    _COMMON
    + r"""
local rid, pid = ARGV[2], ARGV[3]
local m = rid .. '/' .. pid
local seen = redis.call('ZSCORE', SEEN, m)
if not seen or redis.call('HEXISTS', pk(rid), pid) == 0 then
  if redis.call('EXISTS', rk(rid)) == 0 then return {'room'} end
  return {'peer'}
end
if tonumber(ARGV[4]) > tonumber(seen) then
  redis.call('ZADD', SEEN, ARGV[4], m)
  return {'ok', ARGV[4]}
end
return {'ok', seen}
"""
)

#: ARGV: P, room
SNAPSHOT = (
    _COMMON
    + r"""
if redis.call('EXISTS', rk(ARGV[2])) == 0 then return false end
return snapshot(ARGV[2])
"""
)

#: ARGV: P, room, from ('' for no check: all members), to ('' for everyone else)
RECIPIENTS = (
    _COMMON
    + r"""
local rid, from, to = ARGV[2], ARGV[3], ARGV[4]
if redis.call('EXISTS', rk(rid)) == 0 then return {'room'} end
if from ~= '' and redis.call('HEXISTS', pk(rid), from) == 0 then return {'peer', from} end
if to ~= '' then
  if redis.call('HEXISTS', pk(rid), to) == 0 then return {'peer', to} end
  return {'ok', {to}}
end
local out = {}
for _, pid in ipairs(redis.call('HKEYS', pk(rid))) do
  if pid ~= from then out[#out + 1] = pid end
end
return {'ok', out}
"""
)

#: Route messages to members without a live channel in the calling process: publish each to the
#: process holding the peer's channel, or (no holder, holder is the caller, or it stopped
#: refreshing its liveness key: it died or hangs, or nobody listens on its channel) queue it in the
#: outbox. Members only. Everything for one holder goes out as one PUBLISH, its lines joined by
#: newlines (JSON text has none), so a batch costs one round trip and one pub/sub message per
#: process instead of one per message.
#: ARGV: P, caller process, outbox key ttl ms, bytes one outbox may hold, bytes all may hold, then
#: entries: room, body (``ts \t from \t text``), outbox max (-1: no limit, for a message that was
#: already accepted and goes back), number of peers n, then n pairs (peer, seq or '' for a new
#: message). Returns per (entry, peer) in order: 0 gone, 1 sent, 2 queued, 3 full.
DELIVER = (
    # The hot path: its own small prelude (no snapshot helper) keeps Redis's cost per message low.
    r"""
local P = ARGV[1]
local PRES, SEQ, OBIDX = P .. 'presence', P .. 'seq', P .. 'obidx'
local OBB, OBT = P .. 'obbytes', P .. 'obtotal'
local me, ttl = ARGV[2], ARGV[3]
local max_bytes, total_max = tonumber(ARGV[4]), tonumber(ARGV[5])
local res, lines, sent, holders, alive = {}, {}, {}, {}, {}
local function queue(m, seq, body, ts, omax)
  local k = P .. 'ob:' .. m
  local size = #body
  local used = tonumber(redis.call('HGET', OBB, m) or '0')
  if used > 0 and redis.call('EXISTS', k) == 0 then
    -- the outbox key expired (its safety-net TTL): its bytes went with it
    redis.call('DECRBY', OBT, used)
    redis.call('HDEL', OBB, m)
    used = 0
  end
  if omax >= 0 then
    if redis.call('ZCARD', k) >= omax or used + size > max_bytes then return 3 end
    if tonumber(redis.call('GET', OBT) or '0') + size > total_max then return 3 end
  end
  redis.call('ZADD', k, seq, seq .. '\t' .. body)
  redis.call('PEXPIRE', k, ttl)
  redis.call('ZADD', OBIDX, 'LT', ts, m)
  redis.call('HINCRBY', OBB, m, size)
  redis.call('INCRBY', OBT, size)
  return 2
end
local i = 6
while i <= #ARGV do
  local rid, body, omax, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
  local ts = string.sub(body, 1, string.find(body, '\t', 1, true) - 1)
  i = i + 4
  for _ = 1, n do
    local pid, seq = ARGV[i], ARGV[i + 1]
    i = i + 2
    local m = rid .. '/' .. pid
    local status = 0
    if redis.call('HEXISTS', P .. 'peers:' .. rid, pid) == 1 then
      if seq == '' then seq = tostring(redis.call('HINCRBY', SEQ, m, 1)) end
      local holder = redis.call('HGET', PRES, m)
      if holder and holder ~= me then
        local up = alive[holder]
        if up == nil then
          up = redis.call('EXISTS', P .. 'proc:' .. holder) == 1
          alive[holder] = up
        end
        if up then
          if not lines[holder] then
            lines[holder], sent[holder] = {}, {}
            holders[#holders + 1] = holder
          end
          local l = lines[holder]
          l[#l + 1] = rid .. '\t' .. pid .. '\t' .. seq .. '\t' .. body
          local s = sent[holder]
          s[#s + 1] = {#res + 1, m, seq, body, ts, omax}
          status = 1
        end
      end
      if status == 0 then
        if holder then redis.call('HDEL', PRES, m) end
        status = queue(m, seq, body, ts, omax)
      end
    end
    res[#res + 1] = status
  end
end
for _, holder in ipairs(holders) do
  if redis.call('PUBLISH', P .. 'ch:' .. holder, table.concat(lines[holder], '\n')) == 0 then
    -- nobody listens there (the process lost its subscription): outboxes, in order
    for _, e in ipairs(sent[holder]) do
      if redis.call('HGET', PRES, e[2]) == holder then redis.call('HDEL', PRES, e[2]) end
      res[e[1]] = queue(e[2], e[3], e[4], e[5], e[6])
    end
  end
end
return res
"""
)

#: Refresh this process and claim peers: the caller holds their live channels. Mode ``drain``:
#: their outboxes are drained and returned; mode ``check``: per peer 1 when its outbox may hold
#: something (presence was not ours, or the outbox is not empty), so the caller drains just those.
#: ARGV: P, me, process ttl ms ('' to skip), mode, number of release pairs, release pairs (room,
#: peer: drop our presence if still ours), claim pairs (room, peer).
CLAIM = (
    _COMMON
    + r"""
local me, drain = ARGV[2], ARGV[4] == 'drain'
if ARGV[3] ~= '' then redis.call('SET', P .. 'proc:' .. me, '1', 'PX', ARGV[3]) end
local nrel = tonumber(ARGV[5])
local i = 6
for _ = 1, nrel do
  local m = ARGV[i] .. '/' .. ARGV[i + 1]
  if redis.call('HGET', PRES, m) == me then redis.call('HDEL', PRES, m) end
  i = i + 2
end
local res = {}
while i <= #ARGV do
  local rid, pid = ARGV[i], ARGV[i + 1]
  local m = rid .. '/' .. pid
  local out = {}
  if redis.call('HEXISTS', pk(rid), pid) == 1 then
    local k = ob(m)
    if drain then
      redis.call('HSET', PRES, m, me)
      out = redis.call('ZRANGE', k, 0, -1)
      if #out > 0 then
        redis.call('DEL', k)
        redis.call('ZREM', OBIDX, m)
      end
      forget_bytes(m)
    else
      -- check: 1 when something may have gone to the outbox meanwhile (the caller drains it)
      out = 0
      if redis.call('HGET', PRES, m) ~= me then
        redis.call('HSET', PRES, m, me)
        out = 1
      end
      if redis.call('EXISTS', k) == 1 then out = 1 end
    end
  end
  res[#res + 1] = out
  i = i + 2
end
return res
"""
)

#: Pop outbox items older than the deadline, each exactly once across processes.
#: ARGV: P, deadline, max outboxes. Returns pairs (m, {items}).
EXPIRE_OUTBOXES = (
    _COMMON
    + r"""
local deadline = tonumber(ARGV[2])
local due = redis.call('ZRANGEBYSCORE', OBIDX, '-inf', '(' .. ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
local res = {}
for _, m in ipairs(due) do
  local k = ob(m)
  local out = {}
  local oldest = false
  local freed = 0
  for _, item in ipairs(redis.call('ZRANGE', k, 0, -1)) do
    local t1 = string.find(item, '\t', 1, true)
    local t2 = string.find(item, '\t', t1 + 1, true)
    local ts = tonumber(string.sub(item, t1 + 1, t2 - 1))
    if ts < deadline then
      out[#out + 1] = item
      redis.call('ZREM', k, item)
      freed = freed + #item - t1
    elseif not oldest or ts < oldest then
      oldest = ts
    end
  end
  if oldest then
    redis.call('ZADD', OBIDX, oldest, m)
    redis.call('HINCRBY', OBB, m, -freed)
    redis.call('DECRBY', OBT, freed)
  else
    redis.call('ZREM', OBIDX, m)
    forget_bytes(m)
  end
  res[#res + 1] = m
  res[#res + 1] = out
end
return res
"""
)

#: ARGV: P, room, server peer, process, now. 1 when newly listed.
ADD_SERVER_PEER = (
    _COMMON
    + r"""
if redis.call('EXISTS', rk(ARGV[2])) == 0 then return 0 end
return redis.call('HSETNX', sk(ARGV[2]), ARGV[3] .. '|' .. ARGV[4], ARGV[5])
"""
)
