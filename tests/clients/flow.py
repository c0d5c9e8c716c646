#!/usr/bin/env python3
"""The admin-API flow with Python `requests`, as an Audiobookshelf script would run it.

Usage: KEYGATE_URL=http://127.0.0.1:3000 KEYGATE_ADMIN_KEY=abs_... python3 flow.py

create a key for `user` -> use it -> deactivate it -> refused -> delete it -> 404.
Exits 0 on success, 1 with a message on any unexpected answer, 77 if `requests` is
missing (the caller decides whether that is a skip or a failure).
"""
import os
import sys

try:
    import requests
except ImportError:
    print("flow.py: the Python package `requests` is not installed", file=sys.stderr)
    sys.exit(77)

BASE = os.environ["KEYGATE_URL"].rstrip("/")
ADMIN = {"Authorization": f"Bearer {os.environ['KEYGATE_ADMIN_KEY']}"}
TIMEOUT = 10


def expect(response, status, what):
    if response.status_code != status:
        print(
            f"flow.py: {what}: expected {status}, got {response.status_code}: {response.text}",
            file=sys.stderr,
        )
        sys.exit(1)
    return response


def main():
    r = expect(
        requests.post(
            f"{BASE}/api/api-keys",
            headers=ADMIN,
            json={"name": "python flow", "userId": "user", "expiresIn": 3600, "isActive": True},
            timeout=TIMEOUT,
        ),
        200,
        "create",
    )
    created = r.json()["apiKey"]
    key, key_id = created["apiKey"], created["id"]
    if created["userId"] != "user" or created["isActive"] is not True:
        sys.exit(f"flow.py: create: unexpected record {created}")
    user = {"Authorization": f"Bearer {key}"}

    r = expect(requests.get(f"{BASE}/api/libraries", headers=user, timeout=TIMEOUT), 200, "use")
    if not r.json().get("libraries"):
        sys.exit(f"flow.py: use: unexpected body {r.text}")
    expect(requests.get(f"{BASE}/api/api-keys", headers=user, timeout=TIMEOUT), 403, "non-admin list")
    r = expect(requests.get(f"{BASE}/api/libraries", timeout=TIMEOUT), 401, "no key")
    if not r.headers.get("WWW-Authenticate", "").startswith("Bearer realm="):
        sys.exit(f"flow.py: no key: challenge {r.headers.get('WWW-Authenticate')!r}")

    r = expect(
        requests.patch(
            f"{BASE}/api/api-keys/{key_id}", headers=ADMIN, json={"isActive": False}, timeout=TIMEOUT
        ),
        200,
        "deactivate",
    )
    if r.json()["apiKey"]["isActive"] is not False:
        sys.exit(f"flow.py: deactivate: unexpected body {r.text}")
    r = expect(requests.get(f"{BASE}/api/libraries", headers=user, timeout=TIMEOUT), 401, "refused")
    if 'error="invalid_token"' not in r.headers.get("WWW-Authenticate", ""):
        sys.exit(f"flow.py: refused: challenge {r.headers.get('WWW-Authenticate')!r}")

    expect(requests.delete(f"{BASE}/api/api-keys/{key_id}", headers=ADMIN, timeout=TIMEOUT), 200, "delete")
    expect(requests.get(f"{BASE}/api/api-keys/{key_id}", headers=ADMIN, timeout=TIMEOUT), 404, "gone")
    print("flow.py: ok")


if __name__ == "__main__":
    main()
