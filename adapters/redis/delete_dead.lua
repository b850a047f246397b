-- ARGV: id... Deletes the dead letters with these ids; returns how many.
local wanted = {}
for i = 1, #ARGV do wanted[ARGV[i]] = true end
local deleted = 0
for _, raw in ipairs(redis.call("lrange", DEAD, 0, -1)) do
  local ok, letter = pcall(cjson.decode, raw)
  if ok and type(letter) == "table" and type(letter.id) == "string" and wanted[letter.id] then
    deleted = deleted + redis.call("lrem", DEAD, 1, raw)
  end
end
return deleted
