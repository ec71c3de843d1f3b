-- The nginx + Lua peer of bench/run.py: what a team would write in OpenResty
-- style instead of running persona-guard. Same checks as persona-guard's
-- verified path (docs/behaviour.md): the Persona-Signature header parsed
-- (`t=<ts>,v1=<hex>`, several sets separated by spaces), HMAC-SHA256 of
-- `<t>.<raw body>` with the secret, hex compared in constant time, 300 s
-- tolerance on `t`, `data.id` (and `data.attributes.name`) from the JSON body,
-- and replay protection by `data.id` in an `ngx.shared` dict: claimed (in
-- flight) before proxy_pass, kept as delivered on a 2xx answer head, released
-- on anything else.
--
--   lua_shared_dict persona_replay 128m;
--   init_by_lua_block { require("persona_verify").init(os.getenv("PERSONA_WEBHOOK_SECRET")) }
--   location /webhooks/persona {
--     access_by_lua_block        { require("persona_verify").access() }
--     header_filter_by_lua_block { require("persona_verify").header_filter() }
--     log_by_lua_block           { require("persona_verify").log() }
--     proxy_pass http://app; ...
--   }
--
-- Needs libnginx-mod-http-lua, lua-resty-core, lua-luaossl, lua-cjson (Debian).
local hmac = require "openssl.hmac"
local cjson = require "cjson.safe"
local bit = require "bit"

local byte, sub, find, lower, concat = string.byte, string.sub, string.find, string.lower, table.concat
local bxor, bor = bit.bxor, bit.bor
local ngx = ngx

local M = {}

