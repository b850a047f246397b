-- ARGV: "all" or "ids", id... Requeues oldest first; letters without a payload are dropped.
local all = ARGV[1] == "all"
local wanted = {}
for i = 2, #ARGV do wanted[ARGV[i]] = true end
local records = redis.call("lrange", DEAD, 0, -1)
local requeued, touched = 0, {}
for i = #records, 1, -1 do
  local raw = records[i]
  local ok, letter = pcall(cjson.decode, raw)
  if not ok or type(letter) ~= "table" then letter = {} end
  local id = letter.id
  if all or (type(id) == "string" and wanted[id]) then
    if not all then redis.call("lrem", DEAD, 1, raw) end
    if type(id) == "string" and type(letter.queue) == "string" and type(letter.payload) == "string" then
      redis.call("hdel", CRASHES, id)
      redis.call("del", resultkey(id))  -- its kept outcome, if any: it runs again and will have a new one
      if store(id, letter.queue, letter.payload, "", "") then touched[#touched + 1] = letter.queue end
      requeued = requeued + 1
    end
  end
end
if all then redis.call("del", DEAD) end
wake_each(touched)
return requeued
