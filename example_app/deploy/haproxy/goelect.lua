-- An HAProxy action that holds a request while no server of a backend is usable:
--
--     http-request lua.goelect_wait_for_leader BACKEND MAX_MS
--
-- With one backend whose servers are UP only on the leader (checked on
-- GET /_goelect/leader), "no server is usable" means the cluster is between two
-- leaders: an election after a crash, or a hand-over. It lasts about one election
-- timeout plus one check interval at most, so a request that waits that long is
-- served instead of answered 503. After MAX_MS the request goes on (and gets
-- HAProxy's 503 if there is still no leader).
--
-- nbsrv() counts the backup servers when no other is usable: give it a backend
-- without one (haproxy.cfg's "waitroom").

local STEP_MS = 5

core.register_action("goelect_wait_for_leader", { "http-req" }, function(txn, backend, max_ms)
    local left = tonumber(max_ms) or 0
    while left > 0 and txn.f:nbsrv(backend) == 0 do
        core.msleep(STEP_MS)
        left = left - STEP_MS
    end
end, 2)
