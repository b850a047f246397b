-- ARGV: id, arm_ms. Returns the task's kept outcome document; or, when it has none yet, leaves a waiter's
-- mark in its result key (kept at least arm_ms) so that the script that keeps the outcome pushes the task's
-- wake list (record_outcome in _lib.lua), and returns false: the caller then blocks on that list. arm_ms 0
-- only reads. One script, so an outcome kept between the read and the mark cannot be missed.
local id, arm_ms = ARGV[1], tonumber(ARGV[2])
local key = resultkey(id)
local found = redis.call("get", key)
if found and found ~= WAITING then return found end
if arm_ms > 0 and redis.call("pttl", key) < arm_ms then
  redis.call("set", key, WAITING, "PX", arm_ms)
end
return false
