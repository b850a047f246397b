-- ARGV: now_ms, most consumers to recover. Returns {consumers recovered, tasks put back}.
return recover_expired(ARGV[1], tonumber(ARGV[2]))
