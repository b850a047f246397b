-- ARGV: id, now_ms. Read only. Returns {live state or "", kept outcome document or nil}: "running" while a
-- consumer owns the task, "scheduled" while it waits in its queue's eta set for a time after now_ms, "queued"
-- while it is otherwise stored; "" when it is not stored.
local id = ARGV[1]
local outcome = kept_outcome(id)
if redis.call("hexists", INFLIGHT, id) == 1 then return {"running", outcome} end
local payload = redis.call("hget", TASKS, id)
if not payload then return {"", outcome} end
-- The queue whose eta set may hold it is in the envelope (signed envelopes carry it in their body).
local ok, envelope = pcall(cjson.decode, payload)
if ok and type(envelope) == "table" and type(envelope.body) == "string" then
  ok, envelope = pcall(cjson.decode, envelope.body)
end
if ok and type(envelope) == "table" and type(envelope.queue) == "string" then
  local eta = redis.call("zscore", etakey(envelope.queue), id)
  if eta and tonumber(eta) > tonumber(ARGV[2]) then return {"scheduled", outcome} end
end
return {"queued", outcome}
