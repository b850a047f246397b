-- ARGV: consumer, limit, now_ms, lease_ms, grace_ms, idle, stale_ms, n_queues, queue..., ack id...; with rate
-- limits, n_queues is "<n_queues>+<n_rate_args>" and the rate arguments (rate_gate in _rate_limit.lua) come
-- between the queues and the acks, so a reservation without limits reads exactly what it always did.
-- grace_ms and stale_ms are LeaseRules.expiry_grace_ms and stale_worker_ms, passed by the caller: policy is
-- not written in the scripts. idle: "0" the consumer is not marked idle, "1" it may be (an earlier
-- reservation found nothing), "2" it may be and this call follows its BLPOP of the wake lists (see wake()
-- in _lib.lua). Returns {next_eta_ms or nil, served queue or nil, id, payload or nil, crashes, id, ...}.
local consumer, now = ARGV[1], ARGV[3]
local limit = math.min(tonumber(ARGV[2]), CHUNK)
local grace = tonumber(ARGV[5])
local idle, stale = ARGV[6], tonumber(ARGV[7])
local nq, nr = tonumber(ARGV[8]), 0
if not nq then
  local queued, rated = string.match(ARGV[8], "^(%d+)%+(%d+)$")
  nq, nr = tonumber(queued), tonumber(rated)
end
local queues = {}
for i = 1, nq do queues[i] = ARGV[8 + i] end
local acks = {}
for i = 9 + nq + nr, #ARGV do acks[#acks + 1] = ARGV[i] end
local gate = nr > 0 and rate_gate(ARGV, 9 + nq, nr, now)
-- Each reservation recovers at most this many expired consumers, so one call never holds Redis for long;
-- the next reservations recover the rest.
local RECOVER_PER_RESERVE = 10

-- An expired lease is first only suspected; its consumer is recovered by a reservation at least grace_ms
-- later, unless renew_leases cleared the suspicion meanwhile (see hexq.core.rules for why).
local function recover_expired()
  local t = tonumber(now)
  local expired = redis.call("zrangebyscore", LEASES, "-inf", "(" .. t, "LIMIT", 0, RECOVER_PER_RESERVE * 10)
  local recovered = 0
  for _, suspect in ipairs(expired) do
    if recovered >= RECOVER_PER_RESERVE then return end
    local seen = redis.call("hget", SUSPECTS, suspect)
    if not seen then
      redis.call("hset", SUSPECTS, suspect, t)
    elseif t - tonumber(seen) >= grace then
      -- Nobody knows which of an expired consumer's tasks had started: count a crash for each.
      recover(suspect, true)
      recovered = recovered + 1
    end
  end
end

-- Found every queue empty: idle on each until a reservation takes work. Marks not renewed for the
-- stale-worker age (their consumer died idle) are dropped, and a queue nobody marks any more loses its key.
-- A queue skipped while over its rate limit is not waited on: its tasks wait for their time (which bounds
-- the idle wait), and a wake-up for each task stored there meanwhile would only wake us to skip it again.
local function mark_idle()
  local t = tonumber(now)
  for _, queue in ipairs(queues) do
    local key = idlekey(queue)
    if gate and gate.blocked[queue] then
      if idle ~= "0" then redis.call("zrem", key, consumer) end
    else
      redis.call("zremrangebyscore", key, "-inf", "(" .. (t - stale))
      redis.call("zadd", key, t, consumer)
      redis.call("pexpire", key, stale)
      arm(queue, stale)
    end
  end
end

-- Took work: no longer idle. After its BLPOP (which may have taken a token) or after promoting eta tasks,
-- it restores the invariants of _lib.lua for each queue others are idle on: a token if the queue is still
-- not empty (the wake-up passed on to the next idle consumer), else the queue armed.
local function busy(woken)
  if idle ~= "0" then
    for _, queue in ipairs(queues) do redis.call("zrem", idlekey(queue), consumer) end
  end
  if not woken then return end
  for _, queue in ipairs(queues) do
    if redis.call("exists", idlekey(queue)) == 1 then
      local tokens = wakekey(queue)
      if redis.call("llen", qkey(queue)) == 0 then
        arm(queue, stale)
      elseif redis.call("llen", tokens) == 0 then
        redis.call("rpush", tokens, "1")
      end
    end
  end
end

local function earliest_eta(queue)
  local first = redis.call("zrange", etakey(queue), 0, 0, "WITHSCORES")
  return first[2] and tonumber(first[2])
end

ack(consumer, acks)
-- The earliest eta of each queue is read first, and promotion runs only when it is due: one command per
-- queue when nothing is, instead of a range query for promotion and another for the next eta.
local next_eta, promoted, t = false, 0, tonumber(now)
for _, queue in ipairs(queues) do
  local eta = earliest_eta(queue)
  if eta and eta <= t then
    promoted = promoted + promote(queue, now)
    eta = earliest_eta(queue)
  end
  if eta and (not next_eta or eta < next_eta) then next_eta = eta end
end
recover_expired()

local taken, served, payloads = {}, false, nil
if limit > 0 and gate then
  taken, served, payloads = rate_take(gate, queues, limit)
  rate_save(gate)
  if gate.next then
    local allowed = math.ceil(gate.next / 1000)
    if not next_eta or allowed < next_eta then next_eta = allowed end
  end
elseif limit > 0 then
  for _, queue in ipairs(queues) do
    local ids = redis.call("lpop", qkey(queue), limit)
    if ids and #ids > 0 then
      taken, served = ids, queue
      break
    end
  end
end

local out = {next_eta, served}
if limit > 0 then
  if #taken == 0 then
    mark_idle()
    return out
  end
  busy(idle == "2" or promoted > 0)
end
if #taken == 0 then return out end
redis.call("rpush", ownedkey(consumer), unpack(taken))
local record = now .. "|" .. served .. "|" .. consumer
local fields = {INFLIGHT_MARK, INFLIGHT_MARK_VALUE}  -- with every batch: see keys.py
for _, id in ipairs(taken) do
  fields[#fields + 1] = id
  fields[#fields + 1] = record
end
redis.call("hset", INFLIGHT, unpack(fields))
redis.call("zadd", LEASES, tonumber(now) + tonumber(ARGV[4]), consumer)
-- A consumer that reserves is alive: a suspicion raised while its lease looked expired no longer holds.
redis.call("hdel", SUSPECTS, consumer)
payloads = payloads or redis.call("hmget", TASKS, unpack(taken))
local crashes = redis.call("exists", CRASHES) == 1 and redis.call("hmget", CRASHES, unpack(taken)) or {}
for i, id in ipairs(taken) do
  out[#out + 1] = id
  out[#out + 1] = payloads[i]
  out[#out + 1] = tonumber(crashes[i]) or 0
end
return out
