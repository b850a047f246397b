-- ARGV: consumer, id, queue, why ("expired" or "cancelled")[, outcome ttl_ms, outcome document]. The task
-- ends unrun, for good; its outcome is kept (the one given, else the one its cancellation mark carries).
disown(ARGV[1], ARGV[2])
redis.call("hdel", TASKS, ARGV[2])
redis.call("hdel", CRASHES, ARGV[2])
local mark = redis.call("hget", CANCELS, ARGV[2])
if mark then redis.call("hdel", CANCELS, ARGV[2]) end
if ARGV[6] then
  record_outcome(ARGV[2], ARGV[6], ARGV[5])
elseif mark then
  keep_marked_outcome(ARGV[2], mark)
end
if ARGV[4] == "expired" then redis.call("hincrby", EXPIRED, ARGV[3], 1) end
unlock({ARGV[2]})
return 1
