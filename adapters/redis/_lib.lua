-- Shared helpers, prepended to every hexq script (see keys.py for the layout).
-- KEYS[1] is always "{prefix}:tasks": it routes the call to the prefix's hash slot, and the other key
-- names are derived from it, because recovery touches queues and consumers nobody can name in advance.
local TASKS = KEYS[1]
local B = string.sub(TASKS, 1, -6)
local CRASHES = B .. "crashes"
local INFLIGHT = B .. "inflight"
local LEASES = B .. "leases"
local WAKE = B .. "wake"
local DEAD = B .. "dead"
local CRON = B .. "cron"
local SUSPECTS = B .. "suspects"
-- An expired lease is first only suspected: its consumer is recovered if it is still not renewed this
-- long after a reservation first saw it expired. Nobody can renew while Redis is unreachable, so without
-- this the first reservation after an outage would take tasks that live workers are still running.
local EXPIRY_GRACE_MS = 3000
local WAKE_CAP = 64
-- Lua's C stack bounds unpack(); every variadic call goes through chunks of this size.
local CHUNK = 1000

local function qkey(queue) return B .. "q:" .. queue end
local function etakey(queue) return B .. "eta:" .. queue end
local function dedupkey(queue) return B .. "etakeys:" .. queue end
local function ownedkey(consumer) return B .. "owned:" .. consumer end

local function call_many(cmd, key, list)
  for i = 1, #list, CHUNK do
    redis.call(cmd, key, unpack(list, i, math.min(i + CHUNK - 1, #list)))
  end
end

local function hmget_many(key, ids)
  local out = {}
  for i = 1, #ids, CHUNK do
    local part = redis.call("hmget", key, unpack(ids, i, math.min(i + CHUNK - 1, #ids)))
    for j = 1, #part do out[i + j - 1] = part[j] end
  end
  return out
end

-- Idle workers block on BLPOP of the wake list; the cap keeps a burst from piling up tokens.
local function wake(n)
  if n <= 0 then return end
  local add = math.min(n, WAKE_CAP - redis.call("llen", WAKE))
  if add > 0 then
    local tokens = {}
    for i = 1, add do tokens[i] = "1" end
    redis.call("rpush", WAKE, unpack(tokens))
  end
end

-- In-flight records are "since_ms|queue|consumer"; queue names cannot contain '|', consumers may.
local function queue_of(record)
  return string.match(record, "^[^|]*|([^|]*)|")
end

local function store(id, queue, payload, eta, dedup)
  if eta == "" then
    redis.call("hset", TASKS, id, payload)
    redis.call("rpush", qkey(queue), id)
    return
  end
  local ek = etakey(queue)
  if dedup ~= "" then
    local dk = dedupkey(queue)
    local old = redis.call("hget", dk, "k:" .. dedup)
    if old and redis.call("zscore", ek, old) then
      id = old
    else
      redis.call("hset", dk, "k:" .. dedup, id, "i:" .. id, dedup)
    end
  end
  redis.call("hset", TASKS, id, payload)
  redis.call("zadd", ek, eta, id)
end

-- An outgoing task as the client packs it: "id\nqueue\neta_ms or empty\ndedup_key or empty\npayload"
-- (only the payload, last, may contain newlines).
local function store_record(record)
  local a = string.find(record, "\n", 1, true)
  local b = string.find(record, "\n", a + 1, true)
  local c = string.find(record, "\n", b + 1, true)
  local d = string.find(record, "\n", c + 1, true)
  store(string.sub(record, 1, a - 1), string.sub(record, a + 1, b - 1), string.sub(record, d + 1),
        string.sub(record, b + 1, c - 1), string.sub(record, c + 1, d - 1))
end

-- Ends ownership of one task; true if the consumer owned it.
local function disown(consumer, id)
  if redis.call("lrem", ownedkey(consumer), 1, id) > 0 then
    redis.call("hdel", INFLIGHT, id)
    return true
  end
  return false
end

local function ack(consumer, ids)
  if #ids == 0 then return end
  local owned = ownedkey(consumer)
  local gone = {}
  for _, id in ipairs(ids) do
    if redis.call("lrem", owned, 1, id) > 0 then gone[#gone + 1] = id end
  end
  call_many("hdel", TASKS, ids)
  call_many("hdel", CRASHES, ids)
  if #gone > 0 then call_many("hdel", INFLIGHT, gone) end
end

local function promote(queue, now)
  local ek = etakey(queue)
  local due = redis.call("zrangebyscore", ek, "-inf", now, "LIMIT", 0, CHUNK)
  if #due == 0 then return 0 end
  redis.call("zrem", ek, unpack(due))
  redis.call("rpush", qkey(queue), unpack(due))
  local dk = dedupkey(queue)
  if redis.call("exists", dk) == 1 then
    local fields = {}
    for i, id in ipairs(due) do fields[i] = "i:" .. id end
    local keys = redis.call("hmget", dk, unpack(fields))
    local drop = {}
    for i = 1, #fields do
      if keys[i] then
        drop[#drop + 1] = fields[i]
        drop[#drop + 1] = "k:" .. keys[i]
      end
    end
    call_many("hdel", dk, drop)
  end
  return #due
end

-- Puts everything the consumer owned back at the head of its queue, in reservation order.
-- crashed: true (count a crash for every task) or a set of ids.
local function recover(consumer, crashed)
  local owned = ownedkey(consumer)
  local ids = redis.call("lrange", owned, 0, -1)
  redis.call("del", owned)
  redis.call("zrem", LEASES, consumer)
  redis.call("hdel", SUSPECTS, consumer)
  if #ids == 0 then return 0 end
  local records = hmget_many(INFLIGHT, ids)
  local back = 0
  for i = #ids, 1, -1 do
    local id, record = ids[i], records[i]
    local queue = record and queue_of(record)
    if queue then
      if crashed == true or crashed[id] then redis.call("hincrby", CRASHES, id, 1) end
      redis.call("lpush", qkey(queue), id)
      back = back + 1
    end
  end
  call_many("hdel", INFLIGHT, ids)
  wake(back)
  return back
end

-- Returns consumers recovered, tasks put back.
local function recover_expired(now, max_consumers)
  now = tonumber(now)
  local expired = redis.call("zrangebyscore", LEASES, "-inf", "(" .. now, "LIMIT", 0, max_consumers * 10)
  local recovered, tasks = 0, 0
  for _, consumer in ipairs(expired) do
    if recovered >= max_consumers then break end
    local seen = redis.call("hget", SUSPECTS, consumer)
    if not seen then
      redis.call("hset", SUSPECTS, consumer, now)
    elseif now - tonumber(seen) >= EXPIRY_GRACE_MS then
      tasks = tasks + recover(consumer, true)
      recovered = recovered + 1
    end
  end
  return {recovered, tasks}
end

