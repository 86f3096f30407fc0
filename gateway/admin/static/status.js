// The gateway's live status page: log in with the admin token, then render the status feed.
//
// The token stays in sessionStorage and travels only in an Authorization header (to get a stream
// ticket); the event stream is opened with that short-lived, single-use ticket, never the token.
// The server pushes the whole view on change; durations tick here, from the server's clock.
"use strict";

(() => {
  const TOKEN_KEY = "gateway.admin.token";
  const RETRY_MIN = 1000;
  const RETRY_MAX = 15000;

  const $ = (id) => document.getElementById(id);
  let source = null;
  let retryTimer = null;
  let retryDelay = RETRY_MIN;
  let skew = 0; // local clock minus the gateway's, in seconds
  let names = {}; // extension id -> name, from the configuration

  class Refused extends Error {}

  // -- DOM helpers ------------------------------------------------------------------------------

  function el(tag, className, ...children) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    for (const child of children) {
      if (child !== null && child !== undefined && child !== "") {
        node.append(child instanceof Node ? child : String(child));
      }
    }
    return node;
  }

  function fill(id, ...children) {
    $(id).replaceChildren(...children.filter((c) => c !== null && c !== undefined));
  }

  // A coloured dot never says a state alone: the word beside it does (and the dot is hidden from
  // screen readers, which read the word).
  function dot(up) {
    const node = el("span", up ? "dot up" : "dot down");
    node.setAttribute("aria-hidden", "true");
    return node;
  }

  function stateWord(up, yes, no) {
    return el("span", up ? "state-word up" : "state-word down", up ? yes : no);
  }

  function plural(count, one, many) {
    return `${count} ${count === 1 ? one : many}`;
  }

  function empty(text) {
    return el("p", "empty", text);
  }

  function row(label, ...value) {
    return el("div", "row", el("span", "label", label), el("span", "value", ...value));
  }

  function pill(state) {
    return el("span", `pill ${String(state).toLowerCase()}`, state);
  }

  // -- time -------------------------------------------------------------------------------------

  function seconds(iso) {
    return iso ? Date.parse(iso) / 1000 : null;
  }

  function nowOnGateway() {
    return Date.now() / 1000 - skew;
  }

  function clock(total) {
    const s = Math.max(0, Math.floor(total));
    const h = Math.floor(s / 3600);
    const mm = String(Math.floor((s % 3600) / 60)).padStart(h ? 2 : 1, "0");
    const ss = String(s % 60).padStart(2, "0");
    return h ? `${h}:${mm}:${ss}` : `${mm}:${ss}`;
  }

  function ticking(since, className) {
    const node = el("span", `timer ${className || ""}`.trim());
    node.dataset.since = String(since);
    node.textContent = clock(nowOnGateway() - since);
    return node;
  }

  function timeOfDay(iso) {
    return iso ? new Date(iso).toLocaleTimeString([], { hour12: false }) : "";
  }

  function tick() {
    const now = nowOnGateway();
    for (const node of document.querySelectorAll("[data-since]")) {
      node.textContent = clock(now - Number(node.dataset.since));
    }
    $("clock").textContent = new Date(now * 1000).toLocaleTimeString([], { hour12: false });
  }

  // -- sections ---------------------------------------------------------------------------------

  function renderHeader(view) {
    $("node").textContent = view.node;
    $("version").textContent = `v${view.version}`;
    const down = view.readiness.filter((c) => !c.up);
    const badge = $("ready");
    badge.className = down.length ? "badge bad" : "badge good";
    badge.textContent = down.length ? `NOT READY · ${down.map((c) => c.name).join(", ")}` : "READY";
    badge.title = down.map((c) => `${c.name}: ${c.reason}`).join("\n");
  }

  function leg(data) {
    const since = seconds(data.answered_at) || seconds(data.started_at);
    return el("li", `leg ${data.role}`,
      el("span", "role", data.role === "device" ? "phone" : "party"),
      el("span", "number", data.number || data.caller_id || "—"),
      pill(data.state),
      data.state === "DIALING" && data.alerting_at ? el("span", "flag", "ringing") : null,
      data.muted ? el("span", "flag", "muted") : null,
      data.pending ? el("span", "flag", data.pending) : null,
      el("span", "driver", data.driver),
      data.state === "RELEASED" ? el("span", "dim", data.cause || "") : ticking(since, "small"));
  }

  function extension(id) {
    return names[id] ? `ext ${id} · ${names[id]}` : `ext ${id}`;
  }

  function callCard(call) {
    const inbound = call.direction === "inbound";
    const card = el("article", `call ${call.state.toLowerCase()}${call.consult_of ? " consult" : ""}`);
    card.dataset.callId = call.call_id;
    if (call.consult_of) card.dataset.consultOf = call.consult_of;
    const who = el("div", "who",
      el("span", "party-from", call.caller || "unknown"),
      el("span", "arrow", "→"),
      el("span", "party-to", call.number || call.app || "—"));
    const meta = el("div", "meta",
      el("span", "direction", inbound ? "↙ inbound" : "↗ outbound"),
      call.extension ? el("span", "ext", extension(call.extension)) : el("span", "ext none", "no extension"),
      call.did ? el("span", "tag", `DID ${call.did}`) : null,
      call.app ? el("span", "tag", `app ${call.app}`) : null,
      call.muted ? el("span", "flag", "muted") : null,
      call.dtmf_count ? el("span", "tag", `DTMF ${call.dtmf_count}`) : null,
      call.consult_of ? el("span", "tag linked", `consult of call ${call.consult_of}`) : null,
      call.consult ? el("span", "tag linked", `consulting in call ${call.consult}`) : null,
      call.node ? el("span", "tag node-tag", `node ${call.node}`) : null);
    const talk = call.answered_at ? el("div", "talk dim", "answered ", ticking(seconds(call.answered_at))) : null;
    card.append(
      el("div", "state", pill(call.state)),
      el("div", "main", who, meta),
      el("div", "times", ticking(seconds(call.created_at), "big"), talk),
      el("ul", "legs", ...call.legs.map(leg)));
    return card;
  }

  // A consult call is listed right after the primary it was placed from (and drawn indented).
  function linked(calls) {
    const byId = new Map(calls.map((c) => [c.call_id, c]));
    const order = [];
    for (const call of calls) {
      if (call.consult_of && byId.has(call.consult_of)) continue;
      order.push(call);
      for (const other of calls) if (other.consult_of === call.call_id) order.push(other);
    }
    return order;
  }

  function renderCalls(calls) {
    $("call-count").textContent = calls.length ? String(calls.length) : "";
    fill("calls", ...(calls.length ? linked(calls).map(callCard) : [empty("No live calls")]));
  }

  function disabled(id) {
    fill(id, empty("not enabled"));
  }

  function renderPatriot(patriot) {
    if (!patriot) return disabled("patriot");
    const parts = [];
    if (patriot.bridge) {
      const sessions = patriot.bridge.sessions;
      parts.push(row("Bridge", `${patriot.bridge.listen} ${patriot.bridge.path}`));
      parts.push(el("ul", "items", ...sessions.map((s) => el("li", "item",
        dot(true), el("span", "strong", s.user || "(logging in)"), el("span", "dim", ` ext ${s.extension || "—"} · ${s.peer}`)))));
      if (!sessions.length) parts.push(empty("no Patriot session"));
      const blocked = Object.keys(patriot.bridge.blocked || {});
      if (blocked.length) parts.push(row("Blocked", blocked.join(", ")));
    }
    for (const link of patriot.desktop) {
      parts.push(el("div", "item", dot(link.up), el("span", "strong", `Desktop API · ext ${link.extension}`),
        stateWord(link.up, "up", "down"), el("span", "dim", link.up ? link.url : link.reason)));
    }
    fill("patriot", ...(parts.length ? parts : [empty("nothing configured")]));
  }

  // An agent's live interactions are the live calls of the agent's extension, from the call list the
  // registry pushes at once; the bridge's own count (interactions the desktop has not disposed yet,
  // ended ones included) is sampled, and shown beside it when it differs.
  function renderCti(cti, calls) {
    if (!cti) return disabled("cti");
    const link = el("div", "item", dot(cti.connected), el("span", "strong", cti.connected ? "bridge linked" : "no bridge"),
      el("span", "dim", ` ${cti.peer || ""} · telephony ${cti.status}${cti.reason ? " (" + cti.reason + ")" : ""}`));
    const live = (extension) => calls.filter((c) => c.extension === extension && c.state !== "RELEASED").length;
    const agents = cti.agents.map((a) => el("li", "item agent", dot(a.ready), el("span", "strong", a.agent),
      stateWord(a.ready, "ready", "not ready"),
      el("span", "dim", ` ext ${a.extension} · ${plural(live(a.extension), "call", "calls")}`)));
    const extensions = new Set(cti.agents.map((a) => a.extension));
    const total = calls.filter((c) => extensions.has(c.extension) && c.state !== "RELEASED").length;
    const interactions = el("span", "interactions", `${total} live`);
    const open = cti.interactions !== total ? el("span", "dim", ` · ${cti.interactions} open at the desktops`) : null;
    fill("cti", link, agents.length ? el("ul", "items", ...agents) : empty("no agent session"),
      row("Interactions", interactions, open));
  }

  function renderChat(chat) {
    if (!chat) return disabled("chat");
    const link = el("div", "item", dot(chat.connected && chat.registered),
      el("span", "strong", chat.connected ? (chat.registered ? "chat linked" : "linked, registering") : "no chat link"),
      el("span", "dim", ` · SMS via ${chat.transport.name}`));
    const conversations = chat.conversations.map((c) => el("li", "item", dot(true),
      el("span", "strong", c.number),
      c.participant.name !== c.number ? el("span", "dim", c.participant.name) : null,
      c.agents.length ? el("span", "tag", c.agents.map((a) => a.name || a.id).join(", ")) : el("span", "tag wait", "waiting"),
      ticking(seconds(c.openedAt), "small")));
    const pending = chat.inbound.pending + chat.outbound.pending;
    fill("chat", link, conversations.length ? el("ul", "items", ...conversations) : empty("no open conversation"),
      pending ? row("SMS pending", `${chat.inbound.pending} in · ${chat.outbound.pending} out`) : null);
  }

  function renderOptimaccs(inbound, outbound) {
    if (!inbound && !outbound) return disabled("optimaccs");
    const parts = [];
    if (inbound) {
      parts.push(row("Inbound", inbound.listen));
      parts.push(...inbound.connections.map((c) => el("div", "item", dot(true),
        el("span", "strong", c.caller_id || "?"), el("span", "dim", ` → ${c.did || "?"} · ${c.phase}`))));
      if (!inbound.connections.length) parts.push(empty("no provider call connected"));
    }
    if (outbound) {
      parts.push(row("Outbound", outbound.api_url));
      parts.push(...outbound.calls.map((c) => el("div", "item", dot(true),
        el("span", "strong", c.number), el("span", "dim", ` · ${c.stage}`))));
    }
    fill("optimaccs", ...parts);
  }

  function cdrRow(cdr) {
    const tr = el("tr", "",
      el("td", "", timeOfDay(cdr.ended_at)),
      el("td", "", cdr.extension || "—"),
      el("td", "dim", cdr.direction === "inbound" ? "↙ in" : "↗ out"),
      el("td", "", cdr.caller || "—"),
      el("td", "", cdr.number || cdr.app || "—"),
      el("td", "num", clock(cdr.duration)),
      el("td", "num", clock(cdr.billable_seconds)),
      el("td", "", el("span", `cause ${cdr.cause}`, cdr.cause)),
      el("td", "dim", cdr.hangup_by || ""));
    tr.dataset.callId = cdr.call_id;
    return tr;
  }

  // Cluster mode: every live node, its load, whether it drains, the singleton links it holds.
  function renderCluster(cluster) {
    $("cluster-panel").hidden = !cluster;
    if (!cluster) return;
    if (cluster.error) return fill("cluster", el("p", "error", cluster.error));
    const nodes = cluster.nodes.map((n) => {
      const item = el("li", "item cluster-node", dot(!n.draining),
        el("span", "strong", n.node), n.self ? el("span", "dim", " (this node)") : null,
        stateWord(!n.draining, "serving", "draining"),
        el("span", "dim", ` · ${plural(n.load.calls || 0, "call", "calls")}`),
        ...n.leases.map((name) => el("span", "tag", name)));
      item.dataset.node = n.node;
      return item;
    });
    fill("cluster", nodes.length ? el("ul", "items", ...nodes) : empty("no live node"),
      row("Redis", cluster.redis || "?"));
  }

  function renderCdrs(cdrs) {
    const body = $("cdrs");
    if (!cdrs.length) {
      const cell = el("td", "empty", "No call has ended yet");
      cell.colSpan = 9;
      body.replaceChildren(el("tr", "", cell));
      return;
    }
    body.replaceChildren(...cdrs.map(cdrRow));
  }

  // One section that cannot be drawn (an adapter whose status is unavailable) leaves the others live.
  function section(id, draw, ...data) {
    try {
      draw(...data);
    } catch (error) {
      fill(id, el("p", "error", "status unavailable"));
      console.error(`status page: ${id}:`, error);
    }
  }

  function render(view) {
    skew = Date.now() / 1000 - view.now;
    names = view.extensions;
    const adapters = view.adapters;
    renderHeader(view);
    section("calls", renderCalls, view.calls);
    section("cluster", renderCluster, view.cluster);
    section("patriot", renderPatriot, adapters.patriot);
    section("cti", renderCti, adapters.cti, view.calls);
    section("chat", renderChat, adapters.chat);
    section("optimaccs", renderOptimaccs, adapters.optimaccs, adapters["optimaccs-outbound"]);
    section("cdrs", renderCdrs, view.cdrs);
  }

  // -- login and the stream ---------------------------------------------------------------------

  async function ticket(token) {
    const response = await fetch("../api/status/ticket", {
      method: "POST", cache: "no-store", headers: { Authorization: `Bearer ${token}` },
    });
    if (response.status === 401) throw new Refused("the token was refused");
    if (!response.ok) throw new Error(`the gateway answered ${response.status}`);
    return (await response.json()).ticket;
  }

  function setLink(state, text) {
    const link = $("link");
    link.className = `link ${state}`;
    link.textContent = text;
  }

  function showLogin(message) {
    stop();
    $("board").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    $("token").focus();
  }

  function showBoard() {
    $("login").hidden = true;
    $("board").hidden = false;
  }

  function stop() {
    if (source) source.close();
    source = null;
    clearTimeout(retryTimer);
    retryTimer = null;
  }

  function open(streamTicket) {
    stop();
    source = new EventSource(`events?ticket=${encodeURIComponent(streamTicket)}`);
    source.onopen = () => {
      retryDelay = RETRY_MIN;
      setLink("live", "live");
    };
    source.addEventListener("status", (event) => render(JSON.parse(event.data)));
    // A ticket is spent by the stream it opened: never let EventSource retry with it.
    source.onerror = () => {
      stop();
      setLink("lost", "reconnecting…");
      retryTimer = setTimeout(connect, retryDelay);
      retryDelay = Math.min(retryDelay * 2, RETRY_MAX);
    };
  }

  async function connect() {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) return showLogin();
    showBoard();
    setLink("wait", "connecting…");
    try {
      open(await ticket(token));
    } catch (error) {
      if (error instanceof Refused) {
        sessionStorage.removeItem(TOKEN_KEY);
        return showLogin("The gateway no longer accepts that token.");
      }
      setLink("lost", "gateway unreachable");
      retryTimer = setTimeout(connect, retryDelay);
      retryDelay = Math.min(retryDelay * 2, RETRY_MAX);
    }
  }

  async function login(event) {
    event.preventDefault();
    const input = $("token");
    const token = input.value.trim();
    $("login-button").disabled = true;
    try {
      const first = await ticket(token);
      sessionStorage.setItem(TOKEN_KEY, token);
      input.value = "";
      showBoard();
      open(first);
    } catch (error) {
      $("login-error").textContent = error instanceof Refused
        ? "That token was refused." : "The gateway did not answer; try again.";
    } finally {
      $("login-button").disabled = false;
    }
  }

  function logout() {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin();
  }

  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  setInterval(tick, 1000);
  tick();
  connect();
})();
