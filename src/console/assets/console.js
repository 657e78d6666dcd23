// The chatgpt-gateway console. Every value from the gateway is set as text
// (textContent, attributes), never parsed as HTML.

const $ = (id) => document.getElementById(id);
const COLORS = ["#1f5fbf", "#e07b00", "#2e9e5b", "#9c3fb8", "#c43d5a", "#8a94a6"];
const TOP = 5;
// The admin API, relative to the page (/admin/): a stage prefix of API
// Gateway, or a Function URL emulator's path, is kept.
const API = "../v1/gateway";
const DAY = 86400;

let editing = null;

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

async function api(method, path, body) {
  const init = { method, credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  let data = null;
  try {
    data = await response.json();
  } catch (_) {
    data = null;
  }
  if (!response.ok) {
    const message = data && data.error ? data.error.message : `HTTP ${response.status}`;
    const error = new Error(message);
    error.status = response.status;
    error.param = data && data.error ? data.error.param : null;
    throw error;
  }
  return data;
}

function show(loggedIn, admin) {
  $("login-section").hidden = loggedIn;
  $("console").hidden = !loggedIn;
  $("logout").hidden = !loggedIn;
  $("who").hidden = !loggedIn;
  $("who").textContent = loggedIn ? `Logged in as ${admin}` : "";
}

async function start() {
  $("login-form").addEventListener("submit", logIn);
  $("logout").addEventListener("click", logOut);
  $("token-form").addEventListener("submit", submitToken);
  $("f-cancel").addEventListener("click", stopEditing);
  $("copy").addEventListener("click", copySecret);
  $("secret-done").addEventListener("click", () => {
    $("secret").value = "";
    $("secret-section").hidden = true;
  });
  let session = null;
  try {
    session = await api("GET", API + "/session");
  } catch (_) {
    session = null;
  }
  if (session && session.admin) {
    show(true, session.admin);
    await refresh();
  } else {
    show(false);
    $("admin-token").focus();
  }
}

async function logIn(event) {
  event.preventDefault();
  $("login-error").textContent = "";
  const field = $("admin-token");
  try {
    const session = await api("POST", API + "/session", { token: field.value });
    field.value = "";
    show(true, session.admin);
    await refresh();
  } catch (error) {
    $("login-error").textContent = error.message;
  }
}

async function logOut() {
  try {
    await api("DELETE", API + "/session");
  } catch (_) {
    // Ended already: the page logs out all the same.
  }
  show(false);
  $("admin-token").focus();
}

async function refresh() {
  $("notice").textContent = "";
  const now = Math.floor(Date.now() / 1000);
  const today = now - (now % DAY);
  const start = today - 29 * DAY;
  const results = await Promise.allSettled([
    api("GET", API + "/tokens"),
    api("GET", `${API}/costs?start_time=${start}&end_time=${today + DAY}&bucket_width=1d&group_by=token,model&limit=30`),
    api("GET", API + "/upstreams"),
  ]);
  const [tokens, costs, upstreams] = results;
  if (tokens.status === "fulfilled") drawTokens(tokens.value.data);
  else if (tokens.reason.status === 401) return show(false);
  else $("notice").textContent = `Tokens: ${tokens.reason.message}`;
  if (costs.status === "fulfilled") {
    drawChart(costs.value.data);
    drawModels(costs.value.data);
  } else {
    $("notice").textContent = `Spend: ${costs.reason.message}`;
  }
  if (upstreams.status === "fulfilled") drawUpstreams(upstreams.value.data);
}

// Dollars as people read them: cents for whole amounts, three significant
// digits for the fractions of a cent a few requests cost.
function usd(value) {
  if (!value) return "0";
  return value >= 1 ? value.toFixed(2) : Number(value.toPrecision(3)).toString();
}

function limitText(value) {
  return typeof value === "number" && !Number.isInteger(value) ? usd(value) : String(value);
}

// Each cell carries its column's name, which narrow screens show beside it.
function label(table) {
  const names = [...table.tHead.rows[0].cells].map((c) => c.textContent);
  for (const row of table.tBodies[0].rows) {
    [...row.cells].forEach((cell, i) => cell.setAttribute("data-label", names[i] || ""));
  }
}

function state(token) {
  if (token.revoked) return "revoked";
  if (token.disabled) return "disabled";
  if (token.expired) return "expired";
  return "active";
}

function drawTokens(tokens) {
  const body = $("tokens-table").tBodies[0];
  body.replaceChildren();
  for (const token of tokens) {
    const row = document.createElement("tr");
    row.append(el("td", token.name));
    row.append(el("td", token.source));
    const expires = el("td", token.expires || "never");
    if (token.expired) expires.append(el("span", " (expired)", "state-expired"));
    row.append(expires);
    row.append(el("td", token.models ? token.models.join(", ") || "(none)" : "all"));
    const limits = el("td");
    if (!token.usage.length) limits.textContent = "none";
    for (const limit of token.usage) {
      const line = el("span", `${limit.limit}: ${limitText(limit.used)} / ${limitText(limit.max)}`, "limit");
      const bar = document.createElement("progress");
      bar.max = Number(limit.max) || 1;
      bar.value = Math.min(Number(limit.used) || 0, bar.max);
      bar.setAttribute("aria-label", `${limit.limit} used`);
      line.append(bar);
      limits.append(line);
    }
    row.append(limits);
    row.append(el("td", token.last_used_at || "not yet"));
    const now = state(token);
    row.append(el("td", now, `state-${now}`));
    const actions = el("td", null, "actions");
    if (token.source === "managed" && !token.revoked) {
      actions.append(button(`Edit ${token.name}`, "Edit", "secondary", () => startEditing(token)));
      actions.append(
        button(`${token.disabled ? "Enable" : "Disable"} ${token.name}`, token.disabled ? "Enable" : "Disable", "secondary", () =>
          change(token.name, { disabled: !token.disabled }),
        ),
      );
      actions.append(button(`Revoke ${token.name}`, "Revoke", "danger", () => revoke(token.name)));
    } else if (token.source === "config") {
      actions.textContent = "in the token list";
    }
    row.append(actions);
    body.append(row);
  }
  label($("tokens-table"));
}

function button(label, text, className, onClick) {
  const node = el("button", text, className);
  node.type = "button";
  node.setAttribute("aria-label", label);
  node.addEventListener("click", onClick);
  return node;
}

async function change(name, fields) {
  try {
    await api("PATCH", `${API}/tokens/${encodeURIComponent(name)}`, fields);
    await refresh();
  } catch (error) {
    $("notice").textContent = error.message;
  }
}

async function revoke(name) {
  if (!window.confirm(`Revoke ${name}? Its next request is refused, and the name is not given again.`)) return;
  try {
    await api("DELETE", `${API}/tokens/${encodeURIComponent(name)}`);
    await refresh();
  } catch (error) {
    $("notice").textContent = error.message;
  }
}

function list(text) {
  const items = text.split(",").map((s) => s.trim()).filter((s) => s);
  return items.length ? items : null;
}

function limits(text) {
  const items = list(text);
  if (!items) return null;
  const out = {};
  for (const item of items) {
    const [key, value] = item.split("=").map((s) => s.trim());
    out[key] = value === undefined || value === "" || Number.isNaN(Number(value)) ? value : Number(value);
  }
  return out;
}

function formFields() {
  return {
    expires: $("f-expires").value.trim() || null,
    models: list($("f-models").value),
    endpoints: list($("f-endpoints").value),
    limits: limits($("f-limits").value),
    allow_ips: list($("f-allow-ips").value),
    admin: $("f-admin").checked,
  };
}

async function submitToken(event) {
  event.preventDefault();
  $("form-error").textContent = "";
  const fields = formFields();
  try {
    if (editing) {
      await api("PATCH", `${API}/tokens/${encodeURIComponent(editing)}`, fields);
      stopEditing();
    } else {
      const made = await api("POST", API + "/tokens", { name: $("f-name").value.trim(), ...fields });
      $("token-form").reset();
      $("secret").value = made.token;
      $("copied").textContent = "";
      $("secret-section").hidden = false;
      $("secret").focus();
      $("secret").select();
    }
    await refresh();
  } catch (error) {
    $("form-error").textContent = error.param ? `${error.param}: ${error.message}` : error.message;
  }
}

function startEditing(token) {
  editing = token.name;
  $("form-title").textContent = `Edit ${token.name}`;
  $("f-name").value = token.name;
  $("f-name").disabled = true;
  $("f-expires").value = token.expires || "";
  $("f-models").value = (token.models || []).join(", ");
  $("f-endpoints").value = (token.endpoints || []).join(", ");
  $("f-limits").value = Object.entries(token.limits || {})
    .map(([k, v]) => `${k}=${v}`)
    .join(", ");
  $("f-allow-ips").value = (token.allow_ips || []).join(", ");
  $("f-admin").checked = token.admin;
  $("f-submit").textContent = "Save changes";
  $("f-cancel").hidden = false;
  $("f-expires").focus();
}

function stopEditing() {
  editing = null;
  $("token-form").reset();
  $("f-name").disabled = false;
  $("form-title").textContent = "New token";
  $("f-submit").textContent = "Create token";
  $("f-cancel").hidden = true;
}

async function copySecret() {
  const secret = $("secret");
  try {
    await navigator.clipboard.writeText(secret.value);
    $("copied").textContent = "Copied.";
  } catch (_) {
    secret.select();
    $("copied").textContent = "Select the token and copy it (Ctrl+C).";
  }
}

function drawChart(buckets) {
  const totals = new Map();
  for (const bucket of buckets) {
    for (const r of bucket.results) totals.set(r.token, (totals.get(r.token) || 0) + r.amount.value);
  }
  const top = [...totals.entries()].sort((a, b) => b[1] - a[1]).slice(0, TOP).map(([t]) => t);
  const series = [...top, ...(totals.size > top.length ? ["others"] : [])];
  const days = buckets.map((bucket) => {
    const sums = new Map(series.map((s) => [s, 0]));
    for (const r of bucket.results) {
      const key = top.includes(r.token) ? r.token : "others";
      sums.set(key, sums.get(key) + r.amount.value);
    }
    return { start: bucket.start_time, sums };
  });
  const max = Math.max(1e-9, ...days.map((d) => [...d.sums.values()].reduce((a, b) => a + b, 0)));
  const ns = "http://www.w3.org/2000/svg";
  // One unit a pixel, so that the labels keep their size on any screen.
  const width = Math.max(280, Math.round($("chart").clientWidth || 600));
  const height = 220;
  const left = 56;
  const bottom = 24;
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "USD per day, stacked by token");
  const axis = document.createElementNS(ns, "text");
  axis.setAttribute("x", "0");
  axis.setAttribute("y", "12");
  axis.setAttribute("font-size", "12");
  axis.textContent = `$${usd(max)}`;
  svg.append(axis);
  const step = (width - left) / Math.max(1, days.length);
  days.forEach((day, i) => {
    let y = height - bottom;
    series.forEach((name, s) => {
      const value = day.sums.get(name);
      if (!value) return;
      const h = ((height - bottom - 16) * value) / max;
      y -= h;
      const rect = document.createElementNS(ns, "rect");
      rect.setAttribute("x", String(left + i * step + 1));
      rect.setAttribute("y", String(y));
      rect.setAttribute("width", String(Math.max(1, step - 2)));
      rect.setAttribute("height", String(h));
      rect.setAttribute("fill", COLORS[name === "others" ? 5 : s]);
      const title = document.createElementNS(ns, "title");
      title.textContent = `${name}: $${usd(value)} on ${new Date(day.start * 1000).toISOString().slice(0, 10)}`;
      rect.append(title);
      svg.append(rect);
    });
    if (i % 7 === 0) {
      const tick = document.createElementNS(ns, "text");
      tick.setAttribute("x", String(left + i * step));
      tick.setAttribute("y", String(height - 6));
      tick.setAttribute("font-size", "12");
      tick.textContent = new Date(day.start * 1000).toISOString().slice(5, 10);
      svg.append(tick);
    }
  });
  $("chart").replaceChildren(svg);
  const total = [...totals.values()].reduce((a, b) => a + b, 0);
  $("chart-summary").textContent = `Total $${usd(total)} over ${days.length} days.`;
  const legend = $("legend");
  legend.replaceChildren();
  series.forEach((name, s) => {
    const item = el("li");
    item.append(el("span", null, `swatch c${name === "others" ? 5 : s}`));
    item.append(document.createTextNode(name));
    legend.append(item);
  });
}

