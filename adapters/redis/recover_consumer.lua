-- ARGV: consumer, crashed id...
local crashed = {}
for i = 2, #ARGV do crashed[ARGV[i]] = true end
return recover(ARGV[1], crashed)
