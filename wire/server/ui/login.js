// The login page: a link's token is in the URL's fragment (never sent to
// the server by the browser, so in no log); trade it for a session cookie.
"use strict";

(async function login() {
  const token = window.location.hash.slice(1);
  if (!token) return;
  // The token must not stay in the address bar or the history.
  history.replaceState(null, "", window.location.pathname);
  const state = document.getElementById("login-state");
  state.textContent = "Logging in…";
  try {
    const response = await fetch("/ui/session", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ token }),
    });
    if (response.ok) {
      window.location.replace("/ui/");
      return;
    }
    const answer = await response.json().catch(() => ({}));
    state.textContent = answer.error || `The server refused the link (HTTP ${response.status}).`;
    state.className = "error";
  } catch (error) {
    state.textContent = `The server could not be reached: ${error}`;
    state.className = "error";
  }
})();
