-- ARGV: schedule key, fire_ms, the task as a packed record (see store_record). Compare-and-set.
local last = redis.call("hget", CRON, ARGV[1])
if last and tonumber(last) >= tonumber(ARGV[2]) then return 0 end
redis.call("hset", CRON, ARGV[1], ARGV[2])
local queue = store_record(ARGV[3])
if queue then wake(queue) end
return 1