function drawModels(buckets) {
  const byModel = new Map();
  for (const bucket of buckets) {
    for (const r of bucket.results) {
      const m = byModel.get(r.model) || { requests: 0, input: 0, output: 0, usd: 0 };
      m.requests += r.requests;
      m.input += r.input_tokens;
      m.output += r.output_tokens;
      m.usd += r.amount.value;
      byModel.set(r.model, m);
    }
  }
  const body = $("models-table").tBodies[0];
  body.replaceChildren();
  for (const [model, m] of [...byModel.entries()].sort((a, b) => b[1].usd - a[1].usd)) {
    const row = document.createElement("tr");
    row.append(el("td", model), el("td", m.requests), el("td", m.input), el("td", m.output), el("td", usd(m.usd)));
    body.append(row);
  }
  label($("models-table"));
  if (!byModel.size) {
    const row = document.createElement("tr");
    const cell = el("td", "No spend in this period.");
    cell.colSpan = 5;
    row.append(cell);
    body.append(row);
  }
}

function drawUpstreams(upstreams) {
  const body = $("upstreams-table").tBodies[0];
  body.replaceChildren();
  for (const u of upstreams) {
    const row = document.createElement("tr");
    const models = u.models.map((m) => (typeof m === "string" ? m : `${m.model} as ${m.as}`)).join(", ");
    const stateText = u.until ? `${u.state} until ${u.until}` : u.state;
    row.append(el("td", u.name), el("td", u.kind), el("td", models || "all"), el("td", stateText), el("td", u.failures));
    body.append(row);
  }
  label($("upstreams-table"));
}

start();
