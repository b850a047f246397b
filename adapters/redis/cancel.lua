-- ARGV: id, outcome ttl_ms or "", outcome document or "", queue... (the queues it may be in, looked at when
-- its envelope names none that holds it). Returns what it found: "cancelled" (queued or waiting: removed, its
-- outcome kept), "cancelling" (owned: marked with the outcome to keep, see drop_if_cancelled in _lib.lua),
-- "finished" (not stored, its outcome kept) or "unknown".
local id, ttl_ms, document = ARGV[1], ARGV[2], ARGV[3]
if redis.call("hexists", INFLIGHT, id) == 1 then
  redis.call("hset", CANCELS, id, ttl_ms == "" and "1" or (ttl_ms .. "\n" .. document))
  return "cancelling"
end
local payload = redis.call("hget", TASKS, id)
if not payload then
  return kept_outcome(id) and "finished" or "unknown"
end

-- Off its eta set (with its dedup key) or out of its queue; true when it was there.
local function unqueue(queue)
  if redis.call("zrem", etakey(queue), id) == 1 then
    local dk = dedupkey(queue)
    local key = redis.call("hget", dk, "i:" .. id)
    if key then redis.call("hdel", dk, "i:" .. id, "k:" .. key) end
    return true
  end
  return redis.call("lrem", qkey(queue), 1, id) == 1
end

-- No index maps an id to its queue: the envelope names it (inside "body" when signed), else the queues given
-- are searched (LREM is O(queue length): cancelling is an operator's action, not a hot path).
local ok, doc = pcall(cjson.decode, payload)
if ok and type(doc) == "table" and type(doc.body) == "string" then ok, doc = pcall(cjson.decode, doc.body) end
local named = ok and type(doc) == "table" and type(doc.queue) == "string" and doc.queue
if not (named and unqueue(named)) then
  for i = 4, #ARGV do
    if ARGV[i] ~= named and unqueue(ARGV[i]) then break end
  end
end
redis.call("hdel", TASKS, id)
redis.call("hdel", CRASHES, id)
unlock({id})
if ttl_ms ~= "" then record_outcome(id, document, ttl_ms) end
return "cancelled"
