-- Rate limits inside reserve.lua: a line-by-line mirror of hexq.core.rate_limit (RateGate, quota, charge,
-- allowed_at, deferral, task_name_on_wire), which explains the algorithm (GCRA) and is what the unit tests
-- pin; change both together. Times are integer microseconds. Only a reservation given limits runs any of
-- this: an app without rate limits pays nothing.

-- The task name of a stored envelope, as RateLimits passes it (JSON-escaped once, twice when signed),
-- found between two separators near its start without decoding the JSON; nil when it is not hexq's.
local function rate_wire_name(stored)
  if not stored then return nil end
  local before, after
  if string.sub(stored, 1, 5) == '{"v":' then
    before, after = '","task":"', '","queue":"'
  elseif string.sub(stored, 1, 8) == '{"sig":"' then
    before, after = '\\",\\"task\\":\\"', '\\",\\"queue\\":\\"'
  else
    return nil
  end
  local _, b = string.find(stored, before, 1, true)
  if not b then return nil end
  local c = string.find(stored, after, b + 1, true)
  if not c then return nil end
  return string.sub(stored, b + 1, c - 1)
end

-- args[first .. first + count - 1]: for each limit "t" (a task's) or "q" (a queue's), then the task's wire
-- name or the queue, the state key, the interval and the tolerance. One HMGET reads every state.
local function rate_gate(args, first, count, now_ms)
  local gate = {tasks = {}, queues = {}, state = {}, changed = {}, blocked = {}, next = false,
                now = tonumber(now_ms) * 1000, limits_tasks = false}
  local keys = {}
  for i = first, first + count - 1, 5 do
    local limit = {key = args[i + 2], interval = tonumber(args[i + 3]), tolerance = tonumber(args[i + 4])}
    if args[i] == "t" then
      gate.tasks[args[i + 1]] = limit
      gate.limits_tasks = true
    else
      gate.queues[args[i + 1]] = limit
    end
    keys[#keys + 1] = limit.key
  end
  local stored = redis.call("hmget", RATES, unpack(keys))
  for i, key in ipairs(keys) do
    local tat, cursor = string.match(stored[i] or "", "^(%d+) (%d+)$")
    gate.state[key] = {tonumber(tat) or 0, tonumber(cursor) or 0}
  end
  return gate
end

local function rate_quota(tat, now, limit, wanted)
  local start = math.max(tat, now)
  if start - limit.tolerance > now then return 0 end
  return math.min(wanted, math.floor((now + limit.tolerance - start) / limit.interval) + 1)
end

local function rate_allowed_at(tat, now, limit)
  return math.max(now, math.max(tat, now) - limit.tolerance)
end

local function rate_bound(gate, us)
  if not gate.next or us < gate.next then gate.next = us end
end

local function rate_store(gate, key, tat, cursor)
  gate.state[key] = {tat, cursor}
  gate.changed[key] = true
end

local function rate_queue_quota(gate, queue, wanted)
  local limit = gate.queues[queue]
  if not limit then return wanted end
  local tat = gate.state[limit.key][1]
  local granted = rate_quota(tat, gate.now, limit, wanted)
  if granted == 0 then
    gate.blocked[queue] = true
    rate_bound(gate, rate_allowed_at(tat, gate.now, limit))
  end
  return granted
end

local function rate_charge_queue(gate, queue, count)
  local limit = gate.queues[queue]
  if limit and count > 0 then
    local state = gate.state[limit.key]
    rate_store(gate, limit.key, math.max(state[1], gate.now) + count * limit.interval, state[2])
  end
end

-- false: the task may start now (its limit is charged); else the eta (ms) it is deferred to.
local function rate_admit(gate, queue, stored)
  if string.sub(queue, 1, 1) == "@" then return false end
  local limit = gate.tasks[rate_wire_name(stored) or ""]
  if not limit then return false end
  local tat, cursor = gate.state[limit.key][1], gate.state[limit.key][2]
  if rate_quota(tat, gate.now, limit, 1) > 0 then
    rate_store(gate, limit.key, math.max(tat, gate.now) + limit.interval, cursor)
    return false
  end
  local slot = math.max(rate_allowed_at(tat, gate.now, limit), cursor + limit.interval)
  rate_store(gate, limit.key, tat, slot)
  rate_bound(gate, slot)
  return math.ceil(slot / 1000)
end

-- reserve.lua's take under rate limits: up to `limit` tasks from the first queue that has any it may start
-- now. A queue over its own limit is skipped (its tasks stay); a task over its own limit goes to its
-- queue's eta set, and the queue is woken as for any stored eta task. Scans at most CHUNK tasks per queue.
-- Returns the ids, the queue, and their payloads when they were read (task limits), else nil.
local function rate_take(gate, queues, limit)
  for _, queue in ipairs(queues) do
    local kept, payloads, scanned, deferred = {}, {}, 0, false
    while #kept < limit and scanned < CHUNK do
      local want = rate_queue_quota(gate, queue, math.min(limit - #kept, CHUNK - scanned))
      if want == 0 then break end
      local ids = redis.call("lpop", qkey(queue), want)
      if not ids or #ids == 0 then break end
      scanned = scanned + #ids
      local stored = gate.limits_tasks and redis.call("hmget", TASKS, unpack(ids))
      local before = #kept
      for i, id in ipairs(ids) do
        local eta = stored and rate_admit(gate, queue, stored[i])
        if eta then
          redis.call("zadd", etakey(queue), eta, id)
          deferred = true
        else
          kept[#kept + 1] = id
          if stored then payloads[#kept] = stored[i] end
        end
      end
      rate_charge_queue(gate, queue, #kept - before)
    end
    if deferred then wake(queue) end
    if #kept > 0 then return kept, queue, gate.limits_tasks and payloads or nil end
  end
  return {}, false, nil
end

local function rate_save(gate)
  local fields = {}
  for key in pairs(gate.changed) do
    fields[#fields + 1] = key
    fields[#fields + 1] = string.format("%d %d", gate.state[key][1], gate.state[key][2])
  end
  if #fields > 0 then redis.call("hset", RATES, unpack(fields)) end
end
