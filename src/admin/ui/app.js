// keygate admin page: the API Keys screen over keygate's admin API.
//
// Rules this file keeps (the page's CSP enforces the first two):
// - no inline script or style, no eval, nothing from another origin;
// - every value from the server or the user is put in the page as text (textContent,
//   value, setAttribute of plain attributes), never parsed as HTML;
// - the admin key lives in this tab only: a variable, and sessionStorage when the admin
//   asks to stay signed in. Never a cookie, never storage that outlives the tab, never
//   a URL.
"use strict";

(function () {
  var STORAGE_KEY = "keygate.adminKey";
  var API_BASE = (function () {
    var meta = document.querySelector('meta[name="keygate-api-base"]');
    var base = meta ? meta.getAttribute("content") || "" : "";
    return base.replace(/\/+$/, "");
  })();
  // RFC 6750 b64token: what keygate accepts after "Bearer ".
  var TOKEN_SHAPE = /^[A-Za-z0-9\-._~+\/]+=*$/;

  var state = {
    key: null,
    keys: [],
    next: null,
    users: null, // [{id, name}] when the directory lists its users, else null
    caller: null, // {keyId, userId}
    pending: null, // the action the confirm dialog runs
    editing: null, // the key the form edits; null when it creates one
  };

  function $(id) {
    return document.getElementById(id);
  }

  // An element with attributes and children; strings become text nodes.
  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (name) {
        var value = attrs[name];
        if (value === null || value === undefined || value === false) return;
        if (name === "text") node.textContent = String(value);
        else if (name === "className") node.className = value;
        else node.setAttribute(name, value === true ? "" : String(value));
      });
    }
    (children || []).forEach(function (child) {
      if (child === null || child === undefined) return;
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    });
    return node;
  }

  function show(node, visible) {
    node.hidden = !visible;
  }

  // ---- the admin API ------------------------------------------------------------------

  function ApiError(status, code, message, reason, detail) {
    this.status = status;
    this.code = code;
    this.message = message;
    this.reason = reason;
    // The API's error_description as sent (for 400s that name a field).
    this.detail = typeof detail === "string" ? detail : "";
  }

  function describe(status, data) {
    var text = data && typeof data.error_description === "string" ? data.error_description : "";
    var reason = data && typeof data.reason === "string" ? data.reason : "";
    if (status === 401) {
      return "The admin key was refused: it may be mistyped, revoked, switched off or expired.";
    }
    if (status === 403 && reason === "not_admin") {
      return "This key is valid, but it has no admin permission.";
    }
    if (status === 403) {
      return "Not allowed: " + (text || "your key cannot make this change") + ".";
    }
    if (status === 409) {
      return "The key changed while this was being saved; nothing was written. The list has been reloaded: try again.";
    }
    if (status === 503) {
      return "The key store is unavailable right now. Try again in a few seconds.";
    }
    if (status === 404 && data && data.error === "not_found") {
      return "That key no longer exists.";
    }
    if (text) return text.charAt(0).toUpperCase() + text.slice(1) + ".";
    return "The server answered " + status + ". Try again.";
  }

  function api(method, path, body) {
    var headers = { Accept: "application/json", Authorization: "Bearer " + state.key };
    var init = {
      method: method,
      headers: headers,
      cache: "no-store",
      credentials: "omit",
      redirect: "error",
      referrerPolicy: "no-referrer",
    };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return fetch(API_BASE + path, init).then(
      function (response) {
        return response.text().then(function (text) {
          var data = null;
          var type = response.headers.get("Content-Type") || "";
          if (text && type.indexOf("json") !== -1) {
            try {
              data = JSON.parse(text);
            } catch (e) {
              data = null;
            }
          }
          if (!response.ok) {
            throw new ApiError(
              response.status,
              data && data.error,
              describe(response.status, data),
              data && data.reason,
              data && data.error_description
            );
          }
          return data;
        });
      },
      function () {
        throw new ApiError(0, "network", "The server could not be reached. Check the connection and try again.");
      }
    );
  }

  // ---- formatting ---------------------------------------------------------------------

  var dateFormat = new Intl.DateTimeFormat(undefined, { year: "numeric", month: "short", day: "numeric" });
  var dateTimeFormat = new Intl.DateTimeFormat(undefined, {
    year: "numeric",
    month: "short",
    day: "numeric",
    hour: "2-digit",
    minute: "2-digit",
  });
  var relative = typeof Intl.RelativeTimeFormat === "function" ? new Intl.RelativeTimeFormat(undefined, { numeric: "auto" }) : null;

  function parseDate(iso) {
    if (typeof iso !== "string") return null;
    var date = new Date(iso);
    return isNaN(date.getTime()) ? null : date;
  }

  function ago(date) {
    var seconds = (date.getTime() - Date.now()) / 1000;
    var units = [
      ["year", 31536000],
      ["month", 2592000],
      ["day", 86400],
      ["hour", 3600],
      ["minute", 60],
    ];
    for (var i = 0; i < units.length; i++) {
      if (Math.abs(seconds) >= units[i][1]) {
        var n = Math.round(seconds / units[i][1]);
        return relative ? relative.format(n, units[i][0]) : dateTimeFormat.format(date);
      }
    }
    return relative ? relative.format(0, "second") : "now";
  }

  // A <time> with a readable text and the exact instant as its tooltip.
  function timeCell(iso, empty, style) {
    var date = parseDate(iso);
    if (!date) return el("span", { className: "muted", text: empty });
    var text = style === "relative" ? ago(date) : style === "datetime" ? dateTimeFormat.format(date) : dateFormat.format(date);
    return el("time", { datetime: date.toISOString(), title: dateTimeFormat.format(date), text: text });
  }

  function userLabel(userId) {
    if (state.users) {
      for (var i = 0; i < state.users.length; i++) {
        var user = state.users[i];
        if (user && user.id === userId && user.name) return user.name;
      }
    }
    return userId;
  }

  // ---- usage limits and network restrictions -------------------------------------------
  // Unkey's shapes, as the admin API speaks them: ratelimits [{name, limit, duration (ms),
  // autoApply, burst?}], credits {remaining, refill?: {interval, amount, refillDay?}},
  // allowedCidrs [..], allowedOrigins [..].

  var numberFormat = new Intl.NumberFormat();
  var UNITS = [
    [86400000, "day", "days", "day"],
    [3600000, "hour", "hours", "h"],
    [60000, "minute", "minutes", "min"],
    [1000, "second", "seconds", "s"],
  ];
  // The "per" choices of the form; a key's other durations are added to its select.
  var PER_CHOICES = [1000, 60000, 3600000, 86400000];

  function count(n) {
    return typeof n === "number" && isFinite(n) ? numberFormat.format(n) : "?";
  }

  function plural(n, one, many) {
    return count(n) + " " + (n === 1 ? one : many);
  }

  // "minute", "5 minutes", "1.5 seconds", "250 ms".
  function durationWords(ms) {
    for (var i = 0; i < UNITS.length; i++) {
      if (ms % UNITS[i][0] === 0) {
        var n = ms / UNITS[i][0];
        return n === 1 ? UNITS[i][1] : count(n) + " " + UNITS[i][2];
      }
    }
    return ms >= 1000 ? count(ms / 1000) + " seconds" : count(ms) + " ms";
  }

  // "100/min", "10 per 5 min", "3 per 250 ms".
  function rateText(limit) {
    for (var i = 0; i < UNITS.length; i++) {
      if (limit.duration === UNITS[i][0]) return count(limit.limit) + "/" + UNITS[i][3];
    }
    return count(limit.limit) + " per " + durationWords(limit.duration);
  }

  function rateTitle(limit) {
    var text = limit.name + ": " + plural(limit.limit, "request", "requests") + " per " + durationWords(limit.duration);
    if (typeof limit.burst === "number") text += ", bursts of up to " + count(limit.burst);
    text += limit.autoApply === false ? " (charged by the app, not on every request)" : "";
    return text;
  }

  function refillText(refill) {
    if (!refill) return "never refilled";
    if (refill.interval === "daily") return "refilled to " + count(refill.amount) + " every day";
    return "refilled to " + count(refill.amount) + " on day " + (refill.refillDay || 1) + " of every month";
  }

  function limitsOf(key) {
    return {
      ratelimits: Array.isArray(key.ratelimits) ? key.ratelimits : [],
      credits: key.credits && typeof key.credits === "object" ? key.credits : null,
      cidrs: Array.isArray(key.allowedCidrs) ? key.allowedCidrs : [],
      origins: Array.isArray(key.allowedOrigins) ? key.allowedOrigins : [],
    };
  }

  // The key's limits as short chips: [{text, title, kind}], empty when it has none.
  function limitChips(key) {
    var l = limitsOf(key);
    var chips = [];
    var auto = l.ratelimits.filter(function (r) {
      return r && r.autoApply !== false;
    });
    var first = auto.length ? auto[0] : l.ratelimits[0];
    if (first) {
      var more = l.ratelimits.length - 1;
      chips.push({
        kind: "rate",
        text: rateText(first) + (more > 0 ? " +" + more : ""),
        title: l.ratelimits.map(rateTitle).join("\n"),
      });
    }
    if (l.credits) {
      var left = l.credits.remaining;
      chips.push({
        kind: left === 0 ? "empty" : "credits",
        text: plural(left, "credit", "credits"),
        title: plural(left, "credit", "credits") + " left, " + refillText(l.credits.refill),
      });
    }
    if (l.cidrs.length) {
      chips.push({ kind: "net", text: plural(l.cidrs.length, "network", "networks"), title: "Allowed networks: " + l.cidrs.join(", ") });
    }
    if (l.origins.length) {
      chips.push({ kind: "net", text: plural(l.origins.length, "origin", "origins"), title: "Allowed origins: " + l.origins.join(", ") });
    }
    return chips;
  }

  function limitsCell(key) {
    var chips = limitChips(key);
    var content = chips.length
      ? el(
          "span",
          { className: "chips", "data-limits": chips.map(function (c) { return c.text; }).join(" · ") },
          chips.map(function (chip) {
            return el("span", { className: "chip chip-" + chip.kind, title: chip.title, text: chip.text });
          })
        )
      : el("span", { className: "muted", text: "None" });
    return el("td", { className: "cell-limits", "data-label": "Limits" }, [content]);
  }

  // ---- messages -----------------------------------------------------------------------

  function announce(text) {
    $("status").textContent = text;
  }

  function banner(text) {
    $("banner-text").textContent = text;
    show($("banner"), !!text);
  }

  function formError(id, text) {
    var node = $(id);
    node.textContent = text || "";
    show(node, !!text);
  }

  // Every API failure outside a dialog ends here; a refused admin key signs out.
  function failed(error) {
    var message = error && error.message ? error.message : "Something went wrong.";
    if (error && error.status === 401) {
      signOut(message + " Sign in again.");
      return;
    }
    banner(message);
  }

  // ---- signing in and out ---------------------------------------------------------------

  function setKey(key, remember) {
    state.key = key;
    try {
      if (remember) sessionStorage.setItem(STORAGE_KEY, key);
      else sessionStorage.removeItem(STORAGE_KEY);
    } catch (e) {
      // Storage disabled: the key stays in memory only.
    }
  }

  function signOut(message) {
    state.key = null;
    state.keys = [];
    state.next = null;
    state.users = null;
    state.caller = null;
    try {
      sessionStorage.removeItem(STORAGE_KEY);
    } catch (e) {
      /* nothing stored */
    }
    closeDialogs();
    $("key-rows").replaceChildren();
    banner("");
    show($("keys"), false);
    show($("session"), false);
    show($("signin"), true);
    formError("signin-error", message || "");
    $("signin-key").value = "";
    $("signin-remember").checked = false;
    $("signin-key").focus();
  }

  function signIn(key, remember) {
    var button = $("signin-submit");
    button.disabled = true;
    button.textContent = "Signing in…";
    state.key = key;
    return loadKeys(false)
      .then(function () {
        setKey(key, remember);
        formError("signin-error", "");
        $("signin-key").value = "";
        show($("signin"), false);
        show($("keys"), true);
        show($("session"), true);
        $("add-key").focus();
        return loadUsers();
      })
      .catch(function (error) {
        state.key = null;
        setKey(null, false);
        show($("signin"), true);
        formError("signin-error", error.message);
        $("signin-key").focus();
      })
      .then(function () {
        button.disabled = false;
        button.textContent = "Sign in";
      });
  }

  function loadUsers() {
    return api("GET", "/users").then(
      function (data) {
        state.users = data && Array.isArray(data.users) ? data.users : null;
        state.caller = data && data.caller ? data.caller : null;
        $("session-who").textContent = state.caller ? userLabel(state.caller.userId) : "an admin key";
        render();
      },
      function (error) {
        // An admin API without the users route: the create form asks for a user id.
        state.users = null;
        $("session-who").textContent = "an admin key";
        if (error.status !== 404) failed(error);
      }
    );
  }

  // ---- the list -----------------------------------------------------------------------

  function loadKeys(more) {
    var query = "?limit=1000";
    if (more && state.next) query += "&after=" + encodeURIComponent(state.next);
    show($("loading"), !more);
    return api("GET", query)
      .then(function (data) {
        var page = data && Array.isArray(data.apiKeys) ? data.apiKeys : [];
        state.keys = more ? state.keys.concat(page) : page;
        state.next = data && typeof data.next === "string" ? data.next : null;
        render();
      })
      .then(
        function () {
          show($("loading"), false);
        },
        function (error) {
          show($("loading"), false);
          throw error;
        }
      );
  }

  function isExpired(key) {
    var date = parseDate(key.expiresAt);
    return !!date && date.getTime() <= Date.now();
  }

  function render() {
    var rows = state.keys.map(row);
    $("key-rows").replaceChildren.apply($("key-rows"), rows);
    var count = $("key-count");
    count.textContent = String(state.keys.length) + (state.next ? "+" : "");
    show(count, state.keys.length > 0);
    show($("empty"), state.keys.length === 0);
    show($("key-table"), state.keys.length > 0);
    show($("load-more"), !!state.next);
  }

  function row(key) {
    var name = typeof key.name === "string" ? key.name : "";
    var expired = isExpired(key);

    var nameCell = el("td", { className: "cell-name", "data-label": "Name" }, [
      el("span", { className: "key-name", text: name }),
      key.description ? el("span", { className: "key-description", text: key.description }) : null,
      key.format === "jwt" ? el("span", { className: "tag", text: "JWT" }) : null,
    ]);

    var userId = typeof key.userId === "string" ? key.userId : "";
    var label = userLabel(userId);
    var userCell = el("td", { className: "cell-user", "data-label": "User" }, [
      el("span", { className: "user", title: label !== userId ? userId : null, text: label }),
    ]);

    var expires;
    if (!key.expiresAt) expires = el("span", { className: "muted", text: "Never" });
    else if (expired) {
      expires = el("span", { className: "tag tag-danger", title: dateTimeFormat.format(parseDate(key.expiresAt) || new Date()), text: "Expired" });
    } else expires = timeCell(key.expiresAt, "Never", "date");

    var toggle = el("input", {
      type: "checkbox",
      role: "switch",
      className: "switch",
      "aria-label": "Active: " + name,
      "data-action": "toggle",
    });
    toggle.checked = !!key.isActive;
    var activeText = el("span", { className: "switch-text", "aria-hidden": "true", text: key.isActive ? "On" : "Off" });
    var activeCell = el("td", { className: "cell-time", "data-label": "Active" }, [el("label", { className: "switch-label" }, [toggle, activeText])]);

    var actions = el("td", { className: "cell-actions" }, [
      el("div", { className: "row-actions" }, [
        el("button", { type: "button", className: "btn btn-small", "data-action": "edit", "aria-label": "Edit " + name, text: "Edit" }),
        el("button", { type: "button", className: "btn btn-small", "data-action": "rotate", "aria-label": "Rotate " + name, text: "Rotate" }),
        el("button", { type: "button", className: "btn btn-small btn-danger-quiet", "data-action": "delete", "aria-label": "Delete " + name, text: "Delete" }),
      ]),
    ]);

    var tr = el("tr", { "data-key-id": key.id, className: key.isActive && !expired ? "" : "is-off" }, [
      nameCell,
      userCell,
      el("td", { className: "cell-time", "data-label": "Created" }, [timeCell(key.createdAt, "—", "date")]),
      el("td", { className: "cell-time", "data-label": "Last used" }, [timeCell(key.lastUsedAt, "Never", "relative")]),
      el("td", { className: "cell-time", "data-label": "Expires" }, [expires]),
      limitsCell(key),
      activeCell,
      actions,
    ]);
    return tr;
  }

  function findKey(id) {
    for (var i = 0; i < state.keys.length; i++) if (state.keys[i].id === id) return state.keys[i];
    return null;
  }

  function replaceKey(updated) {
    state.keys = state.keys.map(function (key) {
      return key.id === updated.id ? updated : key;
    });
  }

  function toggleActive(key, input) {
    var wanted = input.checked;
    input.disabled = true;
    banner("");
    api("PATCH", "/" + encodeURIComponent(key.id), { isActive: wanted })
      .then(function (data) {
        if (data && data.apiKey) replaceKey(data.apiKey);
        render();
        announce((wanted ? "Switched on " : "Switched off ") + key.name);
        var again = document.querySelector('tr[data-key-id="' + cssEscape(key.id) + '"] input[data-action="toggle"]');
        if (again) again.focus();
      })
      .catch(function (error) {
        input.checked = !wanted;
        input.disabled = false;
        failed(error);
        if (error.status === 409) loadKeys(false).catch(failed);
      });
  }

  function cssEscape(text) {
    return window.CSS && CSS.escape ? CSS.escape(text) : String(text).replace(/[^A-Za-z0-9-]/g, "");
  }

  // ---- dialogs ------------------------------------------------------------------------

  function openDialog(dialog) {
    if (typeof dialog.showModal === "function") dialog.showModal();
    else dialog.setAttribute("open", "");
  }

  function closeDialog(dialog) {
    if (dialog.open) {
      if (typeof dialog.close === "function") dialog.close();
      else dialog.removeAttribute("open");
    }
  }

  function closeDialogs() {
    ["create-dialog", "secret-dialog", "confirm-dialog"].forEach(function (id) {
      closeDialog($(id));
    });
    $("secret-value").value = "";
  }

  // ---- the form's "Usage limits" and "Network" sections ---------------------------------

  // A problem with what was typed: the message, and the field to mark and focus.
  function FormProblem(message, field) {
    this.message = message;
    this.field = field || null;
  }

  var limitRowSeq = 0;

  function perSelect(id, duration) {
    var select = el("select", { id: id, className: "rl-per" });
    var choices = PER_CHOICES.slice();
    if (typeof duration === "number" && choices.indexOf(duration) === -1) choices.push(duration);
    choices.forEach(function (ms) {
      select.appendChild(el("option", { value: String(ms), text: durationWords(ms) }));
    });
    select.value = String(typeof duration === "number" ? duration : 60000);
    return select;
  }

  // One rate limit's fields; a limit's burst (set by the CLI or the API) is kept as it is.
  function addLimitRow(limit) {
    limitRowSeq += 1;
    var id = "rl-" + limitRowSeq;
    var rows = $("ratelimit-rows");
    var first = rows.children.length === 0;
    var name = el("input", {
      id: id + "-name",
      className: "rl-name",
      type: "text",
      maxlength: "64",
      autocomplete: "off",
      autocapitalize: "off",
      spellcheck: "false",
      placeholder: "requests",
    });
    name.value = limit ? limit.name : first ? "requests" : "";
    var amount = el("input", { id: id + "-limit", className: "rl-limit", type: "number", min: "1", step: "1", inputmode: "numeric", autocomplete: "off", placeholder: "100" });
    amount.value = limit ? String(limit.limit) : "";
    var auto = el("input", { id: id + "-auto", className: "rl-auto", type: "checkbox" });
    auto.checked = limit ? limit.autoApply !== false : true;
    var burst = limit && typeof limit.burst === "number" ? limit.burst : null;
    var node = el("div", { className: "limit-row" }, [
      el("div", { className: "field rl-field-name" }, [el("label", { for: id + "-name", text: "Name" }), name]),
      el("div", { className: "field rl-field-limit" }, [el("label", { for: id + "-limit", text: "Requests" }), amount]),
      el("div", { className: "field rl-field-per" }, [el("label", { for: id + "-per", text: "Per" }), perSelect(id + "-per", limit ? limit.duration : 60000)]),
      el("label", { className: "check rl-field-auto", title: "Off: only requests the app charges to this limit count" }, [auto, "Every request"]),
      el("button", { type: "button", className: "btn btn-small btn-quiet btn-danger-quiet rl-remove", "data-remove": "", text: "Remove" }),
      burst !== null ? el("p", { className: "hint rl-burst", text: "Bursts of up to " + count(burst) + " (kept as set)." }) : null,
    ]);
    node.keygateBurst = burst;
    rows.appendChild(node);
    return node;
  }

  function syncCredits() {
    var on = $("credits-on").checked;
    var interval = $("credits-refill").value;
    show($("credits-fields"), on);
    show($("credits-refill-row"), on && !!interval);
    show($("credits-day-field"), interval === "monthly");
  }

  // The form's entries: one a line, trimmed, blank lines skipped.
  function entries(text) {
    return String(text)
      .split(/\r?\n/)
      .map(function (line) {
        return line.trim();
      })
      .filter(function (item) {
        return item !== "";
      });
  }

  function wholeNumber(field, min, what) {
    var text = field.value.trim();
    var n = Number(text);
    if (!/^[0-9]+$/.test(text) || !Number.isSafeInteger(n) || n < min) {
      throw new FormProblem(what + ": enter a whole number" + (min > 0 ? " from " + min : "") + ".", field);
    }
    return n;
  }

  // What the two sections say, in the API's shapes; throws a FormProblem.
  function readUsage() {
    var ratelimits = [];
    Array.prototype.forEach.call($("ratelimit-rows").children, function (row, i) {
      var what = "Rate limit " + (i + 1);
      var nameField = row.querySelector(".rl-name");
      var name = nameField.value.trim();
      if (!name) throw new FormProblem(what + ": give it a name, e.g. requests.", nameField);
      var limit = {
        name: name,
        limit: wholeNumber(row.querySelector(".rl-limit"), 1, what + ", requests"),
        duration: Number(row.querySelector(".rl-per").value),
        autoApply: row.querySelector(".rl-auto").checked,
      };
      if (typeof row.keygateBurst === "number") limit.burst = row.keygateBurst;
      ratelimits.push(limit);
    });
    var credits = null;
    if ($("credits-on").checked) {
      credits = { remaining: wholeNumber($("credits-remaining"), 0, "Credits left") };
      var interval = $("credits-refill").value;
      if (interval) {
        var refill = { interval: interval, amount: wholeNumber($("credits-amount"), 0, "Refill to") };
        if (interval === "monthly") {
          refill.refillDay = $("credits-day").value.trim() ? wholeNumber($("credits-day"), 1, "Day of the month") : 1;
        }
        credits.refill = refill;
      }
    }
    return {
      ratelimits: ratelimits,
      credits: credits,
      cidrs: entries($("create-cidrs").value),
      origins: entries($("create-origins").value),
    };
  }

  // The sections' one-line summaries, from what is typed so far (never throws).
  function updateSummaries() {
    var rows = $("ratelimit-rows").children;
    var parts = [];
    Array.prototype.forEach.call(rows, function (row) {
      var n = Number(row.querySelector(".rl-limit").value);
      if (n > 0) parts.push(rateText({ limit: n, duration: Number(row.querySelector(".rl-per").value) }));
    });
    if (parts.length > 2) parts = [parts[0], "+" + (parts.length - 1)];
    if ($("credits-on").checked) {
      var left = Number($("credits-remaining").value);
      if ($("credits-remaining").value.trim() !== "" && left >= 0) parts.push(plural(left, "credit", "credits"));
      else parts.push("credits");
    }
    $("usage-summary").textContent = parts.length ? parts.join(" · ") : "None";
    var cidrs = entries($("create-cidrs").value).length;
    var origins = entries($("create-origins").value).length;
    var net = [];
    if (cidrs) net.push(plural(cidrs, "network", "networks"));
    if (origins) net.push(plural(origins, "origin", "origins"));
    $("network-summary").textContent = net.length ? net.join(" · ") : "Any network";
  }

  // The form shows `key`'s limits (none for a new key); the sections start closed.
  function fillUsage(key) {
    var l = key ? limitsOf(key) : { ratelimits: [], credits: null, cidrs: [], origins: [] };
    $("ratelimit-rows").replaceChildren();
    l.ratelimits.forEach(function (limit) {
      if (limit && typeof limit.name === "string") addLimitRow(limit);
    });
    var c = l.credits;
    var refill = c && c.refill ? c.refill : null;
    $("credits-on").checked = !!c;
    $("credits-remaining").value = c ? String(c.remaining) : "";
    $("credits-refill").value = refill ? refill.interval : "";
    $("credits-amount").value = refill ? String(refill.amount) : "";
    $("credits-day").value = refill && refill.interval === "monthly" ? String(refill.refillDay || 1) : "1";
    $("create-cidrs").value = l.cidrs.join("\n");
    $("create-origins").value = l.origins.join("\n");
    $("usage-section").open = false;
    $("network-section").open = false;
    show($("credits-reset-note"), !!key && !!c);
    clearInvalid();
    syncCredits();
    updateSummaries();
  }

  function clearInvalid() {
    Array.prototype.forEach.call(document.querySelectorAll('#create-form [aria-invalid="true"]'), function (node) {
      node.removeAttribute("aria-invalid");
    });
  }

  // Shows a problem in the form: the message, the field marked, its section opened.
  function formProblem(problem) {
    clearInvalid();
    formError("create-error", problem.message);
    var field = problem.field;
    if (!field) return;
    var section = field.closest("details");
    if (section) section.open = true;
    if (field.matches("input, select, textarea")) field.setAttribute("aria-invalid", "true");
    field.focus();
  }

  // A 400 that names a usage field, said in the form's words; null for any other error.
  function usageProblem(error, usage) {
    if (error.status !== 400 || !error.detail) return null;
    var detail = error.detail;
    var m = /^(allowedCidrs|allowedOrigins)\[(\d+)\]: ([\s\S]*)$/.exec(detail);
    if (m) {
      var cidrs = m[1] === "allowedCidrs";
      var list = cidrs ? usage.cidrs : usage.origins;
      var i = Number(m[2]);
      var value = i < list.length ? " “" + list[i] + "”" : "";
      return new FormProblem(
        (cidrs ? "Allowed networks" : "Allowed origins") + ", entry " + (i + 1) + value + ": " + m[3] + ".",
        $(cidrs ? "create-cidrs" : "create-origins")
      );
    }
    m = /^(allowedCidrs|allowedOrigins|ratelimits|credits): ([\s\S]*)$/.exec(detail);
    if (!m) return null;
    var labels = { allowedCidrs: "Allowed networks", allowedOrigins: "Allowed origins", ratelimits: "Rate limits", credits: "Credits" };
    var fields = {
      allowedCidrs: $("create-cidrs"),
      allowedOrigins: $("create-origins"),
      ratelimits: $("ratelimit-rows").querySelector(".rl-name") || $("ratelimit-add"),
      credits: !$("credits-on").checked
        ? $("credits-on")
        : /refillDay/.test(m[2])
        ? $("credits-day")
        : /refill/.test(m[2])
        ? $("credits-amount")
        : $("credits-remaining"),
    };
    var text = m[2].replace(/\brefillDay\b/g, "the refill day");
    return new FormProblem(labels[m[1]] + ": " + text + ".", fields[m[1]]);
  }

  function sameJson(a, b) {
    return JSON.stringify(a) === JSON.stringify(b);
  }

  // A key's limits in the shapes readUsage gives, to tell what an edit changed.
  function usageOf(key) {
    var l = limitsOf(key);
    var credits = null;
    if (l.credits) {
      credits = { remaining: l.credits.remaining };
      var r = l.credits.refill;
      if (r) {
        credits.refill = { interval: r.interval, amount: r.amount };
        if (r.interval === "monthly") credits.refill.refillDay = r.refillDay || 1;
      }
    }
    return {
      ratelimits: l.ratelimits.map(function (r) {
        var limit = { name: r.name, limit: r.limit, duration: r.duration, autoApply: r.autoApply !== false };
        if (typeof r.burst === "number") limit.burst = r.burst;
        return limit;
      }),
      credits: credits,
      cidrs: l.cidrs,
      origins: l.origins,
    };
  }

  // Create, and edit (name, user, active: what Audiobookshelf's edit form changes; and
  // the key's usage limits and network restrictions).
  function openCreate(editing) {
    var form = $("create-form");
    form.reset();
    state.editing = editing && editing.id ? editing : null;
    formError("create-error", "");
    $("create-title").textContent = state.editing ? "Edit API key" : "New API key";
    $("create-submit").textContent = state.editing ? "Save changes" : "Create key";
    show($("create-expiry-row"), !state.editing);
    $("create-active").checked = state.editing ? !!state.editing.isActive : true;
    show($("create-date-field"), false);
    var select = $("create-user-select");
    var input = $("create-user-input");
    var callerId = state.caller ? state.caller.userId : "";
    if (state.users && state.users.length > 0) {
      var options = [el("option", { value: "", text: "Choose a user" })];
      state.users.forEach(function (user) {
        if (!user || typeof user.id !== "string") return;
        var text = user.name && user.name !== user.id ? user.name + " (" + user.id + ")" : user.id;
        options.push(el("option", { value: user.id, text: text }));
      });
      var current = state.editing ? state.editing.userId : "";
      if (current && !state.users.some(function (user) { return user && user.id === current; })) {
        options.push(el("option", { value: current, text: current }));
      }
      select.replaceChildren.apply(select, options);
      select.value = current;
      show(select, true);
      show(input, false);
      select.required = true;
      input.required = false;
      $("create-user-label").setAttribute("for", "create-user-select");
    } else {
      show(select, false);
      show(input, true);
      input.value = state.editing ? state.editing.userId : callerId;
      input.required = true;
      select.required = false;
      $("create-user-label").setAttribute("for", "create-user-input");
    }
    var tomorrow = new Date(Date.now() + 86400000);
    $("create-date").min = isoDay(tomorrow);
    if (state.editing) $("create-name").value = state.editing.name;
    fillUsage(state.editing);
    openDialog($("create-dialog"));
    $("create-name").focus();
  }

  // Saves the edit form: only what changed. Credits are sent only when changed, since
  // setting them starts the count again.
  function submitEdit(key, name, userId, active, usage) {
    var body = {};
    var before = usageOf(key);
    if (name !== key.name) body.name = name;
    if (userId !== key.userId) body.userId = userId;
    if (active !== !!key.isActive) body.isActive = active;
    if (!sameJson(usage.ratelimits, before.ratelimits)) body.ratelimits = usage.ratelimits;
    if (!sameJson(usage.credits, before.credits)) body.credits = usage.credits;
    if (!sameJson(usage.cidrs, before.cidrs)) body.allowedCidrs = usage.cidrs;
    if (!sameJson(usage.origins, before.origins)) body.allowedOrigins = usage.origins;
    if (Object.keys(body).length === 0) {
      closeDialog($("create-dialog"));
      announce("No changes to save");
      return Promise.resolve();
    }
    return api("PATCH", "/" + encodeURIComponent(key.id), body).then(function (data) {
      if (data && data.apiKey) replaceKey(data.apiKey);
      render();
      closeDialog($("create-dialog"));
      announce("Saved " + name);
    });
  }

  function isoDay(date) {
    var pad = function (n) {
      return n < 10 ? "0" + n : String(n);
    };
    return date.getFullYear() + "-" + pad(date.getMonth() + 1) + "-" + pad(date.getDate());
  }

  // Seconds from now to the chosen expiry, null for never; throws a message for a bad date.
  function expiresIn() {
    var choice = $("create-expiry").value;
    if (!choice) return null;
    if (choice !== "date") return Number(choice) * 86400;
    var value = $("create-date").value;
    var match = /^(\d{4})-(\d{2})-(\d{2})$/.exec(value);
    if (!match) throw "Pick the date the key should expire on.";
    // The key works through the chosen day (local time) and expires at its end.
    var end = new Date(Number(match[1]), Number(match[2]) - 1, Number(match[3]) + 1, 0, 0, 0);
    var seconds = Math.floor((end.getTime() - Date.now()) / 1000);
    if (!(seconds > 0)) throw "The expiry date must be in the future.";
    return seconds;
  }

  function submitCreate(event) {
    event.preventDefault();
    formError("create-error", "");
    clearInvalid();
    var name = $("create-name").value.trim();
    var usingSelect = !$("create-user-select").hidden;
    var userId = (usingSelect ? $("create-user-select").value : $("create-user-input").value).trim();
    if (!name) {
      formError("create-error", "Give the key a name, so you can tell it apart later.");
      $("create-name").focus();
      return;
    }
    if (!userId) {
      formError("create-error", "Choose the user the key acts as.");
      (usingSelect ? $("create-user-select") : $("create-user-input")).focus();
      return;
    }
    var seconds = null;
    try {
      if (!state.editing) seconds = expiresIn();
    } catch (message) {
      formError("create-error", String(message));
      $("create-date").focus();
      return;
    }
    var usage;
    try {
      usage = readUsage();
    } catch (problem) {
      if (!(problem instanceof FormProblem)) throw problem;
      formProblem(problem);
      return;
    }
    var button = $("create-submit");
    var refused = function (error) {
      if (error.status === 401) return failed(error);
      var problem = usageProblem(error, usage);
      if (problem) formProblem(problem);
      else formError("create-error", error.message);
    };
    if (state.editing) {
      button.disabled = true;
      submitEdit(state.editing, name, userId, $("create-active").checked, usage)
        .catch(function (error) {
          refused(error);
          if (error.status === 404 || error.status === 409) loadKeys(false).catch(failed);
        })
        .then(function () {
          button.disabled = false;
        });
      return;
    }
    var body = { name: name, userId: userId, isActive: $("create-active").checked };
    if (seconds) body.expiresIn = seconds;
    if (usage.ratelimits.length) body.ratelimits = usage.ratelimits;
    if (usage.credits) body.credits = usage.credits;
    if (usage.cidrs.length) body.allowedCidrs = usage.cidrs;
    if (usage.origins.length) body.allowedOrigins = usage.origins;
    button.disabled = true;
    api("POST", "/", body)
      .then(function (data) {
        var created = data && data.apiKey;
        if (!created || typeof created.apiKey !== "string") throw new ApiError(500, "server_error", "The server did not return the new key.");
        var plaintext = created.apiKey;
        delete created.apiKey;
        state.keys = state.keys.concat([created]);
        render();
        closeDialog($("create-dialog"));
        showSecret("API key created", created.name, plaintext);
      })
      .catch(refused)
      .then(function () {
        button.disabled = false;
      });
  }

  // The plaintext, once.
  function showSecret(title, name, plaintext) {
    $("secret-title").textContent = title;
    $("secret-name").textContent = "“" + name + "” is ready.";
    var field = $("secret-value");
    field.value = plaintext;
    $("secret-copied").textContent = "";
    openDialog($("secret-dialog"));
    field.focus();
    field.select();
  }

  function copySecret() {
    var field = $("secret-value");
    var text = field.value;
    var done = function () {
      $("secret-copied").textContent = "Copied to the clipboard.";
      $("secret-copy").textContent = "Copied";
    };
    var fallback = function () {
      field.focus();
      field.select();
      var ok = false;
      try {
        ok = document.execCommand("copy");
      } catch (e) {
        ok = false;
      }
      if (ok) done();
      else $("secret-copied").textContent = "Copying was blocked: the key is selected, press Ctrl+C (or ⌘C) to copy it.";
    };
    if (navigator.clipboard && typeof navigator.clipboard.writeText === "function") {
      navigator.clipboard.writeText(text).then(done, fallback);
    } else {
      fallback();
    }
  }

  function closeSecret() {
    closeDialog($("secret-dialog"));
    $("secret-value").value = "";
    $("secret-copy").textContent = "Copy";
    $("add-key").focus();
  }

  // Confirm (delete, rotate).
  function confirmAction(options) {
    state.pending = options;
    $("confirm-title").textContent = options.title;
    $("confirm-text").textContent = options.text;
    var submit = $("confirm-submit");
    submit.textContent = options.action;
    submit.className = "btn " + (options.danger ? "btn-danger" : "btn-primary");
    show($("confirm-grace-field"), !!options.grace);
    $("confirm-grace").value = "0";
    formError("confirm-error", "");
    openDialog($("confirm-dialog"));
    (options.grace ? $("confirm-grace") : submit).focus();
  }

  function submitConfirm(event) {
    event.preventDefault();
    var pending = state.pending;
    if (!pending) return;
    var submit = $("confirm-submit");
    submit.disabled = true;
    pending
      .run()
      .then(function () {
        state.pending = null;
        closeDialog($("confirm-dialog"));
        if (pending.after) pending.after();
      })
      .catch(function (error) {
        if (error.status === 401) return failed(error);
        formError("confirm-error", error.message);
        if (error.status === 404 || error.status === 409) loadKeys(false).catch(failed);
      })
      .then(function () {
        submit.disabled = false;
      });
  }

  function askDelete(key) {
    confirmAction({
      title: "Delete this API key?",
      text: "“" + key.name + "” stops working at once, for every script that uses it. This cannot be undone.",
      action: "Delete key",
      danger: true,
      run: function () {
        return api("DELETE", "/" + encodeURIComponent(key.id)).then(function () {
          state.keys = state.keys.filter(function (k) {
            return k.id !== key.id;
          });
          render();
          announce("Deleted " + key.name);
        });
      },
      after: function () {
        $("add-key").focus();
      },
    });
  }

  function askRotate(key) {
    var plaintext = null;
    var fresh = null;
    confirmAction({
      title: "Rotate this API key?",
      text: "“" + key.name + "” gets a new key with the same user, permissions and expiry. Update every script that uses it.",
      action: "Rotate key",
      grace: true,
      run: function () {
        var grace = Number($("confirm-grace").value) || 0;
        return api("POST", "/" + encodeURIComponent(key.id) + "/rotate", { gracePeriod: grace }).then(function (data) {
          fresh = data && data.apiKey;
          if (!fresh || typeof fresh.apiKey !== "string") throw new ApiError(500, "server_error", "The server did not return the new key.");
          plaintext = fresh.apiKey;
          delete fresh.apiKey;
        });
      },
      after: function () {
        showSecret("API key rotated", fresh.name, plaintext);
        plaintext = null;
        loadKeys(false).catch(failed);
      },
    });
  }

  // ---- wiring -------------------------------------------------------------------------

  function start() {
    $("signin-form").addEventListener("submit", function (event) {
      event.preventDefault();
      var key = $("signin-key").value.trim();
      if (!key) {
        formError("signin-error", "Paste your admin API key.");
        $("signin-key").focus();
        return;
      }
      if (!TOKEN_SHAPE.test(key) || key.length > 8192) {
        formError("signin-error", "That does not look like an API key: it should be one word of letters, digits and _ (or a JWT).");
        $("signin-key").focus();
        return;
      }
      signIn(key, $("signin-remember").checked);
    });
    $("sign-out").addEventListener("click", function () {
      signOut("");
    });
    $("add-key").addEventListener("click", function () {
      openCreate(null);
    });
    $("load-more").addEventListener("click", function () {
      loadKeys(true).catch(failed);
    });
    $("banner-close").addEventListener("click", function () {
      banner("");
    });
    $("create-form").addEventListener("submit", submitCreate);
    $("create-expiry").addEventListener("change", function () {
      var custom = $("create-expiry").value === "date";
      show($("create-date-field"), custom);
      if (custom) $("create-date").focus();
    });
    $("confirm-form").addEventListener("submit", submitConfirm);
    $("ratelimit-add").addEventListener("click", function () {
      var row = addLimitRow(null);
      updateSummaries();
      row.querySelector(".rl-limit").focus();
    });
    $("ratelimit-rows").addEventListener("click", function (event) {
      var remove = event.target.closest("[data-remove]");
      if (!remove) return;
      remove.closest(".limit-row").remove();
      updateSummaries();
      $("ratelimit-add").focus();
    });
    $("credits-on").addEventListener("change", function () {
      if ($("credits-on").checked && !$("credits-remaining").value) $("credits-remaining").value = "1000";
      syncCredits();
      updateSummaries();
      if ($("credits-on").checked) $("credits-remaining").focus();
    });
    $("credits-refill").addEventListener("change", function () {
      if ($("credits-refill").value && !$("credits-amount").value) $("credits-amount").value = $("credits-remaining").value;
      syncCredits();
    });
    ["usage-section", "network-section"].forEach(function (id) {
      $(id).addEventListener("input", updateSummaries);
      $(id).addEventListener("change", updateSummaries);
    });
    $("secret-copy").addEventListener("click", copySecret);
    $("secret-done").addEventListener("click", closeSecret);
    // The key is shown once: Escape must not throw it away by accident.
    $("secret-dialog").addEventListener("cancel", function (event) {
      event.preventDefault();
    });
    Array.prototype.forEach.call(document.querySelectorAll("[data-close]"), function (button) {
      button.addEventListener("click", function () {
        closeDialog(button.closest("dialog"));
      });
    });
    $("key-rows").addEventListener("click", function (event) {
      var target = event.target.closest("[data-action]");
      if (!target || target.getAttribute("data-action") === "toggle") return;
      var tr = target.closest("tr");
      var key = tr && findKey(tr.getAttribute("data-key-id"));
      if (!key) return;
      banner("");
      if (target.getAttribute("data-action") === "edit") openCreate(key);
      else if (target.getAttribute("data-action") === "delete") askDelete(key);
      else if (target.getAttribute("data-action") === "rotate") askRotate(key);
    });
    $("key-rows").addEventListener("change", function (event) {
      var target = event.target;
      if (!target.matches('input[data-action="toggle"]')) return;
      var tr = target.closest("tr");
      var key = tr && findKey(tr.getAttribute("data-key-id"));
      if (key) toggleActive(key, target);
    });

    var stored = null;
    try {
      stored = sessionStorage.getItem(STORAGE_KEY);
    } catch (e) {
      stored = null;
    }
    if (stored) {
      $("signin-remember").checked = true;
      signIn(stored, true);
    } else {
      show($("signin"), true);
      $("signin-key").focus();
    }
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
