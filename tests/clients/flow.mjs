// The admin-API flow with Node's built-in `fetch` (Node 18+), as an Audiobookshelf script
// would run it.
//
// Usage: KEYGATE_URL=http://127.0.0.1:3000 KEYGATE_ADMIN_KEY=abs_... node flow.mjs
//
// create a key for `user` -> use it -> deactivate it -> refused -> delete it -> 404.
// Exits 0 on success, 1 with a message on any unexpected answer, 77 if this Node has no
// `fetch` (the caller decides whether that is a skip or a failure).

if (typeof fetch !== "function") {
  console.error(`flow.mjs: this Node (${process.version}) has no built-in fetch`);
  process.exit(77);
}

const base = process.env.KEYGATE_URL.replace(/\/+$/, "");
const admin = { Authorization: `Bearer ${process.env.KEYGATE_ADMIN_KEY}` };

function fail(message) {
  console.error(`flow.mjs: ${message}`);
  process.exit(1);
}

async function call(what, status, method, path, headers = {}, body) {
  const init = { method, headers: { ...headers }, signal: AbortSignal.timeout(10_000) };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(`${base}${path}`, init);
  const text = await response.text();
  if (response.status !== status) {
    fail(`${what}: expected ${status}, got ${response.status}: ${text}`);
  }
  return { response, text, json: () => JSON.parse(text) };
}

try {
  const created = (
    await call("create", 200, "POST", "/api/api-keys", admin, {
      name: "node flow",
      userId: "user",
      expiresIn: 3600,
      isActive: true,
    })
  ).json().apiKey;
  if (created.userId !== "user" || created.isActive !== true) {
    fail(`create: unexpected record ${JSON.stringify(created)}`);
  }
  const user = { Authorization: `Bearer ${created.apiKey}` };
  const item = `/api/api-keys/${created.id}`;

  const used = await call("use", 200, "GET", "/api/libraries", user);
  if (!Array.isArray(used.json().libraries)) fail(`use: unexpected body ${used.text}`);
  await call("non-admin list", 403, "GET", "/api/api-keys", user);
  const anonymous = await call("no key", 401, "GET", "/api/libraries");
  if (!(anonymous.response.headers.get("www-authenticate") ?? "").startsWith("Bearer realm=")) {
    fail(`no key: challenge ${anonymous.response.headers.get("www-authenticate")}`);
  }

  const patched = await call("deactivate", 200, "PATCH", item, admin, { isActive: false });
  if (patched.json().apiKey.isActive !== false) fail(`deactivate: unexpected body ${patched.text}`);
  const refused = await call("refused", 401, "GET", "/api/libraries", user);
  if (!(refused.response.headers.get("www-authenticate") ?? "").includes('error="invalid_token"')) {
    fail(`refused: challenge ${refused.response.headers.get("www-authenticate")}`);
  }

  await call("delete", 200, "DELETE", item, admin);
  await call("gone", 404, "GET", item, admin);
  console.log("flow.mjs: ok");
} catch (error) {
  fail(`unexpected error: ${error?.stack ?? error}`);
}
