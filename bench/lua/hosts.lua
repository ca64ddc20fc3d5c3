-- wrk script for bench/identity.sh: GETATTR of BENCH_PATH, each request to a
-- Host drawn at random from site0.test .. site<N-1>.test (BENCH_HOSTS = N;
-- 1 means every request to site0.test). wrk counts statuses >= 400 as
-- status errors.
-- done() prints: BENCH requests=N status_errors=N

local hosts = tonumber(os.getenv("BENCH_HOSTS") or "1")
local path = os.getenv("BENCH_PATH") or "/fs/f"
local reqs = {}
local check

function init(args)
  for i = 0, hosts - 1 do
    reqs[i] = wrk.format("GETATTR", path, { Host = "site" .. i .. ".test" })
  end
  -- wrk's own parser rejects GETATTR: its one check request is a GET.
  check = wrk.format("GET", path, { Host = "site0.test" })
  math.randomseed(os.time() + (args and #args or 0))
end

local checked = false
function request()
  if not checked then
    checked = true
    return check
  end
  return reqs[math.random(0, hosts - 1)]
end

function done(summary, latency, requests)
  io.write(string.format("BENCH requests=%d status_errors=%d\n",
    summary.requests, summary.errors.status))
end
