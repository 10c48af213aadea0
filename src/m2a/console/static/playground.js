// m2a console, the playground (templates/playground.html; views_playground.py). The form works without
// this script (the whole answer comes back in the page); with it, the answer streams: the form is posted
// with its CSRF token to /console/playground/send asking for JSON lines, each piece of text is appended
// as it arrives (as text, never as HTML), and time to first token and tokens/s are shown at the end.
// The conversation lives in this page only; the key never reaches the browser.
(function () {
  "use strict";

  var form = document.querySelector("form[data-playground]");
  if (!form || !window.fetch || !window.TextDecoder) { return; }
  var log = form.querySelector("[data-log]");
  var input = form.querySelector("[data-message]");
  var stats = form.querySelector("[data-stats]");
  var send = form.querySelector("[data-send]");
  var stop = form.querySelector("[data-stop]");
  var clear = form.querySelector("[data-clear]");
  var historyField = form.querySelector("[data-history]");
  var history = [];
  try { history = JSON.parse(historyField.value || "[]"); } catch (e) { history = []; }
  var controller = null;

  function bubble(role, text) {
    var li = document.createElement("li");
    li.className = "msg " + role;
    var who = document.createElement("span");
    who.className = "who";
    who.textContent = role === "user" ? "You" : "Model";
    var body = document.createElement("div");
    body.className = "text";
    body.textContent = text;
    li.appendChild(who);
    li.appendChild(body);
    log.appendChild(li);
    log.scrollTop = log.scrollHeight;
    return body;
  }

  function fmt(value, digits, unit) {
    return value === null || value === undefined ? "–" : Number(value).toFixed(digits) + unit;
  }

  function showStats(done) {
    var usage = done.usage || {};
    var parts = ["time to first token " + fmt(done.ttft_ms, 0, " ms")];
    if (done.tokens_per_s) { parts.push(fmt(done.tokens_per_s, 1, " tokens/s")); }
    if (usage.completion_tokens !== undefined) { parts.push(usage.completion_tokens + " output tokens"); }
    parts.push("finish: " + (done.finish_reason || "–"));
    stats.textContent = parts.join(" · ");
    stats.dataset.ttftMs = done.ttft_ms === null ? "" : String(done.ttft_ms);
    stats.dataset.tokensPerS = done.tokens_per_s === null ? "" : String(done.tokens_per_s);
  }

  function busy(on) {
    send.disabled = on;
    stop.hidden = !on;
    log.setAttribute("aria-busy", on ? "true" : "false");
  }

  function fail(target, message) {
    target.textContent = message;
    target.parentNode.classList.add("failed");
    stats.textContent = "";
  }

  async function readLines(response, onEvent) {
    var reader = response.body.getReader();
    var decoder = new TextDecoder();
    var buffered = "";
    for (;;) {
      var step = await reader.read();
      if (step.done) { break; }
      buffered += decoder.decode(step.value, { stream: true });
      var lines = buffered.split("\n");
      buffered = lines.pop();
      lines.forEach(function (line) { if (line.trim()) { onEvent(JSON.parse(line)); } });
    }
    if (buffered.trim()) { onEvent(JSON.parse(buffered)); }
  }

  async function submit() {
    var text = input.value;
    if (!text.trim() || send.disabled) { return; }
    var params = new URLSearchParams(new FormData(form));
    params.set("messages", JSON.stringify(history));
    params.set("message", text);
    bubble("user", text);
    var answer = bubble("assistant", "");
    input.value = "";
    stats.textContent = "Waiting for the model…";
    busy(true);
    controller = new AbortController();
    var got = "", ended = null, failed = false;
    try {
      var response = await fetch(form.action, {
        method: "POST", body: params, credentials: "same-origin", signal: controller.signal,
        headers: { "Accept": "application/x-ndjson" },
      });
      var kind = response.headers.get("content-type") || "";
      if (!response.ok || kind.indexOf("application/x-ndjson") !== 0) {
        var message = "The request failed (HTTP " + response.status + ").";
        try { message = (await response.json()).message || message; } catch (e) { /* not JSON */ }
        fail(answer, message);
        failed = true;
      } else {
        stats.textContent = "";
        await readLines(response, function (ev) {
          if (ev.type === "delta") {
            got += ev.text;
            answer.textContent = got;
            log.scrollTop = log.scrollHeight;
          } else if (ev.type === "done") {
            ended = ev;
            showStats(ev);
          } else if (ev.type === "error") {
            fail(answer, ev.message || "The model's answer was stopped.");
            failed = true;
          }
        });
      }
    } catch (e) {
      if (e.name === "AbortError") {
        stats.textContent = "Stopped.";
      } else {
        fail(answer, "The connection failed: " + e.message);
        failed = true;
      }
    } finally {
      busy(false);
      controller = null;
    }
    if (failed) {
      input.value = text;  // nothing was kept: try again
    } else {
      history.push({ role: "user", content: text });
      history.push({ role: "assistant", content: got });
      historyField.value = JSON.stringify(history);
      if (ended) { form.dataset.done = String(history.length); }
    }
    input.focus();
  }

  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    submit();
  });
  input.addEventListener("keydown", function (ev) {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      submit();
    }
  });
  stop.addEventListener("click", function () { if (controller) { controller.abort(); } });
  clear.addEventListener("click", function () {
    if (controller) { controller.abort(); }
    history = [];
    historyField.value = "[]";
    while (log.firstChild) { log.removeChild(log.firstChild); }
    stats.textContent = "";
    input.focus();
  });
})();
