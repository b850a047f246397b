-- ARGV: id. The dead letters with that id, newest first (read-only). The record is decoded only when the
-- id appears in its text, so a search through a long list mostly costs string.find.
local wanted = ARGV[1]
local found = {}
for _, raw in ipairs(redis.call("lrange", DEAD, 0, -1)) do
  if string.find(raw, wanted, 1, true) then
    local ok, letter = pcall(cjson.decode, raw)
    if ok and type(letter) == "table" and letter.id == wanted then found[#found + 1] = raw end
  end
end
return found
