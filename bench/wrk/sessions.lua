-- wrk script: spread requests over many broker session tokens.
--
--   wrk ... -s bench/wrk/sessions.lua URL -- TOKENS_FILE [PATH] [PACE_MS]
--
-- TOKENS_FILE holds one session token per line; requests cycle through them in order
-- (each thread from its own offset), so every key is used evenly. PACE_MS > 0 makes
-- each connection wait that long between requests (a steady, unsaturated load).
-- done() prints one line "BENCH_JSON {...}" with the counts and latency percentiles (us).

local thread_ids = 0

function setup(thread)
   thread:set("thread_id", thread_ids)
   thread_ids = thread_ids + 1
end

local requests_ = {}
local count = 0
local position = 0

function init(args)
   local tokens_file = args[1]
   local path = args[2] or "/checkout/invoice"
   local pace_ms = tonumber(args[3] or "0")
   for token in io.lines(tokens_file) do
      if token ~= "" then
         count = count + 1
         local headers = { ["Authorization"] = "Bearer " .. token, ["Accept"] = "application/json" }
         requests_[count] = wrk.format("GET", path, headers)
      end
   end
   if count == 0 then
      error("no tokens in " .. tokens_file)
   end
   position = (thread_id * 7919) % count
   if pace_ms > 0 then
      -- wrk looks for delay() after init(), so defining it here is enough.
      delay = function()
         return pace_ms
      end
   end
end

function request()
   position = position + 1
   if position > count then
      position = 1
   end
   return requests_[position]
end

function done(summary, latency, requests)
   local errors = summary.errors
   local parts = {
      string.format('"requests": %d', summary.requests),
      string.format('"duration_us": %d', summary.duration),
      string.format('"bytes": %d', summary.bytes),
      string.format('"errors_connect": %d', errors.connect),
      string.format('"errors_read": %d', errors.read),
      string.format('"errors_write": %d', errors.write),
      string.format('"errors_status": %d', errors.status),
      string.format('"errors_timeout": %d', errors.timeout),
      string.format('"latency_mean_us": %.1f', latency.mean),
      string.format('"latency_max_us": %d', latency.max),
   }
   for _, p in ipairs({ 50, 90, 99, 99.9 }) do
      parts[#parts + 1] = string.format('"p%s_us": %d', tostring(p), latency:percentile(p))
   end
   io.write("BENCH_JSON {" .. table.concat(parts, ", ") .. "}\n")
end
