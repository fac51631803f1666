-- POST a JSON body template to wrk's URL, splicing per-request values into it.
--
--   wrk -s bench/wrk/post.lua URL -- BODY_FILE API_KEY [PROFILES] [RUN_TAG]
--
-- BODY_FILE holds the body with placeholders: {{U}} becomes a value unique to the request
-- (RUN_TAG-thread-counter), {{P}} a profile number (counter % PROFILES), so that events do not
-- dedupe in processing and profiles repeat as they do in real traffic. Headers are what the
-- official SDKs send (private key, revision 2026-10-15, JSON:API content type).
--
-- done() prints one line, `WRK_JSON {...}`, with the exact figures (requests, errors, latency
-- percentiles in microseconds and a count of responses by status) for bench/ingest.py.

local pieces, kinds = {}, {}
local profiles = 10000
local prefix = "r"
local counter = 0
statuses = {}

local threads = {}

function setup(thread)
   table.insert(threads, thread)
   thread:set("thread_id", #threads)
end

function init(args)
   local f = assert(io.open(args[1], "rb"))
   local template = f:read("*a")
   f:close()
   profiles = tonumber(args[3]) or profiles
   prefix = (args[4] or prefix) .. "-" .. tostring(thread_id or 0) .. "-"
   local pos = 1
   while true do
      local s, e, kind = string.find(template, "{{(%u)}}", pos)
      if not s then
         break
      end
      table.insert(pieces, template:sub(pos, s - 1))
      table.insert(pieces, "")
      table.insert(kinds, kind)
      pos = e + 1
   end
   table.insert(pieces, template:sub(pos))
   wrk.method = "POST"
   wrk.headers["Authorization"] = "Klaviyo-API-Key " .. args[2]
   wrk.headers["revision"] = "2026-10-15"
   wrk.headers["Content-Type"] = "application/vnd.api+json"
   wrk.headers["Accept"] = "application/vnd.api+json"
end

function request()
   counter = counter + 1
   local unique = prefix .. counter
   local profile = tostring(counter % profiles)
   for i = 1, #kinds do
      pieces[2 * i] = (kinds[i] == "U") and unique or profile
   end
   return wrk.format(nil, nil, nil, table.concat(pieces))
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
   local total = {}
   for _, thread in ipairs(threads) do
      for status, count in pairs(thread:get("statuses") or {}) do
         total[status] = (total[status] or 0) + count
      end
   end
   local by_status = {}
   for status, count in pairs(total) do
      table.insert(by_status, string.format('"%d": %d', status, count))
   end
   local e = summary.errors
   io.write(string.format(
      'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, '
         .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
         .. '"latency_us": {"min": %d, "mean": %.1f, "max": %d, "p50": %d, "p90": %d, '
         .. '"p99": %d, "p99_9": %d}, "statuses": {%s}}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.min, latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency:percentile(99.9), table.concat(by_status, ", ")
   ))
end
