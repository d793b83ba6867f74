"""The portal's HTML: the login form, the logged-in page and error pages (escaped, no scripts)."""

from __future__ import annotations

from html import escape

# No script, no framing, forms only to ourselves; nothing to cache.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

_STYLE = (
    "body{font-family:sans-serif;max-width:36em;margin:3em auto;color:#222}"
    "h1{font-size:1.6em}.node{font-weight:bold;color:#05a}.err{color:#b00}"
    "label{display:block;margin:.6em 0}input{font-size:1em}"
)


def _page(title: str, body: str) -> str:
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>"
    )


def login_form(node: str, error: str | None = None, username: str = "") -> str:
    err = f'<p class="err" id="error">{escape(error)}</p>' if error else ""
    return _page(
        "SSL VPN login",
        f"<h1>SSL VPN login</h1>{err}"
        f'<form id="login" method="post" action="/login">'
        f'<label>User name <input id="username" name="username" autocomplete="username" '
        f'value="{escape(username)}" required></label>'
        f'<label>Password <input id="password" name="password" type="password" '
        f'autocomplete="current-password" required></label>'
        f'<button id="submit" type="submit">Log in</button></form>'
        f'<p>Gateway <span class="node" id="node">{escape(node)}</span></p>',
    )


def home(user: str, node: str, session: str, host: str) -> str:
    return _page(
        "SSL VPN portal",
        f'<h1 id="welcome">Logged in as <span id="user">{escape(user)}</span></h1>'
        f'<p>Served by node <span class="node" id="node">{escape(node)}</span></p>'
        f'<p>Reached at <code id="host">{escape(host)}</code>; session '
        f'<code id="session">{escape(session)}</code> (digest prefix)</p>'
        f'<form method="post" action="/logout"><button id="logout" type="submit">Log out'
        f"</button></form>",
    )


def message(title: str, text: str, node: str) -> str:
    return _page(
        title,
        f'<h1>{escape(title)}</h1><p id="message">{escape(text)}</p>'
        f'<p>Gateway <span class="node" id="node">{escape(node)}</span></p>',
    )