local TOLERANCE = 300        -- seconds, either way (persona-guard's default `tolerance`)
local TTL = 72 * 3600        -- delivered ids (`[replay] ttl`)
local INFLIGHT_TTL = 60      -- a claim (`[replay] inflight_ttl`)
local MAX_SETS, MAX_SIGS = 8, 16
local INT64_MAX = "9223372036854775807"

local secrets = {}
local replay
local claims = 0             -- this worker's claim tokens

local HEX = {}
for i = 0, 255 do HEX[i] = string.format("%02x", i) end

local function to_hex(s)
    local out = {}
    for i = 1, #s do out[i] = HEX[byte(s, i)] end
    return concat(out)
end

-- Equal-length strings compared without an early exit.
local function ct_equal(a, b)
    if #a ~= #b then return false end
    local d = 0
    for i = 1, #a do d = bor(d, bxor(byte(a, i), byte(b, i))) end
    return d == 0
end

function M.init(secret, ...)
    assert(secret and secret ~= "", "persona_verify: no webhook secret")
    secrets = { secret, ... }
    replay = ngx.shared.persona_replay
    assert(replay, "persona_verify: lua_shared_dict persona_replay is missing")
end

local function answer(status, body, retry_after)
    ngx.status = status
    local h = ngx.header
    h["Content-Type"] = "application/json"
    h["Content-Length"] = #body
    if retry_after then h["Retry-After"] = retry_after end
    ngx.print(body)
    return ngx.exit(ngx.HTTP_OK)
end

local function reject(status, code)
    return answer(status, '{"error":"' .. code .. '"}')
end

-- `t` as the number it spells, in plain decimal form; nil unless plain digits
-- fitting a signed 64-bit integer.
local function timestamp(v)
    if v == "" or find(v, "[^0-9]") then return nil end
    local s = v:gsub("^0+", "")
    if s == "" then return "0" end
    if #s > 19 or (#s == 19 and s > INT64_MAX) then return nil end
    return s
end

-- Sets {t = <decimal>, sigs = {<lower-case hex>...}}, or nil when malformed.
-- Commas and spaces both separate fields; `t=` starts a set, `v1=` adds a
-- signature to it, other keys are skipped.
local function parse(h)
    if type(h) ~= "string" or find(h, "[\128-\255]") then return nil end
    local sets, cur, nsigs = {}, nil, 0
    for field in h:gmatch("[^, ]+") do
        local eq = find(field, "=", 1, true)
        if not eq then return nil end
        local k, v = sub(field, 1, eq - 1), sub(field, eq + 1)
        if k == "t" then
            local t = timestamp(v)
            if not t or #sets == MAX_SETS then return nil end
            cur = { t = t, n = tonumber(t), sigs = {} }
            sets[#sets + 1] = cur
        elseif k == "v1" then
            if not cur or #v ~= 64 or find(v, "[^0-9a-fA-F]") then return nil end
            nsigs = nsigs + 1
            if nsigs > MAX_SIGS then return nil end
            cur.sigs[#cur.sigs + 1] = lower(v)
        end
    end
    if #sets == 0 then return nil end
    for i = 1, #sets do
        if #sets[i].sigs == 0 then return nil end
    end
    return sets
end

-- "ok", "stale" or "invalid".
local function verify(sets, body)
    local now, stale = ngx.time(), false
    for i = 1, #sets do
        local set = sets[i]
        for s = 1, #secrets do
            local h = hmac.new(secrets[s], "sha256")
            h:update(set.t)
            h:update(".")
            h:update(body)
            local mac = to_hex(h:final())
            local hit = false
            for j = 1, #set.sigs do
                if ct_equal(mac, set.sigs[j]) then hit = true end
            end
            if hit then
                if math.abs(now - set.n) <= TOLERANCE then return "ok" end
                stale = true
            end
        end
    end
    return stale and "stale" or "invalid"
end

function M.access()
    local req = ngx.req
    if req.get_method() ~= "POST" then return reject(405, "method_not_allowed") end
    local h = req.get_headers()["persona-signature"]
    if h == nil then return reject(401, "missing_signature") end
    local sets = parse(h)            -- a header sent twice is a table: malformed
    if not sets then return reject(401, "malformed_signature") end

    req.read_body()
    local body = req.get_body_data()
    if body == nil then
        local file = req.get_body_file()
        if file then return reject(413, "body_too_large") end  -- bodies are kept in memory
        body = ""
    end

    local v = verify(sets, body)
    if v == "invalid" then return reject(401, "invalid_signature") end
    if v == "stale" then return reject(401, "timestamp_out_of_tolerance") end

    local ev = cjson.decode(body)
    local data = type(ev) == "table" and ev.data
    local id = type(data) == "table" and data.id
    local attrs = type(data) == "table" and data.attributes
    if type(id) ~= "string" or id == "" or type(attrs) ~= "table"
        or type(attrs.name) ~= "string" or attrs.name == "" then
        return reject(400, "invalid_event")
    end

    claims = claims + 1
    local token = "i" .. ngx.worker.pid() .. ":" .. claims   -- never "d"
    local ok, err = replay:add(id, token, INFLIGHT_TTL)
    if not ok then
        if err ~= "exists" then return reject(503, "replay_store_unavailable") end
        local mark = replay:get(id)
        if mark == "d" then return answer(200, '{"status":"duplicate"}') end
        local left = replay:ttl(id)
        return answer(409, '{"error":"delivery_in_progress"}',
                      tostring(math.max(1, math.ceil(left or 1))))
    end
    local ctx = ngx.ctx
    ctx.persona_id, ctx.persona_token = id, token
end

-- Settles this request's own claim: delivered on a 2xx answer head, released
-- otherwise (never touching another request's claim or a delivered mark).
local function settle(delivered)
    local ctx = ngx.ctx
    local id = ctx.persona_id
    if not id then return end
    ctx.persona_id = nil
    if replay:get(id) ~= ctx.persona_token then return end
    if delivered then
        replay:set(id, "d", TTL)
    else
        replay:delete(id)
    end
end

function M.header_filter()
    local status = ngx.status
    settle(status >= 200 and status < 300)
end

-- A request that ended with no answer head (client gone, upstream error
-- before a head) releases its claim here.
function M.log()
    settle(false)
end

return M
