-- ARGV: task id, payload, the oldest heartbeat (ms) that counts as live, the prefix of a worker's private
-- broadcast queue (hexq.core.queues). One copy per live worker (heartbeat in {p}:workers at or after the
-- cutoff), under the id "<task id>.<n>", at the tail of that worker's queue, where its children look first.
-- A queue that was empty wakes the worker's idle children (store, wake). Publishes "<id> <copies>" on
-- {p}:announce. Returns how many copies.
local id, payload, prefix = ARGV[1], ARGV[2], ARGV[4]
local workers = redis.call("zrangebyscore", WORKERS, ARGV[3], "+inf")
for n, worker in ipairs(workers) do
  local queue = prefix .. worker
  if store(id .. "." .. n, queue, payload, "", "") then wake(queue) end
end
-- Announced for whoever watches (a dashboard); the copies above are what workers run, so a subscriber that
-- misses this loses nothing. A new channel name: workers of older versions relay what {p}:broadcast carries.
redis.call("publish", ANNOUNCE, id .. " " .. #workers)
return #workers
