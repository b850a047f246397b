-- ARGV: schedule key, fire_ms, id, queue, payload, eta_ms or "", dedup_key or "". Compare-and-set.
local last = redis.call("hget", CRON, ARGV[1])
if last and tonumber(last) >= tonumber(ARGV[2]) then return 0 end
redis.call("hset", CRON, ARGV[1], ARGV[2])
store(ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
wake(1)
return 1
