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

  function ApiError(status, code, message, reason) {
    this.status = status;
    this.code = code;
    this.message = message;
    this.reason = reason;
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
              data && data.reason
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

  // Create, and edit (name, user, active: what Audiobookshelf's edit form changes).
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
    openDialog($("create-dialog"));
    $("create-name").focus();
  }

  // Saves the edit form: only what changed.
  function submitEdit(key, name, userId, active) {
    var body = {};
    if (name !== key.name) body.name = name;
    if (userId !== key.userId) body.userId = userId;
    if (active !== !!key.isActive) body.isActive = active;
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
    var button = $("create-submit");
    if (state.editing) {
      button.disabled = true;
      submitEdit(state.editing, name, userId, $("create-active").checked)
        .catch(function (error) {
          if (error.status === 401) return failed(error);
          formError("create-error", error.message);
          if (error.status === 404 || error.status === 409) loadKeys(false).catch(failed);
        })
        .then(function () {
          button.disabled = false;
        });
      return;
    }
    var body = { name: name, userId: userId, isActive: $("create-active").checked };
    if (seconds) body.expiresIn = seconds;
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
      .catch(function (error) {
        if (error.status === 401) return failed(error);
        formError("create-error", error.message);
      })
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
