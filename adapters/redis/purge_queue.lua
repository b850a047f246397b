-- ARGV: queue. Returns {pending deleted, eta deleted}.
local q, ek = qkey(ARGV[1]), etakey(ARGV[1])
local pending = redis.call("lrange", q, 0, -1)
local waiting = redis.call("zrange", ek, 0, -1)
call_many("hdel", TASKS, pending)
call_many("hdel", CRASHES, pending)
call_many("hdel", TASKS, waiting)
call_many("hdel", CRASHES, waiting)
redis.call("del", q, ek, dedupkey(ARGV[1]))
unlock(pending)
unlock(waiting)
-- Rate limit cursors may point past tasks that are gone now: the next deferred task starts afresh.
local rates = redis.call("hgetall", RATES)
for i = 1, #rates, 2 do
  local tat = string.match(rates[i + 1], "^(%d+) ")
  if tat then redis.call("hset", RATES, rates[i], tat .. " 0") end
end
return {#pending, #waiting}
