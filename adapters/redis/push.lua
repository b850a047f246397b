-- ARGV: id, queue, payload. One runnable task: .delay()'s hot path, what enqueue does for it without
-- unpacking a record or a loop (Redis spends about a third less CPU on it than on enqueue's). It is sent when
-- the MULTI of a .delay() failed, and again when its own reply was lost: a .delay()'s id is new, so finding
-- its payload means one of those did store it (HSETNX, no dearer than HSET), and it is not queued twice.
if redis.call("hsetnx", TASKS, ARGV[1], ARGV[3]) == 0 then return 0 end
if redis.call("rpush", qkey(ARGV[2]), ARGV[1]) == 1 then wake(ARGV[2]) end
return 1
