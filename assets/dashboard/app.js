// sluice dashboard: plain JS, no framework, no external assets.
// Reads the admin API with the admin token kept in this tab's sessionStorage. Every string
// from the API goes into the page as a text node (never as HTML).
"use strict";
(function () {
  var TOKEN_KEY = "sluice.adminToken";
  var POLL_MS = 2000;
  var PAIRS_SHOWN = 5;
  var EVENTS_SHOWN = 50;
  var API = "/admin/v1";
  var SVG_NS = "http://www.w3.org/2000/svg";

  var timer = null;
  var generation = 0; // bumps on sign-in/sign-out so a late answer of an old poll is ignored
  var shadowCache = {}; // rollout id -> {after, pairs, done}

  // ---------- small DOM helpers (text only) ----------

  function $(id) { return document.getElementById(id); }

  /** h("td", {class: "num"}, "text", childNode, …): children are strings (text nodes) or nodes. */
  function h(tag, attrs) {
    var el = document.createElement(tag);
    setAttrs(el, attrs);
    for (var i = 2; i < arguments.length; i++) append(el, arguments[i]);
    return el;
  }

  function s(tag, attrs) {
    var el = document.createElementNS(SVG_NS, tag);
    setAttrs(el, attrs);
    for (var i = 2; i < arguments.length; i++) append(el, arguments[i]);
    return el;
  }

  function setAttrs(el, attrs) {
    if (!attrs) return;
    Object.keys(attrs).forEach(function (k) {
      var v = attrs[k];
      if (v === null || v === undefined || v === false) return;
      el.setAttribute(k, String(v));
    });
  }

  function append(el, child) {
    if (child === null || child === undefined || child === false) return;
    if (Array.isArray(child)) { child.forEach(function (c) { append(el, c); }); return; }
    if (typeof child === "object" && child.nodeType) { el.appendChild(child); return; }
    el.appendChild(document.createTextNode(String(child)));
  }

  function table(cls, head, rows) {
    return h("table", { class: cls },
      h("thead", null, h("tr", null, head)),
      h("tbody", null, rows));
  }

  function empty(text) { return h("div", { class: "empty" }, text); }

  // ---------- formatting ----------

  function isNum(x) { return typeof x === "number" && isFinite(x); }
  function pad(n) { return String(n).padStart(2, "0"); }
  function clock(ms) {
    if (!isNum(ms)) return "–";
    var d = new Date(ms);
    return pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }
  function dateTime(ms) {
    if (!isNum(ms)) return "–";
    var d = new Date(ms);
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " + clock(ms);
  }
  function duration(ms) {
    if (!isNum(ms) || ms < 0) return "–";
    var sec = Math.round(ms / 1000);
    if (sec < 60) return sec + " s";
    var min = Math.floor(sec / 60);
    if (min < 60) return min + " min " + pad(sec % 60) + " s";
    var hr = Math.floor(min / 60);
    if (hr < 48) return hr + " h " + pad(min % 60) + " min";
    return Math.floor(hr / 24) + " d " + (hr % 24) + " h";
  }
  function num(x, digits) {
    if (!isNum(x)) return "–";
    return x.toFixed(digits === undefined ? 1 : digits);
  }
  function pct(x) {
    if (!isNum(x)) return "–";
    var p = x * 100;
    return (p !== 0 && Math.abs(p) < 1 ? p.toFixed(2) : p.toFixed(1)) + " %";
  }
  function ms(x) {
    if (!isNum(x)) return "–";
    return (x < 10 ? x.toFixed(1) : Math.round(x).toString()) + " ms";
  }
  function usd(x) {
    if (!isNum(x)) return "–";
    if (x === 0) return "$0";
    return "$" + (Math.abs(x) >= 0.01 ? x.toFixed(4) : x.toPrecision(3));
  }
  function evalue(x) {
    if (!isNum(x)) return "–";
    if (x >= 1e4 || (x > 0 && x < 1e-3)) return x.toExponential(2);
    return x.toPrecision(3);
  }
  function ratio(x) { return isNum(x) ? "×" + x.toFixed(3) : "–"; }
  function weightPct(w) { return isNum(w) ? (Math.round(w * 100) / 100) + " %" : "–"; }

  // ---------- the admin API ----------

  function AuthError() { this.message = "the admin token was refused"; }

  function api(path) {
    var token = sessionStorage.getItem(TOKEN_KEY) || "";
    return fetch(API + path, {
      headers: { "Authorization": "Bearer " + token, "Accept": "application/json" },
      cache: "no-store",
      credentials: "omit",
    }).then(function (r) {
      if (r.status === 401) throw new AuthError();
      return r.text().then(function (text) {
        var body = null;
        try { body = text ? JSON.parse(text) : null; } catch (e) { body = null; }
        if (!r.ok) {
          var msg = body && body.error && body.error.message ? body.error.message : text.slice(0, 200);
          throw new Error("GET " + API + path + " → " + r.status + ": " + msg);
        }
        return body;
      });
    });
  }

  function isLive(r) { return r.state === "progressing" || r.state === "paused"; }

  /** The newest PAIRS_SHOWN shadow pairs of a rollout; pages forward from the last pair seen. */
  function recentPairs(id) {
    var c = shadowCache[id] || (shadowCache[id] = { after: 0, pairs: [] });
    var pages = 0;
    function page() {
      return api("/rollouts/" + encodeURIComponent(id) + "/shadow?after=" + c.after + "&limit=200")
        .then(function (body) {
          var data = (body && body.data) || [];
          if (data.length) {
            c.pairs = c.pairs.concat(data).slice(-PAIRS_SHOWN);
            c.after = data[data.length - 1].id;
          }
          pages += 1;
          if (body && body.next !== null && body.next !== undefined && pages < 50) return page();
          return { pairs: c.pairs, counters: body ? body.counters : null };
        });
    }
    return page();
  }

  function load() {
    return Promise.all([api("/routes"), api("/rollouts")]).then(function (res) {
      var routes = (res[0] && res[0].data) || [];
      var rollouts = (res[1] && res[1].data) || [];
      var live = rollouts.filter(isLive);
      return Promise.all(live.map(function (r) {
        var id = encodeURIComponent(r.id);
        return Promise.all([api("/rollouts/" + id + "/events"), recentPairs(r.id)])
          .then(function (x) { return { rollout: r, events: (x[0] && x[0].data) || [], shadow: x[1] }; });
      })).then(function (details) {
        return { routes: routes, live: details, past: rollouts.filter(function (r) { return !isLive(r); }) };
      });
    });
  }

  // ---------- rendering ----------

  function stateBadge(state) {
    return h("span", { class: "badge state-" + state, "data-state": state }, String(state).replace("_", " "));
  }

  function verdictBadge(v) {
    var label = v === "not_yet" ? "not yet" : v;
    return h("span", { class: "badge verdict-" + v }, label);
  }

  function renderRoutes(routes) {
    if (!routes.length) return empty("No routes configured.");
    return table("routes",
      [h("th", null, "route"), h("th", null, "stable version"), h("th", null, "upstream model"), h("th", null, "live rollout")],
      routes.map(function (r) {
        return h("tr", { "data-route": r.route },
          h("td", null, h("b", null, r.route)),
          h("td", { class: "mono" }, r.stable),
          h("td", { class: "mono" }, r.model),
          h("td", { class: "mono" }, r.rollout || h("span", { class: "muted" }, "—")));
      }));
  }

  // Per-arm rows: label, value of an arm, formatter, and for the ratio column: true (lower is
  // better), "neutral" (ratio shown, not coloured) or null (no ratio).
  var ARM_ROWS = [
    ["requests", function (a) { return a.requests; }, function (x) { return isNum(x) ? String(x) : "–"; }, null],
    ["error rate", function (a) { return a.error_rate; }, pct, true],
    ["latency p50", function (a) { return a.latency_ms && a.latency_ms.p50; }, ms, true],
    ["latency p95", function (a) { return a.latency_ms && a.latency_ms.p95; }, ms, true],
    ["TTFT p95", function (a) { return a.ttft_ms && a.ttft_ms.p95; }, ms, true],
    ["tokens / request", function (a) { return a.tokens_per_request; }, function (x) { return num(x, 1); }, true],
    ["cost / request", function (a) { return a.cost_per_request_usd; }, usd, true],
    ["response chars p50", function (a) { return a.response_chars && a.response_chars.p50; }, function (x) { return num(x, 0); }, "neutral"],
    ["schema failures", function (a) { return a.schema_failure_rate; }, pct, true],
    ["guardrail blocks", function (a) { return a.guardrail_block_rate; }, pct, true],
  ];

  function renderArms(arms) {
    if (!arms || !arms.stable || !arms.canary) return empty("No figures for the arms in this process yet.");
    var st = arms.stable, ca = arms.canary;
    return table("arms",
      [h("th", null, ""),
        h("th", { class: "num arm-stable", "data-arm": "stable" }, "stable · ", h("span", { class: "mono" }, st.version)),
        h("th", { class: "num arm-canary", "data-arm": "canary" }, "canary · ", h("span", { class: "mono" }, ca.version)),
        h("th", { class: "num" }, "canary / stable")],
      ARM_ROWS.map(function (row) {
        var a = row[1](st), b = row[1](ca);
        var rel = null, cls = null;
        if (row[3] !== null && isNum(a) && isNum(b) && a > 0) {
          rel = b / a;
          if (row[3] === true && rel > 1.1) cls = "worse";
          else if (row[3] === true && rel < 0.9) cls = "better";
        }
        return h("tr", null,
          h("td", null, row[0]),
          h("td", { class: "num" }, row[2](a)),
          h("td", { class: "num" }, row[2](b)),
          h("td", { class: "num" + (cls ? " " + cls : "") }, rel === null ? "" : ratio(rel)));
      }));
  }

  // A cluster (PostgreSQL): every replica's figures, summed from what they shipped; the
  // arms table above is the answering replica's own.
  function renderClusterArms(c) {
    if (!c || !c.stable || !c.canary) return null;
    var rows = [
      ["requests", function (a) { return isNum(a.requests) ? String(a.requests) : "–"; }],
      ["error rate", function (a) { return pct(a.error_rate); }],
      ["latency mean", function (a) { return ms(a.mean_latency_ms); }],
    ];
    return h("div", { class: "cluster-arms" },
      h("h3", null, "Every replica (" + c.replicas + " shipped" +
        (c.observations_dropped ? ", " + c.observations_dropped + " observations dropped" : "") + ")"),
      table("cluster-arms",
        [h("th", null, ""), h("th", { class: "num arm-stable" }, "stable"), h("th", { class: "num arm-canary" }, "canary")],
        rows.map(function (row) {
          return h("tr", null, h("td", null, row[0]),
            h("td", { class: "num" }, row[1](c.stable)), h("td", { class: "num" }, row[1](c.canary)));
        })));
  }

  function gateValue(gate, x) {
    switch (gate) {
      case "error_rate": case "schema_failure_rate": case "guardrail_block_rate": return pct(x);
      case "latency_p95": case "ttft_p95": return ms(x);
      case "cost_per_request": return usd(x);
      case "tokens_per_request": return num(x, 1);
      case "response_length": return num(x, 0) + " chars";
      default: return isNum(x) ? x.toPrecision(4) : "–";
    }
  }

  function renderGates(judge) {
    var gates = (judge && judge.gates) || [];
    if (!gates.length) return empty("The judge has not looked yet.");
    return table("gates",
      [h("th", null, "gate"), h("th", null, "verdict"), h("th", { class: "num" }, "e-value"),
        h("th", { class: "num" }, "effect (canary / stable)"), h("th", { class: "num" }, "interval"),
        h("th", { class: "num" }, "stable"), h("th", { class: "num" }, "canary"), h("th", { class: "num" }, "n stable / canary")],
      gates.map(function (g) {
        var name = g.feedback ? "feedback: " + g.feedback : g.gate;
        var ci = Array.isArray(g.ci) ? "[" + num(g.ci[0], 3) + ", " + num(g.ci[1], 3) + "]" : "–";
        return h("tr", { "data-gate": g.feedback ? "feedback:" + g.feedback : g.gate, "data-verdict": g.verdict },
          h("td", { class: "mono" }, name),
          h("td", null, verdictBadge(g.verdict)),
          h("td", { class: "num" }, evalue(g.e_value)),
          h("td", { class: "num" }, ratio(g.effect)),
          h("td", { class: "num" }, ci),
          h("td", { class: "num" }, gateValue(g.gate, g.stable_value)),
          h("td", { class: "num" }, gateValue(g.gate, g.canary_value)),
          h("td", { class: "num" }, (isNum(g.n_stable) ? g.n_stable : "–") + " / " + (isNum(g.n_canary) ? g.n_canary : "–")));
      }));
  }

  function describeDecision(d) {
    if (!d || !d.kind) return null;
    switch (d.kind) {
      case "hold": return "hold — " + d.why;
      case "advance": return "advance to step " + (d.to_step + 1) + " at " + weightPct(d.weight_bp / 100);
      case "promote": return "promote";
      case "revert": return "revert — " + (d.reasons || []).join("; ");
      case "inconclusive": return "inconclusive — " + d.why;
      default: return d.kind;
    }
  }

  function renderJudgeLine(r) {
    var j = r.judge;
    if (!j) return h("p", { class: "judge-line" }, "The judge has not reported yet.");
    var parts = [
      "E", h("sub", null, "global"), " = ", h("b", null, evalue(j.e_global)),
      " (reverts at 1/α = " + evalue(j.threshold) + ")",
    ];
    if (j.srm) {
      parts.push(" · sample-ratio guard e = " + evalue(j.srm.e_value) + (j.srm.broken ? " (BROKEN)" : ""));
    }
    var d = describeDecision(r.last_decision);
    if (d) parts.push(" · last decision: ", h("b", null, d));
    if (j.reasons && j.reasons.length) parts.push(h("div", null, "reasons: " + j.reasons.join("; ")));
    return h("div", { class: "judge-line" + (j.revert ? " revert" : "") }, parts);
  }

  /** Step chart of the canary weight: from the events (at_ms, weight_bp) and the current weight. */
  function renderWeightChart(r, events) {
    var W = 560, H = 230, L = 42, R = 12, T = 12, B = 26;
    var start = isNum(r.started_at_ms) ? r.started_at_ms : (events[0] && events[0].at_ms);
    var end = isNum(r.ended_at_ms) ? r.ended_at_ms : Date.now();
    var pts = [];
    events.forEach(function (e) {
      if (isNum(e.at_ms) && isNum(e.weight_bp)) pts.push({ t: e.at_ms, w: e.weight_bp / 100, e: e });
    });
    if (!isNum(start) && pts.length) start = pts[0].t;
    if (!isNum(start)) return empty("No weight history yet.");
    if (!pts.length || pts[0].t > start) pts.unshift({ t: start, w: pts.length ? pts[0].w : r.weight, e: null });
    if (isNum(r.weight)) pts.push({ t: Math.max(end, pts[pts.length - 1].t), w: r.weight, e: null });
    if (end <= start) end = start + 1000;
    var maxW = pts.reduce(function (m, p) { return Math.max(m, p.w); }, 0);
    var yMax = [5, 10, 25, 50, 100].find(function (v) { return v >= maxW; }) || 100;
    var x = function (t) { return L + (W - L - R) * Math.min(1, Math.max(0, (t - start) / (end - start))); };
    var y = function (w) { return T + (H - T - B) * (1 - w / yMax); };

    var svg = s("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": "canary weight over time" });
    [0, yMax / 2, yMax].forEach(function (v) {
      svg.appendChild(s("line", { class: v === 0 ? "axis" : "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
      svg.appendChild(s("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, v + " %"));
    });
    svg.appendChild(s("line", { class: "axis", x1: L, x2: L, y1: T, y2: H - B }));
    svg.appendChild(s("text", { x: L, y: H - 8, "text-anchor": "start" }, clock(start)));
    svg.appendChild(s("text", { x: W - R, y: H - 8, "text-anchor": "end" }, isNum(r.ended_at_ms) ? clock(end) : "now " + clock(end)));
    svg.appendChild(s("text", { x: (L + W - R) / 2, y: H - 8, "text-anchor": "middle" }, duration(end - start)));

    var d = "M" + x(pts[0].t).toFixed(1) + "," + y(pts[0].w).toFixed(1);
    for (var i = 1; i < pts.length; i++) {
      d += " H" + x(pts[i].t).toFixed(1) + " V" + y(pts[i].w).toFixed(1);
    }
    var area = d + " V" + y(0).toFixed(1) + " H" + x(pts[0].t).toFixed(1) + " Z";
    svg.appendChild(s("path", { class: "area", d: area }));
    svg.appendChild(s("path", { class: "line", d: d }));
    pts.forEach(function (p) {
      if (!p.e) return;
      svg.appendChild(s("circle", { class: "dot", cx: x(p.t).toFixed(1), cy: y(p.w).toFixed(1), r: 3.5 },
        s("title", null, clock(p.t) + " " + p.e.kind + " (" + weightPct(p.w) + "): " + p.e.message)));
    });
    return h("div", { class: "chart" }, svg);
  }

  function renderEvents(events) {
    if (!events.length) return empty("No events yet.");
    var shown = events.slice(-EVENTS_SHOWN).reverse();
    return h("div", { class: "scroll" }, table("events",
      [h("th", null, "time"), h("th", null, "event"), h("th", null, "by"), h("th", { class: "num" }, "weight"), h("th", null, "message")],
      shown.map(function (e) {
        return h("tr", { class: "actor-" + e.actor, "data-event": e.kind },
          h("td", { class: "when" }, clock(e.at_ms)),
          h("td", { class: "kind" }, e.kind),
          h("td", null, e.actor),
          h("td", { class: "num" }, isNum(e.weight_bp) ? weightPct(e.weight_bp / 100) : "–"),
          h("td", null, e.message));
      })));
  }

  function promptOf(request) {
    var msgs = request && Array.isArray(request.messages) ? request.messages : [];
    for (var i = msgs.length - 1; i >= 0; i--) {
      var m = msgs[i];
      if (!m || m.role !== "user") continue;
      if (typeof m.content === "string") return m.content;
      if (Array.isArray(m.content)) {
        return m.content.map(function (p) { return p && typeof p.text === "string" ? p.text : ""; }).join(" ");
      }
    }
    return request ? JSON.stringify(request).slice(0, 200) : "";
  }

  function clip(text, n) {
    text = String(text === null || text === undefined ? "" : text);
    return text.length > n ? text.slice(0, n - 1) + "…" : text;
  }

  function renderPairs(shadow, r) {
    var counters = (shadow && shadow.counters) || r.shadow;
    var line = counters ? h("div", { class: "counters" },
      "copies sent " + counters.sent + " · dropped (queue) " + counters.dropped_queue + " · dropped (budget) " +
      counters.dropped_budget + " · failed " + counters.failed + " · spent " + usd(counters.spent_usd)) : null;
    var pairs = ((shadow && shadow.pairs) || []).slice().reverse();
    if (!pairs.length) {
      return [empty(counters ? "No shadow pairs stored yet." : "This rollout's policy copies no shadow traffic."), line];
    }
    return [h("div", { class: "scroll" }, table("pairs",
      [h("th", null, "time"), h("th", null, "request"), h("th", null, "primary answer"), h("th", null, "shadow answer")],
      pairs.map(function (p) {
        var prompt = promptOf(p.request);
        return h("tr", { "data-shadow-pair": p.id },
          h("td", { class: "when" }, clock(p.at_ms)),
          h("td", { class: "text", title: prompt }, clip(prompt, 80)),
          h("td", { class: "text", title: p.primary_version + ": " + p.primary_answer },
            h("span", { class: "mono " + (p.primary_arm === "canary" ? "v-canary" : "v-stable") }, p.primary_version), " ", clip(p.primary_answer, 120)),
          h("td", { class: "text", title: p.shadow_version + ": " + p.shadow_answer },
            h("span", { class: "mono " + (p.primary_arm === "canary" ? "v-stable" : "v-canary") }, p.shadow_version), " ", clip(p.shadow_answer, 120)));
      }))), line];
  }

  function renderPins(pins) {
    var keys = pins ? Object.keys(pins) : [];
    if (!keys.length) return null;
    return h("span", null, "pins ", h("b", null, keys.map(function (k) { return k + " → " + pins[k]; }).join(", ")));
  }

  function renderLive(d) {
    var r = d.rollout;
    var stepText = r.steps ? "step " + Math.min(r.step + 1, r.steps) + " of " + r.steps : "step " + r.step;
    return h("article", { class: "card", "data-rollout": r.id },
      h("div", { class: "card-head" },
        h("span", { class: "id" }, r.id),
        stateBadge(r.state),
        h("span", { class: "route" }, "route " + r.route),
        h("span", { class: "versions" },
          h("span", { class: "v-stable" }, r.stable), " → ", h("span", { class: "v-canary" }, r.canary))),
      h("div", { class: "facts" },
        h("span", null, "canary weight ", h("b", null, weightPct(r.weight))),
        h("span", null, h("b", null, stepText)),
        h("span", null, "policy ", h("b", null, r.policy)),
        h("span", null, "started ", h("b", null, clock(r.started_at_ms)), " (" + duration(Date.now() - r.started_at_ms) + " ago)"),
        isNum(r.canary_requests_in_step) ? h("span", null, "randomized canary requests this step ", h("b", null, String(r.canary_requests_in_step))) : null,
        r.reported_canary_requests_in_step > 0 ? h("span", null, "not randomized (reported, not counted) ", h("b", null, String(r.reported_canary_requests_in_step))) : null,
        r.inconclusive ? h("span", { class: "worse" }, "inconclusive: waiting for an operator") : null,
        renderPins(r.pins)),
      renderJudgeLine(r),
      h("div", { class: "grid2" },
        h("div", { class: "box" }, h("h3", null, "Arms"), renderArms(r.arms), renderClusterArms(r.cluster)),
        h("div", { class: "box" }, h("h3", null, "Canary weight over time"), renderWeightChart(r, d.events))),
      h("div", { class: "box gates-box" }, h("h3", null, "Gates"), renderGates(r.judge)),
      h("div", { class: "grid2 lower" },
        h("div", { class: "box" }, h("h3", null, "Event log"), renderEvents(d.events)),
        h("div", { class: "box" }, h("h3", null, "Recent shadow pairs"), renderPairs(d.shadow, r))));
  }

  function outcomeOf(r) {
    var j = r.judge;
    if (j && j.reasons && j.reasons.length) return j.reasons.join("; ");
    if (r.state === "promoted") return r.canary + " is the stable version now";
    if (r.state === "aborted") return "aborted by an operator; " + r.stable + " stays stable";
    if (r.state === "rolled_back") return "rolled back to " + r.stable;
    return "";
  }

  function renderPast(past) {
    if (!past.length) return empty("No past rollouts.");
    return table("past",
      [h("th", null, "rollout"), h("th", null, "route"), h("th", null, "stable → canary"), h("th", null, "policy"),
        h("th", null, "outcome"), h("th", null, "started"), h("th", { class: "num" }, "ran"), h("th", null, "why")],
      past.map(function (r) {
        return h("tr", { "data-rollout": r.id },
          h("td", { class: "mono" }, r.id),
          h("td", null, r.route),
          h("td", { class: "mono" }, h("span", { class: "v-stable" }, r.stable), " → ", h("span", { class: "v-canary" }, r.canary)),
          h("td", null, r.policy),
          h("td", null, stateBadge(r.state)),
          h("td", { class: "when" }, dateTime(r.started_at_ms)),
          h("td", { class: "num" }, isNum(r.ended_at_ms) ? duration(r.ended_at_ms - r.started_at_ms) : "–"),
          h("td", null, outcomeOf(r)));
      }));
  }

  function render(data) {
    $("routes").replaceChildren(renderRoutes(data.routes));
    $("live").replaceChildren(data.live.length
      ? h("div", null, data.live.map(renderLive))
      : h("div", { class: "panel empty" }, "No rollout is live."));
    $("past").replaceChildren(renderPast(data.past));
    var live = {};
    data.live.forEach(function (d) { live[d.rollout.id] = true; });
    Object.keys(shadowCache).forEach(function (id) { if (!live[id]) delete shadowCache[id]; });
  }

  // ---------- status, errors, sign-in ----------

  function showError(message) {
    var b = $("error");
    if (message) {
      b.textContent = message;
      b.setAttribute("data-state", "error");
      b.hidden = false;
    } else {
      b.textContent = "";
      b.setAttribute("data-state", "ok");
      b.hidden = true;
    }
  }

  function showLogin(note) {
    stop();
    document.body.setAttribute("data-auth", "none");
    $("content").hidden = true;
    $("signout").hidden = true;
    $("login").hidden = false;
    $("login-note").textContent = note || "";
    $("updated").textContent = "signed out";
    $("token").focus();
  }

  function stop() {
    generation += 1;
    if (timer !== null) { clearTimeout(timer); timer = null; }
  }

  function startPolling() {
    stop();
    shadowCache = {};
    document.body.setAttribute("data-auth", "ok");
    $("login").hidden = true;
    $("content").hidden = false;
    $("signout").hidden = false;
    poll(generation);
  }

  function poll(gen) {
    load().then(function (data) {
      if (gen !== generation) return;
      render(data);
      showError(null);
      $("updated").textContent = "updated " + clock(Date.now());
    }, function (err) {
      if (gen !== generation) return;
      if (err instanceof AuthError) {
        sessionStorage.removeItem(TOKEN_KEY);
        showLogin("The admin API refused the token (401). Enter it again.");
        return;
      }
      showError("Could not refresh: " + (err && err.message ? err.message : String(err)));
    }).then(function () {
      if (gen === generation) timer = setTimeout(function () { poll(gen); }, POLL_MS);
    });
  }

  function init() {
    // `#token=…` (for scripts and headless browsers): taken once, kept in the session, and
    // removed from the address bar and history.
    var m = /(?:^#|&)token=([^&]*)/.exec(location.hash || "");
    if (m) {
      sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
      history.replaceState(null, "", location.pathname + location.search);
    }
    $("login-form").addEventListener("submit", function (ev) {
      ev.preventDefault();
      var t = $("token").value.trim();
      if (!t) return;
      sessionStorage.setItem(TOKEN_KEY, t);
      $("token").value = "";
      startPolling();
    });
    $("signout").addEventListener("click", function () {
      sessionStorage.removeItem(TOKEN_KEY);
      showError(null);
      showLogin("");
    });
    window.addEventListener("error", function (ev) {
      showError("Page error: " + (ev && ev.message ? ev.message : "unknown"));
    });
    window.addEventListener("unhandledrejection", function (ev) {
      var r = ev && ev.reason;
      showError("Page error: " + (r && r.message ? r.message : String(r)));
    });
    if (sessionStorage.getItem(TOKEN_KEY)) startPolling();
    else showLogin("");
  }

  init();
})();
