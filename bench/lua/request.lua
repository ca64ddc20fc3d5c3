-- wrk script shared by every cell of bench/http.sh, configured through env vars:
--   BENCH_METHOD   request method: GET, HEAD, GETATTR, READDIR, PUT (default GET)
--   BENCH_HEADERS  extra request headers, "Name: value" lines separated by newlines
--   BENCH_BODY     path of a file sent as the request body (optional)
--   BENCH_EXPECT   expected status; when set, a response() hook checks every
--                  response (status, and "Connection: close" from the server).
--                  Left unset for big bodies: wrk then copies each body into Lua,
--                  which halves its 1 MiB GET throughput.
-- done() prints one machine-readable line for http.sh:
--   BENCH requests=N bytes=N status_errors=N hooked=0|1 unexpected=N closes=N statuses=S

wrk.method = os.getenv("BENCH_METHOD") or "GET"

for line in (os.getenv("BENCH_HEADERS") or ""):gmatch("[^\n]+") do
  local name, value = line:match("^%s*([^:]+):%s*(.-)%s*$")
  if name then wrk.headers[name] = value end
end

local body_path = os.getenv("BENCH_BODY")
if body_path and body_path ~= "" then
  local f = assert(io.open(body_path, "rb"))
  wrk.body = f:read("*a") -- wrk.format() adds the matching Content-Length
  f:close()
end

-- wrk checks the request with its HTTP parser before starting, and that parser
-- only knows the standard methods: it rejects GETATTR and READDIR. The check calls
-- request() once, in the first thread's Lua state, after setup() and init() and
-- before any real request. So that single call gets the same request with method
-- GET, and every later call the real one. Every cell uses request(), known methods
-- too, so the client does the same work per request against both servers.
local real_request, check_request
function init(args)
  real_request = wrk.format()
  check_request = wrk.format("GET")
end
function request()
  if verify_pending then
    verify_pending = false
    return check_request
  end
  return real_request
end

-- Per-thread counters: globals, so that done() can read them with thread:get().
unexpected = 0 -- responses whose status was not BENCH_EXPECT
closes = 0     -- responses carrying "Connection: close"
statuses = ""  -- unexpected statuses seen, e.g. "404x12,500x3"

local expect = tonumber(os.getenv("BENCH_EXPECT") or "")
if expect then
  local seen = {}
  function response(status, headers, body)
    if status ~= expect then
      unexpected = unexpected + 1
      seen[status] = (seen[status] or 0) + 1
      local parts = {}
      for s, n in pairs(seen) do parts[#parts + 1] = s .. "x" .. n end
      statuses = table.concat(parts, ",")
    end
    local conn = headers["Connection"] or headers["connection"]
    if conn and conn:lower():find("close", 1, true) then closes = closes + 1 end
  end
end

local threads = {}
function setup(thread)
  threads[#threads + 1] = thread
  thread:set("verify_pending", #threads == 1) -- wrk checks thread 1's request only
end

function done(summary, latency, requests)
  local u, c, sum, st = 0, 0, {}, {}
  for _, t in ipairs(threads) do
    u = u + (t:get("unexpected") or 0)
    c = c + (t:get("closes") or 0)
    for code, n in (t:get("statuses") or ""):gmatch("(%d+)x(%d+)") do
      sum[code] = (sum[code] or 0) + tonumber(n)
    end
  end
  for code, n in pairs(sum) do st[#st + 1] = code .. "x" .. n end
  io.write(string.format(
    "BENCH requests=%d bytes=%d status_errors=%d hooked=%d unexpected=%d closes=%d statuses=%s\n",
    summary.requests, summary.bytes, summary.errors.status, expect and 1 or 0,
    u, c, #st > 0 and table.concat(st, ",") or "-"))
end
