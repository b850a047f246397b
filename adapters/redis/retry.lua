-- ARGV: consumer, id, queue, payload, eta_ms or "".
disown(ARGV[1], ARGV[2])
if drop_if_cancelled(ARGV[2]) then return 0 end
redis.call("hdel", CRASHES, ARGV[2])
if store(ARGV[2], ARGV[3], ARGV[4], ARGV[5], "") then wake(ARGV[3]) end
return 1
