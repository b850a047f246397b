-- ARGV: until_ms, consumer... Renews the consumers' leases and clears any suspicion of them; returns the
-- cancellation requests for the tasks they own, {id, consumer, ...}, and forgets marks whose task nobody owns
-- any more (acknowledged: it finished first). With no mark at all this is the two writes of a renewal.
local until_ms = ARGV[1]
local mine, fields, consumers = {}, {}, {}
for i = 2, #ARGV do
  mine[ARGV[i]] = true
  consumers[#consumers + 1] = ARGV[i]
  fields[#fields + 1] = until_ms
  fields[#fields + 1] = ARGV[i]
end
call_many("zadd", LEASES, fields)
call_many("hdel", SUSPECTS, consumers)
if redis.call("exists", CANCELS) == 0 then return {} end
local marked = redis.call("hkeys", CANCELS)
local records = hmget_many(INFLIGHT, marked)
local out = {}
for i, id in ipairs(marked) do
  local record = records[i]
  if not record then
    redis.call("hdel", CANCELS, id)
  else
    local consumer = string.match(record, "^[^|]*|[^|]*|(.*)$")
    if consumer and mine[consumer] then
      out[#out + 1] = id
      out[#out + 1] = consumer
    end
  end
end
return out
